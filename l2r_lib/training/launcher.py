"""Round training under ``accelerate launch``: several processes (DDP), or an accelerate config (FSDP, DeepSpeed).

``launch_round`` (called by ``round.train_round`` when ``train.processes > 1`` or
``train.accelerate_config`` is set) saves the round's inputs in ``out_dir/launch/`` (``RoundInputs.to_json``)
and runs::

    accelerate launch [--config_file F] [--multi_gpu --num_processes N] -m l2r_lib.training.launcher out_dir/launch/spec.json

streaming its output (the progress lines) and raising with the tail of its log if it fails. Each
process of that command runs ``trainer.fit_round`` on the same inputs. Always a subprocess, so
it works from a notebook too (a kernel that has touched CUDA cannot host a launcher), and from
``l2r run``: both go through ``run.stages.round_training``.
"""

from __future__ import annotations

import collections
import os
import re
import socket
import subprocess
import sys
from pathlib import Path


from ..config import TrainConfig
from .inputs import RoundInputs
from .trainer import fit_round

LOG_TAIL = 40  # lines of the worker's log an error quotes
ERROR_LINE = re.compile(r"^(\[rank\d+\]: )?[\w.]*(Error|Exception): ")  # a worker's exception, as torchrun prefixes it
CONFIGS_DIR = Path(__file__).parent / "accelerate_configs"  # shipped accelerate configs: fsdp, deepspeed-zero3-offload


def resolve_accelerate_config(name: str) -> Path:
    """An accelerate config file: a path that exists, else a shipped one by name (``fsdp``)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = CONFIGS_DIR / f"{name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"train.accelerate_config = {name!r}: no such file and no shipped config (shipped: {known})")


def _free_port() -> int:
    """A port for the processes' rendezvous (two launches at once must not share one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(cfg: TrainConfig, spec: Path) -> list[str]:
    """The ``accelerate launch`` command line of a round whose inputs are in ``spec``."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(_free_port())]
    if cfg.accelerate_config:
        # train.processes, whatever the file says: one GPU with ZeRO-3 offload is one process, not the file's 8
        command += ["--config_file", str(resolve_accelerate_config(cfg.accelerate_config)), "--num_processes", str(cfg.processes)]
    else:
        # torchrun's launcher (accelerate's --cpu would need mpirun for several processes); without
        # GPUs the workers' Trainer (use_cpu) joins them over gloo, with GPUs over nccl
        command += ["--multi_gpu", "--num_processes", str(cfg.processes), "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no"]
    return command + ["-m", "l2r_lib.training.launcher", str(spec)]


def launch_round(inputs: RoundInputs) -> None:
    """``trainer.fit_round(inputs)`` in every process of ``accelerate launch``."""
    cfg, out_dir = inputs.train, inputs.out_dir
    folder = out_dir / "launch"
    spec = inputs.to_json(folder)
    command = launch_command(cfg, spec)
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
    package_root = str(Path(__file__).resolve().parents[2])  # the workers import this very l2r_lib
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with open(folder / "train.log", "w") as log, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
    ) as proc:
        for line in proc.stdout:
            log.write(line)
            tail.append(line)
            print(line, end="", flush=True)
    if proc.returncode != 0 or not (out_dir / "result.yaml").is_file():
        lines = (folder / "train.log").read_text().splitlines()
        cause = next((line.split("]: ", 1)[-1] for line in lines if ERROR_LINE.match(line)), "no exception in the log")
        raise RuntimeError(f"round training under accelerate launch failed (exit {proc.returncode}): {cause}\n"
                           f"The end of {folder / 'train.log'}:\n{''.join(tail)}")


def main(argv: list[str] | None = None) -> None:
    inputs = RoundInputs.from_json(Path((argv or sys.argv[1:])[0]))
    wanted, started = inputs.train.processes, int(os.environ.get("WORLD_SIZE", "1"))
    if wanted > 1 and started != wanted:
        raise RuntimeError(f"train.processes = {wanted} but accelerate launch started {started} process(es) together")
    fit_round(inputs)


if __name__ == "__main__":
    main()
