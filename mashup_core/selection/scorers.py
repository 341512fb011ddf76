"""The scorers: what a checkpoint's relevance to a target is measured by, one registry.

Pure data (no torch), so that the CLI can offer the names without loading a model stack; the
values are computed in one pass by `selection.loglik` and kept per example by
`selection.scoring`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mashup_core.errors import MashupError

if TYPE_CHECKING:
    from mashup_core.data.examples import MCExample


class ScoringError(MashupError):
    """Scoring cannot run or a selection cannot be made; the message says what to change."""


@dataclass(frozen=True)
class Scorer:
    name: str  # also the `ScoreRow` field that holds its value
    higher_is_better: bool
    label: str
    description: str
    # The per-example series a mean over examples is weighted by: token accuracy is pooled over
    # tokens (the reference sums hits and tokens over the sample), so an example weighs its
    # counted answer tokens. None: a plain mean over examples.
    weighted_by: str | None = None

    def mean(self, per: dict[str, Sequence[float]], indices: Iterable[int]) -> float:
        """This scorer on the examples at `indices`, from one row's per-example values."""
        indices = list(indices)
        values = per[self.name]
        if self.weighted_by is None:
            return math.fsum(values[i] for i in indices) / len(indices)
        weights = per[self.weighted_by]
        total = math.fsum(weights[i] for i in indices)
        return math.fsum(values[i] * weights[i] for i in indices) / total if total else 0.0

    def sort_key(self, value: float) -> float:
        """Smaller sorts first, whatever the direction."""
        return -value if self.higher_is_better else value

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b


SCORERS: dict[str, Scorer] = {
    s.name: s
    for s in (
        Scorer("nll", False, "answer NLL per token",
               "mean negative log-likelihood per token of the gold answer (the paper's text)"),
        Scorer("acc", True, "accuracy",
               "share of examples whose gold answer has the highest log-likelihood (lm-eval's acc)"),
        Scorer("acc_norm", True, "length-normalised accuracy",
               "accuracy with each choice's log-likelihood divided by its length in bytes (lm-eval)"),
        Scorer("token_acc", True, "token accuracy",
               "share of the gold answer's tokens that are the argmax over the whole vocabulary, "
               "teacher-forced, special and trailing whitespace tokens left out (the reference code)",
               weighted_by="answer_tokens"),
        Scorer("exact_match", True, "exact match",
               "share of examples whose every counted answer token is the argmax (the reference "
               "code's second number)"),
    )
}
# Per-example series kept beside the scorers' (the weights of pooled means).
AUXILIARY = ("answer_tokens",)
# What a run or a study can evaluate its checkpoints with: the scorers where higher is better
# (a curve that reaches the scratch run's final value defines training-to-parity).
EVAL_METRICS = tuple(s.name for s in SCORERS.values() if s.higher_is_better)


def get_scorer(name: str) -> Scorer:
    try:
        return SCORERS[name]
    except KeyError:
        raise ScoringError(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)}") from None


# --- what one scoring pass measures (no torch here: reading a stored table needs none) -----


@dataclass
class ChoiceScores:
    """Per example, per choice: summed answer log-probability and its length; and of the
    answer tokens token accuracy counts (`counted`), how many are the argmax over the whole
    vocabulary (`hits`), from the same forward."""

    logprobs: list[list[float]]
    num_tokens: list[list[int]]
    num_bytes: list[list[int]]
    hits: list[list[int]] | None = None
    counted: list[list[int]] | None = None


@dataclass
class MCResult:
    acc: float
    acc_norm: float
    nll: float  # mean over examples of the gold answer's per-token negative log-likelihood
    n: int
    correct: list[bool]
    # The reference pipeline's relevance: the share of the gold answers' counted tokens whose
    # teacher-forced argmax is the gold token, pooled over the examples' tokens; exact match:
    # the share of examples whose counted tokens are all right.
    token_acc: float = float("nan")
    exact_match: float = float("nan")
    answer_tokens: int = 0  # counted gold-answer tokens: token_acc's denominator

    def as_dict(self) -> dict[str, float]:
        return {"acc": self.acc, "acc_norm": self.acc_norm, "nll": self.nll,
                "token_acc": self.token_acc, "exact_match": self.exact_match, "n": self.n}


def mc_result(examples: Sequence[MCExample], scores: ChoiceScores) -> MCResult:
    correct, correct_norm, nlls = [], [], []
    for ex, lp, ntok, nbytes in zip(
        examples, scores.logprobs, scores.num_tokens, scores.num_bytes, strict=True
    ):
        correct.append(max(range(len(lp)), key=lp.__getitem__) == ex.gold)
        # acc_norm divides by the answer's length in bytes, as lm-eval does.
        normed = [v / max(b, 1) for v, b in zip(lp, nbytes, strict=True)]
        correct_norm.append(max(range(len(normed)), key=normed.__getitem__) == ex.gold)
        nlls.append(-lp[ex.gold] / max(ntok[ex.gold], 1))
    n = len(examples)
    token_acc, exact_match, answer_tokens = float("nan"), float("nan"), 0
    if scores.hits is not None and scores.counted is not None:
        gold_hits = [h[ex.gold] for ex, h in zip(examples, scores.hits, strict=True)]
        gold_counted = [c[ex.gold] for ex, c in zip(examples, scores.counted, strict=True)]
        answer_tokens = sum(gold_counted)
        # Pooled over tokens, as the reference sums correct and total tokens over the split;
        # an example with no counted token counts as no exact match (its denominator is n).
        token_acc = sum(gold_hits) / answer_tokens if answer_tokens else 0.0
        exact_match = sum(c > 0 and h == c for h, c in zip(gold_hits, gold_counted, strict=True)) / n
    return MCResult(
        acc=sum(correct) / n, acc_norm=sum(correct_norm) / n, nll=sum(nlls) / n, n=n,
        correct=correct, token_acc=token_acc, exact_match=exact_match, answer_tokens=answer_tokens,
    )
