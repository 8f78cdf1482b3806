"""The command line as a user types it: global options anywhere, defaults in help, a trained adapter's exam."""

import argparse
import os
import subprocess
import sys

import pytest

from l2r_lib.cli import build_parser


def parse(*argv):
    return build_parser().parse_args(list(argv), namespace=argparse.Namespace(data_dir=None, debug=False))


def test_global_options_before_or_after_the_subcommand():
    assert parse("--data-dir", "/a", "tasks").data_dir == "/a"
    assert parse("tasks", "--data-dir", "/b").data_dir == "/b"
    assert parse("exam", "--task", "svamp", "--data-dir", "/c").data_dir == "/c"
    assert parse("--data-dir", "/d", "exam").data_dir == "/d"  # the subcommand does not reset it
    assert parse("tables").data_dir is None


def test_help_shows_defaults():
    env = {**os.environ, "COLUMNS": "200"}  # one option a line
    text = subprocess.run([sys.executable, "-m", "l2r_lib.cli", "exam", "--help"], capture_output=True, text=True, env=env).stdout
    assert "(default: 160)" in text and "(default: multiarith)" in text and "--adapter" in text


@pytest.mark.slow
def test_exam_of_a_trained_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    from l2r_lib.student import load_student

    model, tokenizer = load_student("tiny")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # not a no-op
    get_peft_model(model, lora).save_pretrained(tmp_path / "adapter")

    def exam(*extra):
        res = subprocess.run([sys.executable, "-m", "l2r_lib.cli", "exam", "--task", "synthetic", "--student", "tiny",
                              "--limit", "6", "--max-new-tokens", "6", "--out", str(tmp_path / extra[-1]), *extra[:-1]],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        return (tmp_path / extra[-1] / "exam-synthetic-test.jsonl").read_text()

    assert exam("--adapter", str(tmp_path / "adapter"), "tuned") != exam("base")
    res = subprocess.run([sys.executable, "-m", "l2r_lib.cli", "exam", "--task", "synthetic", "--student", "tiny",
                          "--adapter", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "l2r: error" in res.stderr and str(tmp_path / "none") in res.stderr
