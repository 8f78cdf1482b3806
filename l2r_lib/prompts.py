"""The student's prompt format, shared by the exam and training.

Plain (the paper's)::

    [demos]Question: <question>
    Reasoning: <rationale>
    Answer: <answer>

Chat (instruct students): the same ``Question:`` turn as the user message and the same
``Reasoning: ...\\nAnswer: ...`` text as the assistant message, through the tokenizer's
chat template. Either way the prompt ends with ``Reasoning:`` and the target is the rest.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from .tasks import Example, get_task

SYSTEM_PROMPT = (
    "You are a careful student. Reason step by step, then give the final answer on its own "
    "line as 'Answer: <answer>'."
)
REASONING_PREFIX = "Reasoning:"
ANSWER_PREFIX = "Answer:"

# Worked demonstrations, written for l2r. The official code publishes its own (fewshot_demos.py in
# Raibows/Learn-to-Reason) but without a licence, so these are ours, as many as it uses per task:
# 3 for the number tasks (GSM8K, SVAMP, MultiArith), 4 for StrategyQA (yes/no), 5 for CSQA (choice).
DEMOS: dict[str, list[tuple[str, str, str]]] = {
    "number": [
        ("Tom has 3 bags with 4 oranges in each bag. He eats 2 oranges. How many oranges are left?",
         "The bags hold 3 * 4 = 12 oranges. After eating 2, Tom has 12 - 2 = 10 oranges.", "10"),
        ("A shop sold 15 pens in the morning and twice as many in the afternoon. How many pens did it sell?",
         "In the afternoon it sold 2 * 15 = 30 pens. In total it sold 15 + 30 = 45 pens.", "45"),
        ("Lena shares 24 stickers equally among her 6 friends. How many stickers does each friend get?",
         "Each friend gets 24 / 6 = 4 stickers.", "4"),
    ],
    "choice": [
        ("Where would you put a plate after washing it? Answer Choices: (A) table (B) cupboard "
         "(C) oven (D) floor (E) sink",
         "A clean plate is stored until it is needed again. Plates are stored in a cupboard.", "B"),
        ("What do people usually do when they are tired? Answer Choices: (A) run (B) shout "
         "(C) sleep (D) cook (E) sing",
         "Being tired means needing rest. People rest by sleeping.", "C"),
        ("What would you use to see the stars more closely? Answer Choices: (A) microscope (B) mirror "
         "(C) telescope (D) window (E) camera",
         "Stars are very far away. A telescope makes far away things look closer.", "C"),
        ("Where does a farmer keep cows at night? Answer Choices: (A) barn (B) garage (C) kitchen "
         "(D) library (E) office",
         "Cows are farm animals that need shelter. On a farm, animals sleep in a barn.", "A"),
        ("What happens to ice when it is left in the sun? Answer Choices: (A) it grows (B) it melts "
         "(C) it freezes (D) it sings (E) it hardens",
         "The sun warms the ice. Warm ice turns into water, which is melting.", "B"),
    ],
    "yesno": [
        ("Can a cat fit inside a teacup?",
         "An adult cat is about 45 cm long. A teacup holds a few centimetres. A cat is far larger than a teacup.", "no"),
        ("Is water wet at room temperature?",
         "At room temperature water is a liquid. Liquid water makes things it touches wet.", "yes"),
        ("Could a person walk from London to New York?",
         "London is in Europe and New York is in North America. The Atlantic Ocean lies between them, "
         "and nobody can walk across an ocean.", "no"),
        ("Does a year have more days than a month?",
         "A month has at most 31 days. A year has 365 or 366 days, which is more than 31.", "yes"),
    ],
}


def format_answer(answer: str) -> str:
    return f"{ANSWER_PREFIX} {answer}"


def format_target(rationale: str, answer: str) -> str:
    """The text after the prompt: `` <rationale>\\nAnswer: <answer>``."""
    return f" {rationale.strip()}\n{format_answer(answer)}"


def demos_for(task: str, n: int) -> list[Example]:
    kind = get_task(task).answer_kind
    pool = DEMOS[kind]
    if n > len(pool):
        raise ValueError(f"num_demos={n} but only {len(pool)} demos exist for {kind} tasks")
    return [Example(f"demo-{kind}-{i}", q, a, r) for i, (q, r, a) in enumerate(pool[:n])]


def build_prompt(
    question: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    chat: bool = False,
    demos: list[Example] = (),
) -> str:
    """The prompt text, ending with ``Reasoning:``; the target from ``format_target`` follows it."""
    if not chat:
        shots = "".join(
            f"Question: {d.question}\n{REASONING_PREFIX}{format_target(d.rationale, d.answer)}\n\n" for d in demos
        )
        return f"{shots}Question: {question}\n{REASONING_PREFIX}"
    if tokenizer is None or tokenizer.chat_template is None:
        raise ValueError("chat=True needs a tokenizer with a chat template; use chat: false for base models")
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for d in demos:
        messages += [
            {"role": "user", "content": f"Question: {d.question}"},
            {"role": "assistant", "content": f"{REASONING_PREFIX}{format_target(d.rationale, d.answer)}"},
        ]
    messages.append({"role": "user", "content": f"Question: {question}"})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + REASONING_PREFIX


def split_completion(completion: str) -> str:
    """The rationale part of a generated completion (everything before the answer line)."""
    head, sep, _ = completion.partition(f"\n{ANSWER_PREFIX}")
    return (head if sep else completion).strip()
