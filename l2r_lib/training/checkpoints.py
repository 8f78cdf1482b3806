"""Resume only from a complete checkpoint: which files Trainer needs in one, and the newest one that has them.

``last_complete_checkpoint(out_dir)`` returns the newest complete ``out_dir/checkpoints/checkpoint-N``
and moves each newer, incomplete one (a disk that filled up, a kill while saving) aside to
``out_dir/checkpoint-N.incomplete``. LoRA, full-model, per-rank (several processes) and DeepSpeed
checkpoints alike.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from transformers.trainer_utils import get_last_checkpoint

log = logging.getLogger(__name__)

# What Trainer writes into a checkpoint, by kind: the first name found of each group is checked
# (a folder: FSDP's sharded state or DeepSpeed's, checked to be non-empty)
CHECKPOINT_CONFIGS = ("adapter_config.json", "config.json")
CHECKPOINT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json",
                      "pytorch_model.bin", "pytorch_model_fsdp_0")
CHECKPOINT_OPTIMIZERS = ("optimizer.pt", "optimizer.bin", "optimizer_0")


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why Trainer could not resume from ``checkpoint`` (a file it needs missing or not loading), or None."""
    import safetensors.torch
    from transformers.trainer_pt_utils import safe_globals

    def load_torch(path: Path) -> None:
        with safe_globals():  # as Trainer loads them (numpy arrays in rng_state allowed)
            torch.load(path, map_location="cpu", weights_only=True)

    def load(path: Path) -> None:
        if path.is_dir():
            assert any(path.iterdir()), "empty folder"
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            safetensors.torch.load_file(path)
        else:
            load_torch(path)

    first = lambda names: next((n for n in names if (checkpoint / n).exists()), names[0])
    deepspeed = next(checkpoint.glob("global_step*"), None)  # DeepSpeed keeps weights and optimizer there
    rng = sorted(p.name for p in checkpoint.glob("rng_state*.pth")) or ["rng_state.pth"]  # rng_state_<rank>.pth: several processes
    needed = {"trainer_state.json": lambda path: json.loads(path.read_text())["global_step"], first(CHECKPOINT_CONFIGS): load}
    needed.update({deepspeed.name: load} if deepspeed else {first(CHECKPOINT_WEIGHTS): load, first(CHECKPOINT_OPTIMIZERS): load})
    needed.update({"scheduler.pt": load_torch, **dict.fromkeys(rng, load_torch)})
    for name, check in needed.items():
        if not (checkpoint / name).exists():
            return f"{name} is missing"
        try:
            check(checkpoint / name)
        except Exception as e:  # whatever way a half-written file fails to load
            return f"{name} does not load ({type(e).__name__}: {str(e)[:120]})"
    return None


def last_complete_checkpoint(out_dir: Path) -> str | None:
    """The newest complete ``out_dir/checkpoints/checkpoint-N``; each newer, incomplete one (say a
    disk filled up while it was written) is moved aside to ``out_dir/checkpoint-N.incomplete``
    (out of reach of Trainer's checkpoint rotation) with a warning naming it."""
    folder = out_dir / "checkpoints"
    while folder.is_dir() and (checkpoint := get_last_checkpoint(str(folder))) is not None:
        problem = checkpoint_problem(Path(checkpoint))
        if problem is None:
            return checkpoint
        aside = out_dir / f"{Path(checkpoint).name}.incomplete"
        n = 1
        while aside.exists():
            n += 1
            aside = out_dir / f"{Path(checkpoint).name}.incomplete-{n}"
        os.replace(checkpoint, aside)
        log.warning("checkpoint %s is incomplete (%s): moved aside to %s; resuming from the one before, if any",
                    checkpoint, problem, aside)
    return None
