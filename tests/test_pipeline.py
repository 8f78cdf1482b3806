"""The whole loop on params/tiny.yaml through papermill: killed mid-round-2, resumed, finished."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import REPO
from l2r_lib import rounds
from l2r_lib.run import folder, runner, stages

DUMMY_KEY = "sk-l2r-DUMMY-never-write-me-4242"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    """Run tiny.yaml in a subprocess, SIGKILL it during round 2's training, then run it again."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    env = {**os.environ, "OPENAI_API_KEY": DUMMY_KEY, "L2R_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, "-m", "l2r_lib.cli", "run", str(REPO / "params" / "tiny.yaml"), "--out", str(run_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    target = run_dir / "tailored" / "synthetic" / "round-2" / "03_round_training.ipynb"
    deadline = time.time() + 600
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    round1 = run_dir / "tailored" / "synthetic" / "round-1"
    before = {p.name: p.stat().st_mtime_ns for p in round1.glob("*.done.json")}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"dir": run_dir, "killed": killed, "round1_before": before, "cmd": cmd, "env": env, "stdout": res.stdout}


def test_killed_run_resumes_without_repeating_round_1(tiny_run):
    assert tiny_run["killed"], "the run finished before it could be killed in round 2"
    round1 = tiny_run["dir"] / "tailored" / "synthetic" / "round-1"
    after = {p.name: p.stat().st_mtime_ns for p in round1.glob("*.done.json")}
    assert len(after) == 4 and after == tiny_run["round1_before"]
    assert "[l2r] tailored / synthetic / round 1" not in tiny_run["stdout"]
    assert "[l2r] tailored / synthetic / round 0" not in tiny_run["stdout"]  # it ran before the kill, not again
    assert "[l2r] tailored / synthetic / round 2: 03_round_training" in tiny_run["stdout"]


@pytest.mark.floor
def test_every_notebook_of_every_round_executed(tiny_run):
    run = tiny_run["dir"]
    for method, last in [("tailored", 2), ("std-cot", 1), ("no-feedback", 2)]:
        for k in range(0, last + 1):
            for nb in rounds.NOTEBOOKS if k else ["04_evaluation"]:
                out = run / method / "synthetic" / f"round-{k}" / f"{nb}.ipynb"
                cells = json.loads(out.read_text())["cells"]
                errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
                assert not errors, (out, errors)
                assert any(c.get("outputs") for c in cells if c["cell_type"] == "code"), out


def test_tables_and_figures_hold_numbers(tiny_run):
    run = tiny_run["dir"]
    acc = pd.read_csv(run / "tables" / "accuracy.csv", index_col=0)
    assert set(acc.index) == {"tailored", "std-cot", "no-feedback"} and list(acc.columns) == ["synthetic"]
    assert acc.notna().all().all() and ((acc >= 0) & (acc <= 100)).all().all()
    by_round = pd.read_csv(run / "tables" / "accuracy_by_round.csv")
    assert by_round.loc[by_round.method == "tailored", "round 2"].notna().all()
    teacher = pd.read_csv(run / "tables" / "teacher.csv")
    assert len(teacher) == 5 and (teacher["teacher_kept"] > 0).all()
    intervals = pd.read_csv(run / "tables" / "intervals.csv").set_index("method")
    assert (intervals["ci95_low"] <= intervals["accuracy"]).all() and (intervals["accuracy"] <= intervals["ci95_high"]).all()
    assert intervals.loc["tailored", "questions"] == 16 and "vs std-cot" in intervals.columns
    stages = pd.read_csv(run / "tables" / "stage_seconds.csv")
    assert len(stages) == 8 and (stages.loc[stages["round"] > 0, "03_round_training"] > 0).all()
    assert stages.loc[stages.method == "no-feedback", "shared_from"].fillna("").tolist() == [
        "tailored", "tailored", "tailored (01_mistake_analysis)"]
    for fig in ("accuracy_by_round.png", "losses.png"):
        assert (run / "figures" / fig).stat().st_size > 5_000
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["name"] == "tiny" and manifest["prompt_templates"] and manifest["packages"]["torch"]
    # what each method name meant in this run (names can change meaning between versions)
    assert manifest["method_declarations"]["no-feedback"]["questions"] == "mistakes"
    losses = pd.read_csv(run / "tailored" / "synthetic" / "round-2" / "losses.csv")
    assert len(losses) > 0 and losses["mle"].notna().all()


