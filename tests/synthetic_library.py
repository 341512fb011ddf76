"""A large synthetic LoRA library around a few related adapters (halving tests and benchmark).

From a folder of real adapters (the demo world's, trained on its tasks: the "related" ones)
it writes `size` PEFT adapters with the same config: the real ones, noisy copies of them (each
weight plus Gaussian noise at a fraction of its own spread: near-relatives that compete with
the original for the top places) and random rank-r adapters (A and B drawn at the spread of
the real ones: unrelated checkpoints that move the model somewhere else). Only safetensors,
adapter_config.json and (for the related ones and their copies) the source's mashup_meta.json
are written; it takes about a second for 200.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def build_synthetic_library(related: list[Path], out: Path, size: int = 200, *,
                            copies_per_related: int = 4, seed: int = 0) -> list[Path]:
    """Write `size` adapter folders under `out`; returns them (the related ones first)."""
    out = Path(out)
    gen = torch.Generator().manual_seed(seed)
    folders: list[Path] = []

    def write(name: str, source: Path, tensors: dict[str, torch.Tensor], meta: bool = True) -> None:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "adapter_config.json", folder / "adapter_config.json")
        if meta and (source / "mashup_meta.json").exists():  # near-copies keep the source task
            shutil.copy(source / "mashup_meta.json", folder / "mashup_meta.json")
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  str(folder / "adapter_model.safetensors"))
        folders.append(folder)

    weights = {p: load_file(str(p / "adapter_model.safetensors")) for p in related}
    for p, w in weights.items():
        write(f"rel-{p.name}", p, w)
    for c in range(copies_per_related):
        for p, w in weights.items():
            if len(folders) >= size:
                break
            scale = 0.25 + 0.25 * c  # 0.25, 0.5, 0.75, 1.0 of each weight's own spread
            write(f"near-{p.name}-{c}", p, {
                k: v + scale * v.float().std() * torch.randn(v.shape, generator=gen) for k, v in w.items()})
    template, tw = related[0], weights[related[0]]
    spread = {k: float(v.float().std()) for k, v in tw.items()}
    config = json.loads((template / "adapter_config.json").read_text())
    assert config.get("peft_type") == "LORA", config.get("peft_type")
    i = 0
    while len(folders) < size:
        write(f"rand-{i:03d}", template, {
            k: spread[k] * torch.randn(v.shape, generator=gen) for k, v in tw.items()}, meta=False)
        i += 1
    return folders
