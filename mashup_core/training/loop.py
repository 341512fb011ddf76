"""Finetuning: one short, explicit training loop for pretraining, LoRA and full finetunes.

Batches are a pure function of (seed, step), so a run resumed at step s sees exactly the
batches it would have seen had it never stopped. `fit` adds what a run needs around the
loop: the starting point (base or merged adapter), evaluation every N steps and
checkpoints (safetensors + JSON) every M.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from mashup_core import defaults
from mashup_core.data.examples import MCExample
from mashup_core.data.prompts import answer_text
from mashup_core.errors import MashupError
from mashup_core.models.batches import keep_last_logits, left_padded
from mashup_core.selection.loglik import evaluate_mc
from mashup_core.training.settings import (  # noqa: F401  (re-exported)
    ALL_LINEAR,
    FINETUNE_MODES,
    INIT_MODES,
    LoraSpec,
    TrainConfig,
)


@dataclass
class StepLog:
    step: int
    loss: float
    lr: float
    seconds: float  # wall-clock of the training steps so far, resumed segments included


@dataclass
class TrainState:
    """What a loop needs to continue: the optimiser, the schedule and where it stopped."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0
    elapsed: float = 0.0
    history: list[StepLog] = field(default_factory=list)


Pair = tuple[str, str]  # (prompt, answer); an empty prompt means plain language modelling


def as_pairs(examples: Sequence[MCExample]) -> list[Pair]:
    """(prompt, gold answer) rows. A reference-format row's answer is the whole assistant turn
    the template writes (the label and its end-of-turn tokens), as a chat-template trainer
    learns it; `encode_pairs` adds the EOS to every row."""
    return [(ex.prompt, answer_text(ex, ex.gold)) for ex in examples]


@dataclass(frozen=True)
class EncodedPair:
    """One training row's tokens: prompt + answer (+ EOS); the first `n_prompt` are not learned."""

    ids: list[int]
    n_prompt: int


def encode_pairs(tokenizer, pairs: Sequence[Pair], max_length: int | None = None) -> list[EncodedPair]:
    """Tokenise each pair once (a run reuses the rows for every step); with `max_length` (the
    model's context) a row that does not fit is refused, naming it."""
    from mashup_core.data.limits import MAX_CHARS_PER_TOKEN, TooLongError

    out = []
    for i, (prompt, answer) in enumerate(pairs):
        if max_length is not None and len(prompt) + len(answer) > max_length * MAX_CHARS_PER_TOKEN:
            raise TooLongError(f"training row {i + 1} ({prompt[:40]!r}...) is "
                               f"{len(prompt) + len(answer):,} characters: far more than the base "
                               f"model's context of {max_length} tokens")
        prompt_ids = tokenizer(prompt)["input_ids"] if prompt else []
        full = tokenizer(prompt + answer)["input_ids"]
        if tokenizer.eos_token_id is not None:
            full = [*full, tokenizer.eos_token_id]
        if max_length is not None and len(full) > max_length:
            raise TooLongError(f"training row {i + 1} ({prompt[:40]!r}...) is {len(full)} tokens "
                               f"with its answer, more than the base model's context of "
                               f"{max_length}; shorten the row")
        out.append(EncodedPair(full, len(prompt_ids)))
    return out


