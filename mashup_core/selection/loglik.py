"""Multiple-choice evaluation by answer log-likelihood, as lm-eval scores it.

Each example is one row: its prompt, then every choice's tokens but the last, each choice
seeing the prompt and its own earlier tokens only (a 4D attention mask), so the prompt runs
once for all choices in a single forward. On four-choice tasks with long prompts this is up to
4x less work than scoring each prompt+choice sequence separately, with the same numbers.
Prompt tokens shared by every example run once per adapter. `library_loglikelihoods` does this
for every adapter of a PEFT model in one pass over the examples (each tokenised once, batches
filled across adapters with PEFT's mixed-adapter rows), gathering the sums on the device and
copying them to the host once. Models whose attention takes no custom mask run each prompt
first and copy its KV cache to every choice.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mashup_core import defaults
from mashup_core.data.examples import DatasetError, MCExample
from mashup_core.data.prompts import (  # noqa: F401  (the letter layout, re-exported)
    CHAR_SAFE_LETTERS,
    PLAIN_LETTERS,
    LetterFormat,
    LetterPromptError,
    answer_text,
    counted_tokens,
    letter_format_for,
    special_ids,
    trim_answer,
)
from mashup_core.models.batches import cache_argument, keep_last_logits, left_padded, output_cache
from mashup_core.selection.scorers import ChoiceScores, MCResult, mc_result  # noqa: F401  (re-exported)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: encode the whole string, the continuation is what follows the context.

    Tokenising the two halves apart would change the tokens at the seam for BPE vocabularies.
    """
    ctx = tokenizer(context)["input_ids"]
    if not ctx:  # e.g. a WinoGrande blank at the start, with a tokenizer that adds no BOS
        # As lm-eval does: condition on the end-of-text token so the first answer token is scored.
        ctx = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        return ctx, tokenizer(continuation)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    return ctx, whole[len(ctx):]


@dataclass(frozen=True)
class EncodedExample:
    """One example's token ids as `encode_pair` splits them: the prompt once, each answer; and
    per answer token whether token accuracy counts it (`data.prompts.counted_tokens`)."""

    context: list[int]
    continuations: list[list[int]]
    num_bytes: list[int]
    counted: list[list[bool]]


def encode_examples(tokenizer, examples: Sequence[MCExample],
                    max_length: int | None = None) -> list[EncodedExample]:
    """Tokenise each example once (scoring a library reuses it for every adapter).

    A reference-format row's answer is cut from its whole conversation, as the reference
    pipeline cuts it: the tokens after the prompt's, less the template's closing ones. With
    `max_length` (the model's context), a row whose prompt and answer do not fit is refused
    with where it came from (`data.limits`), a grossly long one before it is tokenised."""
    from mashup_core.data.limits import check_lengths, check_tokens

    check_lengths(examples, max_length)
    specials = special_ids(tokenizer)
    out = []
    for index, ex in enumerate(examples):
        pairs = [encode_pair(tokenizer, ex.prompt, answer_text(ex, j)) for j in range(len(ex.choices))]
        continuations = [cont for _, cont in pairs]
        if ex.meta.get("turn"):
            continuations = [trim_answer(tokenizer, cont, specials) for cont in continuations]
        if not all(continuations):
            raise DatasetError(f"an answer of the row {ex.prompt[-60:]!r} has no tokens: "
                               f"{ex.choices!r}")
        for j, cont in enumerate(continuations):
            check_tokens(ex, index, len(pairs[0][0]) + len(cont), max_length, f"choice {j + 1}")
        out.append(EncodedExample(pairs[0][0], continuations,
                                  [len(choice.encode("utf-8")) for choice in ex.choices],
                                  [counted_tokens(tokenizer, c, specials) for c in continuations]))
    return out


@torch.no_grad()
def choice_loglikelihoods(
    model, tokenizer, examples: Sequence[MCExample], batch_size: int = defaults.EVAL_BATCH_SIZE
) -> ChoiceScores:
    return library_loglikelihoods(model, tokenizer, examples, None, batch_size)[0]


