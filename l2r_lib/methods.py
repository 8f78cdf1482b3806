"""The methods a run compares, declared in one table.

A method is one round (``std-cot``) or several; its later rounds ask the teacher about the
student's mistaken questions (``questions="mistakes"``: every train question with any wrong exam
sample) or about as many random train questions (``"random"``: the exam only counts the
mistakes); the teacher sees the student's wrong rationale (``prompt="feedback"``) or the
question alone (``"rationale"``); training adds the triplet loss or not (``reflection``).
Round 1 is the same for every method (plain rationales for the train split), so methods with
the same ``reflection`` share one round 1 and the round-2 exam it leads to
(``RunConfig.share_round1``).

The 2x2 of feedback x self-reflection on the same mistaken questions is ``tailored``,
``no-reflection``, ``no-feedback`` (the paper's ablation) and ``no-feedback-no-reflection``;
``no-feedback-random`` and ``std-cot-matched`` draw random questions instead. Runs made before
this table existed (``results/miniature``) used the name ``no-feedback`` for what is now
``no-feedback-random``; a run's ``manifest.json`` records what each of its method names meant.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    multi_round: bool  # False: round 1 only, whatever RunConfig.rounds says
    questions: str | None  # later rounds: "mistakes" | "random" (as many as there were mistaken questions)
    prompt: str | None  # later rounds: "feedback" (with the student's wrong rationale) | "rationale" (question alone)
    reflection: bool  # the triplet loss, in every round
    about: str  # one line for tables and docs

    @property
    def feedback(self) -> bool:
        return self.prompt == "feedback"

    def rounds(self, run_rounds: int) -> int:
        """The rounds this method trains in a run of ``run_rounds`` (``RunConfig.rounds``)."""
        return run_rounds if self.multi_round else 1


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("tailored", True, "mistakes", "feedback", True, "the paper: feedback on mistakes + self-reflection"),
    Method("std-cot", False, None, None, False, "one round of teacher rationales, no self-reflection"),
    Method("no-reflection", True, "mistakes", "feedback", False, "feedback on mistakes, no triplet loss"),
    Method("no-feedback", True, "mistakes", "rationale", True,
           "the paper's ablation: plain rationales for the same mistaken questions + self-reflection"),
    Method("no-feedback-no-reflection", True, "mistakes", "rationale", False,
           "plain rationales for the same mistaken questions, no triplet loss (2x2 cell)"),
    Method("no-feedback-random", True, "random", "rationale", True,
           "plain rationales for as many random train questions + self-reflection"),
    Method("std-cot-matched", True, "random", "rationale", False,
           "plain rationales for as many random train questions, no triplet loss: std-cot at the multi-round budget"),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]
