"""Time each dashboard page's full render on a demo workspace, cold and with warm caches.

    .venv/bin/python benchmarks/bench_pages.py [--workspace DIR] [--repeat 3] [--scale]

The workspace (default: $MASHUP_WORKSPACE, else ./workspace) is copied to a temporary folder
first, so its caches and runs are untouched. Each page is rendered once to warm the caches
(the Relevance page scores the library then), then `--repeat` more times through Streamlit's
AppTest; the JSON reports the cold time and the median warm time per page, against a 2 s
warm and 10 s cold target. `--scale` first grows the copy to 200 adapters, 50 runs and 3
studies (tests/scale_world.py: hand-written files in the core's shapes, scores cached), so
the pages are timed at the size of a real lab's workspace.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 2.0  # warm
COLD_TARGET_S = 10.0


def pages() -> list[str]:
    """Every page of the app (overview first), as pages/ has them."""
    found = sorted(p.stem for p in (ROOT / "pages").glob("*.py") if not p.stem.startswith("_"))
    return ["overview", *(p for p in found if p != "overview")]


def render_seconds(page: str, cold: bool = False) -> float:
    """Seconds for one full run of `page` in a fresh session (the entry run is not counted);
    `cold`: with every page cache emptied first, as in a freshly started server."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    if cold:
        st.cache_data.clear()
    if page == "overview":
        started = time.perf_counter()
        at.run()
    else:
        at.run()
        if cold:
            st.cache_data.clear()
        at.switch_page(f"pages/{page}.py")
        started = time.perf_counter()
        at.run()
    seconds = time.perf_counter() - started
    if at.exception:
        raise SystemExit(f"page {page} raised: {[e.message for e in at.exception]}")
    if not at.title:
        raise SystemExit(f"page {page} drew no title: it did not render")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", help="a built demo workspace (it is copied, not changed)")
    parser.add_argument("--repeat", type=int, default=3, help="warm renders per page")
    parser.add_argument("--scale", action="store_true",
                        help="grow the copy to 200 adapters, 50 runs and 3 studies first")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from mashup_core.demo.world import world_status
    from mashup_core.workspace import Workspace

    source = Workspace.resolve(args.workspace)
    usable, reason = world_status(source)
    if not usable:
        raise SystemExit(f"{source.root}: {reason}; build it with `mashup demo build --workspace "
                         f"{source.root}` first")
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        size = {}
        if args.scale:
            sys.path.insert(0, str(ROOT / "tests"))
            from scale_world import make_scale_workspace

            started = time.perf_counter()
            make_scale_workspace(source, ws.root)
            size = _size(ws) | {"build_s": round(time.perf_counter() - started, 2)}
        else:
            shutil.copytree(source.root, ws.root)
        os.environ["MASHUP_WORKSPACE"] = str(ws.root)
        timed = {}
        for page in pages():
            cold = render_seconds(page, cold=True)
            warm = [render_seconds(page) for _ in range(args.repeat)]
            timed[page] = {"cold_s": round(cold, 3), "warm_s": round(statistics.median(warm), 3),
                           "warm_max_s": round(max(warm), 3)}
    print(json.dumps({
        "benchmark": "dashboard_pages" + ("_at_scale" if args.scale else ""),
        "workspace": str(source.root), "profile": (source.manifest() or {}).get("profile"),
        "size": size, "cpu_count": os.cpu_count(), "repeat": args.repeat,
        "target_s": TARGET_S, "cold_target_s": COLD_TARGET_S, "pages": timed,
        "all_warm_within_target": all(p["warm_s"] <= TARGET_S for p in timed.values()),
        "all_cold_within_target": all(p["cold_s"] <= COLD_TARGET_S for p in timed.values()),
    }, indent=2))


def _size(ws) -> dict:
    from mashup_core.config import workspace_library
    from mashup_core.jobs.store import list_runs

    return {"checkpoints": len(workspace_library(ws).checkpoints), "runs": len(list_runs(ws)),
            "studies": sum(1 for d in ws.studies_dir.iterdir() if d.is_dir())}


if __name__ == "__main__":
    main()
