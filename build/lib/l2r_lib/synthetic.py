"""A built-in task that is always there: multi-step arithmetic word problems from a seed.

Each problem chains two or three operations on small whole numbers and carries a gold
step-by-step rationale whose every ``a op b = c`` claim is true, so it serves tests, quick
runs and the reference teacher without any download.
"""

from __future__ import annotations

import random

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas"]
ITEMS = ["apples", "stickers", "marbles", "books", "coins", "pencils", "shells", "cards"]
TRAIN_SIZE, TEST_SIZE = 400, 100


def _problem(rng: random.Random) -> tuple[str, str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:  # add then subtract
        a, b = rng.randint(5, 40), rng.randint(2, 30)
        c = rng.randint(1, a + b - 1)
        s1, s2 = a + b, a + b - c
        q = (f"{name} has {a} {item}. {name} gets {b} more {item} and then gives away {c}. "
             f"How many {item} does {name} have now?")
        r = (f"{name} starts with {a} {item}. After getting {b} more, {name} has {a} + {b} = {s1}. "
             f"After giving away {c}, {name} has {s1} - {c} = {s2}.")
        return q, r, s2
    if kind == 1:  # multiply then add
        a, b, c = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 20)
        s1, s2 = a * b, a * b + c
        q = (f"{name} buys {a} boxes with {b} {item} in each box, and finds {c} more {item}. "
             f"How many {item} does {name} have?")
        r = (f"The boxes hold {a} * {b} = {s1} {item}. "
             f"With the {c} found, {name} has {s1} + {c} = {s2}.")
        return q, r, s2
    if kind == 2:  # subtract then divide evenly
        k, per = rng.randint(2, 6), rng.randint(2, 10)
        c = rng.randint(1, 15)
        a = k * per + c
        s1 = a - c
        q = (f"{name} has {a} {item}, loses {c} of them, and shares the rest equally among {k} "
             f"friends. How many {item} does each friend get?")
        r = (f"After losing {c}, {name} has {a} - {c} = {s1} {item}. "
             f"Shared among {k} friends, each gets {s1} / {k} = {per}.")
        return q, r, per
    a, b, c = rng.randint(3, 30), rng.randint(3, 30), rng.randint(2, 5)  # add, multiply, subtract
    d = rng.randint(1, 10)
    s1, s2 = a + b, (a + b) * c
    s3 = s2 - d
    q = (f"{name} collects {a} {item} on Monday and {b} on Tuesday. By Friday the collection is "
         f"{c} times as large, and then {name} gives {d} away. How many {item} are left?")
    r = (f"On Monday and Tuesday {name} collects {a} + {b} = {s1} {item}. "
         f"{c} times as many is {s1} * {c} = {s2}. After giving {d} away, {s2} - {d} = {s3} are left.")
    return q, r, s3


def generate(seed: int = 0, n: int = TRAIN_SIZE + TEST_SIZE) -> list[tuple[str, str, int]]:
    """``n`` distinct (question, rationale, answer) triples, the same for the same seed."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        q, r, a = _problem(rng)
        if q not in seen:
            seen.add(q)
            out.append((q, r, a))
    return out
