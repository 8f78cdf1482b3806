"""The whole run: notebooks 01 -> 04 for every method, task and round, then the tables.

``run_pipeline("params/default.yaml")`` executes the notebooks into
``results/<run>/<method>/<task>/round-<k>/`` and then writes the run's tables and figures. A stage
with its done marker is never run again, so a rerun redoes nothing and a rerun after a crash
resumes where it stopped (the teacher cache and the training checkpoints cover a stage that died
half-way). Methods that compute the same round 1 (and so the same round-2 exam) run it once. A run
directory has one writer at a time (``lock``): a second ``l2r run`` on it is refused. The
manifest written beside the config (``folder``) traces every number back to its code, data and prompts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from .. import paths
from ..config import RunConfig, load_config
from ..methods import get_method
from ..redaction import redact
from ..report.write import write_tables
from ..rounds import BASELINE_ROUND, Round
from ..training import read_losses
from . import lock
from .folder import prepare_run
from .stages import round_training


def round1_donor(cfg: RunConfig, run_dir: Path, method: str, task: str) -> str | None:
    """An earlier method of the run whose finished round 1 is the same computation as ``method``'s.

    Round 1 differs between methods only by self-reflection (every method starts with plain
    rationales for the train split), so methods with the same ``Method.reflection`` share one.
    """
    if not cfg.share_round1:
        return None
    for other in cfg.methods[: cfg.methods.index(method)]:
        if (get_method(other).reflection == get_method(method).reflection
                and Round(cfg, run_dir, other, task, 1).is_done("04_evaluation")):
            return other
    return None


def baseline_donor(cfg: RunConfig, run_dir: Path, method: str, task: str) -> str | None:
    """An earlier method of the run whose round 0 has run: the untrained student's test exam reads only the
    task, the student and the seed, so it is one computation for every method of a task."""
    for other in cfg.methods[: cfg.methods.index(method)]:
        if Round(cfg, run_dir, other, task, BASELINE_ROUND).is_done("04_evaluation"):
            return other
    return None


def share_round(rnd: Round, donor: str) -> None:
    """Copy the donor's finished round 1, or round 0, (not its checkpoints) into ``rnd.dir``, all at once."""
    src = Round(rnd.cfg, rnd.run_dir, donor, rnd.task, rnd.round_idx).dir
    for stale in rnd.dir.parent.glob(f"{rnd.dir.name}.sharing*"):  # copies that died half-way
        shutil.rmtree(stale, ignore_errors=True)
    tmp = rnd.dir.with_name(f"{rnd.dir.name}.sharing-{uuid.uuid4().hex[:8]}")
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoints"))
    metrics = json.loads((tmp / "metrics.json").read_text())
    metrics.update(method=rnd.method, shared_from=donor)
    # the donor's row counts what its teacher calls cost: counted again here, the table would bill them twice
    metrics.update({k: 0 for k in ("teacher_requests", "teacher_failed_after_response", "teacher_rejected", "teacher_abandoned",
                                   "teacher_batched", "teacher_prompt_tokens", "teacher_completion_tokens",
                                   "teacher_cost_usd")})
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    why = (f"Round 0 of `{rnd.method}` is the untrained student's test exam, one computation for every method "
           f"of a task: copied from `{donor}/{rnd.task}/round-0`, notebook included.\n"
           if rnd.round_idx == BASELINE_ROUND else
           f"Round 1 of `{rnd.method}` is the same computation as round 1 of `{donor}` (feedback starts in round 2; "
           f"both {'use' if rnd.uses_reflection else 'skip'} self-reflection): copied from "
           f"`{donor}/{rnd.task}/round-1`, notebooks included.\n")
    (tmp / "SHARED.md").write_text(why)
    shutil.rmtree(rnd.dir, ignore_errors=True)  # a copy that died half-way
    tmp.rename(rnd.dir)


