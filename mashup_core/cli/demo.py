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
        emit(args, status, _status_text(status))
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
    emit(args, status, _status_text(status))
    return 0


def _status(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.demo.content import content_status
    from mashup_core.demo.world import world_status
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    usable, reason = world_status(ws, check_hashes=args.verify)
    content = content_status(ws)
    emit(args, {"workspace": str(ws.root), "usable": usable, "reason": reason,
                "content": content},
         f"{ws.root}: {'ok' if usable else 'not usable: ' + reason}\n{_status_text(content)}")
    return 0 if usable else 1


def _status_text(status: dict) -> str:
    rows = [status["message"]]
    for name, stage in status["stages"].items():
        p = stage["progress"]
        count = f"{p['done']}/{p['total']} {p['unit']}" if p["total"] else ""
        extra = " (reused)" if stage.get("reused") and stage["state"] == "done" else ""
        rows.append(f"  {name:<6} {stage['state']:<8} {count}{extra}"
                    + (f"  {stage['error']}" if stage.get("error") else ""))
    job = status["job"]
    if job["alive"]:
        rows.append(f"  job pid {job['pid']} running; log: {job['log']}")
    return "\n".join(rows)
