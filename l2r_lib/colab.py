"""The notebooks' Colab cell: install l2r's dependencies around Colab's own runtime, and read the key.

Colab's runtime is the ``google-colab`` distribution; its Requires-Dist pins what the kernel itself
runs on (in colabtools' setup.py of 2026-04: ipykernel==6.17.1, ipython==7.34.0, pandas==2.2.2,
tornado==6.5.1, requests==2.32.4, jupyter-server==2.14.0, ...). Changing one of them under the
running kernel makes pip ask for a restart, so they, and ipywidgets (Colab's page renders
ipywidgets 7, googlecolab/colabtools#4525), stay at the versions installed. Standard library only:
this runs before l2r's dependencies are there.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata

from l2r_lib.paths import DISTRIBUTION

RUNTIME = "google-colab"  # the distribution whose pins Colab's kernel needs
ALSO_KEPT = ["ipywidgets"]  # not among its pins, but Colab's widget manager renders only 7.x


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_pins() -> list[str]:
    """``name==version`` (the version installed) of every package the runtime pins for itself."""
    try:
        requires = metadata.requires(RUNTIME) or []
    except metadata.PackageNotFoundError:
        requires = []  # not Colab's runtime
    names = [re.match(r"[\w.-]+", r).group() for r in requires] + ALSO_KEPT
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass  # not installed: nothing to keep
    return pins


def _versions() -> dict[str, str]:
    return {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}


def install() -> list[str]:
    """pip-install the dependencies of l2r (itself installed with --no-deps) under the runtime's pins.
    Returns the distributions that changed while imported here; if any, says in one line to restart."""
    requires = [r for r in metadata.requires(DISTRIBUTION) or [] if "extra ==" not in r]
    before = _versions()
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as pins:
        pins.write("\n".join(runtime_pins()) + "\n")
        pins.flush()
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", pins.name, *requires], check=True)
    importlib.invalidate_caches()
    after = _versions()
    owners = metadata.packages_distributions()  # top-level module -> its distributions
    loaded = {_norm(d) for m in list(sys.modules) for d in owners.get(m, [])}
    changed = sorted(n for n in loaded if n in before and after.get(n) != before[n])
    if changed:
        print(f"restart needed ({', '.join(changed)} changed under this kernel): Runtime > Restart session, "
              "then run the notebook again from this cell (nothing is installed twice)")
    return changed


def load_secret(name: str = "OPENAI_API_KEY") -> None:
    """A Colab secret into this process's environment only; a missing or refused one is one line."""
    from google.colab import userdata

    offline = "only the offline teachers (replay, reference) will work"
    try:
        os.environ[name] = userdata.get(name)
    except userdata.SecretNotFoundError:
        print(f"no {name} secret (add it under the key icon on the left): {offline}")
    except userdata.NotebookAccessError:
        print(f"this notebook may not read the {name} secret (grant it under the key icon): {offline}")
    except userdata.TimeoutException:
        print(f"the {name} secret did not come (secrets come only in Colab's own page): {offline}")
