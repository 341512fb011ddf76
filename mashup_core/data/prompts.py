"""Prompt formats: how a target's rows are shown to the model, one registry.

A format turns each `MCExample` into the row that scoring, training and evaluation all use;
it is applied once, where a workspace's targets load (`data.targets.load_target`), so the three
never see different text. Formats are pure functions of (example, tokenizer).

- `cloze`: the rows as they are (lm-eval's format): the prompt, then each answer's text.
- `chat`: the reference pipeline's format. The row becomes one user turn that gives the
  question, lists the choices with labels and asks for the label; it is rendered with the
  tokenizer's own chat template (`add_generation_prompt=True`), and the choices become the
  labels, the assistant's answer (gold unchanged, so accuracy is on the label). Labels are
  A, B, C, ... unless the row carries its benchmark's own labels (`meta["labels"]`, e.g. the
  ARC rows labelled 1-4), then those. MathQA's data letters its options a-e; its rows are shown
  with A-E like every other lettered row (the case is the only difference).
  A tokenizer without a chat template (the demo's character tokenizer, GPT-2) gets the plain
  lettered layout of `selection.loglik.letter_format_for` ("...\\nA. ...\\nB. ...\\nAnswer:"
  answered " A", " B"; lowercase on one line for the demo's characters); `describes` says which.

A formatted row says so (`meta["prompt_format"]`): formatting it again with the same format
returns it unchanged, with another format is an error, never a double wrap.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from mashup_core.data.targets import DatasetError, MCExample

DEFAULT_FORMAT = "cloze"
FORMAT_KEY = "prompt_format"  # the meta key marking a formatted row


class PromptFormatError(DatasetError):
    """An unknown prompt format, or rows formatted already in another one."""


FormatFn = Callable[[MCExample, object], MCExample]


@dataclass(frozen=True)
class PromptFormat:
    name: str
    fn: FormatFn
    summary: str
    needs_tokenizer: bool = True


PROMPT_FORMATS: dict[str, PromptFormat] = {}


def prompt_format(name: str, summary: str, *, needs_tokenizer: bool = True) -> Callable[[FormatFn], FormatFn]:
    def register(fn: FormatFn) -> FormatFn:
        PROMPT_FORMATS[name] = PromptFormat(name, fn, summary, needs_tokenizer)
        return fn

    return register


def check_format(name: str | None) -> str:
    """`name` if it is a known format (None: the default); else an error naming the choices."""
    name = DEFAULT_FORMAT if name is None else name
    if name not in PROMPT_FORMATS:
        raise PromptFormatError(f"prompt format {name!r} is not one of {', '.join(PROMPT_FORMATS)}")
    return name


# --- the formats --------------------------------------------------------------------------------


@prompt_format("cloze", "lm-eval's rows as they are: the prompt, then each answer's text",
               needs_tokenizer=False)
def _cloze(example: MCExample, tokenizer) -> MCExample:
    return example


# A cloze prompt's closing cue ("Question: ...\nAnswer:", Social IQA's "Q: ...\nA:"): the chat
# turn asks for the label itself, so the cue is dropped from the question.
_CUE = re.compile(r"\s*(?:Answer|A)\s*:\s*$")


def question_text(example: MCExample) -> str:
    """The row's prompt as a question: without the cloze cue at its end."""
    return _CUE.sub("", example.prompt).strip()


def choice_labels(example: MCExample) -> tuple[str, ...]:
    """The labels the choices are listed with: the row's own (its benchmark's, e.g. ARC's
    1-4) when it carries them, else A, B, C, ..."""
    own = example.meta.get("labels")
    if own and len(own) == len(example.choices):
        return tuple(str(label) for label in own)
    letters = string.ascii_uppercase
    if len(example.choices) > len(letters):
        raise PromptFormatError(f"{len(example.choices)} choices: more than there are letters")
    return tuple(letters[: len(example.choices)])


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def adds_bos(tokenizer) -> bool:
    """Whether encoding text prepends the BOS token (Llama, Gemma: yes; GPT-2, Qwen: no)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def user_turn(example: MCExample) -> str:
    """The chat format's user message: the question, the labelled choices, what to answer."""
    labels = choice_labels(example)
    kind = "number" if all(label.isdigit() for label in labels) else "letter"
    options = "\n".join(f"{label}. {choice.strip()}" for label, choice in zip(labels, example.choices,
                                                                              strict=True))
    return f"{question_text(example)}\n\n{options}\n\nAnswer with the {kind} of the correct option."


