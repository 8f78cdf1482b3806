"""The four notebooks tell their step of the method on a tiny run: when ``l2r run`` executes them (the
stages run now), under papermill on a finished round (the stages cached), and as JupyterLab runs
them (no papermill, the parameters cell's defaults)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from l2r_lib.rounds import NOTEBOOKS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# Not the defaults, so that the notebooks can only print them by reading this run's config.
SETTINGS = {"train.reflection_weight": 0.3, "train.margin": 0.7}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """params/tiny.yaml with a tailored and a std-cot arm, run by ``l2r run`` into <tmp>/results/tiny."""
    run_dir = tmp_path_factory.mktemp("notebooks") / "results" / "tiny"
    sets = [f"--set={k}={v}" for k, v in {**SETTINGS, "methods": "[tailored, std-cot]"}.items()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "l2r_lib.cli", "run", str(REPO / "params" / "tiny.yaml"),
                           "--out", str(run_dir), *sets], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir.parent / "l2r-run.log").write_text(done.stdout + done.stderr)  # beside the run: what the user saw
    return run_dir


def text_of(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def story(nb) -> dict[str, str]:
    """Every code cell's output text by its source; fails on an error output or a silent worked example."""
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) <= 15
    examples = [c for c in code if "worked-example" in c.metadata.get("tags", [])]
    assert examples and all(text_of(c).strip() for c in examples), [c.source for c in examples]
    return {c.source: text_of(c) for c in code}


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def executed(run_dir: Path, method: str, k: int, name: str):
    return nbformat.read(run_dir / method / "synthetic" / f"round-{k}" / f"{name}.ipynb", as_version=4)


def example(out: dict[str, str], call: str) -> str:
    return next(text for source, text in out.items() if call in source)


def test_the_notebooks_of_a_run_tell_each_step_with_this_runs_values(tiny):
    mistake = story(executed(tiny, "tailored", 2, "01_mistake_analysis"))
    assert "error type:" in example(mistake, "views.a_mistake") and "k = 2 samples" in example(mistake, "exam_settings")

    asked = example(story(executed(tiny, "tailored", 2, "02_teacher_prompting")), "views.teacher_exchange")
    assert "feedback prompt" in asked and "Student's reasoning:" in asked and "the teacher's answer" in asked
    assert re.search(r"-> (kept|dropped)", asked)
    assert "rationale prompt" in example(story(executed(tiny, "tailored", 1, "02_teacher_prompting")), "teacher_exchange")

    trained = executed(tiny, "tailored", 2, "03_round_training")
    out = story(trained)
    objective = example(out, "views.objective")
    assert "λ = train.reflection_weight = 0.3" in objective and "m = train.margin = 0.7" in objective
    triplet = example(out, "views.triplet_example")
    for shown in ("anchor a", "positive p", "negative n", "before: round 1's adapter", "after: round 2's adapter"):
        assert shown in triplet
    assert images(trained) == 2  # the losses, and the distances in training

    examined = story(executed(tiny, "tailored", 2, "04_evaluation"))
    assert "since round 1: fixed" in example(examined, "views.changes")
    accuracy = example(examined, "views.accuracies")
    assert "test accuracy after round 1 = " in accuracy and "test accuracy after round 2 = " in accuracy
    assert "since round 0: fixed" in example(story(executed(tiny, "tailored", 1, "04_evaluation")), "views.changes")
    baseline = story(executed(tiny, "tailored", 0, "04_evaluation"))
    assert "the untrained student" in example(baseline, "views.evaluation_settings")
    assert "test accuracy of the untrained student (round 0) = " in example(baseline, "views.accuracies")


def test_a_method_without_exam_or_triplets_says_so_in_one_line(tiny):
    assert "takes no exam" in example(story(executed(tiny, "std-cot", 1, "01_mistake_analysis")), "views.a_mistake")
    trained = story(executed(tiny, "std-cot", 1, "03_round_training"))
    assert "trains no triplet loss" in example(trained, "views.triplet_example")
    assert "no triplet row" in example(trained, "views.plot_distances")
    assert "L = L_MLE(w): std-cot trains no triplet loss" in example(trained, "views.objective")


def test_papermill_on_a_finished_round_says_each_stage_returns_its_saved_summary(tiny, tmp_path):
    """By hand, as the README says: the round's folder is printed relative to the working folder, never the machine's."""
    import papermill as pm

    shown = os.path.relpath(tiny / "tailored" / "synthetic" / "round-2", tmp_path)
    for name in NOTEBOOKS:
        nb = pm.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
                                 parameters={"params": str(tiny / "config.yaml"), "run_dir": str(tiny),
                                             "method": "tailored", "task": "synthetic", "round_idx": 2},
                                 kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
        out = "".join(story(nb).values())
        assert f"{name} of tailored/synthetic/round-2 has run: its saved summary" in out
        assert f"tailored / synthetic / round 2 -> {shown}\n" in out and str(tmp_path.parent.parent) not in out


def test_l2r_run_prints_no_kernel_warning(tiny):
    """The kernels ``l2r run`` starts use IPC, so ipykernel has no unencrypted-TCP warning to print for each."""
    log = (tiny.parent / "l2r-run.log").read_text()
    assert "[l2r] tailored / synthetic / round 1: 01_mistake_analysis" in log
    assert "without encryption" not in log and "IPKernelApp" not in log, log[:2000]