@torch.no_grad()
def library_loglikelihoods(
    model, tokenizer, examples: Sequence[MCExample], adapter_names: Sequence[str] | None,
    batch_size: int = defaults.EVAL_BATCH_SIZE, encoded: Sequence[EncodedExample] | None = None,
    max_batch_tokens: int | None = None,
) -> list[ChoiceScores]:
    """Per-choice log-likelihoods of every example under each adapter of a PEFT model.

    `adapter_names` are adapters loaded on `model` (a PeftModel in eval mode), "__base__" for
    the base model; they run in the same forwards: a forward whose rows span adapters is one of
    PEFT's mixed-adapter batches (each row carries its adapter), one with a single adapter's rows
    runs it as the active adapter (PEFT's plain path, a little faster). None scores `model` as
    it is and returns one result.

    Rows are (example, adapter) pairs, adapter by adapter, each adapter's examples sorted by
    prompt then answer length (length buckets: little padding). A forward holds at most
    `batch_size` rows and `max_batch_tokens` padded tokens (default: `default_batch_tokens`).
    Each row's prompt runs once for all its choices. The sums stay on the device until one
    copy to the host at the end.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = list(encoded) if encoded is not None else encode_examples(tokenizer, examples)
    names = list(adapter_names) if adapter_names is not None else [None]
    order = sorted(range(len(enc)), key=lambda i: (len(enc[i].context),
                                                   max(map(len, enc[i].continuations)), i))
    # Adapter-major: a forward holds one or two adapters' rows (PEFT runs each adapter's LoRA
    # on its sub-batch, so fewer adapters per forward is fewer small kernels), and batches
    # still run across adapter boundaries, so no forward is left part-empty.
    rows = [(i, a) for a in range(len(names)) for i in order]
    budget = max_batch_tokens or default_batch_tokens(device)
    packed = packs_choices(model, max(len(e.context) + sum(map(len, e.continuations)) for e in enc))
    prefix = _run_shared_prompt(model, enc, names, device) if packed else None
    sums: list[torch.Tensor] = []
    hits: list[torch.Tensor] = []
    for chunk in _batches(rows, [_row_width(enc[i]) for i, _ in rows], batch_size, budget):
        check_memory(model, len(chunk), max(_row_width(enc[i]) for i, _ in chunk), device)
        row_names = None if adapter_names is None else [names[a] for _, a in chunk]
        if row_names and len(set(row_names)) == 1 and row_names[0] != "__base__":
            # One adapter: PEFT's plain path (the mixed one gathers and scatters every LoRA
            # layer's rows and walks all modules per forward: ~10 % slower on a CPU).
            if model.active_adapter != row_names[0]:
                model.set_adapter(row_names[0])
            row_names = None
        batch = [enc[i] for i, _ in chunk]
        if packed:
            s_, h_ = _score_batch_packed(model, batch, pad, device, row_names, prefix,
                                         [a for _, a in chunk])
        else:
            s_, h_ = _score_batch_cached(model, batch, pad, device, row_names)
        sums.append(s_)
        hits.append(h_)
    # The one host sync: sums and hit counts together.
    flat, flat_hits = (torch.stack([torch.cat(sums), torch.cat(hits).to(sums[0].dtype)]).cpu().tolist()
                       if sums else ([], []))
    per: list[list[list[float] | None]] = [[None] * len(enc) for _ in names]
    per_hits: list[list[list[int] | None]] = [[None] * len(enc) for _ in names]
    r = 0
    for i, a in rows:
        k = len(enc[i].continuations)
        per[a][i] = flat[r : r + k]
        per_hits[a][i] = [round(h) for h in flat_hits[r : r + k]]
        r += k
    counted = [[sum(c) for c in e.counted] for e in enc]
    return [ChoiceScores(logprobs=per[a], num_tokens=[[len(c) for c in e.continuations] for e in enc],
                         num_bytes=[list(e.num_bytes) for e in enc], hits=per_hits[a],
                         counted=counted) for a in range(len(names))]


def batch_bytes(model, rows: int, width: int) -> int:
    """About what one scoring forward of `rows` × `width` tokens holds at its peak: the 4D mask
    (bool and additive), each layer's activations, and the logits of the kept columns (at most
    the whole row) with their float copy."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    hidden = getattr(config, "hidden_size", 1024)
    vocab = getattr(config, "vocab_size", 32000)
    element = next(model.parameters()).element_size()
    mask = rows * width * width * (1 + element)
    activations = rows * width * hidden * element * 12  # a block's q/k/v/o and MLP at once
    logits = rows * width * vocab * (element + 4)
    return mask + activations + logits


