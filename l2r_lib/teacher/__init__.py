"""The teacher of step 2: three teachers behind one interface, and their parts.

- ``teachers``: the teachers, ``build_teacher``, the reference teacher's rationale writing and
  ``save_round`` (a round's records, usage, per-request costs and the prompt text, in one folder);
- ``prompts``: the chat prompts (rationale and feedback) and the parsing of a reply;
- ``client``: the async OpenAI-compatible client (concurrency, rate limits, retries, cost);
- ``batch``: the same requests as an OpenAI Batch API job, resumable from its state file;
- ``cache``: the SQLite cache of every request, so a prompt is paid once;
- ``data``: teacher records (normalising, keeping the correct ones, saving a round, the
  official code's file formats).

``build_teacher(cfg, task, cache_path)`` gives a ``Teacher`` with

- ``rationales(examples, round_idx)``: step-by-step rationales for questions (round 1, fresh);
- ``feedback(mistakes, round_idx)``: for each ``(example, wrong rationale, wrong answer)``, the
  mistake named and a correct rationale in the student's format (later rounds);
- ``estimate(examples=..., mistakes=...)``: the dry run, the most a call could cost, sending nothing;
- ``usage`` (this run so far), ``last_usage`` and ``last_requests`` (the last call, per request);
- ``stage_usage()``: what the endpoint may have billed for the teacher's ``scope`` over every run
  (failed and killed ones included; read from the cache), with this run's cache hits and retries.

Every call returns ``TeacherRecord`` s with ``kept`` set by ``data.mark_kept`` (answer
matches gold, distinct, at most ``max_rationales`` per question) and ``teacher`` naming who wrote
the text. The kinds:

- ``openai``: any OpenAI-compatible endpoint via ``ChatClient`` (cached in ``cache_path``);
  ``n`` samples per prompt. Name ``openai:<model>``. With ``teacher.mode: batch`` its cache misses
  go out as a Batch API job (``batch.BatchClient``), its state in ``batch_dir``.
- ``replay``: a recorded real teacher (``<data_dir>/recorded_teacher/<task>.*.jsonl``), matched
  on normalized question text. Name ``replay:<model>``, e.g. ``replay:text-davinci-002``. Only
  rationale prompts were recorded, so ``feedback`` returns the recorded rationale with
  ``prompt_kind="rationale"`` (it is not feedback) and the student's rationale attached.
- ``reference``: deterministic, from the data set's gold rationale (GSM8K solution, MultiArith
  and SVAMP equation, StrategyQA explanation, synthetic rationale). With ``n >= 2`` it writes up
  to ``n`` distinct equivalent rationales (``reference_rationales``: the operands of sums and
  products swapped, the sentences as numbered steps). Its feedback depends on the mistake: it
  names the student's first false ``a op b = c`` step and mends the student's rationale
  (``mend_rationale``: its correct steps toward the gold kept, its first wrong step corrected,
  the gold's remaining steps after), then with ``n >= 2`` the gold solution as written where it
  differs, then the mended one's swapped forms (``feedback_rationales``). Name ``reference:gold``.
- ``replay+reference``: the recorded rationale, then ``n - 1`` reference rationales (so round 1
  has two positives a question with ``n: 2``); feedback is reference's mended rationale with, for
  ``n >= 2``, the question's recorded rationale beside it (an independent real sample, so the
  positives of a feedback round differ as a live teacher's do). Each record names the teacher that
  wrote it.
"""

from .teachers import Mistake, Teacher, build_teacher, mistakes_from_exam, save_round

__all__ = ["Mistake", "Teacher", "build_teacher", "mistakes_from_exam", "save_round"]
