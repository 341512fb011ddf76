"""Store mergekit 0.1.5's outputs on the tiny inputs of tests/mergekit_cases.py as fixtures,
so tests/test_mergekit_parity.py compares against mergekit without it installed.

    .venv/bin/pip install mergekit==0.1.5   # beside this project's dependencies
    .venv/bin/python tests/data/mergekit/make_fixtures.py

Writes parity_fp32.safetensors and parity_bf16.safetensors here: `inputs/<model>/<tensor>`
(the models merged) and `outputs/<case>/<tensor>` (mergekit's result; `<case>@native` for a
bf16 config without `dtype`), plus cases.json (configs, versions, the model config).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for mergekit_cases

import mergekit_cases as cases  # noqa: E402


def run_mergekit(config: dict, out: Path) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(config), str(out),
              MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
    return {k: v for f in sorted(out.glob("*.safetensors")) for k, v in load_file(f).items()}


def main() -> None:
    from importlib.metadata import version

    import mergekit  # noqa: F401

    meta = {"mergekit": version("mergekit"), "torch": torch.__version__,
            "model_config": cases.config_json(), "cases": cases.CASES,
            "native_bf16": list(cases.NATIVE_BF16)}
    for dtype_name, dtype in cases.DTYPES.items():
        states = cases.models(dtype)
        tensors = {f"inputs/{m}/{k}": v for m, state in states.items() for k, v in state.items()}
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            cases.write_models(states, root, cases.config_json())
            for case in cases.CASES:
                for native in (False, True) if dtype_name == "bf16" and case in cases.NATIVE_BF16 else (False,):
                    key = cases.fixture_key(case, native)
                    merged = run_mergekit(cases.config(case, dtype_name, native, root), root / f"out-{key}")
                    tensors |= {f"outputs/{key}/{k}": v.contiguous() for k, v in merged.items()}
                    print(f"{dtype_name} {key}: {len(merged)} tensors", file=sys.stderr)
        save_file(tensors, HERE / f"parity_{dtype_name}.safetensors", metadata=None)
    (HERE / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