def shared_from(rnd: Round) -> str | None:
    """The donor a shared round's ``metrics.json`` names (``share_round``), else None."""
    metrics = rnd.dir / "metrics.json"
    return json.loads(metrics.read_text()).get("shared_from") if metrics.is_file() else None


def exam_donor(cfg: RunConfig, run_dir: Path, method: str, task: str) -> str | None:
    """An earlier method of the run whose round-2 train exam is ``method``'s: the exam reads only
    round 1's adapter, the train questions and the seed, so two methods that share round 1 take
    the same round-2 exam (the same mistakes and wrong rationales; later rounds differ)."""
    if not cfg.share_round1 or not Round(cfg, run_dir, method, task, 2).takes_exam:
        return None

    def origin(m: str) -> str:  # the method whose round 1 actually ran
        return shared_from(Round(cfg, run_dir, m, task, 1)) or m

    for other in cfg.methods[: cfg.methods.index(method)]:
        if origin(other) == origin(method) and Round(cfg, run_dir, other, task, 2).is_done("01_mistake_analysis"):
            return other
    return None


# what ``mistake_analysis`` writes, and its notebook (a test checks the list against a fresh exam)
EXAM_FILES = ("01_mistake_analysis.ipynb", "exam_train.jsonl", "exam_train.summary.json", "mistakes_official.json",
              "error_types.csv")


def share_exam(rnd: Round, donor: str) -> None:
    """Copy the donor's round-2 exam (what notebook 01 writes) into ``rnd.dir``; the done marker last."""
    src = Round(rnd.cfg, rnd.run_dir, donor, rnd.task, rnd.round_idx).dir
    rnd.dir.mkdir(parents=True, exist_ok=True)
    for name in EXAM_FILES:
        shutil.copy2(src / name, rnd.dir / name)
    (rnd.dir / "SHARED.md").write_text(
        f"The train exam of round {rnd.round_idx} (notebook 01: `exam_train.jsonl`, mistakes, error types) is "
        f"`{donor}`'s: both start round {rnd.round_idx} from the same round-1 adapter with the same seed, "
        f"so it is one computation. Copied from `{donor}/{rnd.task}/round-{rnd.round_idx}`, notebook included; "
        "the teacher, training and evaluation of this round are this method's own.\n")
    summary = json.loads((src / "01_mistake_analysis.done.json").read_text()) | {"shared_from": donor}
    (rnd.dir / "01_mistake_analysis.done.json").write_text(json.dumps(summary, indent=2) + "\n")


