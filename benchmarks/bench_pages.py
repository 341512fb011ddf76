"""Time each dashboard page's full render on a demo workspace, cold and with warm caches.

    .venv/bin/python benchmarks/bench_pages.py [--workspace DIR] [--repeat 3]

The workspace (default: $MASHUP_WORKSPACE, else ./workspace) is copied to a temporary folder
first, so its caches and runs are untouched. Each page is rendered once to warm the caches
(the Relevance page scores the library then), then `--repeat` more times through Streamlit's
AppTest; the JSON reports the cold time and the median warm time per page, against a 2 s target.
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
PAGES = ["overview", "library", "target", "relevance", "merge", "launch", "convergence"]
TARGET_S = 2.0


def render_seconds(page: str) -> float:
    """Seconds for one full run of `page` in a fresh session (the entry run is not counted)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    if page == "overview":
        started = time.perf_counter()
        at.run()
    else:
        at.run()
        at.switch_page(f"pages/{page}.py")
        started = time.perf_counter()
        at.run()
    seconds = time.perf_counter() - started
    if at.exception:
        raise SystemExit(f"page {page} raised: {[e.message for e in at.exception]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", help="a built demo workspace (it is copied, not changed)")
    parser.add_argument("--repeat", type=int, default=3, help="warm renders per page")
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
        shutil.copytree(source.root, ws.root)
        os.environ["MASHUP_WORKSPACE"] = str(ws.root)
        pages = {}
        for page in PAGES:
            cold = render_seconds(page)
            warm = [render_seconds(page) for _ in range(args.repeat)]
            pages[page] = {"cold_s": round(cold, 3), "warm_s": round(statistics.median(warm), 3),
                           "warm_max_s": round(max(warm), 3)}
    print(json.dumps({
        "benchmark": "dashboard_pages",
        "workspace": str(source.root), "profile": (source.manifest() or {}).get("profile"),
        "cpu_count": os.cpu_count(), "repeat": args.repeat, "target_s": TARGET_S,
        "pages": pages,
        "all_warm_within_target": all(p["warm_s"] <= TARGET_S for p in pages.values()),
    }, indent=2))


if __name__ == "__main__":
    main()