def test_round_0_tests_the_untrained_student_once_per_task_and_every_method_shows_it(tiny_run):
    run = tiny_run["dir"]
    donor = run / "tailored" / "synthetic" / "round-0"
    assert [p.name for p in donor.glob("*.ipynb")] == ["04_evaluation.ipynb"] and not (donor / "adapter").exists()
    for method in ("std-cot", "no-feedback"):  # one test exam per task: the other methods copy it
        shared = run / method / "synthetic" / "round-0"
        assert json.loads((shared / "metrics.json").read_text())["shared_from"] == "tailored"
        assert (shared / "exam_test.jsonl").read_bytes() == (donor / "exam_test.jsonl").read_bytes()
        assert "untrained student" in (shared / "SHARED.md").read_text()
    by_round = pd.read_csv(run / "tables" / "accuracy_by_round.csv")
    assert list(by_round.columns[2:]) == ["round 0", "round 1", "round 2"] and by_round["round 0"].nunique() == 1
    assert "round 0" in tiny_run["stdout"].split("## accuracy_by_round")[1].split("##")[0]  # `l2r run` shows it


def test_round_1_is_shared_by_methods_that_compute_the_same_one(tiny_run):
    run = tiny_run["dir"]
    assert "[l2r] no-feedback / synthetic / round 1: shared with tailored" in tiny_run["stdout"]
    assert "[l2r] no-feedback / synthetic / round 1: 0" not in tiny_run["stdout"]
    donor, shared = (json.loads((run / m / "synthetic" / "round-1" / "metrics.json").read_text())
                     for m in ("tailored", "no-feedback"))
    assert shared["method"] == "no-feedback" and shared["shared_from"] == "tailored"
    assert shared["accuracy"] == donor["accuracy"]
    assert (run / "no-feedback" / "synthetic" / "round-1" / "adapter").is_dir()
    # std-cot trains without self-reflection: it shares nothing with tailored
    assert "shared_from" not in json.loads((run / "std-cot" / "synthetic" / "round-1" / "metrics.json").read_text())
    # no-feedback's round 2 really ran, from the shared adapter
    assert "[l2r] no-feedback / synthetic / round 2: 03_round_training" in tiny_run["stdout"]


def test_round_2_exam_after_a_shared_round_1_is_shared_and_is_the_same_computation(tiny_run, tmp_path):
    from l2r_lib.config import load_config
    from l2r_lib.records import ExamRecord, load_jsonl

    run = tiny_run["dir"]
    assert "[l2r] no-feedback / synthetic / round 2: 01_mistake_analysis shared with tailored\n" in tiny_run["stdout"]
    assert "[l2r] no-feedback / synthetic / round 2: 01_mistake_analysis\n" not in tiny_run["stdout"]  # not run again
    mine, donor = (run / m / "synthetic" / "round-2" for m in ("no-feedback", "tailored"))
    assert (mine / "exam_train.jsonl").read_bytes() == (donor / "exam_train.jsonl").read_bytes()
    assert json.loads((mine / "01_mistake_analysis.done.json").read_text())["shared_from"] == "tailored"
    assert json.loads((mine / "metrics.json").read_text())["shared_from"] == "tailored (01_mistake_analysis)"
    # the exam no-feedback takes itself, from its own (copied) round-1 adapter, is the donor's
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    rnd = rounds.Round(load_config(copy / "config.yaml"), copy, "no-feedback", "synthetic", 2)
    shutil.rmtree(rnd.dir)
    rnd.dir.mkdir()
    summary = stages.mistake_analysis(rnd)
    assert "shared_from" not in summary
    assert load_jsonl(ExamRecord, rnd.dir / "exam_train.jsonl") == load_jsonl(ExamRecord, donor / "exam_train.jsonl")
    # what sharing copies is everything stage 01 writes (its notebook comes from papermill)
    written = {p.name for p in rnd.dir.iterdir()} - {"01_mistake_analysis.done.json"}
    assert written == set(runner.EXAM_FILES) - {"01_mistake_analysis.ipynb"}
    assert set(runner.EXAM_FILES) <= {p.name for p in mine.iterdir()}


