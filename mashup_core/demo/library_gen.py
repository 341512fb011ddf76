"""A synthetic library of N LoRA adapters for any base model: for scale tests and benchmarks.

Public libraries for one base are large (the Lots-of-LoRAs collection holds ~1,000 rank-16
adapters of Mistral-7B, one per Natural-Instructions task). This writes such a library in
seconds for a base folder (only its config is read: layer names and shapes on the `meta`
device): PEFT adapter folders of mixed ranks and target-module sets, random factors at the
spread a trained LoRA has, each with a model card whose front matter names its base, its
dataset (a source task) and tags, as Hub adapters carry them, and a `mashup_meta.json` with
its source task. The adapters are not trained: they move the model somewhere and make the
library as large and as mixed as a real one, which is what a scale test needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from mashup_core.models.library import base_shapes

# Target-module sets by what a layer's own name says (resolved per architecture).
MODULE_SETS = {
    "all-linear": None,  # every linear layer of the blocks (not the output head)
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query_key_value", "c_attn",
                  "dense", "c_proj"),
    "qv": ("q_proj", "v_proj", "query_key_value", "c_attn", "qkv_proj"),
}
HEAD_NAMES = ("lm_head", "embed_out", "output")


def write_synthetic_library(
    base: str | Path, out: str | Path, n: int, *, ranks: Sequence[int] = (4, 8, 16),
    module_sets: Sequence[str] = ("all-linear", "qv", "attention"), tasks: int = 0, seed: int = 0,
    dtype: torch.dtype = torch.float32, prefix: str = "adapter",
) -> list[Path]:
    """Write `n` adapter folders under `out` (`prefix`-0000, ...; names are unique across a
    workspace's sources, so a second library takes another prefix); returns them.

    Adapter i has rank `ranks[i % len(ranks)]`, targets `module_sets[(i // len(ranks)) %
    len(module_sets)]` and source task `task-{i % tasks}` (`tasks` = 0: one task each)."""
    shapes = base_shapes(base)
    layers = {name: io for name, io in shapes.layers.items()
              if not name.endswith(HEAD_NAMES) and "embed" not in name}
    out = Path(out)
    gen = torch.Generator().manual_seed(seed)
    folders = []
    for i in range(n):
        rank = ranks[i % len(ranks)]
        kind = module_sets[(i // len(ranks)) % len(module_sets)]
        wanted = MODULE_SETS[kind]
        chosen = {name: io for name, io in layers.items()
                  if wanted is None or name.rsplit(".", 1)[-1] in wanted}
        task = f"task-{i % tasks:04d}" if tasks else f"task-{i:04d}"
        folder = out / f"{prefix}-{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, (d_in, d_out) in chosen.items():
            # Kaiming-like A, and B at the small spread trained LoRA updates have.
            tensors[f"base_model.model.{name}.lora_A.weight"] = (
                torch.randn(rank, d_in, generator=gen) / d_in**0.5).to(dtype)
            tensors[f"base_model.model.{name}.lora_B.weight"] = (
                0.02 * torch.randn(d_out, rank, generator=gen)).to(dtype)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        targets = sorted({name.rsplit(".", 1)[-1] for name in chosen})
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
                  "lora_dropout": 0.0, "bias": "none", "target_modules": targets,
                  "base_model_name_or_path": str(base),
                  "fan_in_fan_out": any(n.endswith("c_attn") for n in chosen)}
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=1))
        (folder / "mashup_meta.json").write_text(json.dumps({"source_task": task, "final": True}))
        (folder / "README.md").write_text(model_card(str(base), task, rank, kind))
        folders.append(folder)
    return folders


def model_card(base: str, task: str, rank: int, modules: str) -> str:
    """A model card as Hub adapters carry them: YAML front matter, then a line of text."""
    return ("---\n"
            f"base_model: {base}\n"
            "library_name: peft\n"
            f"datasets:\n- {task}\n"
            f"tags:\n- lora\n- rank-{rank}\n- {modules}\n"
            "---\n\n"
            f"A synthetic rank-{rank} LoRA ({modules}) standing in for one trained on {task}.\n")