def restore_adapter(rnd: Round) -> None:
    """Train a finished round's adapter again when it is missing: adapters are not committed, so a
    fresh clone of a half-done study has each round's data but not its weights. Training reads
    only saved files (teacher records, exam) with the run's seed: no teacher call, same adapter.
    The round's record (marker, losses, configs) stays the original one; the retrained loss curve
    is checked against it, and kept beside it as ``losses.restored.csv`` where they part."""
    marker = rnd.dir / "03_round_training.done.json"
    if (rnd.dir / "adapter").is_dir() or not marker.is_file():
        return
    if rnd.round_idx == 1 and (donor := shared_from(rnd)):
        # a shared round 1 is its donor's computation: train it once, there, and copy it to every sharer
        src = Round(rnd.cfg, rnd.run_dir, donor, rnd.task, 1)
        restore_adapter(src)
        if (src.dir / "adapter").is_dir():
            tmp = rnd.dir / "adapter.tmp"
            shutil.rmtree(tmp, ignore_errors=True)  # a copy that died half-way
            shutil.copytree(src.dir / "adapter", tmp)
            tmp.rename(rnd.dir / "adapter")
            print(f"[l2r] {rnd.method} / {rnd.task} / round 1: adapter copied from {donor}'s", flush=True)
            return
    if rnd.round_idx > 1:
        restore_adapter(Round(rnd.cfg, rnd.run_dir, rnd.method, rnd.task, rnd.round_idx - 1))
    print(f"[l2r] {rnd.method} / {rnd.task} / round {rnd.round_idx}: adapter missing, training it again", flush=True)
    losses = rnd.dir / "losses.csv"
    # the marker last: written back last, it says the round is whole again
    record = {p.name: p.read_bytes() for p in (losses, rnd.dir / "result.yaml", rnd.dir / "train_config.yaml", marker)
              if p.is_file()}
    recorded = [row["total"] for row in read_losses(losses)] if losses.is_file() else None
    marker.unlink()
    round_training(rnd)
    if recorded is not None:
        retrained = [row["total"] for row in read_losses(losses)]
        gap = (max(abs(a - b) for a, b in zip(recorded, retrained))
               if len(recorded) == len(retrained) and recorded else float("inf"))
        if gap > RESTORE_TOLERANCE:
            losses.replace(rnd.dir / "losses.restored.csv")
            print(f"[l2r] warning: the retrained adapter of {rnd.dir} does not reproduce the recorded loss curve "
                  f"({len(retrained)} vs {len(recorded)} steps, max |total difference| {gap:.2g}); later rounds "
                  "train from the retrained one: losses.restored.csv is its curve", flush=True)
        else:
            print(f"[l2r] {rnd.method} / {rnd.task} / round {rnd.round_idx}: the retrained adapter reproduces the "
                  f"recorded loss curve ({len(recorded)} steps, max |total difference| {gap:.1e})", flush=True)
    for name, data in record.items():
        (rnd.dir / name).write_bytes(data)


# the loss a retrained adapter may differ by from its recording (CPU runs agree to ~1e-9)
RESTORE_TOLERANCE = 1e-4


def run_pipeline(params: str | Path, out: str | Path | None = None, progress: bool = True,
                 overrides: dict | None = None) -> Path:
    """Execute every notebook of every method, task and round; then the tables. Returns the run dir.
    This process holds the run's lock until it exits (RunLockedError if another process has it).
    ``progress``: the notebooks' own output (exam, teacher and training progress) streams to the terminal."""
    import papermill as pm

    lock.hold(Path(out) if out else paths.results_dir() / load_config(params, overrides).name, for_children=True)
    cfg, run_dir = prepare_run(params, out, overrides)
    for task in cfg.tasks:  # a task finishes every method before the next starts: a study fills its table task by task
        for method in cfg.methods:
            for k in range(BASELINE_ROUND, get_method(method).rounds(cfg.rounds) + 1):
                rnd = Round(cfg, run_dir, method, task, k)
                if k == BASELINE_ROUND and not rnd.is_done("04_evaluation") and (
                        donor := baseline_donor(cfg, run_dir, method, task)):
                    print(f"[l2r] {method} / {task} / round 0: shared with {donor}", flush=True)
                    share_round(rnd, donor)
                if k == 1 and not rnd.is_done("04_evaluation") and (donor := round1_donor(cfg, run_dir, method, task)):
                    print(f"[l2r] {method} / {task} / round 1: shared with {donor}", flush=True)
                    share_round(rnd, donor)
                if k == 2 and not rnd.is_done("01_mistake_analysis") and (donor := exam_donor(cfg, run_dir, method, task)):
                    print(f"[l2r] {method} / {task} / round 2: 01_mistake_analysis shared with {donor}", flush=True)
                    share_exam(rnd, donor)
                if k > BASELINE_ROUND and not rnd.is_done("04_evaluation"):  # training needs the previous adapter, evaluation its own
                    trained = k == 1 or rnd.is_done("03_round_training")
                    restore_adapter(rnd if trained else Round(cfg, run_dir, method, task, k - 1))
                for nb in rnd.stages:
                    if rnd.is_done(nb):
                        continue
                    rnd.dir.mkdir(parents=True, exist_ok=True)
                    print(f"[l2r] {method} / {task} / round {k}: {nb}", flush=True)
                    executed = rnd.dir / f"{nb}.ipynb"
                    try:  # paths relative to the run (its folder is the kernel's cwd): records hold no machine path
                        pm.execute_notebook(
                            str(paths.notebooks_dir() / f"{nb}.ipynb"), str(executed),
                            parameters={"params": "config.yaml", "run_dir": ".", "method": method, "task": task,
                                        "round_idx": k},
                            kernel_name="python3", progress_bar=False, cwd=str(run_dir),
                            kernel_manager_class=ipc_kernel_manager(),  # no "running over TCP" warning a notebook
                            **({"stdout_file": sys.stdout, "stderr_file": sys.stderr} if progress else {}),
                        )
                    except pm.PapermillExecutionError as e:
                        raise StageFailed(nb, rnd, e) from e
                    finally:
                        failing = sys.exc_info()[1] is not None
                        try:
                            if executed.is_file():
                                scrub_notebook(executed, run_dir)
                        except (ValueError, OSError):
                            if not failing:  # else the first error wins: a notebook half written on a full disk
                                raise        # cannot be read back, and that is not what went wrong
    write_tables(run_dir)
    return run_dir