def test_stage_summaries_are_shown_rounded_and_name_what_they_count(tiny):
    """The summaries the notebooks display: counts under names that say what they count, numbers rounded
    (three significant digits); the saved done.json keeps full precision."""
    import json

    from l2r_lib.summaries import shown as rounded

    def shown(name: str, call: str) -> str:  # the value the cell displays (not the progress it prints)
        cell = next(c for c in executed(tiny, "tailored", 2, name).cells if c.cell_type == "code" and call in c.source)
        text = "".join(o.data["text/plain"] for o in cell.outputs if o.output_type == "execute_result")
        numbers = [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", text)]
        assert numbers and all(x == rounded(x) for x in numbers), text  # 0.136, not 0.1357142857142857
        return text

    def saved(name: str) -> dict:
        return json.loads((tiny / "tailored" / "synthetic" / "round-2" / f"{name}.done.json").read_text())

    exam = shown("01_mistake_analysis", "stages.mistake_analysis(rnd)")
    assert "'first_sample_wrong'" in exam and "'mistaken_questions'" in exam and "'mistakes'" not in exam
    s = saved("01_mistake_analysis")
    assert s["first_sample_wrong"] == round(s["questions"] * (1 - s["accuracy"]))
    assert s["first_sample_wrong"] <= s["mistaken_questions"] <= s["questions"]
    assert "'keep_share'" in shown("02_teacher_prompting", "stages.teacher_prompting(rnd)")
    s = saved("02_teacher_prompting")
    assert s["keep_share"] == s["kept_records"] / s["records"]
    assert s["questions_kept_share"] == s["questions_kept"] / s["questions"]
    assert "'d_pos_first'" in shown("03_round_training", "stages.round_training(rnd)")
    assert "wrong" in saved("04_evaluation")


def test_jupyterlab_style_with_the_default_parameters(tiny, monkeypatch):
    """No papermill injection. The one change to each notebook: the parameters cell's defaults name the
    default study (SmolLM2 on MultiArith, minutes a stage), so its ``params`` and ``task`` lines point
    at the tiny run instead; ``run_dir`` stays None and ``$L2R_RESULTS`` leads it to the run."""
    from nbclient import NotebookClient

    monkeypatch.setenv("L2R_RESULTS", str(tiny.parent))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        source = re.sub(r"^params = .*$", f"params = {str(tiny / 'config.yaml')!r}", cell.source, flags=re.M)
        cell.source = re.sub(r"^task = .*$", 'task = "synthetic"', source, flags=re.M)
        assert cell.source.count("\n") == nbformat.read(REPO / "notebooks" / f"{name}.ipynb", 4).cells[
            nb.cells.index(cell)].source.count("\n")  # two lines replaced, nothing added
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
        out = story(nb)
        assert "tailored / synthetic / round 1" in "".join(out.values())


def test_the_triplet_distances_shown_are_those_training_computes(tiny):
    """``views.triplet_distances`` (one plain forward a view) equals the trainer's way to the same numbers:
    the anchor's prompt cache continued by the positive and the negative, for every representation."""
    import torch

    from l2r_lib import rounds
    from l2r_lib.report import views
    from l2r_lib.config import load_config
    from l2r_lib.training.losses import REPRESENTATIONS, cosine_distance
    from l2r_lib.training.batches import ReflectionCollator
    from l2r_lib.student import output_cache
    from l2r_lib.training.trainer import continuation_hidden, prompt_cache

    rnd = rounds.Round(load_config(tiny / "config.yaml"), tiny, "tailored", "synthetic", 2)
    model, tokenizer = rnd.student(rnd.dir / "adapter")
    row = views.first_triplet_row(rnd, tokenizer)
    batch = ReflectionCollator(tokenizer.pad_token_id)([row])
    P = batch["prompt_attention_mask"].size(1)
    view_rows = batch["triplet_rows"].repeat(2)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], use_cache=True, output_hidden_states=True)
        hidden = continuation_hidden(model, prompt_cache(output_cache(out), P, view_rows), batch["prompt_attention_mask"][view_rows],
                                     batch["cont_input_ids"], batch["cont_attention_mask"])
    for name, represent in REPRESENTATIONS.items():
        anchor = represent(out.hidden_states[-1], batch["anchor_span"])
        positive, negative = represent(hidden, batch["cont_attention_mask"]).chunk(2)
        expected = (float(cosine_distance(anchor, positive)), float(cosine_distance(anchor, negative)))
        assert views.triplet_distances(model, row, name) == pytest.approx(expected, abs=1e-4), name


def test_without_the_adapters_the_triplet_example_says_so(tiny, tmp_path):
    """A clone of committed results has no adapters: notebook 03's example says so instead of failing."""
    import shutil

    from l2r_lib import rounds
    from l2r_lib.report import views
    from l2r_lib.config import load_config

    clone = tmp_path / "tiny"
    shutil.copytree(tiny, clone, ignore=shutil.ignore_patterns("adapter", "checkpoints"))
    rnd = rounds.Round(load_config(clone / "config.yaml"), clone, "tailored", "synthetic", 2)
    assert views.triplet_example(rnd) == ("round-1's adapter is not here (adapters are not committed; `l2r run` "
                                          "trains it again from the saved data): no distances to show.")