def collate(tokenizer, pairs: Sequence[Pair]) -> dict[str, torch.Tensor]:
    """Right-padded batch with HF-style labels, as a `Trainer` data collator gives them: the
    loss covers the answer tokens only (prompt and padding = -100)."""
    rows = encode_pairs(tokenizer, pairs)
    width = max(len(r.ids) for r in rows)
    pad = tokenizer.pad_token_id or 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row.ids)] = torch.tensor(row.ids)
        labels[i, row.n_prompt : len(row.ids)] = torch.tensor(row.ids[row.n_prompt:])
        mask[i, : len(row.ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@dataclass
class AnswerBatch:
    """Left-padded rows whose learned tokens all lie in the last `keep` - 1 columns."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor  # the last keep - 1 columns' tokens, -100 where not learned
    keep: int  # logit columns computed: from the one predicting the first learned token on
    count: int  # learned tokens (each row's first token is never one: nothing predicts it)


def answer_batch(rows: Sequence[EncodedPair], pad: int) -> AnswerBatch:
    """The batch `answer_loss` learns from: every row ends in the last column, so the answer
    tokens of all rows (short, whatever the prompt) sit in the last few columns."""
    input_ids, mask, positions = left_padded([r.ids for r in rows], pad)
    learned = [len(r.ids) - max(r.n_prompt, 1) for r in rows]
    keep = max(learned) + 1
    targets = torch.full((len(rows), keep - 1), -100, dtype=torch.long)
    for i, (row, n) in enumerate(zip(rows, learned, strict=True)):
        if n > 0:
            targets[i, keep - 1 - n:] = torch.tensor(row.ids[-n:])
    return AnswerBatch(input_ids, mask, positions, targets, keep, sum(max(n, 0) for n in learned))


def answer_loss(model, batch: AnswerBatch, device: torch.device) -> torch.Tensor:
    """Summed cross-entropy of the learned tokens, the output head run on the last `keep`
    columns only (HF's `model(labels=...).loss` runs it on every position, then drops most).
    Divided by `batch.count` it is that mean loss, with the same gradients."""
    out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                position_ids=batch.position_ids.to(device), use_cache=False,
                **keep_last_logits(model, batch.keep))
    logits = out.logits[:, -batch.keep:-1]  # column j predicts the token in column j + 1
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), batch.targets.to(device).reshape(-1),
        ignore_index=-100, reduction="sum")


def epoch_steps(epochs: float, n_items: int, batch_size: int) -> int:
    """Optimizer steps for `epochs` passes over `n_items` examples: ceil(epochs × n / batch)."""
    if not epochs > 0 or n_items < 1 or batch_size < 1:
        raise ValueError(f"epochs ({epochs}), examples ({n_items}) and batch size ({batch_size}) "
                         "must be positive")
    return max(1, math.ceil(epochs * n_items / batch_size))


def batch_indices(n_items: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The examples of batch `step`: one seeded permutation per epoch, read in order."""
    per_epoch = max(1, n_items // batch_size)
    epoch, offset = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_items, generator=gen)
    if n_items < batch_size:  # tiny datasets: sample with replacement instead
        return torch.randint(n_items, (batch_size,), generator=gen).tolist()
    return perm[offset * batch_size : (offset + 1) * batch_size].tolist()


def new_state(model, cfg: TrainConfig) -> TrainState:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    # The fused kernel (one launch for every parameter) exists for CUDA tensors only.
    fused = True if all(p.is_cuda for p in params) else None
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    warmup = math.ceil(cfg.warmup_ratio * cfg.steps)
    if cfg.schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, cfg.steps)
    elif cfg.schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}: use 'cosine' or 'constant'")
    return TrainState(optimizer, scheduler)


def train(
    model,
    tokenizer,
    pairs: Sequence[Pair],
    cfg: TrainConfig,
    state: TrainState | None = None,
    *,
    on_step: Callable[[TrainState, StepLog], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainState:
    """Train until `cfg.steps` (or `should_stop()`); `on_step` sees every step's log.

    Evaluation and checkpointing belong to the caller's `on_step`, so this loop stays the
    same for pretraining, the library's adapters and a mashup run.
    """
    if not pairs:
        raise ValueError("no training examples")
    if cfg.grad_accum < 1 or cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"grad_accum ({cfg.grad_accum}) must be at least 1 and divide "
                         f"batch_size ({cfg.batch_size})")
    from mashup_core.data.limits import context_length

    device = next(model.parameters()).device
    rows = encode_pairs(tokenizer, pairs, context_length(model))  # once: each step only pads
    pad = tokenizer.pad_token_id or 0
    state = state or new_state(model, cfg)
    if cfg.gradient_checkpointing:
        _set_checkpointing(model, True)
    model.train()
    try:
        while state.step < cfg.steps:
            if should_stop is not None and should_stop():
                break
            started = time.perf_counter()
            # The whole batch is still one function of (seed, step); accumulation only splits it.
            idx = batch_indices(len(pairs), cfg.batch_size, cfg.seed, state.step)
            loss = _accumulate_gradients(model, [rows[i] for i in idx], cfg.grad_accum, pad,
                                         device)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], cfg.grad_clip
                )
            lr = state.scheduler.get_last_lr()[0]
            state.optimizer.step()
            state.scheduler.step()
            state.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            loss_value = float(loss)  # also waits for the device, so the time is real
            # Only the steps count: pauses for evaluation or checkpoints in `on_step` do not.
            state.elapsed += time.perf_counter() - started
            log = StepLog(state.step, loss_value, lr, state.elapsed)
            state.history.append(log)
            if on_step is not None:
                on_step(state, log)
    finally:
        if cfg.gradient_checkpointing:
            _set_checkpointing(model, False)  # evaluation has no backward to save memory for
    model.eval()
    return state


