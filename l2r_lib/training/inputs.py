"""``RoundInputs``: everything one round's training reads, as one object.

``train_round`` takes it; under ``accelerate launch`` the launcher writes it to a folder
(``to_json``) and every process reads it back (``from_json``), so the two never drift apart.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import StudentConfig, TrainConfig, from_dict
from ..records import ExamRecord, TeacherRecord, load_jsonl, save_jsonl

RECORDS = ("teacher_records", "exam_records")  # written as JSONL beside spec.json, not into it


@dataclass
class RoundInputs:
    """One round's training: its kept teacher records and the exam taken before it (the negatives; None:
    no exam), the train and student configs, the round's folder, where it starts (``init_adapter``: round
    k-1's ``out_dir/adapter``; None: a fresh LoRA) and, set by ``train_round``, the checkpoint it resumes from."""

    teacher_records: list[TeacherRecord]
    exam_records: list[ExamRecord] | None
    train: TrainConfig
    student: StudentConfig
    out_dir: Path
    init_adapter: Path | None = None
    round_idx: int = 1
    use_reflection: bool = True
    seed: int = 0
    task: str | None = None
    checkpoint: str | None = None

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.init_adapter = Path(self.init_adapter) if self.init_adapter else None

    def to_json(self, folder: Path) -> Path:
        """``teacher.jsonl``, ``exam.jsonl`` and ``spec.json`` (the rest) in ``folder``; returns ``spec.json``."""
        folder.mkdir(parents=True, exist_ok=True)
        save_jsonl(self.teacher_records, folder / "teacher.jsonl")
        save_jsonl(self.exam_records or [], folder / "exam.jsonl")
        spec = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RECORDS}
        spec.update(train=dataclasses.asdict(self.train), student=dataclasses.asdict(self.student),
                    out_dir=str(self.out_dir), init_adapter=str(self.init_adapter) if self.init_adapter else None,
                    has_exam=self.exam_records is not None)
        path = folder / "spec.json"
        path.write_text(json.dumps(spec, indent=2))
        return path

    @classmethod
    def from_json(cls, spec_path: Path) -> "RoundInputs":
        """The inputs ``to_json`` wrote (``spec_path``: its ``spec.json``)."""
        spec, folder = json.loads(Path(spec_path).read_text()), Path(spec_path).parent
        has_exam = spec.pop("has_exam")
        return cls(
            teacher_records=load_jsonl(TeacherRecord, folder / "teacher.jsonl"),
            exam_records=load_jsonl(ExamRecord, folder / "exam.jsonl") if has_exam else None,
            **spec | {"train": from_dict(TrainConfig, spec["train"], "train"),
                      "student": from_dict(StudentConfig, spec["student"], "student")},
        )
