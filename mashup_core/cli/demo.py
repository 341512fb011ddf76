"""`mashup demo build|status`: the embedded demo world."""

from __future__ import annotations

import argparse
from dataclasses import asdict


def register(sub, parent: argparse.ArgumentParser) -> None:
    demo = sub.add_parser("demo", help="build or inspect the offline demo world")
    demo_sub = demo.add_subparsers(dest="demo_command", metavar="ACTION", required=True)

    build = demo_sub.add_parser("build", parents=[parent], help="build the demo world once (reused later)")
    build.add_argument("--profile", default="full", help="full (about 2 min on 2 cores) or tiny (tests)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="rebuild even if a world is there")
    build.set_defaults(func=_build)

    status = demo_sub.add_parser("status", parents=[parent], help="is the world complete and intact?")
    status.add_argument("--verify", action="store_true", help="also check every file's hash")
    status.set_defaults(func=_status)


def _build(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.demo.world import build_world
    from mashup_core.jobs.slot import accelerator_slot
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    # The build trains on the CPU today; holding the slot of the device it trains on keeps
    # the rule "every job that trains takes the slot" true if that ever changes.
    with accelerator_slot(ws, "cpu", holder=f"demo-{args.profile}", kind="demo-build"):
        report = build_world(ws, args.profile, args.seed, force=args.force,
                             progress=not args.no_progress)
    emit(args, asdict(report), report.summary_table())
    return 0


def _status(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.demo.world import world_status
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    usable, reason = world_status(ws, check_hashes=args.verify)
    emit(args, {"workspace": str(ws.root), "usable": usable, "reason": reason},
         f"{ws.root}: {'ok' if usable else 'not usable: ' + reason}")
    return 0 if usable else 1
