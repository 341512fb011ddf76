"""`mashup library` and `mashup targets`: what the method draws on, and what it aims at."""

from __future__ import annotations

import argparse


def register(sub, parent: argparse.ArgumentParser) -> None:
    lib = sub.add_parser(
        "library", parents=[parent], help="list and validate the checkpoint library",
        description="Find checkpoints (PEFT LoRA adapters, full safetensors models) and validate "
        "them; rejected ones are listed with the reason.",
    )
    lib.add_argument("--source", action="append", metavar="DIR_OR_HUB_ID",
                     help="a folder to search, or a Hugging Face Hub id; repeat for several "
                     "(default: the workspace's demo library)")
    lib.add_argument("--base", metavar="DIR_OR_HUB_ID",
                     help="check every checkpoint against this base model (default: the demo base "
                     "for the demo library, else the base each checkpoint records)")
    lib.add_argument("--no-snapshots", action="store_true",
                     help="leave out intermediate snapshots (name-stepN, or final=false in mashup_meta.json)")
    lib.set_defaults(func=_library)

    targets = sub.add_parser(
        "targets", parents=[parent], help="list demo tasks and the paper's benchmarks; preview one",
    )
    targets.add_argument("--show", metavar="TARGET",
                         help="preview a demo task, a benchmark, or a JSONL/JSON/CSV/TSV file")
    targets.add_argument("--split", default="train", help="split to preview (default: train)")
    targets.add_argument("--n", type=int, default=3, help="examples to preview (default: 3)")
    add_mapping_arguments(targets)
    targets.set_defaults(func=_targets)


def add_mapping_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that map a user file's fields (for any command taking a file target)."""
    group = parser.add_argument_group("field mapping (file targets)")
    group.add_argument("--prompt-field", help="prompt field, or a template like '{context} {question}'")
    group.add_argument("--choices-field", help="one list field, or several columns: sol1,sol2")
    group.add_argument("--choices-sep", help="delimiter when one field holds all choices as text")
    group.add_argument("--gold-field", help="gold label field")
    group.add_argument("--gold-format", help="index0, index1, letter or text")


def mapping_from_args(args: argparse.Namespace):
    """A FieldMapping from the options given (defaults for the rest), or None if none was given."""
    from mashup_core.data.targets import FieldMapping

    given = {
        "prompt": args.prompt_field, "choices": args.choices_field, "gold": args.gold_field,
        "gold_format": args.gold_format, "choices_delimiter": args.choices_sep,
    }
    given = {k: v for k, v in given.items() if v is not None}
    return FieldMapping(**given) if given else None


def _library(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.models.library import demo_library, scan_library
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    if args.source:
        scan = scan_library(args.source, base_model_dir=args.base,
                            include_snapshots=not args.no_snapshots)
        where = ", ".join(args.source)
    elif args.base:
        scan = scan_library([ws.library_dir], base_model_dir=args.base,
                            include_snapshots=not args.no_snapshots)
        where = str(ws.library_dir)
    else:
        scan = demo_library(ws, include_snapshots=not args.no_snapshots)
        where = str(ws.library_dir)
    emit(args, {"sources": args.source or [where], **scan.to_dict()}, _library_table(scan, where))
    return 0 if scan.checkpoints else 1


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
    from mashup_core.data.targets import BENCHMARKS, list_demo_tasks

    manifest = ws.manifest() or {}
    descriptions = manifest.get("descriptions", {})
    demo = [{"name": t, "description": descriptions.get(t, ""),
             "sizes": {p.stem: _count_lines(p) for p in sorted((ws.tasks_dir / t).glob("*.jsonl"), key=_split_order)}}
            for t in list_demo_tasks(ws)]
    benches = [b.to_dict() for b in BENCHMARKS.values()]
    lines = [f"demo tasks ({ws.tasks_dir}):" if demo else
             f"demo tasks: none in {ws.root} (build them with `mashup demo build`)"]
    lines += [f"  {d['name']:<8} {d['description']:<42} "
              + " / ".join(f"{k} {v}" for k, v in d["sizes"].items()) for d in demo]
    lines.append("benchmarks (the paper's eight, through `datasets`; they need the Hugging Face Hub once):")
    lines += [f"  {b['name']:<15} {b['title']:<14} {b['path'] + (' ' + b['config'] if b['config'] else ''):<32} "
              + " / ".join(f"{k} {v}" for k, v in b["sizes"].items()) for b in benches]
    emit(args, {"demo": demo, "benchmarks": benches}, "\n".join(lines))
    return 0


def _show(args, ws) -> int:
    from mashup_core.cli import emit
    from mashup_core.data.targets import load_target, resolve_target

    spec = resolve_target(args.show, ws, args.split, mapping_from_args(args))
    examples = load_target(spec, ws)
    shown = examples[: max(args.n, 0)]
    lines = [f"{spec.kind} target {spec.label}: {len(examples)} examples; the first {len(shown)}"]
    for i, ex in enumerate(shown, start=1):
        lines.append(f"[{i}] {ex.prompt!r}")
        lines += [f"    {'*' if j == ex.gold else ' '} {chr(97 + j)}) {c!r}" for j, c in enumerate(ex.choices)]
    emit(args, {"target": spec.to_dict(), "count": len(examples), "examples": [e.to_json() for e in shown]},
         "\n".join(lines))
    return 0


def _split_order(path) -> tuple[int, str]:
    order = ("train", "validation", "test")
    return (order.index(path.stem) if path.stem in order else len(order), path.stem)


def _count_lines(path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())