def render_chat(tokenizer, message: str) -> str:
    """One user turn in the tokenizer's chat template, ending with the generation prompt.

    Templates often write the BOS text themselves; a tokenizer that also prepends BOS when it
    encodes (as scoring and training encode every prompt) would then see two, so the template's
    is dropped here and the encoder's is the one BOS."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        text = text[len(bos):]
    return text


@prompt_format("chat", "a chat turn in the tokenizer's template listing labelled choices; the "
               "answer is the label (the reference pipeline's format)")
def _chat(example: MCExample, tokenizer) -> MCExample:
    labels = choice_labels(example)
    if has_chat_template(tokenizer):
        prompt, answers, rendering = render_chat(tokenizer, user_turn(example)), labels, "chat-template"
    else:
        prompt, answers = _lettered(example, labels, tokenizer)
        rendering = "lettered-fallback"
    return replace(example, prompt=prompt, choices=answers,
                   meta={**example.meta, FORMAT_KEY: "chat", "rendering": rendering})


def _lettered(example: MCExample, labels: tuple[str, ...], tokenizer) -> tuple[str, tuple[str, ...]]:
    """The plain lettered layout for a tokenizer without a chat template (evaluation's own)."""
    from mashup_core.selection.loglik import REFERENCE_LETTERS, letter_format_for

    fmt = letter_format_for(tokenizer)
    if fmt is not REFERENCE_LETTERS:  # the demo's character vocabulary: lowercase letters
        labels = tuple(label.lower() for label in labels)
    fmt = replace(fmt, letters=labels)  # any sequence of labels: the layout zips them with the choices
    shown = replace(example, prompt=question_text(example), choices=tuple(c.strip() for c in example.choices))
    return fmt.prompt(shown), tuple(fmt.letter_prefix + label for label in labels)


# --- applying a format --------------------------------------------------------------------------


def format_examples(examples: Sequence[MCExample], name: str | None, tokenizer=None) -> list[MCExample]:
    """`examples` in prompt format `name` (None: cloze). Rows marked with this format already
    come back unchanged; rows marked with another are an error (never a double wrap)."""
    fmt = PROMPT_FORMATS[check_format(name)]
    done = {ex.meta.get(FORMAT_KEY) for ex in examples} - {None}
    if done - {fmt.name}:
        raise PromptFormatError(f"these rows are in prompt format {', '.join(sorted(done))} already; "
                                f"load them as they are rather than as {fmt.name!r}")
    if fmt.needs_tokenizer and tokenizer is None:
        raise PromptFormatError(f"prompt format {fmt.name!r} needs the base model's tokenizer")
    return [ex if ex.meta.get(FORMAT_KEY) == fmt.name else fmt.fn(ex, tokenizer) for ex in examples]


def describes(name: str | None, tokenizer=None) -> str:
    """One line for a page or the CLI: what format `name` shows this tokenizer's model."""
    fmt = PROMPT_FORMATS[check_format(name)]
    if fmt.name != "chat" or tokenizer is None:
        return f"{fmt.name}: {fmt.summary}"
    if has_chat_template(tokenizer):
        return "chat: one user turn in the base model's chat template, the choices listed A, B, ...; the answer is the label"
    return ("chat: the base model's tokenizer has no chat template, so the prompt is the plain lettered "
            "layout (question, 'A. ...' per choice, 'Answer:'), answered with the label")
