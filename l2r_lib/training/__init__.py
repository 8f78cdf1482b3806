"""Round training of step 3: the student fine-tuned on the teacher's rationales, with self-reflection.

- ``inputs``: ``RoundInputs``, everything a round's training reads, as one object;
- ``round``: ``train_round(inputs)`` (in this process or under ``accelerate launch``, resumable)
  and ``clear_round``;
- ``trainer``: ``fit_round``, the ``transformers.Trainer`` subclass with its callbacks, the student
  with its LoRA adapter, and the round's ``losses.csv``;
- ``batches``: the rows, the question sampler and the collator (the views of self-reflection);
- ``losses``: weighted MLE and the triplet loss, as pure functions on tensors;
- ``checkpoints``: which checkpoint a round resumes from;
- ``launcher``: ``accelerate launch`` of a round, and its shipped configs (``accelerate_configs/``).
"""

from .inputs import RoundInputs
from .round import TrainResult, clear_round, train_round
from .trainer import distance_summary, read_losses

__all__ = ["RoundInputs", "TrainResult", "clear_round", "distance_summary", "read_losses", "train_round"]
