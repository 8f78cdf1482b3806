"""The stages as a notebook user drives them: overrides, saved results said aloud, force, missing inputs,
and records that hold no machine path."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from l2r_lib import rounds
from l2r_lib.report import views
from l2r_lib.run import runner, stages
from l2r_lib.cli import parse_sets

TINY = REPO / "params" / "tiny.yaml"


def test_overrides_are_checked_and_a_changed_run_names_the_fix(tmp_path):
    rnd = stages.open_round(TINY, "tailored", "synthetic", 1, tmp_path / "run", overrides={"train.reflection_weight": 0.1})
    assert rnd.cfg.train.reflection_weight == 0.1
    with pytest.raises(ValueError, match="train.reflection_weight"):
        stages.open_round(TINY, "tailored", "synthetic", 1, tmp_path / "bad", overrides={"train.reflection_weight": -1})
    with pytest.raises(ValueError, match=r"train\.reflection_weight differ.*pass another run_dir"):
        stages.open_round(TINY, "tailored", "synthetic", 1, tmp_path / "run", overrides={"train.reflection_weight": 0.2})
    assert parse_sets(["train.epochs=2", "methods=[tailored, std-cot]"]) == {"train.epochs": 2, "methods": ["tailored", "std-cot"]}
    with pytest.raises(ValueError, match="key=value"):
        parse_sets(["train.epochs"])


@pytest.mark.slow
def test_a_finished_stage_says_so_and_force_runs_it_again(tmp_path, capsys):
    rnd = stages.open_round(TINY, "tailored", "synthetic", 1, tmp_path / "run", overrides={"train_limit": 8})
    first = stages.mistake_analysis(rnd)
    assert "has run" not in capsys.readouterr().out
    marker = rnd.dir / "01_mistake_analysis.done.json"
    stamp = marker.stat().st_mtime_ns
    again = stages.mistake_analysis(rnd)
    assert again == first and marker.stat().st_mtime_ns == stamp
    assert "01_mistake_analysis of tailored/synthetic/round-1 has run" in capsys.readouterr().out
    stages.mistake_analysis(rnd, force=True)
    assert marker.stat().st_mtime_ns != stamp


def test_a_stage_without_its_input_stops_and_writes_nothing(tmp_path):
    rnd = stages.open_round(TINY, "tailored", "synthetic", 2, tmp_path / "run")
    for stage, needs in ((stages.teacher_prompting, "01_mistake_analysis for round 2"),
                         (stages.mistake_analysis, "03_round_training for round 1"),
                         (stages.round_training, "02_teacher_prompting for round 2"),
                         (stages.evaluation, "03_round_training for round 2")):
        with pytest.raises(rounds.MissingInput, match=f"run {needs} first"):
            stage(rnd)
    assert not rnd.dir.exists() or not any(rnd.dir.iterdir())


def test_scrubbed_notebooks_hold_no_machine_path(tmp_path):
    run = tmp_path / "run"
    nb_path = run / "tailored" / "synthetic" / "round-1" / "01_mistake_analysis.ipynb"
    nb_path.parent.mkdir(parents=True)
    site = f"{sys.prefix}/lib/python3/site-packages/tqdm/auto.py:21: TqdmWarning"
    nb = {"cells": [{"cell_type": "code", "source": "", "outputs": [
        {"output_type": "stream", "name": "stderr", "text": [f"{site}\n", f"{run.resolve()}/tailored/x\n", f"{REPO}/notebooks\n"]}]}],
          "metadata": {"papermill": {"input_path": str(REPO / "notebooks" / "01_mistake_analysis.ipynb"),
                                     "output_path": str(nb_path.resolve())}}}
    nb_path.write_text(json.dumps(nb))
    runner.scrub_notebook(nb_path, run)
    text = nb_path.read_text()
    assert str(tmp_path) not in text and str(REPO) not in text and sys.prefix not in text
    meta = json.loads(text)["metadata"]["papermill"]
    assert meta == {"input_path": "notebooks/01_mistake_analysis.ipynb",
                    "output_path": "tailored/synthetic/round-1/01_mistake_analysis.ipynb"}
    assert "<env>/lib/python3/site-packages/tqdm" in text and "./tailored/x" in text


def test_run_set_overrides_reach_the_run_config(tmp_path):
    res = subprocess.run([sys.executable, "-m", "l2r_lib.cli", "run", str(TINY), "--out", str(tmp_path / "r"),
                          "--set", "train.reflection_weight=-2"], capture_output=True, text=True)
    assert res.returncode == 2 and "train.reflection_weight" in res.stderr and not (tmp_path / "r").exists()


def test_a_failed_start_leaves_no_run_folder(tmp_path, monkeypatch):
    """No data for the task, or a method the params lack: open_round stops before the run folder is made
    (no config.yaml, manifest.json or run.lock left behind), and says why."""
    monkeypatch.setenv("L2R_DATA_DIR", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"task 'multiarith': its data is not reachable.*no run folder was made"):
        stages.open_round(TINY, "tailored", "multiarith", 1, tmp_path / "run", overrides={"tasks": ["multiarith"]})
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="method 'nope'"):
        stages.open_round(TINY, "nope", "synthetic", 1, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("L2R_DATA_DIR", str(tmp_path / "missing"))  # a named data folder that does not exist
    with pytest.raises(FileNotFoundError, match="does not exist"):
        stages.open_round(TINY, "tailored", "synthetic", 1, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_round_folder_is_shown_relative_to_the_working_folder_or_the_results_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("L2R_RESULTS", str(tmp_path / "store" / "results"))
    rnd = stages.open_round(TINY, "tailored", "synthetic", 1)  # run_dir None: <results>/tiny
    monkeypatch.chdir(tmp_path)
    assert rnd.shown_dir == "store/results/tiny/tailored/synthetic/round-1"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert rnd.shown_dir == "results/tiny/tailored/synthetic/round-1"
    assert str(tmp_path) not in rnd.shown_dir


def test_summaries_are_shown_rounded_and_old_ones_read_under_todays_names():
    from l2r_lib.summaries import Summary, upgrade

    # an older l2r's done.json: first-sample "mistakes", a share of questions called keep_share
    exam = upgrade("01_mistake_analysis", {"questions": 140, "accuracy": 19 / 140, "mistakes": 121,
                                           "mistaken_questions": 140, "tokens_per_s": 12.34, "seconds": 1234.5})
    assert exam["first_sample_wrong"] == 121 and "mistakes" not in exam and exam["accuracy"] == 19 / 140
    assert repr(exam) == ("{'questions': 140, 'accuracy': 0.136, 'first_sample_wrong': 121, "
                          "'mistaken_questions': 140, 'tokens_per_s': 12.3, 'seconds': 1234.5}")
    assert json.loads(json.dumps(exam))["accuracy"] == 19 / 140  # what is saved keeps full precision
    teacher = upgrade("02_teacher_prompting", {"questions": 100, "records": 200, "kept_records": 179,
                                               "questions_kept": 100, "keep_share": 1.0})
    assert teacher["keep_share"] == 179 / 200 and teacher["questions_kept_share"] == 1.0
    assert upgrade("04_evaluation", {"accuracy": 0.5, "mistakes": 8})["wrong"] == 8
    assert upgrade("02_teacher_prompting", dict(teacher)) == teacher  # today's summary reads as it is
    assert "0.000123" in repr(Summary(d_pos_first=0.000123456))


def test_keep_share_is_kept_records_over_records():
    from l2r_lib.records import TeacherRecord
    from l2r_lib.teacher.data import keep_stats

    fields = {f: None for f in TeacherRecord.__dataclass_fields__}
    records = [TeacherRecord(**fields | {"id": f"q{i // 2}", "kept": i % 4 != 3}) for i in range(8)]  # 6 of 8 kept
    stats = keep_stats(records)
    assert stats["records"] == 8 and stats["kept_records"] == 6 and stats["keep_share"] == 0.75
    assert stats["questions"] == stats["questions_kept"] == 4 and stats["questions_kept_share"] == 1.0


def test_round_0_tests_the_untrained_student_alone_and_tabulates_as_round_0(tmp_path):
    from l2r_lib.report import tables

    rnd = stages.open_round(TINY, "tailored", "synthetic", 0, tmp_path / "run")
    assert rnd.stages == ("04_evaluation",)
    summary = stages.evaluation(rnd)  # no adapter, no teacher, no training: nothing to require
    assert summary["questions"] == 16 and not (rnd.dir / "adapter").exists()
    metrics = json.loads((rnd.dir / "metrics.json").read_text())
    assert metrics["round"] == 0 and metrics["accuracy"] == summary["accuracy"] and metrics["teacher_requests"] == 0
    assert views.fixed_and_broken(rnd) == ([], [])
    assert "untrained student" in views.evaluation_settings(rnd) and "round 0" in views.changes(rnd)
    collected = tables.collect_metrics(rnd.run_dir)
    assert list(tables.by_round_table(collected).columns) == ["round 0"]
    assert tables.teacher_table(collected).empty  # round 0 asks no teacher