def _set_checkpointing(model, enable: bool) -> None:
    """Turn activation (a.k.a. gradient) checkpointing on or off; a PeftModel passes it on.

    Non-reentrant checkpointing gives gradients to the LoRA weights inside each block although
    the block's input (from frozen embeddings) does not require grad. transformers 5 renamed
    the methods; 4.x only has the gradient_* names.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if enable:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


def _accumulate_gradients(model, rows: Sequence[EncodedPair], grad_accum: int, pad: int,
                          device: torch.device) -> torch.Tensor:
    """Backward over `rows` in `grad_accum` micro-batches; returns the batch's mean loss.

    Each micro-batch's summed loss is divided by the whole batch's learned tokens, so loss
    and gradients are those of the whole batch at once.
    """
    micro = len(rows) // grad_accum
    batches = [answer_batch(rows[i : i + micro], pad) for i in range(0, len(rows), micro)]
    total = sum(b.count for b in batches)
    loss = torch.zeros((), device=device)
    for b in batches:
        if b.count == 0:  # nothing to learn here
            continue
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device)):
            part = answer_loss(model, b, device) / total
        part.backward()
        loss += part.detach()
    return loss


def add_lora(model, spec: LoraSpec | None = None, adapter_name: str = "default") -> PeftModel:
    """Wrap `model` with a fresh trainable LoRA (seed torch first for reproducible init)."""
    return get_peft_model(model, (spec or LoraSpec()).peft_config(), adapter_name=adapter_name)


# --- Where training starts: the base, or a merged adapter (two ways), LoRA or full -----------



class TrainingError(MashupError):
    """A training setup that cannot work (bad init/finetune combination, mismatched checkpoint)."""


def uses_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def training_dtype(device: torch.device, finetune: str = "lora") -> torch.dtype:
    """Frozen LoRA bases sit in bf16 on a GPU; a full finetune keeps fp32 master weights and
    gets its bf16 speed from autocast, since AdamW updates vanish below bf16's precision."""
    return torch.bfloat16 if finetune == "lora" and uses_bf16(device) else torch.float32


def _from_base(base, adapter_dir: Path | None):
    return base


def _merged_fold(base, adapter_dir: Path | None):
    return PeftModel.from_pretrained(base, str(_need_adapter(adapter_dir))).merge_and_unload()


def _merged_continue(base, adapter_dir: Path | None):
    return PeftModel.from_pretrained(base, str(_need_adapter(adapter_dir)), is_trainable=True)


def _need_adapter(adapter_dir: Path | None) -> Path:
    if adapter_dir is None or not (Path(adapter_dir) / "adapter_config.json").exists():
        raise TrainingError(f"a merged initialisation needs a PEFT adapter folder; got {adapter_dir}")
    return Path(adapter_dir)


# init mode -> (base model, merged adapter dir) -> the model training starts from
INITIALIZERS: dict[str, Callable] = {
    "scratch": _from_base,
    "merged-fold": _merged_fold,  # merged LoRA folded into the base; a fresh LoRA trains on top
    "merged-continue": _merged_continue,  # the merged LoRA itself keeps training
}


def init_model(
    base,
    init: str = "scratch",
    *,
    adapter_dir: Path | None = None,
    lora: LoraSpec | None = None,
    finetune: str = "lora",
    seed: int = 0,
):
    """The model a run trains: `base` (consumed) set up per `init` and `finetune`."""
    if init not in INITIALIZERS:
        raise TrainingError(f"unknown init {init!r}; choose from {', '.join(INITIALIZERS)}")
    if finetune not in FINETUNE_MODES:
        raise TrainingError(f"unknown finetune {finetune!r}; choose from {', '.join(FINETUNE_MODES)}")
    if init == "merged-continue" and finetune == "full":
        raise TrainingError("init 'merged-continue' trains the merged LoRA, so it cannot be a full "
                            "finetune; use init 'merged-fold' with finetune 'full'")
    model = INITIALIZERS[init](base, adapter_dir)
    if finetune == "full":
        model.requires_grad_(True)
    elif not isinstance(model, PeftModel):
        torch.manual_seed(seed)  # the fresh LoRA's init
        model = add_lora(model, lora)
    return model


# --- Checkpoints: safetensors for tensors, JSON for the rest; never a pickle -----------------

