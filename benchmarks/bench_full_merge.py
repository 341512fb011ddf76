"""Peak memory of the streamed full-checkpoint merge vs one checkpoint's size; prints JSON.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/bench_full_merge.py [--inputs 8]
        [--hidden 2048 --layers 5 --intermediate 5632 --vocab 8192] [--methods task_arithmetic ties]

A Llama of ≥ 1 GB in float32 (1.16 GB by default: 290M parameters, its largest tensor 6 % of
it, about Llama-2-7B's 2 %) is built from a config (random init) and saved in 400 MB shards;
`--inputs` "finetuned" copies (base + 0.01·N(0,1) on every tensor) are written shard by shard in
300 MB shards, so their shards do not line up with the base's. Then, each in a fresh process:
- `streamed`: `merge_full_checkpoints` of all inputs (per method), written in 500 MB shards;
- `naive`: every state dict loaded whole (`safetensors.torch.load_file`), then the same
  task_arithmetic per tensor with PEFT's function, as one would write it in memory. It loads
  fewer inputs when all of them would not fit in the memory this machine has free (the JSON
  says how many), and when it loads them all it checks the streamed result equal to its own.

The parent imports no torch and holds nothing big: Linux carries a parent's RSS high-water mark
over fork and exec into a child's ru_maxrss. VmHWM (reset by exec) is reported beside it.
`setup_rss_mb` is a child's high-water mark before the merge (imports), `bound_mb` the model
of peak memory the merge aims for: one float32 tensor per input plus the base's, at the
largest tensor. The temporary folder is removed at the end (`--keep` keeps it).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_SHARD, INPUT_SHARD, OUT_SHARD = 400 * 2**20, 300 * 2**20, 500 * 2**20
DELTA_SCALE = 0.01


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def vm_hwm_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1]) / 1024


def mem_available_bytes() -> int:
    meminfo = Path("/proc/meminfo").read_text()
    return int(next(ln for ln in meminfo.splitlines() if ln.startswith("MemAvailable:")).split()[1]) * 1024


# --------------------------------------------------------------------------- children


def child_build(work: Path, args: dict) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.set_num_threads(1)
    config = LlamaConfig(vocab_size=args["vocab"], hidden_size=args["hidden"],
                         intermediate_size=args["intermediate"], num_hidden_layers=args["layers"],
                         num_attention_heads=16, num_key_value_heads=16,
                         max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(work / "base", max_shard_size=BASE_SHARD)
    state = model.state_dict()
    names = list(state)
    for i in range(args["inputs"]):
        out = work / f"ft{i}"
        out.mkdir()
        shutil.copy(work / "base" / "config.json", out)
        gen = torch.Generator().manual_seed(100 + i)
        shard: dict[str, torch.Tensor] = {}
        files: list[list[str]] = []

        def flush(shard=shard, files=files, out=out) -> None:
            files.append(list(shard))
            save_file(shard, out / f"part-{len(files)}.safetensors", metadata={"format": "pt"})
            shard.clear()

        size = 0
        for name in names:
            tensor = state[name]
            if shard and size + tensor.numel() * 4 > INPUT_SHARD:
                flush()
                size = 0
            shard[name] = tensor + DELTA_SCALE * torch.randn(tensor.shape, generator=gen)
            size += tensor.numel() * 4
        flush()
        final = [f"model-{j + 1:05d}-of-{len(files):05d}.safetensors" for j in range(len(files))]
        weight_map = {}
        for j, keys in enumerate(files):
            (out / f"part-{j + 1}.safetensors").rename(out / final[j])
            weight_map |= dict.fromkeys(keys, final[j])
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": sum(state[k].numel() * 4 for k in names)},
             "weight_map": weight_map}))
    largest = max(t.numel() * t.element_size() for t in state.values())
    return {"params": sum(t.numel() for t in state.values()), "largest_tensor_bytes": largest,
            "tensors": len(names), "build_seconds": time.perf_counter() - start}


def child_streamed(work: Path, args: dict) -> dict:
    import torch

    from mashup_core.merging.full import merge_full_checkpoints

    torch.set_num_threads(1)
    setup = max_rss_mb()
    ckpts = [work / f"ft{i}" for i in range(args["inputs"])]
    start = time.perf_counter()
    out = merge_full_checkpoints(ckpts, work / "base", [1 / len(ckpts)] * len(ckpts), args["method"],
                                 work / f"out-{args['method']}", density=args.get("density"),
                                 max_shard_bytes=OUT_SHARD)
    seconds = time.perf_counter() - start
    return {"method": args["method"], "seconds": round(seconds, 1),
            "peak_rss_mb": round(max_rss_mb()), "vm_hwm_mb": round(vm_hwm_mb()),
            "setup_rss_mb": round(setup), "out_shards": len(list(out.glob("*.safetensors")))}


def child_naive(work: Path, args: dict) -> dict:
    import torch
    from peft.utils import merge_utils
    from safetensors import safe_open
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    setup = max_rss_mb()

    def load(path: Path) -> dict[str, torch.Tensor]:
        return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}

    start = time.perf_counter()
    k = args["naive_inputs"]
    base = load(work / "base")
    sds = [load(work / f"ft{i}") for i in range(k)]
    weights = torch.tensor([1 / args["inputs"]] * k)
    merged = {name: (b + merge_utils.task_arithmetic([sd[name] - b for sd in sds], weights))
              for name, b in base.items()}
    seconds = time.perf_counter() - start
    peak, hwm = max_rss_mb(), vm_hwm_mb()
    equal = None
    streamed = work / "out-task_arithmetic"
    if k == args["inputs"] and streamed.is_dir():
        index = json.loads((streamed / "model.safetensors.index.json").read_text())["weight_map"]
        equal = True
        for name, tensor in merged.items():
            with safe_open(streamed / index[name], framework="pt") as f:
                equal = equal and torch.equal(f.get_tensor(name), tensor)
    return {"inputs_loaded": k, "seconds": round(seconds, 1), "peak_rss_mb": round(peak),
            "vm_hwm_mb": round(hwm), "setup_rss_mb": round(setup),
            "equal_to_streamed_task_arithmetic": equal}


CHILDREN = {"build": child_build, "streamed": child_streamed, "naive": child_naive}


def run_child(mode: str, work: Path, args: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(work), json.dumps(args)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--methods", nargs="+", default=["task_arithmetic", "ties"])
    parser.add_argument("--density", type=float, default=0.2, help="for ties / dare_*")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        mode, work, raw = opts.child
        sys.path.insert(0, str(ROOT))
        print(json.dumps(CHILDREN[mode](Path(work), json.loads(raw))))
        return
    model = {"hidden": opts.hidden, "layers": opts.layers, "intermediate": opts.intermediate,
             "vocab": opts.vocab, "inputs": opts.inputs}
    work = Path(tempfile.mkdtemp(prefix="bench_full_merge_"))
    try:
        built = run_child("build", work, model)
        size = sum(f.stat().st_size for f in (work / "base").glob("*.safetensors"))
        streamed = []
        for method in opts.methods:
            density = opts.density if method in ("ties", "dare_linear", "dare_ties") else None
            row = run_child("streamed", work, {**model, "method": method, "density": density})
            row["ratio_peak_to_checkpoint"] = round(row["peak_rss_mb"] * 2**20 / size, 3)
            row["merge_added_mb"] = row["peak_rss_mb"] - row["setup_rss_mb"]
            streamed.append(row)
        # The naive merge holds base + k inputs + the merged model, ~(k + 2) checkpoints.
        spare = mem_available_bytes() - 4 * 2**30
        naive_k = max(1, min(opts.inputs, int(spare / (size * 1.15)) - 2))
        naive = run_child("naive", work, {**model, "naive_inputs": naive_k})
        naive["ratio_peak_to_checkpoint"] = round(naive["peak_rss_mb"] * 2**20 / size, 3)
        if naive_k < opts.inputs:
            naive["note"] = (f"loaded {naive_k} of {opts.inputs} inputs: all of them need about "
                             f"{(opts.inputs + 2) * size / 2**30:.1f} GB, more than this machine "
                             "had free; peak grows by one checkpoint per input")
        largest = built["largest_tensor_bytes"]
        print(json.dumps({
            "model": {**model, "dtype": "float32", "params": built["params"],
                      "tensors": built["tensors"]},
            "checkpoint_mb": round(size / 2**20), "inputs": opts.inputs,
            "largest_tensor_mb": round(largest / 2**20),
            "bound_mb": round((opts.inputs + 1) * largest / 2**20),
            "build_seconds": round(built["build_seconds"], 1),
            "streamed": streamed, "naive": naive,
        }, indent=2))
    finally:
        if opts.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
