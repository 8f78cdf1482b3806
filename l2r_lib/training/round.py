"""``train_round``: one round of student training, in this process or under ``accelerate launch``.

Layout of a round's folder (``RoundInputs.out_dir``)::

    out_dir/adapter/          the final adapter (its presence marks the round finished)
    out_dir/checkpoints/      Trainer checkpoints (resume picks the newest complete one)
    out_dir/checkpoint-N.incomplete  a checkpoint that could not be resumed from, moved aside
    out_dir/losses.csv        step, mle, triplet, total, lr, d_pos, d_neg (one row per optimizer step)
    out_dir/train_config.yaml the resolved configuration of the round
    out_dir/launch/           the round's inputs and log under ``accelerate launch`` (``launcher``)
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..student import is_trained_model
from .checkpoints import last_complete_checkpoint
from .inputs import RoundInputs
from .launcher import launch_round
from .trainer import fit_round, truncate_losses

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int  # optimizer steps of the round
    losses_csv: Path
    resumed_from_step: int | None = None  # global step of the checkpoint resumed from
    skipped: bool = False  # the round had finished before: nothing was trained


def train_round(inputs: RoundInputs, resume: bool = True) -> TrainResult:
    """Train round ``inputs.round_idx`` from ``inputs.init_adapter`` on its kept teacher records.

    A finished round (``out_dir/adapter`` exists) returns at once; otherwise training resumes from
    the newest complete checkpoint in ``out_dir/checkpoints`` when ``resume`` (incomplete newer
    ones are moved aside, see ``last_complete_checkpoint``). With ``train.processes > 1`` or
    ``train.accelerate_config`` the training runs in ``accelerate launch`` (see ``launcher``).
    """
    out_dir = inputs.out_dir
    adapter_dir, losses_csv, result_file = out_dir / "adapter", out_dir / "losses.csv", out_dir / "result.yaml"
    if is_trained_model(adapter_dir) and result_file.is_file():
        done = yaml.safe_load(result_file.read_text())
        return TrainResult(adapter_dir, int(done["steps"]), losses_csv, done.get("resumed_from_step"), skipped=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    checkpoint = last_complete_checkpoint(out_dir) if resume else None
    if checkpoint is None:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        losses_csv.unlink(missing_ok=True)
    else:
        truncate_losses(losses_csv, int(Path(checkpoint).name.split("-")[-1]))
        log.info("resuming round %d from %s", inputs.round_idx, checkpoint)
    inputs = dataclasses.replace(inputs, checkpoint=checkpoint)
    if inputs.train.processes > 1 or inputs.train.accelerate_config:
        launch_round(inputs)
    else:
        fit_round(inputs)
    done = yaml.safe_load(result_file.read_text())
    return TrainResult(adapter_dir, int(done["steps"]), losses_csv, done.get("resumed_from_step"))


def clear_round(out_dir: str | Path) -> None:
    """Forget a round's training (adapter, checkpoints, losses), so that it trains again from its start."""
    out_dir = Path(out_dir)
    for name in ("adapter", "adapter.tmp", "checkpoints"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in ("losses.csv", "result.yaml"):
        (out_dir / name).unlink(missing_ok=True)