CHECKPOINT_PREFIX = "step-"
TRAINER_FILE = "trainer.json"  # written last, so its presence marks a complete checkpoint


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(ckpt_root: Path, model, state: TrainState, keep: int = 2) -> Path:
    """Weights being trained, optimiser and schedule, step and time, in `ckpt_root/step-N`.

    Written to a temporary folder and renamed, so a kill mid-write leaves the previous
    checkpoint as the latest, never half of a new one.
    """
    out = Path(ckpt_root) / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    opt = state.optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, slots in opt["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, tmp / "optimizer.safetensors")
    trainer = {"format": 1, "step": state.step, "elapsed": state.elapsed,
               "param_groups": opt["param_groups"], "scalars": scalars,
               "scheduler": state.scheduler.state_dict()}
    (tmp / TRAINER_FILE).write_text(json.dumps(trainer, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return out


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / TRAINER_FILE).exists()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    return int(Path(path).name.removeprefix(CHECKPOINT_PREFIX))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def load_checkpoint(path: Path, model, state: TrainState) -> None:
    """Put `model` and `state` back where `save_checkpoint` left them."""
    path = Path(path)
    weights = load_file(path / "trainable.safetensors")
    expected = trainable_state(model)
    if weights.keys() != expected.keys():
        missing = sorted(expected.keys() - weights.keys())[:3]
        raise TrainingError(
            f"checkpoint {path} does not fit this model (e.g. missing {missing}); was the "
            "spec changed after it was written? Delete its checkpoints folder to start over."
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    trainer = json.loads((path / TRAINER_FILE).read_text())
    tensors = load_file(path / "optimizer.safetensors")
    slots: dict[int, dict] = {}
    for key, value in [*tensors.items(), *trainer["scalars"].items()]:
        idx, _, name = key.partition(".")
        if idx != "rng":
            slots.setdefault(int(idx), {})[name] = value
    state.optimizer.load_state_dict({"state": slots, "param_groups": trainer["param_groups"]})
    state.scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    state.step, state.elapsed = trainer["step"], trainer["elapsed"]


# --- A run's loop: train, evaluate every N steps, checkpoint every M -------------------------


@dataclass
class FitSchedule:
    eval_every: int = defaults.EVAL_EVERY
    # Set: evaluate at these steps instead of every `eval_every` (e.g. 10 evenly spaced
    # evaluations per epoch, as the reference saves and evaluates its checkpoints).
    eval_at: tuple[int, ...] = ()
    checkpoint_every: int = defaults.CHECKPOINT_EVERY
    eval_batch_size: int = defaults.EVAL_BATCH_SIZE
    keep_checkpoints: int = 2


@dataclass
class FitOutcome:
    state: TrainState
    evals: list[dict]  # the evaluation records written by this call
    stopped: bool  # `should_stop` ended it before cfg.steps
    resumed_from: int  # step of the checkpoint it started from (0: a fresh start)
    eval_seconds: float


def fit(
    model,
    tokenizer,
    pairs: Sequence[Pair],
    validation: Sequence[MCExample],
    cfg: TrainConfig,
    schedule: FitSchedule | None = None,
    *,
    checkpoint_dir: Path | None = None,
    on_record: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> FitOutcome:
    """Train with evaluation and checkpoints; continue from `checkpoint_dir`'s latest, if any.

    `on_record` receives one record per step (phase 'train': step, seconds, loss, lr) and one
    per evaluation (phase 'eval': acc, acc_norm, nll and the mean training loss since the last
    one). Step 0's evaluation is the initialisation itself; the last step is always evaluated
    and checkpointed, and so is the step where `should_stop` ends it. A resumed fit emits
    nothing for steps up to its checkpoint, which the caller already has.
    """
    schedule = schedule or FitSchedule()
    emit = on_record or (lambda _record: None)
    state = new_state(model, cfg)
    ckpt = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        load_checkpoint(ckpt, model, state)
    resumed_from, saved_at, window = state.step, state.step, []
    evals: list[dict] = []
    eval_seconds = 0.0

    def evaluate(step: int) -> None:
        nonlocal eval_seconds
        started = time.perf_counter()
        result = evaluate_mc(model, tokenizer, validation, schedule.eval_batch_size)
        eval_seconds += time.perf_counter() - started
        loss = sum(window) / len(window) if window else None
        window.clear()
        record = {"step": step, "seconds": round(state.elapsed, 4), "phase": "eval",
                  "loss": loss, **result.as_dict()}
        evals.append(record)
        emit(record)
        bar.set_postfix(acc=f"{result.acc:.3f}")

    def checkpoint() -> None:
        nonlocal saved_at
        if checkpoint_dir is not None and state.step > saved_at:
            save_checkpoint(checkpoint_dir, model, state, schedule.keep_checkpoints)
            saved_at = state.step

    def on_step(st: TrainState, log: StepLog) -> None:
        window.append(log.loss)
        emit({"step": log.step, "seconds": round(log.seconds, 4), "phase": "train",
              "loss": log.loss, "lr": log.lr})
        bar.update(1)
        due = log.step in schedule.eval_at if schedule.eval_at else log.step % schedule.eval_every == 0
        if due or log.step == cfg.steps:
            evaluate(log.step)
        if log.step % schedule.checkpoint_every == 0 or log.step == cfg.steps:
            checkpoint()

    with tqdm(total=cfg.steps, initial=state.step, desc="train", disable=not progress) as bar:
        if state.step == 0:
            evaluate(0)
        state = train(model, tokenizer, pairs, cfg, state, on_step=on_step, should_stop=should_stop)
    stopped = state.step < cfg.steps
    if stopped:
        checkpoint()  # a cancelled run resumes where it stopped, not at its last checkpoint
    return FitOutcome(state, evals, stopped, resumed_from, eval_seconds)
