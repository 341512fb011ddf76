"""Do lm-eval's accuracy and the reference's token accuracy rank a library alike?

For every target of a workspace (default: the demo world, built if missing), the library is
scored once on the first n train rows (the reference's 256; through the score store, so a
second run reads it), and the two rankings of the checkpoints the target may draw on (its own
task's left out, as leave-one-out selection does) are compared: Kendall's tau-b of the two
score vectors, the top-k of each, and the loss ranking beside them. Prints JSON.

    python benchmarks/compare_scorers.py [--workspace DIR] [--profile full] [--n 256] [--k 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="/tmp/mashup-compare-scorers")
    parser.add_argument("--profile", default="full", choices=["full", "tiny"])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    from mashup_core.config import load_target, resolve_config, workspace_library
    from mashup_core.data.targets import TargetSpec
    from mashup_core.demo.world import build_world
    from mashup_core.selection.scoring import kendall_tau
    from mashup_core.selection.store import score_library_cached
    from mashup_core.workspace import Workspace

    ws = Workspace(Path(args.workspace))
    if ws.manifest() is None:
        build_world(ws, args.profile, seed=0, progress=False)
    config = resolve_config(ws)
    library = workspace_library(ws).checkpoints
    started = time.perf_counter()
    targets = {}
    for entry in config.targets:
        spec = TargetSpec.from_dict({**entry, "split": "train"})
        name = config.target_names()[config.targets.index(entry)]
        table = score_library_cached(ws, library, load_target(spec, ws), n=args.n, target=name,
                                     progress=False)
        eligible = [r for r in table.rows if r.source_task != name]
        by = {s: table.rank(s, exclude_task=name) for s in ("acc", "token_acc", "nll")}
        tau = kendall_tau([r.acc for r in eligible], [r.token_acc for r in eligible])
        targets[name] = {
            "checkpoints": len(eligible),
            "kendall_tau_acc_vs_token_acc": tau,
            "top_k": {s: ranked[: args.k] for s, ranked in by.items()},
            "same_top_k": set(by["acc"][: args.k]) == set(by["token_acc"][: args.k]),
            "base": {"acc": table.base.acc, "token_acc": table.base.token_acc},
            "best": {s: {"name": ranked[0], "value": table.row(ranked[0]).value(s)}
                     for s, ranked in by.items()},
        }
    taus = [t["kendall_tau_acc_vs_token_acc"] for t in targets.values()
            if t["kendall_tau_acc_vs_token_acc"] is not None]
    result = {
        "workspace": str(ws.root), "profile": (ws.manifest() or {}).get("profile"), "n": args.n,
        "k": args.k, "library": len(library), "seconds": round(time.perf_counter() - started, 1),
        "mean_tau": sum(taus) / len(taus) if taus else None,
        "targets_with_another_top_k": sorted(t for t, v in targets.items() if not v["same_top_k"]),
        "targets": targets,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
