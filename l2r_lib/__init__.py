"""l2r: tailored reasoning distillation (Wang et al., EMNLP 2023) for small open students.

The package follows the paper's loop, one package per step (and per notebook), over a shared ground:

- ``exam/`` (1, mistake analysis): the student answers the train questions; hf or vLLM engine;
- ``teacher/`` (2, teacher prompting): rationales and feedback from the teacher LLM;
- ``training/`` (3, round training): MLE + self-reflection on ``transformers.Trainer``;
- ``report/`` (4, evaluation): grading, tables, figures, the notebooks' views;
- ``run/``: the notebooks' stage functions and ``l2r run``; ``cli``: the ``l2r`` command;
- the ground: ``tasks``, ``answers``, ``arithmetic``, ``synthetic``, ``records``, ``rounds``, ``config``,
  ``methods``, ``paths``, ``student``, ``prompts`` (the student's), ``redaction``, ``cpu``, ``versions``.

Layers only point down (cli -> run -> report -> exam | teacher | training -> ground; the three step
packages never import each other): ``lint-imports`` checks the contract in ``pyproject.toml``.
The entry points below import from here (``from l2r_lib import run_pipeline``), each loaded when first used.
"""

import importlib as _importlib
import logging as _logging

__version__ = "0.1.0"

# bitsandbytes, imported on an AVX512-BF16 CPU, tries to download a faster 4-bit kernel from the Hub and
# warns when it cannot (always, offline); it then uses its own kernel. Only that logger is quieted.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

ENTRY_POINTS = {  # name -> the module that defines it
    "run_pipeline": "l2r_lib.run.runner", "open_round": "l2r_lib.run.stages", "Round": "l2r_lib.rounds",
    "load_config": "l2r_lib.config", "RunConfig": "l2r_lib.config", "load_examples": "l2r_lib.tasks",
    "load_student": "l2r_lib.student", "load_trained_student": "l2r_lib.student",
    "run_exam": "l2r_lib.exam", "build_teacher": "l2r_lib.teacher",
    "train_round": "l2r_lib.training", "RoundInputs": "l2r_lib.training",
    "write_tables": "l2r_lib.report.write", "collect_metrics": "l2r_lib.report.tables",
}


def __getattr__(name: str):
    """The entry points, imported on first use (``import l2r_lib`` stays light)."""
    if name in ENTRY_POINTS:
        return getattr(_importlib.import_module(ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'l2r_lib' has no attribute {name!r}")


__all__ = sorted(ENTRY_POINTS)
