"""Defaults in one place, each with its reason; the CLI, run specs, studies and pages read them.

A workspace can override the learning rate (`[defaults] lr` in mashup.toml): the demo world
does, because its 0.4M-parameter model needs a far larger step than a real LLM.
"""

from __future__ import annotations

SCORING_N = 256  # the reference code scores each checkpoint on the first 256 train examples
TOP_K = 2  # the reference code merges the two best checkpoints
SCORER = "acc"  # the reference code ranks by answer accuracy (the paper's text says loss)
MERGE_METHOD = "linear"  # the reference: equal-weight average of lora_A and lora_B
WEIGHT_STRATEGY = "equal"

# The paper sweeps LoRA lr over {5e-5, 1.6e-4, 2.7e-4, 3.8e-4, 5e-4} and full finetuning over
# {5e-6, 2.7e-5, 5e-5}, choosing the best per task; a single default takes the middle of each.
LEARNING_RATE = {"lora": 2.7e-4, "full": 2.7e-5}
LR_SWEEP = {"lora": (5e-5, 1.6e-4, 2.7e-4, 3.8e-4, 5e-4), "full": (5e-6, 2.7e-5, 5e-5)}

# The demo's tiny model is trained from scratch on characters: at 3e-4 it barely moves in the
# 150 steps a classroom can wait for, at 3e-3 its LoRA learns a task in ~100 steps.
DEMO_LEARNING_RATE = 3e-3


def learning_rate(finetune: str, workspace_lr: float | None = None) -> float:
    """The workspace's own lr if it sets one, else the paper's middle value for the mode."""
    if workspace_lr is not None:
        return workspace_lr
    if finetune not in LEARNING_RATE:
        raise ValueError(f"finetune must be one of {', '.join(LEARNING_RATE)}, got {finetune!r}")
    return LEARNING_RATE[finetune]
