"""What a finetune is asked to do: its settings, with no torch behind them.

Run specs, studies and the pages read and validate these without training anything, so they
live apart from the loop (`training.loop`, which re-exports them) and its imports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from mashup_core import defaults

if TYPE_CHECKING:
    from peft import LoraConfig

INIT_MODES = ("scratch", "merged-fold", "merged-continue")
FINETUNE_MODES = ("lora", "full")

# The paper's LoRA: r=8, alpha=16, dropout 0, every linear layer of each block. PEFT resolves
# "all-linear" per architecture (Llama's q/k/v/o/gate/up/down, Phi-3's fused qkv_proj and
# gate_up_proj, GPT-2's Conv1D c_attn/c_fc/c_proj, ...), never the output head.
ALL_LINEAR = "all-linear"


@dataclass
class TrainConfig:
    steps: int = defaults.TRAIN_STEPS
    batch_size: int = defaults.BATCH_SIZE
    lr: float = defaults.LEARNING_RATE["lora"]
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    schedule: str = "cosine"  # or "constant"
    seed: int = 0
    # Recompute each block's activations in the backward pass: less memory, ~1/3 more compute.
    gradient_checkpointing: bool = False
    # Micro-batches per optimizer step. The step still learns from `batch_size` examples (the
    # same ones, the same loss), run as `grad_accum` forwards of batch_size // grad_accum.
    grad_accum: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = ALL_LINEAR  # "all-linear" or module names

    def peft_config(self) -> LoraConfig:
        from peft import LoraConfig

        targets = self.target_modules
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
            target_modules=targets if isinstance(targets, str) else list(targets),
            task_type="CAUSAL_LM",
        )
