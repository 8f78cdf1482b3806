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

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