def check_memory(model, rows: int, width: int, device: torch.device) -> None:
    """Refuse a forward whose estimate exceeds the memory free on its device, before it runs
    (it would swap the machine to a halt or kill the process instead)."""
    need = batch_bytes(model, rows, width)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    if need > 0.9 * free:
        raise MemoryLimitError(
            f"a scoring forward of {rows} rows x {width} tokens needs about {need / 2**30:.1f} GiB "
            f"and {free / 2**30:.1f} GiB are free on {device.type}; lower the batch size, or "
            "shorten the rows")


class MemoryLimitError(DatasetError):
    """A forward that would not fit in the memory left."""


def default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per scoring forward. A CPU is fastest with activations that stay in its
    caches (a 7.6M-parameter Llama on 250-token prompts: 8 rows per forward 1.3 s, 64 rows
    2.3 s); a GPU wants large forwards."""
    return 16384 if device.type == "cuda" else 2048


def _row_width(enc: EncodedExample) -> int:
    """Tokens of a row: the prompt, then each choice but its last token (`_score_batch_packed`)."""
    return len(enc.context) + sum(max(len(c) - 1, 0) for c in enc.continuations)


def _batches(rows: list, widths: list[int], max_rows: int, max_tokens: int) -> list[list]:
    """Consecutive runs of `rows` of at most `max_rows` rows and `max_tokens` padded tokens
    (a row longer than the budget goes alone)."""
    out: list[list] = []
    widest = 0
    for row, width in zip(rows, widths, strict=True):
        if out and len(out[-1]) < max(1, max_rows) and max(widest, width) * (len(out[-1]) + 1) <= max_tokens:
            out[-1].append(row)
            widest = max(widest, width)
        else:
            out.append([row])
            widest = width
    return out


# Answer tokens that every choice of an example shares (the demo's character vocabulary starts
# each answer with a space token) join the prompt: they run and are read once, not once per
# choice. At most this many per row, so that the logit columns kept stay few.
MAX_SHARED_ANSWER_TOKENS = 4


def shared_answer_tokens(continuations: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all choices share, leaving each at least one of its own."""
    limit = min(min(len(c) for c in continuations) - 1, MAX_SHARED_ANSWER_TOKENS)
    n = 0
    while n < limit and all(c[n] == continuations[0][n] for c in continuations):
        n += 1
    return n


# A prompt start that every example shares (a task prefix, few-shot examples, a chat
# template's system turn) runs once per adapter when it is at least this long; shorter, the
# copies of its cache would cost more than they save.
MIN_SHARED_PROMPT_TOKENS = 4


@dataclass
class SharedPrompt:
    """The tokens every prompt starts with, run once: their cache holds one row per adapter."""

    length: int
    cache: Any

    def for_rows(self, adapter_rows: Sequence[int]):
        """A cache of the shared tokens for a batch, row r from adapter `adapter_rows[r]`.

        Selecting rows and the batch's forward both rebind each layer's tensors rather than
        write into them, so copies of the cache and of its layers keep ours intact; a deep
        copy would copy every adapter's rows for each batch.
        """
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        cache.batch_select_indices(torch.tensor(adapter_rows, device=cache.layers[0].keys.device))
        return cache


def _run_shared_prompt(model, enc: Sequence[EncodedExample], names: list, device) -> SharedPrompt | None:
    """Run the prompts' common first tokens once for every adapter in `names` (None: the model
    as it is); None if they are fewer than MIN_SHARED_PROMPT_TOKENS."""
    contexts = [e.context for e in enc]
    limit = min(len(c) for c in contexts) - 1  # each prompt keeps its last token: it predicts
    first, n = contexts[0], 0
    while n < limit and all(c[n] == first[n] for c in contexts):
        n += 1
    if n < MIN_SHARED_PROMPT_TOKENS:
        return None
    mixed = {} if names == [None] else {"adapter_names": list(names)}
    out = model(input_ids=torch.tensor([first[:n]] * len(names), device=device), use_cache=True,
                **keep_last_logits(model, 1), **mixed)
    return SharedPrompt(n, output_cache(out))


