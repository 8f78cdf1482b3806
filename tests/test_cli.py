import errno
import os
import subprocess
import sys
from pathlib import Path

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


def _one_error_line(res) -> str:
    lines = [l for l in res.stderr.splitlines() if l.startswith("l2r: error")]
    assert res.returncode != 0 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    return lines[0]


def _params(tmp_path, text: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return str(path)


TINY = "name: t\ntasks: [synthetic]\nmethods: [std-cot]\nrounds: 1\nstudent: {name: tiny}\nteacher: {kind: reference}\n"


def test_a_missing_data_dir_fails_every_subcommand(tmp_path):
    for args in (["tasks"], ["tables", "--results", str(tmp_path)], ["run", _params(tmp_path, TINY)]):
        line = _one_error_line(run("--data-dir", "/no/such/dir", *args))
        assert "/no/such/dir" in line, args
    env = {**os.environ, "L2R_DATA_DIR": "/no/such/env/dir"}
    assert "/no/such/env/dir" in _one_error_line(run("tasks", env=env))


def test_a_split_with_no_questions_is_an_error_not_zero_of_zero(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(f'{{"question": "q{i}", "answer": {i}, "split": "train"}}\n' for i in range(3)))
    line = _one_error_line(run("exam", "--task", f"jsonl:{path}", "--student", "tiny"))
    assert "mine.jsonl" in line and "no 'test' examples" in line
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    params = _params(tmp_path, TINY.replace("[synthetic]", f"['jsonl:{empty}']"))
    line = _one_error_line(run("run", params, "--out", str(tmp_path / "out")))
    assert "empty.jsonl" in line and "no examples" in line


def test_missing_data_stops_a_run_before_any_stage_unless_it_may_fall_back(tmp_path):
    """A jsonl task whose file is missing, or a data folder without the task: one line naming the task,
    the path tried and the fix, and no run folder; ``--fallback`` (make reproduce) runs synthetic."""
    missing = tmp_path / "missing.jsonl"
    line = _one_error_line(run("run", _params(tmp_path, TINY.replace("[synthetic]", f"['jsonl:{missing}']")),
                               "--out", str(tmp_path / "out")))
    assert "jsonl:" in line and "missing.jsonl" in line and "check the path" in line and "L2R_DATA_DIR" not in line
    (tmp_path / "data").mkdir()
    line = _one_error_line(run("--data-dir", str(tmp_path / "data"), "run", _params(tmp_path, TINY.replace("[synthetic]", "[gsm8k]")),
                               "--out", str(tmp_path / "out")))
    assert "'gsm8k'" in line and str(tmp_path / "data") in line and "L2R_DATA_DIR" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,needle", [
    ("name: t\ntrain: {lr: [1\n", "p.yaml:3:1: YAML syntax error"),
    ("teacher: {max_concurrency: 0}\n", "p.yaml: teacher.max_concurrency = 0: must be > 0"),
    ("train: {lr: fast}\n", "train.lr = 'fast': expected a number"),
    (TINY.replace("name: tiny", "name: ./no/such/student"), "./no/such/student"),
])
def test_bad_params_are_one_line(tmp_path, text, needle):
    assert needle in _one_error_line(run("run", _params(tmp_path, text), "--out", str(tmp_path / "out")))


def test_an_unknown_hub_student_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    _one_error_line(run("exam", "--task", "synthetic", "--student", "no-such-org/no-such-model-l2r", env=env))


def test_a_read_only_output_folder_is_one_line(tmp_path):
    target = Path("/sys/l2r-run-test")
    try:
        target.mkdir()
    except OSError:
        pass
    else:
        target.rmdir()
        pytest.skip("/sys is writable here: no read-only folder to try")
    line = _one_error_line(run("run", _params(tmp_path, TINY), "--out", str(target)))
    assert f"cannot write {target}" in line


def test_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys, data_dir):
    from l2r_lib.run import runner

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.ipynb"))

    monkeypatch.setattr(runner, "run_pipeline", full)
    with pytest.raises(SystemExit) as exit_:
        main(["--data-dir", str(data_dir), "run", _params(tmp_path, TINY), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and "\n" not in err
    assert err == f"l2r: error: cannot write {tmp_path / 'out' / 'x.ipynb'}: No space left on device; use another --out, or free space"


def test_debug_shows_the_traceback(tmp_path):
    res = run("--debug", "--data-dir", "/no/such/dir", "tasks")
    assert res.returncode != 0 and "Traceback" in res.stderr and "FileNotFoundError" in res.stderr
    res = run("--data-dir", "/no/such/dir", "tasks", env={**os.environ, "L2R_DEBUG": "1"})
    assert "Traceback" in res.stderr


def test_an_error_message_never_shows_the_key(tmp_path, monkeypatch, capsys):
    from l2r_lib import cli

    monkeypatch.setenv("OPENAI_API_KEY", "my-very-secret-value-123")

    def leaky(args):
        raise RuntimeError("endpoint said: bad key my-very-secret-value-123 (and sk-abcdefghijklmnop)")

    monkeypatch.setattr(cli, "cmd_tasks", leaky)
    with pytest.raises(SystemExit):
        main(["tasks"])
    err = capsys.readouterr().err
    assert "my-very-secret" not in err and "sk-abcdefghijklmnop" not in err and err.count("[REDACTED]") == 2


def test_fallback_params_are_written_only_under_the_runs_lock(tmp_path):
    """--fallback on a run folder another process writes: refused in one line, nothing written into it."""
    from l2r_lib.run import lock as run_lock

    out = tmp_path / "out"
    run_lock.hold(out)  # this process plays the other run
    try:
        params = _params(tmp_path, TINY.replace("[synthetic]", f"['jsonl:{tmp_path / 'missing.jsonl'}']"))
        line = _one_error_line(run("run", params, "--fallback", "--out", str(out)))
    finally:
        run_lock.release(out)
    assert f"pid {os.getpid()}" in line and sorted(p.name for p in out.iterdir()) == ["run.lock"]