def ipc_kernel_manager() -> type:
    """The kernel manager ``l2r run`` gives papermill: its kernels talk over Unix sockets (IPC transport) in
    Jupyter's runtime folder (mode 0700) rather than TCP on localhost, so no other user of the machine can
    connect to them, and ipykernel (>= 7.4) has no "Kernel is running over TCP without encryption" warning
    to print at each notebook's start. The sockets are removed with the kernel."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import default

    class IpcKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("connection_file")  # the sockets are named after it: absolute, so not in the run folder (the cwd)
        def _default_connection_file(self) -> str:
            folder = Path(jupyter_runtime_dir())
            if len(str(folder)) > 64:  # a socket's path has at most ~104 bytes (the ip, "-ipc-<port>" after it)
                folder = Path(tempfile.gettempdir())
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.path.join(folder, f"kernel-l2r-{uuid.uuid4().hex[:12]}.json")

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts every kernel it shuts down; papermill shuts one down when its notebook
            # has ended, idle, where the SIGINT only makes ipykernel log "KeyboardInterrupt caught in kernel"
            # (a busy one is killed after shutdown_wait_time all the same)
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return IpcKernelManager


def scrub_notebook(path: Path, run_dir: Path) -> None:
    """An executed notebook without the machine's paths: papermill's input/output paths relative to the
    run, and the run folder, the checkout, the Python environment and the home folder in any output
    (a warning's or a traceback's file names) as ``.``, ``<repo>``, ``<env>`` and ``~``."""
    nb = json.loads(path.read_text())
    meta = nb.get("metadata", {}).get("papermill", {})
    if "input_path" in meta:
        meta["input_path"] = f"notebooks/{Path(meta['input_path']).name}"
    if "output_path" in meta:
        meta["output_path"] = str(path.resolve().relative_to(run_dir.resolve()))
    text = json.dumps(nb, indent=1, ensure_ascii=False)
    for prefix, name in ((run_dir.resolve(), "."), (Path(sys.prefix), "<env>"), (paths.REPO_ROOT, "<repo>"),
                         (Path(sys.base_prefix), "<python>"), (Path.home(), "~")):
        text = text.replace(json.dumps(str(prefix))[1:-1], name)
    path.write_text(text + "\n")


class StageFailed(RuntimeError):
    """A notebook stage raised: one line with the stage, the round, the error and the notebook to open."""

    def __init__(self, stage: str, rnd: Round, error: Exception):
        name, value = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
        last = " ".join(redact(f"{name}: {value}").split())
        super().__init__(f"stage {stage} of {rnd.method}/{rnd.task}/round-{rnd.round_idx} failed: {last}; "
                         f"see {Path(rnd.shown_dir) / f'{stage}.ipynb'}")  # never the machine's path


