"""`mashup library` and `mashup targets`: what the method draws on, and what it aims at."""

from __future__ import annotations

import argparse

from mashup_core.cli._options import (
    FORMATS_HELP,
    add_mapping_arguments,
    add_model_options,
    add_prompt_format_argument,
    model_config,
    target_rows,
)


def register(sub, parent: argparse.ArgumentParser) -> None:
    lib = sub.add_parser(
        "library", parents=[parent], help="list and validate the checkpoint library",
        description="Find checkpoints (PEFT LoRA adapters, full safetensors models) and validate "
        "them; rejected ones are listed with the reason.",
    )
    add_model_options(lib)
    lib.add_argument("--no-snapshots", action="store_true",
                     help="leave out intermediate snapshots (name-stepN, or final=false in mashup_meta.json)")
    lib.set_defaults(func=_library)
    actions = lib.add_subparsers(dest="library_action", metavar="ACTION")
    add_run = actions.add_parser(
        "add-run", parents=[parent], help="add a finished run's trained weights to the library",
        description="Copy a finished run's adapter (or full checkpoint) into the workspace "
        "library with its provenance; leave-one-out selection never offers it back to the "
        "target it was trained on.")
    add_run.add_argument("run_id", metavar="RUN_ID")
    add_run.add_argument("--name", help="checkpoint name (default: <target>-<kind>-<run id tail>)")
    add_run.add_argument("--exact", action="store_true",
                         help="merged-fold runs: keep merge + trained LoRA stacked exactly (rank "
                         "r_merge + r), instead of re-factoring to the run's LoRA rank, which "
                         "keeps the library's ranks equal for the 'linear' merge")
    add_run.set_defaults(func=_add_run)

    targets = sub.add_parser(
        "targets", parents=[parent], help="list demo tasks and the paper's benchmarks; preview one",
    )
    targets.add_argument("--show", metavar="TARGET",
                         help="preview a demo task, a benchmark, or a JSONL/JSON/CSV/TSV file")
    targets.add_argument("--split", default="train", help="split to preview (default: train)")
    targets.add_argument("--n", type=int, default=3, help="examples to preview (default: 3)")
    targets.add_argument("--data", metavar="DIR_OR_FILE",
                         help="with a benchmark: its examples from local files in its Hub schema")
    add_prompt_format_argument(targets, help="with --show: how the rows are shown: " + FORMATS_HELP)
    add_model_options(targets, library=False)
    add_mapping_arguments(targets)
    targets.set_defaults(func=_targets)


