"""The Colab door: a plain install from a git URL works from an empty folder, with results there."""

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from conftest import REPO
from l2r_lib import paths


def test_repository_url_and_distribution_name_live_in_one_place():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == paths.DISTRIBUTION and project["urls"]["Repository"] == paths.REPO_URL
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        install = [c for c in json.loads(nb.read_text())["cells"] if "pip install" in "".join(c["source"])]
        assert len(install) == 1, nb
        assert f'"{paths.DISTRIBUTION} @ git+{paths.REPO_URL}"' in "".join(install[0]["source"]), nb
    readme = (REPO / "README.md").read_text()
    repos = set(re.findall(r"(?:github\.com|colab\.research\.google\.com/github)/([\w.-]+/[\w.-]+?)(?:\.git)?(?=[/\s)\"`])", readme))
    assert repos == {paths.REPO_URL.removeprefix("https://github.com/")}, repos  # badges and install lines alike
    assert f"{paths.DISTRIBUTION} @ git+{paths.REPO_URL}" in readme


def test_shipped_params_resolve_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from any folder
    assert paths.resolve_params("default") == paths.params_dir() / "default.yaml"
    assert paths.resolve_params("colab/gsm8k") == paths.params_dir() / "colab" / "gsm8k.yaml"
    assert paths.resolve_params("params/tiny.yaml") == paths.params_dir() / "tiny.yaml"
    with pytest.raises(FileNotFoundError, match="shipped: .*default"):
        paths.resolve_params("nonesuch")
    monkeypatch.setenv(paths.RESULTS_ENV, str(tmp_path / "elsewhere"))
    assert paths.results_dir() == tmp_path / "elsewhere"


@pytest.mark.slow
def test_colab_user_installs_from_git_and_runs_in_an_empty_folder(tmp_path):
    """A fresh venv, `pip install <dist> @ git+file://<repo>`, an empty working folder: `l2r run tiny`
    and notebook 01 under papermill write their results there, none into site-packages."""
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("the repository has no commit to install from")
    env = {k: v for k, v in os.environ.items() if k not in (paths.RESULTS_ENV, "PYTHONPATH")}  # nothing of this checkout
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--upgrade-deps", str(venv)], check=True)  # a current pip, as on Colab
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies (torch, transformers, ...) come from this environment instead of a second
    # multi-GB download; l2r itself is a real, non-editable install from the git URL.
    (site / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", f"{paths.DISTRIBUTION} @ git+file://{REPO}"],
                             capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stderr[-2000:]
    shipped = sorted(p.relative_to(site / "l2r_lib" / "params") for p in (site / "l2r_lib" / "params").rglob("*.yaml"))
    assert shipped == sorted(p.relative_to(REPO / "params") for p in (REPO / "params").rglob("*.yaml"))  # every params set
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([py, "-c", "import l2r_lib.paths as p; print(p.PACKAGE_DIR, p.in_checkout())"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.split() == [str(site / "l2r_lib"), "False"], where.stderr[-2000:]  # the installed copy

    run = subprocess.run([venv / "bin" / "l2r", "run", "tiny"], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "results" / "tiny" / "tables" / "accuracy.md").is_file()
    assert (work / "results" / "tiny" / "tailored" / "synthetic" / "round-2" / "04_evaluation.ipynb").is_file()
    assert not (site / "results").exists() and not (site / "l2r_lib" / "results").exists()

    copied = subprocess.run([venv / "bin" / "l2r", "notebooks", "nb"], cwd=work, env=env, capture_output=True, text=True)
    assert copied.returncode == 0, copied.stderr
    assert sorted(p.name for p in (work / "nb").glob("*.ipynb"))[0] == "01_mistake_analysis.ipynb"
    nb = subprocess.run([py, "-m", "papermill", "nb/01_mistake_analysis.ipynb", "nb/01_out.ipynb",
                         "-p", "params", "tiny", "-p", "method", "std-cot", "-p", "task", "synthetic",
                         "-p", "round_idx", "1", "--cwd", "nb"], cwd=work, env=env, capture_output=True, text=True)
    assert nb.returncode == 0, nb.stderr[-3000:]
    assert (work / "nb" / "01_out.ipynb").is_file()
    assert (work / "results" / "tiny" / "std-cot" / "synthetic" / "round-1" / "01_mistake_analysis.done.json").is_file()
