"""Every directory l2r reads or writes, resolved in one place.

l2r runs from a source checkout (``make``, JupyterLab on the repo) or from a plain ``pip install``
(Colab): the params and notebooks ship inside the package (``l2r_lib/params``,
``l2r_lib/notebooks`` in a wheel; the repo's ``params/`` and ``notebooks/`` in a checkout), and
results go to ``$L2R_RESULTS``, else the checkout's ``results/``, else ``./results`` of the
working folder, never into site-packages.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "L2R_DATA_DIR"  # local copies of the data sets (see ../shared/data/README.md)
CACHE_DIR_ENV = "L2R_CACHE_DIR"  # converted student weights and other reusable artefacts
RESULTS_ENV = "L2R_RESULTS"  # where runs are written
REPO_URL = "https://github.com/l2r-project/l2r"  # the one place: README and notebooks' install cells must agree
DISTRIBUTION = "l2r-distill"  # the name on PyPI ("l2r" there is an unrelated package)
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent  # the source checkout; in an installed wheel this is site-packages


def in_checkout() -> bool:
    """Is l2r imported from its source checkout (editable install, tests) rather than a wheel?"""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "notebooks").is_dir()


def params_dir() -> Path:
    """The shipped parameter sets: the checkout's ``params/``, else the package's copy."""
    return REPO_ROOT / "params" if in_checkout() else PACKAGE_DIR / "params"


def notebooks_dir() -> Path:
    return REPO_ROOT / "notebooks" if in_checkout() else PACKAGE_DIR / "notebooks"


def results_dir() -> Path:
    """``$L2R_RESULTS``, else the checkout's ``results/``, else ``./results`` of the working folder."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV]).expanduser()
    return REPO_ROOT / "results" if in_checkout() else Path.cwd() / "results"


def shipped_params() -> list[str]:
    """Names of the shipped parameter sets (``default``, ``paper/gsm8k``, ...)."""
    root = params_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("**/*.yaml"))


def resolve_params(name: str | os.PathLike) -> Path:
    """A params file: a path that exists, else a shipped set by name (``default``, ``colab/gsm8k``)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = str(name).removesuffix(".yaml").removeprefix("params/")
    shipped = params_dir() / f"{stem}.yaml"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"params file {str(name)!r} does not exist and is no shipped parameter set "
                            f"(shipped: {', '.join(shipped_params())})")


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local data directory (argument, else $L2R_DATA_DIR), or None to use the Hub.

    A directory that is named but missing is an error, never a silent fall-back to the network.
    """
    raw = explicit if explicit not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if raw is None:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir():
        source = "--data-dir" if explicit not in (None, "") else f"${DATA_DIR_ENV}"
        raise FileNotFoundError(f"data directory {str(path)!r} (from {source}) does not exist")
    return path


def cache_dir() -> Path:
    """Where converted models live: $L2R_CACHE_DIR, else ~/.cache/l2r."""
    path = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "l2r").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def shown(path: str | os.PathLike) -> str:
    """A path as l2r prints it, never the machine's: relative to the working folder when inside it, else
    from the results folder by its name (``results/default/tailored/...``), else relative to the working folder."""
    path, cwd, results = Path(path).resolve(), Path.cwd().resolve(), results_dir().resolve()
    if path.is_relative_to(cwd):
        return str(path.relative_to(cwd))
    if path.is_relative_to(results):
        return str(Path(results.name) / path.relative_to(results))
    return os.path.relpath(path, cwd)
