"""The demo world's task suite: 8 seeded multiple-choice tasks that stand in for the paper's
8 benchmarks.

The suite is built so that relevance exists and can be seen:
- obvious donors: `tail` (last two letters, reversed) is a piece of `rev`; `min` is the first
  letter of `sort`; `dmax` is the last digit of `dsort`.
- a known trap: for `dsort`, the letter-sorting adapter answers confidently in letters, so
  loss-based selection can rank it below the base model and prefer an unrelated donor.
  We keep it because it teaches that relevance scores can mislead.
- `count` is hard for a model this small (adapters stay well below 0.95): a realistic
  "weak checkpoint" in the library.
No mod-10 arithmetic: a rank-8 LoRA on a 0.5M-parameter model does not learn it.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

from mashup_core.data.examples import MCExample

LETTERS = "abcdefghijklmnop"  # a short alphabet keeps the tiny model's job learnable
DIGITS = string.digits
N_CHOICES = 4

# What each task asks, in words; the dashboard shows these.
DESCRIPTIONS = {
    "rev": "reverse a string of letters",
    "tail": "the last two letters, reversed",
    "sort": "sort the letters",
    "min": "the smallest letter",
    "dsort": "sort the digits",
    "dmax": "the largest digit",
    "shift": "shift every letter one step forward",
    "count": "how many times the first letter occurs",
}
TASKS = tuple(DESCRIPTIONS)
SPLITS = {"train": 0, "validation": 1, "test": 2}


def _word(rng: random.Random, alphabet: str, lo: int = 4, hi: int = 6) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _distinct_word(rng: random.Random, alphabet: str, lo: int = 4, hi: int = 6) -> str:
    return "".join(rng.sample(alphabet, rng.randint(lo, hi)))


def _shuffled(rng: random.Random, s: str) -> str:
    chars = list(s)
    rng.shuffle(chars)
    return "".join(chars)


def _choices(rng: random.Random, gold: str, distractors: list[str], fill: Callable[[], str]):
    """Gold plus three distinct distractors (hand-made first, random `fill` after), shuffled."""
    options = [gold]
    for d in distractors:
        if d not in options and len(options) < N_CHOICES:
            options.append(d)
    while len(options) < N_CHOICES:
        d = fill()
        if d not in options:
            options.append(d)
    rng.shuffle(options)
    return tuple(options), options.index(gold)


def _rev(rng):
    w = _distinct_word(rng, LETTERS)
    gold = w[::-1]
    return w, gold, [w, w[1:][::-1] + w[0], gold[1:] + gold[0]], lambda: _shuffled(rng, w)


def _tail(rng):
    w = _distinct_word(rng, LETTERS)
    gold = w[-1] + w[-2]
    return w, gold, [w[-2:], w[:2], w[1] + w[0]], lambda: "".join(rng.sample(w, 2))


def _sorting(alphabet: str):
    def generate(rng):
        w = _distinct_word(rng, alphabet)
        gold = "".join(sorted(w))
        return w, gold, [w, gold[::-1]], lambda: _shuffled(rng, w)

    return generate


def _extreme(alphabet: str, pick, opposite):
    """The smallest/largest symbol; the opposite extreme is the first distractor."""

    def generate(rng):
        w = _distinct_word(rng, alphabet)
        return w, pick(w), [opposite(w), w[0], w[-1]], lambda: rng.choice(w)

    return generate


def _shift_by(w: str, k: int) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + k) % len(LETTERS)] for c in w)


def _shift(rng):
    w = _distinct_word(rng, LETTERS[:-2], 3, 5)
    gold = _shift_by(w, 1)
    return w, gold, [w, _shift_by(w, 2), _shift_by(w, -1)], lambda: _shift_by(_shuffled(rng, w), 1)


def _count(rng):
    pool = rng.sample(LETTERS, 3)
    w = "".join(rng.choice(pool) for _ in range(rng.randint(4, 7)))
    gold = str(w.count(w[0]))
    return w, gold, [], lambda: str(rng.randint(1, 7))


GENERATORS: dict[str, Callable] = {
    "rev": _rev, "tail": _tail, "sort": _sorting(LETTERS), "min": _extreme(LETTERS, min, max),
    "dsort": _sorting(DIGITS), "dmax": _extreme(DIGITS, max, min), "shift": _shift, "count": _count,
}


def prompt_for(task: str, operand: str) -> str:
    """The prompt format shared by pretraining (bare prompts) and every task."""
    return f"{task}:{operand}="


def generate_splits(task: str, sizes: dict[str, int], seed: int) -> dict[str, list[MCExample]]:
    """Seeded examples of `task` for each split in `sizes`; same arguments, same examples.

    Operands never repeat across splits: held-out splits are drawn first (each from its own
    stream, so validation does not change when train grows) and train avoids them, so
    accuracy on validation measures the skill, not memory.
    """
    if task not in GENERATORS:
        raise KeyError(f"unknown demo task {task!r}; known: {', '.join(TASKS)}")
    order = sorted(sizes, key=lambda split: -SPLITS.get(split, -1))  # test, validation, train
    seen: set[str] = set()
    out: dict[str, list[MCExample]] = {}
    for split in order:
        rng = random.Random(f"{task}/{seed}/{split}")
        examples: list[MCExample] = []
        attempts = 0
        while len(examples) < sizes[split]:
            attempts += 1
            if attempts > 200 * sizes[split]:
                raise RuntimeError(f"task {task}: cannot draw {sizes[split]} distinct operands")
            operand, gold, distractors, fill = GENERATORS[task](rng)
            if operand in seen:
                continue
            seen.add(operand)
            choices, gold_idx = _choices(rng, gold, distractors, fill)
            meta = {"task": task, "operand": operand}
            examples.append(MCExample(prompt_for(task, operand), choices, gold_idx, meta))
        out[split] = examples
    return {split: out[split] for split in sizes}
