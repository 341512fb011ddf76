"""The mergekit comparison's inputs and configs, shared by tests/test_mergekit_parity.py and the
script that stores mergekit's outputs as fixtures (tests/data/mergekit/make_fixtures.py).

Inputs: a tiny Llama built from a config (no download) and three "finetunes" (the base plus
a seeded random Δ on every tensor), in float32 and in bfloat16. Each case is one mergekit
config over them; `{root}` stands for the folder the models are written to. Random methods
run at density 1 (their masks are then all ones); their masks are compared on their own,
drawn from the same generator state (test_mergekit_parity.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

MODEL_CONFIG = dict(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                    tie_word_embeddings=False)
FINETUNES = ("ft0", "ft1", "ft2")
SHARDS = {"base": None, "ft0": None, "ft1": "4KB", "ft2": "9KB"}  # a mix of one file and shards
WEIGHTS = (0.5, 0.3, 0.7)


def _models(names=FINETUNES, **per_model) -> list[dict]:
    out = []
    for i, name in enumerate(names):
        params = {k: v[i] if isinstance(v, (list, tuple)) else v for k, v in per_model.items()}
        out.append({"model": f"{{root}}/{name}", **({"parameters": params} if params else {})})
    return out


BASE = {"base_model": "{root}/base"}
CASES: dict[str, dict] = {
    "linear": {"merge_method": "linear", "models": _models(weight=WEIGHTS)},
    "task_arithmetic": {"merge_method": "task_arithmetic", **BASE,
                        "models": _models(weight=WEIGHTS), "parameters": {"lambda": 0.8}},
    "ties": {"merge_method": "ties", **BASE, "models": _models(weight=WEIGHTS, density=0.5)},
    "ties_unnormalized_rescaled": {
        "merge_method": "ties", **BASE, "models": _models(weight=WEIGHTS, density=[0.3, 0.5, 0.7]),
        "parameters": {"normalize": False, "rescale": True}},
    "ties_filtered_density": {
        "merge_method": "ties", **BASE, "models": _models(weight=WEIGHTS),
        "parameters": {"density": [{"filter": "mlp", "value": 0.3}, {"value": 0.8}]}},
    "dare_linear": {"merge_method": "dare_linear", **BASE,
                    "models": _models(weight=WEIGHTS, density=1.0)},
    "dare_ties": {"merge_method": "dare_ties", **BASE, "models": _models(weight=WEIGHTS, density=1.0)},
    "breadcrumbs": {"merge_method": "breadcrumbs", **BASE,
                    "models": _models(weight=WEIGHTS, density=0.6, gamma=0.05)},
    "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", **BASE,
                         "models": _models(weight=WEIGHTS, density=0.6, gamma=0.05)},
    "della": {"merge_method": "della", **BASE, "models": _models(weight=WEIGHTS, density=1.0)},
    "della_linear": {"merge_method": "della_linear", **BASE,
                     "models": _models(weight=WEIGHTS, density=1.0)},
    "sce": {"merge_method": "sce", **BASE, "models": _models(), "parameters": {"select_topk": 0.5}},
    "slerp_gradient": {"merge_method": "slerp", **BASE,
                       "models": [{"model": "{root}/base"}, {"model": "{root}/ft0"}],
                       "parameters": {"t": [0.0, 0.3, 1.0]}},
    "nuslerp": {"merge_method": "nuslerp", **BASE, "models": _models(FINETUNES[:2], weight=[0.4, 0.6])},
    "nuslerp_rows_no_base": {"merge_method": "nuslerp", "models": _models(FINETUNES[:2], weight=[1.0, 2.0]),
                             "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}},
    "multislerp": {"merge_method": "multislerp", **BASE, "models": _models(weight=WEIGHTS)},
    "karcher": {"merge_method": "karcher", "models": _models()},
    "model_stock": {"merge_method": "model_stock", **BASE, "models": _models()},
    "nearswap": {"merge_method": "nearswap", **BASE, "models": [{"model": "{root}/ft0"}],
                 "parameters": {"t": 0.01}},
}
# bf16 inputs are merged as our convention does (float32 compute, bf16 out) and, for these,
# also as a mergekit config without `dtype` is (in bf16 itself).
NATIVE_BF16 = ("ties", "task_arithmetic", "slerp_gradient", "multislerp")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def config_json() -> dict:
    from transformers import LlamaConfig

    return {**LlamaConfig(**MODEL_CONFIG).to_dict(), "architectures": ["LlamaForCausalLM"]}


def models(dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
    """The four input state dicts, in `dtype`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(LlamaConfig(**MODEL_CONFIG))
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    out = {"base": {k: v.to(dtype) for k, v in state.items()}}
    for i, name in enumerate(FINETUNES):
        gen = torch.Generator().manual_seed(10 + i)
        out[name] = {k: (v + 0.02 * torch.randn(v.shape, generator=gen)).to(dtype)
                     for k, v in state.items()}
    return out


def config(case: str, dtype_name: str, native: bool, root: Path) -> dict:
    """The case's mergekit config for inputs in `root` (our convention's dtypes unless
    `native`: then none, and mergekit computes in the inputs' dtype)."""
    text = json.dumps(CASES[case]).replace("{root}", str(root))
    data = json.loads(text)
    if not native:
        data |= {"dtype": "float32", "out_dtype": "bfloat16" if dtype_name == "bf16" else "float32"}
    return data


def write_models(states: dict[str, dict[str, torch.Tensor]], root: Path, config_json: dict,
                 shards: dict[str, str | None] = SHARDS) -> None:
    """Each state dict as a checkpoint folder (config.json + safetensors, sharded as given)."""
    from huggingface_hub import save_torch_state_dict

    for name, state in states.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config_json))
        kwargs = {"max_shard_size": shards[name]} if shards.get(name) else {}
        save_torch_state_dict(state, folder, **kwargs)


def fixture_key(case: str, native: bool) -> str:
    return f"{case}@native" if native else case
