import json

import pytest

from l2r_lib.tasks import get_task, load_examples, read_jsonl

SIZES = {"gsm8k": (7473, 1319), "multiarith": (420, 180), "svamp": (700, 300),
         "csqa": (9741, 1221), "strategyqa": (1603, 687), "synthetic": (400, 100)}


@pytest.mark.parametrize("task", sorted(SIZES))
def test_standard_split_sizes(data_dir, task):
    train, test = load_examples(task, "train", data_dir), load_examples(task, "test", data_dir)
    assert (len(train), len(test)) == SIZES[task]
    assert not {e.id for e in train} & {e.id for e in test}, "train and test overlap"
    assert all(e.question and e.answer for e in train + test)


def test_gold_answers_pass_the_checker(data_dir):
    for task in SIZES:
        spec = get_task(task)
        for ex in load_examples(task, "test", data_dir)[:50]:
            assert spec.check(ex.answer, ex.answer), (task, ex)


def test_gold_rationales_where_the_data_has_them(data_dir):
    gsm = load_examples("gsm8k", "train", data_dir)[0]
    assert gsm.answer == "72" and "<<" not in gsm.rationale and "####" not in gsm.rationale
    ma = load_examples("multiarith", "train", data_dir)[0]
    assert ma.rationale == "32 + 42 = 74. 74 - 35 = 39." and ma.answer == "39"  # one step per operation
    sq = load_examples("strategyqa", "test", data_dir)[0]
    assert sq.answer in ("yes", "no") and sq.rationale and not sq.rationale.lower().startswith(("yes", "no"))
    cs = load_examples("csqa", "test", data_dir)[0]
    assert "Answer Choices: (A)" in cs.question and cs.answer in "ABCDE"


def test_synthetic_rationales_are_true_and_reproducible():
    import re

    a, b = load_examples("synthetic", "train"), load_examples("synthetic", "train")
    assert a == b
    for ex in a:
        claims = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", ex.rationale)
        assert claims, ex.rationale
        for x, op, y, z in claims:
            assert eval(f"{x} {op} {y}") == int(z), ex.rationale
        assert claims[-1][3] == ex.answer, ex


def test_unknown_task_suggests_a_name():
    with pytest.raises(KeyError, match="Did you mean 'svamp'"):
        get_task("svam")


def test_missing_data_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_examples("multiarith", "test", tmp_path / "does-not-exist")


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"question": "1+1?", "answer": 2}\n{"question": oops}\n')
    with pytest.raises(ValueError, match=r"mine\.jsonl:2: malformed JSON"):
        read_jsonl(path)


def test_user_jsonl_task(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"question": f"{i} + 1?", "answer": i + 1, "rationale": f"{i} + 1 = {i + 1}."} for i in range(10)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    train, test = load_examples(f"jsonl:{path}", "train"), load_examples(f"jsonl:{path}", "test")
    assert len(train) == 8 and len(test) == 2 and test[0].answer == "5"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: missing key"):
        load_examples(f"jsonl:{bad}", "train")
