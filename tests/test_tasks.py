import json

import pytest

import re

from l2r_lib.tasks import get_task, load_examples, read_jsonl, task_slug

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


# --- the user's own data ------------------------------------------------------------------------

def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_gold_that_cannot_be_read_is_an_error_naming_the_example(tmp_path):
    path = _write(tmp_path / "half.jsonl", [{"question": "Half of 1?", "answer": "1/2"}] * 5)
    assert load_examples(f"jsonl:{path}", "train")[0].answer == "0.5"  # a fraction, never "1"
    path = _write(tmp_path / "mine.jsonl", [{"question": "Half of 1?", "answer": "1/2"}] * 4
                  + [{"question": "Which?", "answer": "A"}])
    with pytest.raises(ValueError, match=r"mine\.jsonl:5: gold answer 'A' is not a number answer.*add `:choice`"):
        load_examples(f"jsonl:{path}", "train")


def test_options_are_rendered_like_the_built_in_choice_tasks(tmp_path, data_dir):
    rows = [{"question": f"Where do plates go {i}?", "answer": "cupboard" if i % 2 else "b",
             "options": ["table", "cupboard", "oven"] if i % 3 else {"A": "table", "B": "cupboard", "c": "oven"}}
            for i in range(10)]
    path = _write(tmp_path / "plates.jsonl", rows)
    train = load_examples(f"jsonl:{path}:choice", "train")
    assert {e.answer for e in train} == {"B"}
    assert train[0].question == "Where do plates go 0? Answer Choices: (A) table (B) cupboard (C) oven"
    inline = _write(tmp_path / "inline.jsonl", [{"question": "Where? Answer Choices: (A) table (B) cupboard",
                                                  "answer": "cupboard", "split": s} for s in ("train", "test")])
    assert load_examples(f"jsonl:{inline}:choice", "test")[0].answer == "B"
    builtin = load_examples("csqa", "test", data_dir)[0].question
    assert re.search(r"\? Answer Choices: \(A\) \S+", builtin)  # the same form


@pytest.mark.parametrize("rows,needle", [
    ([{"question": "q", "answer": "cupboard"}], r"mine\.jsonl:1: gold answer 'cupboard' is not a choice answer; give the option"),
    ([{"question": "q", "answer": "D", "options": ["x", "y"]}], r"mine\.jsonl:1: .*expected one of the letters A, B"),
    ([{"question": "q", "answer": 1, "options": "x y"}], r"mine\.jsonl:1: `options` must be a list"),
])
def test_bad_choice_rows(tmp_path, rows, needle):
    path = _write(tmp_path / "mine.jsonl", rows)
    with pytest.raises(ValueError, match=needle):
        load_examples(f"jsonl:{path}:choice", "train")


def test_options_on_a_number_task_say_add_choice(tmp_path):
    path = _write(tmp_path / "mine.jsonl", [{"question": "q", "answer": "A", "options": ["x", "y"]}])
    with pytest.raises(ValueError, match=r"mine\.jsonl:1: .*add `:choice`"):
        load_examples(f"jsonl:{path}", "train")


def test_split_values_are_mapped_any_case(tmp_path):
    splits = ["train", "Train", "TEST", "dev", "validation", "Val"]
    path = _write(tmp_path / "mine.jsonl", [{"question": f"{i}?", "answer": i, "split": s} for i, s in enumerate(splits)])
    assert [e.answer for e in load_examples(f"jsonl:{path}", "train")] == ["0", "1"]
    assert [e.answer for e in load_examples(f"jsonl:{path}", "test")] == ["2", "3", "4", "5"]


@pytest.mark.parametrize("rows,split,needle", [
    ([{"question": "a", "answer": 1, "split": "train"}, {"question": "b", "answer": 2, "split": "holdout"}], "train",
     r"mine\.jsonl:2: split 'holdout' is not one of .*split values in .*\['holdout', 'train'\]"),
    ([{"question": "a", "answer": 1, "id": "x"}, {"question": "b", "answer": 2, "id": "x"}], "train",
     r"mine\.jsonl:2: id 'x' is also the id of line 1"),
    ([{"question": "a", "answer": 1, "split": "train"}], "test", r"mine\.jsonl: no 'test' examples \(split values found: \['train'\]\)"),
    ([], "train", r"mine\.jsonl: no examples"),
])
def test_user_data_errors_name_the_place_and_the_fix(tmp_path, rows, split, needle):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=needle):
        load_examples(f"jsonl:{path}", split)


def test_json_array_file_and_home_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    rows = [{"question": f"Is {i} even?", "answer": i % 2 == 0, "split": "train" if i < 3 else "test"} for i in range(5)]
    (tmp_path / "even.json").write_text(json.dumps(rows, indent=2))
    train = load_examples("jsonl:~/even.json:yesno", "train")
    assert [e.answer for e in train] == ["yes", "no", "yes"]
    assert train[1].id == "even-7"  # the line its object starts on
    (tmp_path / "bad.json").write_text('[\n {"question": "q", "answer": 1},\n {"question": "q" "answer": 2}\n]')
    with pytest.raises(ValueError, match=r"bad\.json:3: malformed JSON"):
        load_examples("jsonl:~/bad.json", "train")


@pytest.mark.parametrize("name,needle", [
    ("jsonl:", "names no file; write jsonl:PATH"),
    ("jsonl:aqua.jsonl:mc", "unknown answer kind 'mc'.*jsonl:aqua.jsonl:choice"),
])
def test_task_name_errors(name, needle):
    with pytest.raises(ValueError, match=needle):
        get_task(name)


def test_task_slug_has_no_folders():
    assert task_slug("jsonl:/data/v1:x/aqua.jsonl:choice") == "jsonl-aqua-choice"
    assert task_slug("jsonl:~/my data.json") == "jsonl-my-data"
    assert task_slug("multiarith") == "multiarith"


def test_cli_tasks_shows_the_sizes_of_a_user_file(tmp_path, capsys):
    from l2r_lib.cli import main

    path = _write(tmp_path / "mine.jsonl", [{"question": f"{i} + 1?", "answer": i + 1} for i in range(10)])
    main(["tasks", "--task", f"jsonl:{path}"])
    out = capsys.readouterr().out
    assert re.search(rf"jsonl:{re.escape(str(path))}\s+number\s+8\s+2", out), out
    with pytest.raises(SystemExit):
        main(["tasks", "--task", f"jsonl:{tmp_path / 'missing.jsonl'}"])
    assert "missing.jsonl" in capsys.readouterr().err


def test_cli_exam_out_names_are_flat(tmp_path):
    from l2r_lib.cli import main

    path = _write(tmp_path / "mine.jsonl", [{"question": f"{i} + 1?", "answer": i + 1} for i in range(10)])
    main(["exam", "--task", f"jsonl:{path}:number", "--student", "tiny", "--limit", "2", "--max-new-tokens", "2",
          "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["exam-jsonl-mine-number-test.jsonl",
                                                                    "exam-jsonl-mine-number-test.summary.json"]
