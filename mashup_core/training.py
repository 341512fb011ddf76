"""Finetuning: one short, explicit training loop for pretraining, LoRA and full finetunes.

Batches are a pure function of (seed, step), so a run resumed at step s sees exactly the
batches it would have seen had it never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from mashup_core.tasks import MCExample

# The paper's LoRA: r=8, alpha=16, dropout 0, every linear projection of a Llama-style block.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    schedule: str = "cosine"  # or "constant"
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ALL_LINEAR

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
            target_modules=list(self.target_modules), task_type="CAUSAL_LM",
        )


@dataclass
class StepLog:
    step: int
    loss: float
    lr: float
    seconds: float  # wall-clock since training started, resumed segments included


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
    return [(ex.prompt, ex.answer) for ex in examples]


def collate(tokenizer, pairs: Sequence[Pair]) -> dict[str, torch.Tensor]:
    """Right-padded batch; the loss covers the answer tokens only (prompt and padding = -100)."""
    rows, label_rows = [], []
    for prompt, answer in pairs:
        prompt_ids = tokenizer(prompt)["input_ids"] if prompt else []
        full = tokenizer(prompt + answer)["input_ids"]
        if tokenizer.eos_token_id is not None:
            full = [*full, tokenizer.eos_token_id]
        rows.append(full)
        label_rows.append([-100] * len(prompt_ids) + full[len(prompt_ids):])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id or 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(rows, label_rows, strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


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
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
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
    device = next(model.parameters()).device
    state = state or new_state(model, cfg)
    model.train()
    started = time.perf_counter() - state.elapsed
    while state.step < cfg.steps:
        if should_stop is not None and should_stop():
            break
        idx = batch_indices(len(pairs), cfg.batch_size, cfg.seed, state.step)
        batch = {k: v.to(device) for k, v in collate(tokenizer, [pairs[i] for i in idx]).items()}
        loss = model(**batch).loss
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], cfg.grad_clip
            )
        lr = state.scheduler.get_last_lr()[0]
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.elapsed = time.perf_counter() - started
        log = StepLog(state.step, float(loss.detach()), lr, state.elapsed)
        state.history.append(log)
        if on_step is not None:
            on_step(state, log)
    model.eval()
    return state


def add_lora(model, spec: LoraSpec | None = None, adapter_name: str = "default") -> PeftModel:
    """Wrap `model` with a fresh trainable LoRA (seed torch first for reproducible init)."""
    return get_peft_model(model, (spec or LoraSpec()).peft_config(), adapter_name=adapter_name)