@pytest.mark.floor
def test_round_1_reflects_and_the_tables_report_triplet_rows_and_contradictions(tiny_run):
    run = tiny_run["dir"]
    metrics = json.loads((run / "tailored" / "synthetic" / "round-1" / "metrics.json").read_text())
    assert metrics["rows_with_triplet"] > 0  # reference n=2: two positives a question already in round 1
    assert metrics["contradiction_compared"] >= 0 and "contradiction_rate" in metrics
    diag = pd.read_csv(run / "tables" / "diagnostics.csv").set_index(["method", "round"])
    assert diag.loc[("tailored", 1), "rows_with_triplet"] == metrics["rows_with_triplet"]
    assert diag.loc[("std-cot", 1), "rows_with_triplet"] == 0  # no self-reflection
    teacher = pd.read_csv(run / "tables" / "teacher.csv")
    r1 = teacher[(teacher.method == "std-cot") & (teacher["round"] == 1)]
    assert r1["teacher_kept"].item() == 2 * 24  # two distinct reference rationales for each train question


def test_no_feedback_asks_plainly_about_exactly_the_mistaken_questions(tiny_run):
    from l2r_lib.records import ExamRecord, TeacherRecord, load_jsonl

    r2 = tiny_run["dir"] / "no-feedback" / "synthetic" / "round-2"
    exam = load_jsonl(ExamRecord, r2 / "exam_train.jsonl")
    assert all(len(r.correct) == 2 for r in exam)  # tiny.yaml samples 2 answers a question
    teacher = load_jsonl(TeacherRecord, r2 / "teacher_round2.jsonl")
    assert {t.id for t in teacher} == {r.id for r in exam if not all(r.correct)}
    assert {t.prompt_kind for t in teacher} == {"rationale"} and all(t.student_rationale is None for t in teacher)
    tailored = load_jsonl(TeacherRecord, tiny_run["dir"] / "tailored" / "synthetic" / "round-2" / "teacher_round2.jsonl")
    assert {t.prompt_kind for t in tailored} == {"feedback"} and all(t.student_rationale for t in tailored)


def test_each_method_asks_the_teacher_about_the_questions_its_declaration_names(tmp_path):
    """Later rounds by the methods table: every question with ANY wrong sample, each wrong sample a
    feedback prompt (feedback methods), the same questions alone (no-feedback), or as many random ones."""
    from l2r_lib.config import load_config
    from l2r_lib.methods import METHODS
    from l2r_lib.records import ExamRecord, save_jsonl

    cfg = load_config(REPO / "params" / "tiny.yaml", overrides={"methods": list(METHODS)})
    train = rounds.Round(cfg, tmp_path, "tailored", "synthetic", 2).examples("train")
    verdicts = {0: [True, True], 1: [True, False], 2: [False, False]}  # q1: only the 2nd sample is wrong
    exam = [ExamRecord(ex.id, ex.question, ex.answer, "p", [f"{i} + 1 = 9.", f"{i} + 2 = 9."], ["9", "9"],
                       verdicts.get(i, [True, True])) for i, ex in enumerate(train)]
    mistaken = [train[1].id, train[2].id]
    for name in METHODS:
        rnd = rounds.Round(cfg, tmp_path, name, "synthetic", 2)
        save_jsonl(exam, rnd.dir / "exam_train.jsonl")
        _, questions, mistakes = stages._teacher_job(rnd)
        spec = METHODS[name]
        if spec.questions == "random":
            assert len(questions) == 2 and not mistakes, name
        elif spec.feedback:
            assert not questions and [(m[0].id, m[1]) for m in mistakes] == [
                (train[1].id, "1 + 2 = 9."), (train[2].id, "2 + 1 = 9."), (train[2].id, "2 + 2 = 9.")], name
        elif spec.multi_round:
            assert [q.id for q in questions] == mistaken and not mistakes, name
        _, round1, _ = stages._teacher_job(rounds.Round(cfg, tmp_path, name, "synthetic", 1))
        assert round1 == train
    assert METHODS["std-cot"].rounds(cfg.rounds) == 1 and METHODS["no-feedback"].rounds(cfg.rounds) == cfg.rounds


