"""What a run shows, step 4 and after: grading beyond accuracy, the tables, the figures, the notebooks' views.

- ``evaluation``: an exam's error types, contradicting answer lines, fixed and broken questions;
- ``tables``: per-round metrics, the paper's layout with bootstrap intervals, the seed tables;
- ``figures``: accuracy by round, losses, seeds and the 2x2 comparison;
- ``write``: a run's ``tables/`` and ``figures/`` on disk (``l2r tables``, after ``l2r run``);
- ``views``: what the four notebooks show of one round;
- ``claims``: README numbers written from the tables, and the history notes of kept runs.
"""
