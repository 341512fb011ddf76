"""Defaults in one place, each with its reason; the CLI, run specs, studies and pages read them.

A workspace can override the learning rate (`[defaults] lr` in mashup.toml): the demo world
does, because its 0.4M-parameter model needs a far larger step than a real LLM. A merge
method's own parameters (density, ...) are kept with the method, in its registry. The values
the reference pipeline sets all at once are the study preset `reference` (`study.presets`).
`tests/test_defaults.py` fails when one of these is written again as a literal elsewhere.
"""

from __future__ import annotations

SCORING_N = 256  # the reference code scores each checkpoint on the first 256 train examples
TOP_K = 2  # the reference code merges the two best checkpoints
# lm-eval's multiple-choice accuracy: a clear, choice-level number for any target. The reference
# code ranks by teacher-forced token accuracy (`token_acc`), the paper's text by loss (`nll`).
SCORER = "acc"
# What runs and studies evaluate their checkpoints with (curves, parity, the best lr): lm-eval's
# acc by default; the reference evaluates with token_acc on the validation split.
EVAL_METRIC = "acc"
MERGE_METHOD = "linear"  # the reference: equal-weight average of lora_A and lora_B
WEIGHT_STRATEGY = "equal"
# The fraction of each task vector a pruning method (ties, dare_*, magnitude_prune) keeps when
# a run or a study does not say: the registry asks for one (mergekit's 1.0 prunes nothing);
# 0.5 is the middle of the DARE and TIES papers' sweeps, and what mergekit's examples use.
DENSITY = 0.5

# The paper sweeps LoRA lr over {5e-5, 1.6e-4, 2.7e-4, 3.8e-4, 5e-4} and full finetuning over
# {5e-6, 2.7e-5, 5e-5}, choosing the best per task; a single default takes the middle of each.
LEARNING_RATE = {"lora": 2.7e-4, "full": 2.7e-5}
LR_SWEEP = {"lora": (5e-5, 1.6e-4, 2.7e-4, 3.8e-4, 5e-4), "full": (5e-6, 2.7e-5, 5e-5)}

# The demo's tiny model is trained from scratch on characters: at 3e-4 it barely moves in the
# 150 steps a classroom can wait for, at 3e-3 its LoRA learns a task in ~100 steps.
DEMO_LEARNING_RATE = 3e-3

# A run's and a study cell's training: the reference's micro-batch, 100 steps (the demo's LoRA
# learns a task in ~100 steps at its lr; a room can wait for that), an evaluation every 10
# (a curve of ~10 points).
BATCH_SIZE = 32
TRAIN_STEPS = 100
EVAL_EVERY = 10
CHECKPOINT_EVERY = 20  # a resumable checkpoint every 2 evaluations: a kill loses <= 20 steps
# Rows per forward when scoring or evaluating: memory only, never the numbers (padding is
# masked), so every scoring and evaluation path shares one value.
EVAL_BATCH_SIZE = 32

# A leave-one-out study's grid unless told otherwise: three merge families (the reference's
# average, the exact low-rank sum, a sign-resolving one) at k = 1, 2, 3 (the paper's Fig. 3),
# scored on 64 train rows (enough on the demo world, a quarter of the reference's cost). The
# same quick n serves a weight search's objective and the cached tables' callers.
STUDY_METHODS = ("linear", "cat_svd", "ties")
STUDY_KS = (1, 2, 3)
STUDY_N = 64


def learning_rate(finetune: str, workspace_lr: float | None = None) -> float:
    """The workspace's own lr if it sets one, else the paper's middle value for the mode."""
    if workspace_lr is not None:
        return workspace_lr
    if finetune not in LEARNING_RATE:
        raise ValueError(f"finetune must be one of {', '.join(LEARNING_RATE)}, got {finetune!r}")
    return LEARNING_RATE[finetune]
