"""The scorers: what a checkpoint's relevance to a target is measured by, one registry.

Pure data (no torch), so that the CLI can offer the names without loading a model stack; the
values are computed in one pass by `selection.loglik` and kept per example by
`selection.scoring`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mashup_core.errors import MashupError


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
