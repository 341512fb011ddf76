"""The reference pipeline's user messages, one per benchmark, byte for byte.

github 2son1a/mashup-learning, src/mashup/dataset_transforms.py, turns each row of the paper's
eight benchmarks into a chat conversation: one user message that shows the question and its
labelled choices and asks for the label, answered by the label alone. The wording differs per
benchmark (PIQA's "Goal:", HellaSwag's "Context:", no trailing "Answer:" for Winogrande and
MathQA, Social IQA's numbers 1-3, Winogrande's 0/1, MathQA's own options string with letters
a-e). These functions read a row in its Hub schema, as the reference's do, and return the same
string; `data.prompts`' `reference` format renders it with the base's chat template.

Each returns a `ReferenceTurn`: the user message, the labels of the choices in order, and the
gold choice's index (the assistant's answer is `labels[gold]`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mashup_core.data.examples import DatasetError, parse_mathqa_options


@dataclass(frozen=True)
class ReferenceTurn:
    user: str
    labels: tuple[str, ...]
    gold: int

    @property
    def answer(self) -> str:
        return self.labels[self.gold]


ASK = "Answer the question below by choosing the correct choice.\n\n"


def _letter_instruction(letters: str) -> str:
    return ("You must respond with the letter corresponding to the correct "
            f"choice ({letters}) without any explanation. Answer:")


def _listed(labels: Sequence[Any], texts: Sequence[Any]) -> str:
    # The reference zips without strict=True: a row with more labels than texts lists the shorter.
    return "\n".join(f"{label}: {text}" for label, text in zip(labels, texts, strict=False))


def _gold(labels: Sequence[str], answer: Any, field: str) -> int:
    answer = str(answer)
    if answer not in labels:
        raise DatasetError(f"field '{field}': {answer!r} is not one of the labels {list(labels)}")
    return list(labels).index(answer)


def _labelled_choices(row: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    choices = row["choices"]
    return [str(label) for label in choices["label"]], list(choices["text"])


def arc_easy(row: Mapping[str, Any]) -> ReferenceTurn:
    labels, texts = _labelled_choices(row)
    user = (ASK + f"Question: {row['question']}\n\n" + f"Choices: {_listed(labels, texts)}\n\n"
            + _letter_instruction("A,B,C,D"))
    return ReferenceTurn(user, tuple(labels), _gold(labels, row["answerKey"], "answerKey"))


def piqa(row: Mapping[str, Any]) -> ReferenceTurn:
    user = (ASK + f"Goal: {row['goal']}\n\n" + f"Choices: A: {row['sol1']}\nB: {row['sol2']}\n\n"
            + _letter_instruction("A,B"))
    return ReferenceTurn(user, ("A", "B"), 0 if int(row["label"]) == 0 else 1)


def hellaswag(row: Mapping[str, Any]) -> ReferenceTurn:
    labels = ("A", "B", "C", "D")
    endings = list(row["endings"])
    choices = "\n".join(f"{labels[i]}: {ending}" for i, ending in enumerate(endings))
    user = ("Complete the context below by choosing the correct continuation.\n\n"
            f"Context: {row['ctx']}\n\n" f"Choices: {choices}\n\n" + _letter_instruction("A,B,C,D"))
    label = row["label"]
    if label == "" or label is None:
        raise DatasetError("field 'label': empty (an unlabeled test row; the reference drops these)")
    return ReferenceTurn(user, labels[: len(endings)], int(label))


def openbookqa(row: Mapping[str, Any]) -> ReferenceTurn:
    labels, texts = _labelled_choices(row)
    user = ("Complete the following passage or answer the question by choosing the correct "
            "choice.\n\n" f"Question: {row['question_stem']}\n\n"
            f"Choices: {_listed(labels, texts)}\n\n" + _letter_instruction("A,B,C,D"))
    return ReferenceTurn(user, tuple(labels), _gold(labels, row["answerKey"], "answerKey"))


def winogrande(row: Mapping[str, Any]) -> ReferenceTurn:
    user = (ASK + f"Question: {row['sentence']}\n\n"
            f"Choices: 0: {row['option1']}\n1: {row['option2']}\n\n"
            "You must respond with the number corresponding to the correct choice (0, 1) without "
            "any explanation.")
    answer = row["answer"]
    if answer == "" or answer is None:
        raise DatasetError("field 'answer': empty (an unlabeled test row; the reference drops these)")
    return ReferenceTurn(user, ("0", "1"), int(answer) - 1)


def social_iqa(row: Mapping[str, Any]) -> ReferenceTurn:
    choices = f"1: {row['answerA']}\n2: {row['answerB']}\n3: {row['answerC']}"
    user = (ASK + f"Context: {row['context']}\n\n" f"Question: {row['question']}\n\n"
            f"Choices: {choices}\n\n"
            "You must respond with the number corresponding to the correct choice (1, 2, 3) "
            "without any explanation. Answer:")
    labels = ("1", "2", "3")
    return ReferenceTurn(user, labels, _gold(labels, str(row["label"]).strip(), "label"))


def mathqa(row: Mapping[str, Any]) -> ReferenceTurn:
    user = (ASK + f"Question: {row['Problem']}\n\n" f"Choices: {row['options']}\n\n"
            "You must respond with the letter corresponding to the correct choice (a, b, c, d, e) "
            "without any explanation.")
    try:  # the options string is shown as it is; its count says how many labels there are
        count = len(parse_mathqa_options(str(row["options"])))
    except ValueError as exc:
        raise DatasetError(f"field 'options': {exc}") from exc
    labels = tuple("abcde"[:count])
    return ReferenceTurn(user, labels, _gold(labels, row["correct"], "correct"))


def commonsense_qa(row: Mapping[str, Any]) -> ReferenceTurn:
    labels, texts = _labelled_choices(row)
    user = (ASK + f"Question: {row['question']}\n\n" f"Choices: {_listed(labels, texts)}\n\n"
            "You must respond with the letter corresponding to the correct choice (A,B,C,D,E) "
            "without any explanation. Answer:")
    return ReferenceTurn(user, tuple(labels), _gold(labels, row["answerKey"], "answerKey"))


# lm-eval's benchmark names (`data.targets.BENCHMARKS`) -> the reference's transform.
REFERENCE_TURNS: dict[str, Callable[[Mapping[str, Any]], ReferenceTurn]] = {
    "arc_easy": arc_easy, "commonsense_qa": commonsense_qa, "hellaswag": hellaswag,
    "mathqa": mathqa, "openbookqa": openbookqa, "piqa": piqa, "social_iqa": social_iqa,
    "winogrande": winogrande,
}


def reference_turn(benchmark: str, row: Mapping[str, Any]) -> ReferenceTurn:
    """The reference's user message and labels for one row of `benchmark` in its Hub schema."""
    try:
        make = REFERENCE_TURNS[benchmark]
    except KeyError:
        raise DatasetError(f"the reference pipeline has no prompt for {benchmark!r}; it has "
                           f"{', '.join(REFERENCE_TURNS)}") from None
    try:
        return make(row)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"not a {benchmark} row in its Hub schema ({exc!r})") from exc
