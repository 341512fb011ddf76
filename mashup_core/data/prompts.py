"""Prompt formats: how a target's rows are shown to the model, one registry.

A format turns each `MCExample` into the row that scoring, training and evaluation all use;
it is applied once, where a workspace's targets load (`config.load_target`), so the three
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
  lettered layout of `letter_format_for` ("...\\nA. ...\\nB. ...\\nAnswer:"
  answered " A", " B"; lowercase on one line for the demo's characters); `describes` says which.
- `reference`: the reference pipeline's rows exactly (github 2son1a/mashup-learning). A benchmark
  row's user message is its benchmark's own, byte for byte (`data.reference`); any other row's is
  the chat format's generic one. The conversation (user turn, then the label as the assistant
  turn) is rendered with the base's chat template, or with a template file when the base has
  none (the reference falls back to a `chat_template.jinja`); no template is an error that says
  so. Each row keeps the text the template writes after the answer (`meta["turn"]`), so the
  answer tokens are cut from the whole conversation's tokens as the reference cuts them
  (`answer_tokens`): the full conversation's tokens after the generation prompt's, less the
  trailing special and whitespace-only tokens.

A formatted row says so (`meta["prompt_format"]`): formatting it again with the same format
returns it unchanged, with another format is an error, never a double wrap.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from mashup_core.data.examples import DatasetError, MCExample

DEFAULT_FORMAT = "cloze"
FORMAT_KEY = "prompt_format"  # the meta key marking a formatted row


class PromptFormatError(DatasetError):
    """An unknown prompt format, or rows formatted already in another one."""


FormatFn = Callable[[MCExample, object], MCExample]


# --- the lettered layout: options listed A. B. C. ..., then "Answer:" -----------------------------


class LetterPromptError(PromptFormatError):
    """The tokenizer cannot spell the lettered prompt (a letter is unknown or not one token)."""


@dataclass(frozen=True)
class LetterFormat:
    letters: str = "ABCDEFGHIJ"
    option: str = "\n{letter}. {choice}"
    answer: str = "\nAnswer:"
    # BPE vocabularies have " A" as one token, so the space belongs to the letter; for
    # character vocabularies the space is its own token and joins the prompt instead.
    letter_prefix: str = " "

    def prompt(self, ex: MCExample) -> str:
        if len(ex.choices) > len(self.letters):
            raise LetterPromptError(
                f"{len(ex.choices)} choices but only {len(self.letters)} letters "
                f"({self.letters!r}); pass a LetterFormat with more letters"
            )
        options = "".join(
            self.option.format(letter=letter, choice=choice)
            for letter, choice in zip(self.letters, ex.choices, strict=False)
        )
        return f"{ex.prompt}{options}{self.answer}"


# The MMLU-style lettered layout, and the same layout in characters the demo's char vocabulary
# has. (Not the reference pipeline's wording: that is the `reference` format.)
PLAIN_LETTERS = LetterFormat()
CHAR_SAFE_LETTERS = LetterFormat(letters="abcdefghij", option=" {letter}. {choice}", answer=" answer:")


def letter_format_for(tokenizer) -> LetterFormat:
    """The lettered layout if the tokenizer can spell it without unknown tokens, else the
    lowercase one-line layout (the demo's char tokenizer has no capitals or newlines)."""
    unk = tokenizer.unk_token_id
    probe = PLAIN_LETTERS.prompt(MCExample("q", ("x", "y"), 0)) + " " + PLAIN_LETTERS.letters
    if unk is None or unk not in tokenizer(probe)["input_ids"]:
        return PLAIN_LETTERS
    return CHAR_SAFE_LETTERS



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
    return _without_template_bos(tokenizer, text)


def _without_template_bos(tokenizer, text: str) -> str:
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
    fmt = letter_format_for(tokenizer)
    if fmt is not PLAIN_LETTERS:  # the demo's character vocabulary: lowercase letters
        labels = tuple(label.lower() for label in labels)
    fmt = replace(fmt, letters=labels)  # any sequence of labels: the layout zips them with the choices
    shown = replace(example, prompt=question_text(example), choices=tuple(c.strip() for c in example.choices))
    return fmt.prompt(shown), tuple(fmt.letter_prefix + label for label in labels)


class ChatTemplateError(PromptFormatError):
    """The reference format needs a chat template and the base's tokenizer has none."""


# Stands in for the answer while the whole conversation is rendered once per row: the text
# before it is the assistant turn's opening, the text after it what the template closes with.
_ANSWER_MARK = "\x00mashup-answer\x00"


def reference_turn_of(example: MCExample):
    """The reference's user message, labels and gold for a benchmark row (`data.reference`);
    for any other row the chat format's generic turn. The second value says which."""
    from mashup_core.data.reference import ReferenceTurn, reference_turn

    bench = example.meta.get("benchmark")
    if bench and example.source is not None:
        return reference_turn(bench, example.source), "benchmark"
    return ReferenceTurn(user_turn(example), choice_labels(example), example.gold), "generic"


@prompt_format("reference", "the reference pipeline's rows: each benchmark's own user message "
               "(a generic one for other rows) in the base's chat template, answered by the label")
def _reference(example: MCExample, tokenizer) -> MCExample:
    if not has_chat_template(tokenizer):
        raise ChatTemplateError(
            "prompt format 'reference' renders each row with the base model's chat template, and "
            "this tokenizer has none; give one as a file (`--chat-template FILE`, or [base] "
            "chat_template = \"FILE\" in mashup.toml), as the reference pipeline falls back to "
            "a chat_template.jinja")
    turn, rendering = reference_turn_of(example)
    user = {"role": "user", "content": turn.user}
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template([user, {"role": "assistant", "content": _ANSWER_MARK}],
                                          tokenize=False)
    if whole.count(_ANSWER_MARK) != 1:
        raise PromptFormatError("this chat template does not write the assistant's answer as it is "
                                "given (it changes or repeats it), so answer tokens cannot be cut "
                                "from the conversation")
    head, tail = whole.split(_ANSWER_MARK)
    turn_text = {"tail": tail} if head == prompt else {"head": _without_template_bos(tokenizer, head),
                                                       "tail": tail}
    return replace(example, prompt=_without_template_bos(tokenizer, prompt), choices=turn.labels,
                   gold=turn.gold, meta={**example.meta, FORMAT_KEY: "reference",
                                         "rendering": rendering, "user": turn.user,
                                         "turn": turn_text})


def answer_text(example: MCExample, choice: int) -> str:
    """The text after the prompt whose tokens hold the answer `choice`: the choice itself, or in
    a reference row the rest of the assistant turn as the template writes it (`answer_tokens`
    cuts the template's closing tokens off again)."""
    turn = example.meta.get("turn")
    if not turn:
        return example.choices[choice]
    head = turn.get("head")
    opening = head[len(example.prompt):] if head is not None and head.startswith(example.prompt) else ""
    return opening + example.choices[choice] + turn["tail"]


def special_ids(tokenizer) -> frozenset[int]:
    """Every special token id, with the chat-template tokens marked special only in
    `added_tokens_decoder` (Llama 3's <|eot_id|> on a base model): what the reference masks."""
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return frozenset(ids)


def counted_tokens(tokenizer, tokens: Sequence[int], specials: frozenset[int] | None = None) -> list[bool]:
    """Which answer tokens the reference's token accuracy counts: not special tokens, and not
    the whitespace-only tokens at the end (a chat turn's closing newline)."""
    specials = special_ids(tokenizer) if specials is None else specials
    counted = [t not in specials for t in tokens]
    end = len(tokens)
    while end > 0 and (tokens[end - 1] in specials or not tokenizer.decode([tokens[end - 1]]).strip()):
        end -= 1
    return counted[:end] + [False] * (len(tokens) - end)


def trim_answer(tokenizer, tokens: Sequence[int], specials: frozenset[int] | None = None) -> list[int]:
    """A reference row's answer tokens less the template's closing ones (trailing special and
    whitespace-only tokens), as the reference's `_tokenize_chat` masks them."""
    kept = counted_tokens(tokenizer, tokens, specials)
    end = len(kept)
    while end > 0 and not kept[end - 1]:
        end -= 1
    return list(tokens[:end])


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
    if fmt.name == "reference" and tokenizer is not None:
        if not has_chat_template(tokenizer):
            return ("reference: the base model's tokenizer has no chat template; give one with "
                    "--chat-template FILE ([base] chat_template in mashup.toml)")
        return ("reference: each benchmark's own user message from the reference pipeline, in the "
                "base model's chat template, answered by the label; rows that are not one of the "
                "8 benchmarks (demo tasks, your files) get the generic chat layout")
    if fmt.name != "chat" or tokenizer is None:
        return f"{fmt.name}: {fmt.summary}"
    if has_chat_template(tokenizer):
        return "chat: one user turn in the base model's chat template, the choices listed A, B, ...; the answer is the label"
    return ("chat: the base model's tokenizer has no chat template, so the prompt is the plain lettered "
            "layout (question, 'A. ...' per choice, 'Answer:'), answered with the label")