def _library(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.models.library import scan_library
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    config = model_config(args, ws)
    snapshots = False if args.no_snapshots else config.library.include_snapshots
    scan = scan_library(config.sources, base_model_dir=config.base_model, include_snapshots=snapshots)
    where = ", ".join(config.sources) or "no sources"
    emit(args, {"sources": config.sources, "base": config.base_model, **scan.to_dict()},
         _library_table(scan, where))
    return 0 if scan.checkpoints else 1


def _add_run(args) -> int:
    import json

    from mashup_core.cli import emit
    from mashup_core.jobs.promote import add_run_to_library
    from mashup_core.jobs.store import get_run
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    spec = get_run(ws, args.run_id).spec
    refold = spec.finetune == "lora" and spec.init == "merged-fold" and not args.exact
    path = add_run_to_library(ws, args.run_id, name=args.name, rank=spec.lora.r if refold else None)
    meta = json.loads((path / "mashup_meta.json").read_text())
    emit(args, {"path": str(path), **meta},
         f"added run {args.run_id} as {path.name} ({meta['weights']}) in {path.parent}; trained on "
         f"{meta['source_task']}, so it is never offered back to that target")
    return 0


def _library_table(scan, where: str) -> str:
    rows = [("name", "kind", "task", "rank", "size", "status")]
    for c in scan.checkpoints:
        status = "ok" + (f" ({'; '.join(c.notes)})" if c.notes else "")
        rows.append((c.name, c.kind, c.source_task or "-", str(c.rank or "-"), _size(c.size_bytes), status))
    rows += [(r.name, "-", "-", "-", "-", f"rejected: {r.reason}") for r in scan.rejected]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[5]
             for row in rows]
    lines.append(f"\n{len(scan.checkpoints)} checkpoints, {len(scan.rejected)} rejected ({where})")
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _targets(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    if args.show:
        return _show(args, ws)
    from mashup_core.config import load_config, target_name
    from mashup_core.data.targets import BENCHMARKS, list_demo_tasks

    manifest = ws.manifest() or {}
    descriptions = manifest.get("descriptions", {})
    demo = [{"name": t, "description": descriptions.get(t, ""),
             "sizes": {p.stem: _count_lines(p) for p in sorted((ws.tasks_dir / t).glob("*.jsonl"), key=_split_order)}}
            for t in list_demo_tasks(ws)]
    benches = [b.to_dict() for b in BENCHMARKS.values()]
    config = load_config(ws)
    mine = [{"name": target_name(t), **t} for t in (config.targets if config else ())]
    lines = []
    if mine:
        lines.append(f"this workspace's targets ({ws.root / 'mashup.toml'}):")
        lines += [f"  {t['name']:<15} {t['kind']:<10} {t['name_or_path']}"
                  + (f" (mapping: {t['mapping']})" if t.get("mapping") else "") for t in mine]
    lines += [f"demo tasks ({ws.tasks_dir}):" if demo else
             f"demo tasks: none in {ws.root} (build them with `mashup demo build`)"]
    lines += [f"  {d['name']:<8} {d['description']:<42} "
              + " / ".join(f"{k} {v}" for k, v in d["sizes"].items()) for d in demo]
    lines.append("benchmarks (the paper's eight, through `datasets`; they need the Hugging Face Hub once):")
    lines += [f"  {b['name']:<15} {b['title']:<14} {b['path'] + (' ' + b['config'] if b['config'] else ''):<32} "
              + " / ".join(f"{k} {v}" for k, v in b["sizes"].items()) for b in benches]
    emit(args, {"workspace_targets": mine, "demo": demo, "benchmarks": benches}, "\n".join(lines))
    return 0


def _show(args, ws) -> int:
    from mashup_core.cli import emit
    from mashup_core.data.prompts import PROMPT_FORMATS

    spec, examples = target_rows(args, ws, args.split, name=args.show)
    shown = examples[: max(args.n, 0)]
    lines = [f"{spec.kind} target {spec.label}: {len(examples)} examples; the first {len(shown)}"]
    if spec.prompt_format == "reference" and any(ex.meta.get("rendering") == "generic" for ex in shown):
        lines.append("  (not one of the paper's 8 benchmarks: the reference format shows these rows "
                     "in the generic chat layout, not a benchmark's own message)")
    for i, ex in enumerate(shown, start=1):
        if "user" in ex.meta:
            lines.append(f"[{i}] user message ({ex.meta.get('rendering')}): {ex.meta['user']!r}")
            lines.append(f"    templated: {ex.prompt!r}")
        else:
            lines.append(f"[{i}] {ex.prompt!r}")
        lines += [f"    {'*' if j == ex.gold else ' '} {chr(97 + j)}) {c!r}" for j, c in enumerate(ex.choices)]
    rows = [{**e.to_json(), **({"user_message": e.meta["user"], "templated": e.prompt}
                               if "user" in e.meta else {})} for e in shown]
    emit(args, {"target": spec.to_dict(), "count": len(examples),
                "prompt_format": {"name": spec.prompt_format,
                                  "summary": PROMPT_FORMATS[spec.prompt_format].summary},
                "examples": rows}, "\n".join(lines))
    return 0


def _split_order(path) -> tuple[int, str]:
    order = ("train", "validation", "test")
    return (order.index(path.stem) if path.stem in order else len(order), path.stem)


def _count_lines(path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())
