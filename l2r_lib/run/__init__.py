"""The loop of rounds: what the notebooks call and what ``l2r run`` drives.

- ``stages``: ``open_round`` and one function per notebook stage (``mistake_analysis``,
  ``teacher_prompting``, ``round_training``, ``evaluation``);
- ``runner``: ``run_pipeline``, every notebook of every method, task and round under papermill,
  then the tables; what methods compute alike runs once; a rerun resumes;
- ``folder``: a run's ``config.yaml`` and ``manifest.json``;
- ``lock``: one writer per run folder.
"""