def packs_choices(model, width: int) -> bool:
    """Whether a row may hold its prompt and every choice under one 4D attention mask: the
    attention takes a custom mask (sdpa, eager) and no layer's sliding window is shorter than
    the row (the mask would replace the model's window, which we do not rebuild)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    window = getattr(config, "sliding_window", None)
    return window is None or window >= width


def _score_batch_packed(model, batch: Sequence[EncodedExample], pad, device, adapter_names=None,
                        prompt: SharedPrompt | None = None,
                        adapter_rows: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probabilities, and how many counted answer tokens are the argmax over
    the vocabulary, one each per (row, choice), flat, on `device`.

    One forward per batch: each row is its prompt, then every choice's tokens but the last,
    each choice seeing the prompt and its own earlier tokens only (a 4D mask) at the positions
    it would have alone. Its logits are read where they predict an answer token. With a
    `prompt` (shared by every row), its cache stands in for the rows' first tokens.
    """
    mixed = {} if adapter_names is None else {"adapter_names": list(adapter_names)}
    skip = prompt.length if prompt is not None else 0
    contexts = [e.context[skip:] for e in batch]
    continuations = [e.continuations for e in batch]
    shared = [shared_answer_tokens(c) for c in continuations]
    bodies, groups, positions = [], [], []
    # Per scored token: (row, position in the row that predicts it, token, output index, counted).
    row_of, pos_of, token_of, out_of, counted_of = [], [], [], [], []
    out = 0
    for r, (ctx, conts, s) in enumerate(zip(contexts, continuations, shared, strict=True)):
        for mask in batch[r].counted:
            counted_of += mask
        prompt_ids = ctx + conts[0][:s]
        body, group, pos = list(prompt_ids), [0] * len(prompt_ids), list(range(skip, skip + len(prompt_ids)))
        row_predictors = []
        for j, cont in enumerate(conts):
            start = len(body)
            rest = cont[s:]
            body += rest[:-1]
            group += [j + 1] * (len(rest) - 1)
            pos += range(skip + len(prompt_ids), skip + len(prompt_ids) + len(rest) - 1)
            predictors = ([len(ctx) - 1 + t for t in range(s)]  # the shared tokens, in the prompt
                          + [len(prompt_ids) - 1] + [start + t for t in range(len(rest) - 1)])
            row_predictors += predictors
            row_of += [r] * len(cont)
            token_of += cont
            out_of += [out + j] * len(cont)
        pos_of += [p - len(body) for p in row_predictors]  # from the row's end: rows end together
        out += len(conts)
        bodies.append(body)
        groups.append(group)
        positions.append(pos)
    ids, mask, _ = left_padded(bodies, pad)
    width = ids.shape[1]
    group = torch.full(ids.shape, -1, dtype=torch.long)  # -1: padding
    pos_ids = torch.zeros(ids.shape, dtype=torch.long)
    for r, (g, p) in enumerate(zip(groups, positions, strict=True)):
        group[r, width - len(g):] = torch.tensor(g)
        pos_ids[r, width - len(p):] = torch.tensor(p)
    # Key k is visible from query q if it comes no later and is the prompt or q's own choice;
    # padding sees itself only, so no attention row is empty (an empty one gives NaN).
    group = group.to(device)  # the mask is built where it is used: B x W x W is the big one
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    visible = causal & ((group[:, None, :] == 0) | (group[:, None, :] == group[:, :, None]))
    visible &= (group[:, None, :] >= 0)
    visible |= torch.eye(width, dtype=torch.bool, device=device)
    cache = None
    if prompt is not None:  # the shared tokens come first, seen by every position
        seen = torch.ones(len(bodies), width, skip, dtype=torch.bool, device=device)
        visible = torch.cat([seen, visible], dim=2)
        cache = prompt.for_rows(adapter_rows)
    dtype = next(model.parameters()).dtype
    additive = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(
        ~visible, torch.finfo(dtype).min)
    del visible
    keep = max(-p for p in pos_of)  # the columns whose logits are read, at the rows' end
    logits = model(
        input_ids=ids.to(device), attention_mask=additive[:, None],
        position_ids=pos_ids.to(device), **cache_argument(model, cache), use_cache=False,
        **keep_last_logits(model, keep), **mixed,
    ).logits[:, -keep:].float()
    del cache
    row_t = torch.tensor(row_of, device=device)
    col_t = torch.tensor(pos_of, device=device) + keep
    token_t = torch.tensor(token_of, device=device)
    picked = logits[row_t, col_t, token_t] - logits.logsumexp(-1)[row_t, col_t]
    hit = (logits.argmax(-1)[row_t, col_t] == token_t) & torch.tensor(counted_of, device=device)
    out_t = torch.tensor(out_of, device=device)
    return (torch.zeros(out, device=device).index_add_(0, out_t, picked),
            torch.zeros(out, dtype=torch.long, device=device).index_add_(0, out_t, hit.long()))


