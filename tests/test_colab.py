"""The Colab door: a plain install from a git URL works from an empty folder, with results there."""

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import types
from pathlib import Path

import pytest

from conftest import REPO
from l2r_lib import colab, paths

# google-colab's Requires-Dist: what Colab's runtime pins for itself (googlecolab/colabtools setup.py, 2026-04)
COLAB_PINS = ["google-auth==2.47.0", "ipykernel==6.17.1", "ipyparallel==8.8.0", "ipython==7.34.0", "pandas==2.2.2",
              "jupyter-server==2.14.0", "portpicker==1.5.2", "requests==2.32.4", "tornado==6.5.1"]
COLAB_WIDGETS = "ipywidgets==7.7.1"  # in Colab's image: its page renders ipywidgets 7 only


def test_repository_url_and_distribution_name_live_in_one_place():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == paths.DISTRIBUTION and project["urls"]["Repository"] == paths.REPO_URL
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        install = [c for c in json.loads(nb.read_text())["cells"] if "pip install" in "".join(c["source"])]
        assert len(install) == 1, nb
        assert f'"{paths.DISTRIBUTION} @ git+{paths.REPO_URL}"' in "".join(install[0]["source"]), nb
        assert "--no-deps" in "".join(install[0]["source"]) and "colab.install()" in "".join(install[0]["source"]), nb
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


def _fake_colab(raises):
    """google.colab with its userdata as Colab has it: get() and its three exceptions."""
    userdata = types.SimpleNamespace(**{e: type(e, (Exception,), {}) for e in
                                        ("SecretNotFoundError", "NotebookAccessError", "TimeoutException")})

    def get(key):
        if raises:
            raise getattr(userdata, raises)(key)
        return "sk-test"

    userdata.get = get
    return types.SimpleNamespace(userdata=userdata)


def test_colab_secret_missing_or_refused_is_one_line_each(monkeypatch, capsys):
    lines = set()
    for raises in ("SecretNotFoundError", "NotebookAccessError", "TimeoutException"):
        monkeypatch.setitem(sys.modules, "google.colab", _fake_colab(raises))
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        colab.load_secret("OPENAI_API_KEY")  # no exception, so no traceback
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and "OPENAI_API_KEY" in out and "OPENAI_API_KEY" not in os.environ, out
        lines.add(out)
    assert len(lines) == 3  # each says which of the three it was
    monkeypatch.setitem(sys.modules, "google.colab", _fake_colab(None))
    colab.load_secret("OPENAI_API_KEY")
    assert os.environ["OPENAI_API_KEY"] == "sk-test" and capsys.readouterr().out == ""


def test_colab_install_says_in_one_line_when_a_loaded_package_changed(monkeypatch, capsys):
    import yaml  # noqa: F401  loaded here; PyYAML's
    versions = iter([{"pyyaml": "6.0", "gguf": "0.10"}, {"pyyaml": "6.1", "gguf": "0.11"}])  # before, after pip
    monkeypatch.setattr(colab, "_versions", lambda: next(versions))
    monkeypatch.setattr(colab.subprocess, "run", lambda *args, **kwargs: None)
    assert colab.install() == ["pyyaml"]  # gguf changed too, but is not loaded: no restart for it
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("restart needed (pyyaml") and "this cell" in out, out


@pytest.mark.slow
def test_colab_cell_install_leaves_the_runtime_pins_as_they_are(tmp_path):
    """A venv preloaded with Colab's pinned versions (and a google-colab that requires them), l2r
    installed --no-deps as the cell does, then the cell's colab.install(): no pinned version changed."""
    env = {k: v for k, v in os.environ.items() if k not in (paths.RESULTS_ENV, "PYTHONPATH")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = [py, "-m", "pip", "install", "-q", "--no-deps"]
    subprocess.run([*pip, *COLAB_PINS, COLAB_WIDGETS], check=True, capture_output=True, env=env)
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    runtime = site / "google_colab-1.0.0.dist-info"
    runtime.mkdir()
    (runtime / "METADATA").write_text("Metadata-Version: 2.1\nName: google-colab\nVersion: 1.0.0\n"
                                      + "".join(f"Requires-Dist: {pin}\n" for pin in COLAB_PINS))
    # torch, transformers, ... come from this environment, after the venv's own (pinned) packages
    (site / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, str(REPO)], check=True, capture_output=True, env=env)
    cell = subprocess.run([py, "-c", "from l2r_lib import colab; colab.install()"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert cell.returncode == 0, cell.stderr[-3000:]
    assert "restart" not in cell.stdout, cell.stdout
    names = [pin.split("==")[0] for pin in COLAB_PINS + [COLAB_WIDGETS]]
    after = subprocess.run([py, "-c", "import sys, importlib.metadata as m; print(*map(m.version, sys.argv[1:]))", *names],
                           capture_output=True, text=True, check=True, env=env).stdout.split()
    assert [f"{n}=={v}" for n, v in zip(names, after)] == COLAB_PINS + [COLAB_WIDGETS]
