import subprocess
import sys

import pytest

from l2r_lib.cli import main


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "l2r_lib.cli", *args], capture_output=True, text=True, env=env)


def test_tasks_lists_split_sizes(data_dir, capsys):
    main(["--data-dir", str(data_dir), "tasks"])
    out = capsys.readouterr().out
    assert "multiarith" in out and " 420    180" in out and " 7473   1319" in out


@pytest.mark.parametrize("args,needle", [
    (["exam", "--task", "gsm9k"], "unknown task 'gsm9k'"),
    (["--data-dir", "/no/such/dir", "exam", "--task", "multiarith"], "/no/such/dir"),
    (["exam", "--task", "synthetic", "--student", "./no/such/model"], "./no/such/model"),
])
def test_bad_input_is_one_line_naming_the_place(args, needle):
    res = run(*args)
    assert res.returncode == 2
    lines = [l for l in res.stderr.strip().splitlines() if l.startswith("l2r: error")]
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_malformed_user_data_names_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"question": "q", "answer": 1}\n{broken\n')
    res = run("exam", "--task", f"jsonl:{path}", "--student", "tiny")
    assert res.returncode == 2 and "mine.jsonl:2" in res.stderr


def test_exam_on_tiny_student(tmp_path):
    res = run("exam", "--task", "synthetic", "--student", "tiny", "--limit", "4",
              "--max-new-tokens", "4", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "synthetic test: accuracy" in res.stdout and "tokens/s" in res.stdout
    assert (tmp_path / "exam-synthetic-test.jsonl").read_text().count("\n") == 4


def test_fallback_params_use_the_synthetic_task_with_a_teacher_that_covers_it(tmp_path):
    from l2r_lib.cli import _with_fallback_task
    from l2r_lib.config import load_config

    from conftest import REPO

    params = REPO / "params" / "default.yaml"
    path = _with_fallback_task(str(params), load_config(params), ["multiarith"], tmp_path)
    cfg = load_config(path)
    assert cfg.tasks == ["synthetic"] and cfg.name == "default-synthetic"
    assert "replay" not in (cfg.teacher.kind, cfg.teacher.feedback_kind)  # no recording exists for synthetic