def _score_batch_cached(model, batch: Sequence[EncodedExample], pad, device,
                        adapter_names=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`_score_batch_packed` for models whose attention takes no custom mask (or has a sliding
    window): the prompts run first, their cache is copied to every choice, then the choices'
    tokens run."""
    mixed = {} if adapter_names is None else {"adapter_names": list(adapter_names)}
    contexts = [e.context for e in batch]
    continuations = [e.continuations for e in batch]
    n_ex = len(contexts)
    n_choices = [len(c) for c in continuations]
    # Left-pad prompts so every prompt ends at the same column and the cache lines up.
    ctx_ids, ctx_mask, ctx_pos = left_padded(contexts, pad)
    ctx_len = torch.tensor([len(c) for c in contexts])
    # Every prompt ends in the last column, and only that column's logits are read: with a
    # 262k-token vocabulary (Gemma 3) the others would dominate peak memory.
    first = model(
        input_ids=ctx_ids.to(device), attention_mask=ctx_mask.to(device),
        position_ids=ctx_pos.to(device), use_cache=True, **keep_last_logits(model, 1), **mixed,
    )
    last_logits = first.logits[:, -1].float()  # predicts each answer's 1st token
    last_lse = last_logits.logsumexp(-1)

    # One row per (example, choice); answers right-padded, so padding never precedes a token.
    repeats = torch.tensor(n_choices)
    flat = [cont for conts in continuations for cont in conts]
    ans_width = max(1, max(len(c) for c in flat))
    ans_ids = torch.full((len(flat), ans_width), pad, dtype=torch.long)
    ans_mask = torch.zeros((len(flat), ans_width), dtype=torch.long)
    counted = torch.zeros((len(flat), ans_width), dtype=torch.bool)
    masks = [m for e in batch for m in e.counted]
    for r, ids in enumerate(flat):
        ans_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        ans_mask[r, : len(ids)] = 1
        counted[r, : len(ids)] = torch.tensor(masks[r], dtype=torch.bool)
    row_example = torch.arange(n_ex).repeat_interleave(repeats).to(device)
    targets = ans_ids.to(device)
    tok_logp = torch.empty(ans_ids.shape, device=device)
    # Read in place, log p = logit - logsumexp: a log-softmax copy per choice would be a
    # vocabulary per row.
    tok_logp[:, 0] = last_logits[row_example, targets[:, 0]] - last_lse[row_example]
    tok_hit = torch.zeros(ans_ids.shape, dtype=torch.bool, device=device)
    tok_hit[:, 0] = last_logits.argmax(-1)[row_example] == targets[:, 0]
    del last_logits
    if ans_width > 1:
        # Token t of an answer is predicted by answer token t-1, so the last column is never
        # an input that matters: run all but it (one-token answers need no second pass at all).
        cache = output_cache(first)
        if all(k == n_choices[0] for k in n_choices):
            cache.batch_repeat_interleave(n_choices[0])
        else:
            cache.batch_select_indices(row_example)
        if mixed:
            mixed["adapter_names"] = [name for name, k in zip(adapter_names, n_choices, strict=True)
                                      for _ in range(k)]
        row_ctx_mask = ctx_mask.repeat_interleave(repeats, dim=0)
        row_ctx_len = ctx_len.repeat_interleave(repeats)
        ans_pos = row_ctx_len[:, None] + torch.arange(ans_width - 1)[None, :]
        second = model(
            input_ids=ans_ids[:, :-1].to(device),
            attention_mask=torch.cat([row_ctx_mask, ans_mask[:, :-1]], dim=1).to(device),
            position_ids=ans_pos.to(device), **cache_argument(model, cache), use_cache=False,
            **mixed,
        )
        # Only the logits are needed now: let the prompts' cache (one copy per choice) and, for
        # bf16 models, the bf16 logits go before the float copy is made.
        del first, cache
        logits = second.logits.float()
        del second
        tok_logp[:, 1:] = (logits.gather(2, targets[:, 1:, None]).squeeze(2)
                           - logits.logsumexp(-1))
        tok_hit[:, 1:] = logits.argmax(-1) == targets[:, 1:]
    return (tok_logp * ans_mask.to(device)).sum(1), (tok_hit & counted.to(device)).long().sum(1)


def evaluate_mc(model, tokenizer, examples: Sequence[MCExample], batch_size: int = defaults.EVAL_BATCH_SIZE) -> MCResult:
    """Accuracy, length-normalised accuracy, answer NLL, token accuracy and exact match of
    `model` on `examples`, from one forward per batch."""
    was_training = model.training
    model.eval()
    try:
        return mc_result(examples, choice_loglikelihoods(model, tokenizer, examples, batch_size))
    finally:
        model.train(was_training)


# --- Letter-prompt accuracy ---------------------------------------------------------------
# MMLU-style: show the options with letters and read the model's next-token preference among
# the letters only. It needs no answer scoring, but it only means something for models that
# learned the lettered format (instruction-tuned ones do; the demo's tiny models mostly do
# not), so it complements `evaluate_mc` rather than replacing it. (The reference pipeline's
# metric is `token_acc`: teacher-forced, over the whole vocabulary.)


def _letter_setup(tokenizer, fmt: LetterFormat, n_letters: int) -> tuple[str, list[int]]:
    """(suffix to add to each prompt, token id of each letter) — each letter one known token."""
    probe = fmt.prompt(MCExample("q", tuple("x" * n_letters), 0))
    for suffix, cont in (("", fmt.letter_prefix), (fmt.letter_prefix, "")):
        ids = [encode_pair(tokenizer, probe + suffix, cont + letter)[1] for letter in fmt.letters[:n_letters]]
        if all(len(t) == 1 and t[0] != tokenizer.unk_token_id for t in ids):
            return suffix, [t[0] for t in ids]
    raise LetterPromptError(
        f"the tokenizer cannot read the letters {fmt.letters[:n_letters]!r} as single known tokens "
        f"(after {fmt.letter_prefix!r}); use letter_format_for(tokenizer) or pass a LetterFormat "
        "whose letters are in its vocabulary"
    )


@torch.no_grad()
def letter_logits(
    model, tokenizer, examples: Sequence[MCExample], fmt: LetterFormat | None = None,
    batch_size: int = defaults.EVAL_BATCH_SIZE,
) -> list[list[float]]:
    """Per example, the next-token logit of each option's letter after the lettered prompt."""
    fmt = fmt or letter_format_for(tokenizer)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_letters = max(len(ex.choices) for ex in examples)
    suffix, letter_ids = _letter_setup(tokenizer, fmt, n_letters)
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            rows = [tokenizer(fmt.prompt(ex) + suffix)["input_ids"] for ex in batch]
            ids, mask, pos = left_padded(rows, pad)  # each prompt's last token: last column
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device),
                           **keep_last_logits(model, 1)).logits[:, -1].float()
            picked = logits[:, letter_ids].cpu().tolist()
            out.extend(row[: len(ex.choices)] for row, ex in zip(picked, batch, strict=True))
    finally:
        model.train(was_training)
    return out


def letter_accuracy(
    model, tokenizer, examples: Sequence[MCExample], fmt: LetterFormat | None = None,
    batch_size: int = defaults.EVAL_BATCH_SIZE,
) -> float:
    """Share of examples whose gold letter has the highest next-token logit among the letters.

    `fmt` defaults to `letter_format_for(tokenizer)`: "A. …\\nB. …\\nAnswer:" read at " A" for
    BPE tokenizers; lowercase letters on one line for the demo's character tokenizer.
    """
    scores = letter_logits(model, tokenizer, examples, fmt, batch_size)
    hits = [max(range(len(s)), key=s.__getitem__) == ex.gold for s, ex in zip(scores, examples, strict=True)]
    return sum(hits) / len(hits)
