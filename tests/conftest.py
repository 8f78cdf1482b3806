import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The reference data beside the repo (CI sets $L2R_DATA_DIR to it)."""
    path = Path(os.environ.get("L2R_DATA_DIR") or SHARED_DATA)
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path}")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct student (fp32, CPU), loaded once."""
    from l2r_lib.student import load_student

    return load_student("smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is faster, and steadier on a shared machine (``usefixtures`` it)."""
    import torch

    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # l2r_lib.cpu.configure, called by each student load, keeps it
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = env
