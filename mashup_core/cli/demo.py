"""`mashup demo build|start|status`: the embedded demo world and the content it opens on."""

from __future__ import annotations

import argparse
from dataclasses import asdict


def register(sub, parent: argparse.ArgumentParser) -> None:
    demo = sub.add_parser("demo", help="build or inspect the offline demo world")
    demo_sub = demo.add_subparsers(dest="demo_command", metavar="ACTION", required=True)

    build = demo_sub.add_parser(
        "build", parents=[parent], help="build the demo world once (reused later)",
        description="Build the demo world (reused when intact). With --with-content, also "
        "compute what the dashboard opens on: the leave-one-out study and a mashup + scratch "
        "pair on the story's target (each reused when there; `mashup demo start` does the same "
        "in the background).")
    _world_options(build)
    build.add_argument("--force", action="store_true", help="rebuild even if a world is there")
    build.add_argument("--with-content", action="store_true",
                       help="then the study and the pair, in this process (reused when there)")
    build.add_argument("--background", action="store_true",
                       help="world, study and pair as one detached job: the same as `demo start`")
    build.set_defaults(func=_build)

    start = demo_sub.add_parser(
        "start", parents=[parent], help="world -> study -> pair as one background job",
        description="Start one detached job that builds the world, then the leave-one-out "
        "study, then a mashup + scratch pair, and return at once (a job already running, or "
        "content already complete, starts nothing). Its log: demo-build.log in the workspace; "
        "`mashup demo status` says how far it got.")
    _world_options(start)
    start.set_defaults(func=_start)

    status = demo_sub.add_parser("status", parents=[parent],
                                 help="is the world complete and intact? how far is its content?")
    status.add_argument("--verify", action="store_true", help="also check every file's hash")
    status.set_defaults(func=_status)

    library = demo_sub.add_parser(
        "library", parents=[parent], help="write a synthetic library of N LoRA adapters",
        description="Write N untrained PEFT LoRA adapters for a base (mixed ranks and target "
        "modules, each with a Hub-style model card) under OUT: a library as large and as mixed "
        "as a public one, for trying the Library page, the map and scoring at scale offline. "
        "Add it with `mashup config --add-source OUT`.")
    library.add_argument("n", type=int, help="how many adapters (e.g. 1000)")
    library.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    library.add_argument("--base", help="the base model folder (default: the workspace's base)")
    library.add_argument("--ranks", default="4,8,16", help="ranks to cycle through")
    library.add_argument("--tasks", type=int, default=0,
                         help="source tasks to name in the cards (default: one per adapter)")
    library.add_argument("--prefix", help="the adapters' names: PREFIX-0000, ... (default: the "
                         "--out folder's name; names must be unique across a workspace's sources)")
    library.add_argument("--seed", type=int, default=0)
    library.set_defaults(func=_library)


def _world_options(parser: argparse.ArgumentParser) -> None:
    from mashup_core.demo.content import ENGINE

    parser.add_argument("--profile", default="full",
                        help="full (about 2 min on 2 cores) or tiny (tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=["inline", "ray"], default=ENGINE,
                        help=f"the content study's engine (default {ENGINE})")


def _build(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.demo.content import build_content, build_world_slotted
    from mashup_core.workspace import Workspace

    if args.background:
        return _start(args)
    ws = Workspace.resolve(args.workspace)
    if args.with_content:
        status = build_content(ws, args.profile, args.seed, engine=args.engine, force=args.force,
                               progress=not args.no_progress)
        emit(args, status, status_text(status))
        return 0
    report = build_world_slotted(ws, args.profile, args.seed, force=args.force,
                                 progress=not args.no_progress)
    emit(args, asdict(report), report.summary_table())
    return 0


def _start(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.demo.content import launch_content
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    status = launch_content(ws, args.profile, args.seed, engine=args.engine)
    emit(args, status, status_text(status))
    return 0


def _status(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.demo.content import content_status
    from mashup_core.demo.progress import build_progress, describe_build
    from mashup_core.demo.world import world_status
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    usable, reason = world_status(ws, check_hashes=args.verify)
    building = build_progress(ws)
    content = content_status(ws)
    world = "ok" if usable else (f"building: {describe_build(building)}" if building
                                 else f"not usable: {reason}")
    emit(args, {"workspace": str(ws.root), "usable": usable, "reason": reason,
                "building": building, "content": content},
         f"{ws.root}: {world}\n{status_text(content)}")
    return 0 if usable else 1


def _library(args) -> int:
    from pathlib import Path

    from mashup_core.cli import emit
    from mashup_core.config import resolve_config
    from mashup_core.demo.library_gen import write_synthetic_library
    from mashup_core.errors import MashupError
    from mashup_core.workspace import Workspace

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise MashupError(f"--out {out} is not empty: give a new folder (nothing was written)")
    if args.n < 1:
        raise MashupError(f"n must be at least 1 (got {args.n})")
    base = args.base or resolve_config(Workspace.resolve(args.workspace)).base_model
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    written = write_synthetic_library(base, out, args.n, ranks=ranks, tasks=args.tasks,
                                      seed=args.seed, prefix=args.prefix or out.resolve().name)
    emit(args, {"out": str(out), "adapters": len(written), "base": str(base)},
         f"{len(written)} adapters in {out} (base {base}); add them with "
         f"`mashup config --add-source {out}`")
    return 0


def status_text(status: dict) -> str:
    rows = [status["message"]]
    for name, stage in status["stages"].items():
        p = stage["progress"]
        count = stage.get("detail") or (f"{p['done']}/{p['total']} {p['unit']}" if p["total"] else "")
        extra = " (reused)" if stage.get("reused") and stage["state"] == "done" else ""
        rows.append(f"  {name:<6} {stage['state']:<8} {count}{extra}"
                    + (f"  {stage['error']}" if stage.get("error") else ""))
    job = status["job"]
    if job["alive"]:
        rows.append(f"  job pid {job['pid']} running; log: {job['log']}")
    return "\n".join(rows)