def test_rerun_of_a_finished_run_redoes_nothing(tiny_run):
    run = tiny_run["dir"]
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("**/*.ipynb")}
    res = subprocess.run(tiny_run["cmd"], env=tiny_run["env"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "[l2r]" not in res.stdout
    assert {p: p.stat().st_mtime_ns for p in run.glob("**/*.ipynb")} == stamps


def test_a_clone_without_adapters_retrains_them_and_goes_on(tiny_run, tmp_path):
    """Adapters are not committed: a fresh clone of a half-done run trains the missing ones again, a
    shared round 1 once for all who share it."""
    from safetensors.torch import load_file

    clone = tmp_path / "run"
    shutil.copytree(tiny_run["dir"], clone, ignore=shutil.ignore_patterns("adapter", "checkpoints"))
    shutil.rmtree(clone / "tailored" / "synthetic" / "round-2")
    shutil.rmtree(clone / "no-feedback" / "synthetic" / "round-2")  # its round 1 is tailored's
    round1 = clone / "tailored" / "synthetic" / "round-1"
    record = {p.name: p.read_bytes() for p in round1.glob("*") if p.is_file()}
    cmd = tiny_run["cmd"][:-1] + [str(clone)]
    res = subprocess.run(cmd, env=tiny_run["env"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[l2r] tailored / synthetic / round 1: adapter missing, training it again" in res.stdout
    assert "[l2r] tailored / synthetic / round 1: the retrained adapter reproduces the recorded loss curve" in res.stdout
    assert {p.name: p.read_bytes() for p in round1.glob("*") if p.is_file()} == record  # the round's record unchanged
    assert "[l2r] tailored / synthetic / round 2: 03_round_training" in res.stdout
    assert "round 1: 0" not in res.stdout  # no round-1 notebook ran again
    assert res.stdout.count("round 1: adapter missing, training it again") == 1
    assert "[l2r] no-feedback / synthetic / round 1: adapter copied from tailored's" in res.stdout
    assert "[l2r] no-feedback / synthetic / round 2: 03_round_training" in res.stdout
    weights = "tailored/synthetic/round-1/adapter/adapter_model.safetensors"
    before, after = load_file(tiny_run["dir"] / weights), load_file(clone / weights)
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)


def test_a_retrained_adapter_that_parts_from_its_recording_is_flagged(tiny_run, tmp_path, monkeypatch, capsys):
    """The retrained curve differs (another machine, another library version): the recorded one stays the
    round's record, the retrained one is kept beside it, and the run says so."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run["dir"] / "tailored" / "synthetic" / "round-1", run / "tailored" / "synthetic" / "round-1",
                    ignore=shutil.ignore_patterns("adapter", "checkpoints"))
    rnd = rounds.Round(runner.load_config(tiny_run["dir"] / "config.yaml"), run, "tailored", "synthetic", 1)
    record = {p.name: p.read_bytes() for p in rnd.dir.glob("*") if p.is_file()}
    recorded = pd.read_csv(rnd.dir / "losses.csv")

    def retrain(r):  # what a drifting retrain leaves: an adapter, its own curve and config, its marker
        (r.dir / "adapter").mkdir()
        recorded.assign(total=recorded["total"] + 0.01).to_csv(r.dir / "losses.csv", index=False)
        (r.dir / "train_config.yaml").write_text("rows: 0\n")
        (r.dir / "03_round_training.done.json").write_text("{}")

    monkeypatch.setattr(runner, "round_training", retrain)
    runner.restore_adapter(rnd)
    assert "does not reproduce the recorded loss curve" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in rnd.dir.glob("*") if p.is_file() and p.name != "losses.restored.csv"} == record
    restored = pd.read_csv(rnd.dir / "losses.restored.csv")
    assert restored["total"].sub(recorded["total"]).round(6).eq(0.01).all()


def test_the_api_key_is_written_nowhere(tiny_run):
    hits = [p for p in tiny_run["dir"].rglob("*") if p.is_file() and DUMMY_KEY.encode() in p.read_bytes()]
    assert not hits


def test_tables_rebuild_from_saved_runs_alone(tiny_run, tmp_path):
    for table in (tiny_run["dir"] / "tables").glob("*"):
        table.unlink()
    res = subprocess.run([sys.executable, "-m", "l2r_lib.cli", "tables", "--results", str(tiny_run["dir"].parent)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tiny_run["dir"] / "tables" / "accuracy.md").read_text().count("|") > 4


def test_a_run_grows_by_a_method_and_std_cot_matched_draws_random_questions(tiny_run, tmp_path):
    """Appending std-cot-matched to a finished run: only its rounds run; round 1 is std-cot's,
    round 2 takes an exam only to count the mistakes and trains on as many random questions."""
    import yaml

    from l2r_lib.records import ExamRecord, TeacherRecord, load_jsonl

    run = tmp_path / "run"
    shutil.copytree(tiny_run["dir"], run)
    params = yaml.safe_load((REPO / "params" / "tiny.yaml").read_text())
    params["methods"].append("std-cot-matched")
    grown = tmp_path / "grown.yaml"
    grown.write_text(yaml.safe_dump(params))
    res = subprocess.run(tiny_run["cmd"][:-3] + [str(grown), "--out", str(run)], env=tiny_run["env"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    ran = {line.split(":")[0] for line in res.stdout.splitlines() if line.startswith("[l2r]")}
    assert ran == {"[l2r] std-cot-matched / synthetic / round 0", "[l2r] std-cot-matched / synthetic / round 1",
                   "[l2r] std-cot-matched / synthetic / round 2"}
    assert "[l2r] std-cot-matched / synthetic / round 0: shared with tailored" in res.stdout
    assert "[l2r] std-cot-matched / synthetic / round 1: shared with std-cot" in res.stdout

    r2 = run / "std-cot-matched" / "synthetic" / "round-2"
    wrong = [r for r in load_jsonl(ExamRecord, r2 / "exam_train.jsonl") if not all(r.correct)]
    teacher = load_jsonl(TeacherRecord, r2 / "teacher_round2.jsonl")
    assert len({t.id for t in teacher}) == len(wrong) > 0
    assert {t.prompt_kind for t in teacher} == {"rationale"}  # plain rationales, no feedback prompt
    assert json.loads((r2 / "03_round_training.done.json").read_text())["steps"] > 0
    assert pd.read_csv(r2 / "losses.csv")["triplet"].eq(0).all()
    acc = pd.read_csv(run / "tables" / "accuracy.csv", index_col=0)
    assert "std-cot-matched" in acc.index
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["extended"][-1]["methods"][-1] == "std-cot-matched"
    assert manifest["config"]["methods"] == params["methods"]
    assert manifest["method_declarations"]["std-cot-matched"]["questions"] == "random"

    params["student"] = {**params.get("student", {}), "threads": 1}  # a machine setting: the same run goes on
    grown.write_text(yaml.safe_dump(params))
    assert folder.prepare_run(grown, run)[0].student.threads == 1
    params["rounds"] = 3  # anything but appended methods or tasks is another run
    grown.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="grows only by appending"):
        folder.prepare_run(grown, run)


def test_records_hold_no_machine_path(tiny_run):
    """Executed notebooks, tables and round files name paths relative to the run, never this machine's."""
    run = tiny_run["dir"]
    needles = {str(run.resolve()), str(REPO), sys.prefix}
    for path in run.rglob("*"):
        if path.is_file() and path.suffix in (".ipynb", ".json", ".yaml", ".md", ".csv", ".jsonl"):
            text = path.read_text(errors="replace")
            assert not any(n in text for n in needles), (path, [n for n in needles if n in text])
    nb = (run / "tailored" / "synthetic" / "round-2" / "03_round_training.ipynb").read_text()
    for warning in ("TqdmWarning", "FutureWarning", "is_gradient_checkpointing"):
        assert warning not in nb, warning
    assert "[l2r] tailored / synthetic / round 2: 03_round_training" in tiny_run["stdout"]
    assert "step " in tiny_run["stdout"] and "s/step" in tiny_run["stdout"]  # training progress reached the terminal
