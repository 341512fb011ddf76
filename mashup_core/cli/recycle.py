"""`mashup recycle`: the saved multi-target searches (`search-weights --targets`) and their merges."""

from __future__ import annotations

import argparse


def register(sub, parent: argparse.ArgumentParser) -> None:
    recycle = sub.add_parser("recycle",
                             help="saved recycle searches: list, show, write a merge as an adapter")
    actions = recycle.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[parent], help="the saved searches, newest first")
    listing.set_defaults(func=_list)
    show = actions.add_parser("show", parents=[parent], help="a search's numbers and its front")
    show.add_argument("id", nargs="?", help="a saved search (default: the newest)")
    show.set_defaults(func=_show)
    write = actions.add_parser("write", parents=[parent],
                               help="write a merge of a search as a library adapter")
    write.add_argument("id", help="the saved search")
    write.add_argument("point", help="the merge's id (p0, p1, ...: `mashup recycle show ID`)")
    write.add_argument("--name", help="the checkpoint's name (default: recycle-ID-POINT)")
    write.set_defaults(func=_write)


def _latest(ws, front_id: str | None) -> str:
    from mashup_core.merging.recycle import RecycleError, list_fronts

    if front_id:
        return front_id
    fronts = list_fronts(ws)
    if not fronts:
        raise RecycleError(f"no saved recycle search in {ws.root}; run `mashup search-weights "
                           "--targets A,B` first")
    return fronts[0]


def _list(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.merging.recycle import list_fronts, load_front
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    rows = []
    for front_id in list_fronts(ws):
        front = load_front(ws, front_id)
        rows.append({"id": front_id, "targets": front["targets"],
                     "held_out": front.get("held_out_target"), "objective": front["objective"],
                     "evaluations": front["evaluations"]})
    emit(args, rows, "\n".join(f"{r['id']}: {', '.join(r['targets'])} ({r['objective']}), "
                               f"held out {r['held_out'] or '–'}, {r['evaluations']} evaluations"
                               for r in rows) or "no saved recycle searches")
    return 0


def _show(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.cli.merge import _recycle_text
    from mashup_core.merging.recycle import load_front, summary
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    front = load_front(ws, _latest(ws, args.id))
    numbers = summary(front)
    front_lines = [f"  {p['id']}: {p['label']} — " + ", ".join(
        f"{t} {a:.3f}" for t, a in p["per_target"].items())
        + ("" if p.get("held_out") is None else f"; held-out {p['held_out']:.3f}")
        for p in front["points"] if p["front"]]
    emit(args, {"id": front["id"], "summary": numbers},
         _recycle_text(front, numbers) + "\nthe front:\n" + "\n".join(front_lines))
    return 0


def _write(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.merging.recycle import write_recycled_adapter
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    dest = write_recycled_adapter(ws, args.id, args.point, args.name)
    emit(args, {"path": str(dest)}, f"wrote {args.id}/{args.point} as the library adapter {dest}")
    return 0
