"""A room of visitors on one read-only dashboard: per-page times, errors, the server's cost.

    .venv/bin/python benchmarks/bench_visitors.py [--workspace DIR] [--visitors 1,5,20,30]
        [--pages overview,relevance,merge,convergence] [--browser-visitors 5] [--out FILE]

One `mashup serve --read-only` on the workspace (default: $MASHUP_WORKSPACE, else ./workspace),
pinned to CPU 0 with `taskset`; the visitors run on the other CPUs. Two kinds of visitor:

- **protocol** (the trials at --visitors): a client that speaks Streamlit's own websocket
  protocol as the browser does (a session, a rerun per page with the page's script hash) and
  times each page from the request to the server's `script_finished`. This is the server's
  part, which a room shares: the browsers' rendering runs on thirty laptops, not here.
- **browser**: headless Chromium contexts walking the same pages by the sidebar's links, timed
  until the page has stopped running and shows text with no spinner. First one visitor on the
  freshly started server (the cold first visit), and at the end --browser-visitors at once
  (on one client core their rendering, not the server, sets those times).

For each trial: per-page p50 / p95 / max seconds, timeouts and errors (a page whose script
raised), and the server's CPU-seconds and peak RSS. Goal: 30 visitors warm, p95 <= 3 s per
page, server RSS <= 1 GB, no timeouts or errors; the first visit of a cold server <= 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("MASHUP_CHROMIUM", "/usr/bin/chromium"))
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"
GOAL = {"p95_s": 3.0, "server_rss_mb": 1024, "first_visit_s": 5.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workspace: Path, port: int, cpu: int, log: Path) -> subprocess.Popen:
    argv = ["taskset", "-c", str(cpu), sys.executable, "-m", "mashup_core.cli", "serve",
            "--workspace", str(workspace), "--port", str(port), "--read-only"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server did not start; see {log}")


class ServerMeter:
    """The server's CPU-seconds and peak RSS between start() and stop() (sampled every 0.2 s;
    `taskset` execs the server, so its pid is the server's)."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> ServerMeter:
        self.cpu0, self.peak = self._cpu(), self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_s = round(self._cpu() - self.cpu0, 1)
        self.rss_mb = round(self.peak / 2**20, 1)


async def protocol_visit(port: int, pages: list[str], timeout_s: float) -> list[dict]:
    """One visitor as a websocket session: the first run (the default page), then a rerun per
    page by its script hash; each timed to the server's script_finished."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    out, hashes = [], {"overview": ""}
    async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream", max_size=None,
                                  subprotocols=["streamlit"], open_timeout=timeout_s) as ws:
        async def run_page(name: str) -> dict:
            msg = BackMsg()
            msg.rerun_script.page_script_hash = hashes.get(name, "")
            msg.rerun_script.page_name = "" if name == "overview" else name
            started = time.perf_counter()
            await ws.send(msg.SerializeToString())
            row: dict = {"page": name}
            while True:
                forward = ForwardMsg()
                forward.ParseFromString(await asyncio.wait_for(ws.recv(), timeout_s))
                kind = forward.WhichOneof("type")
                if kind == "navigation":
                    hashes.update({p.url_pathname or "overview": p.page_script_hash
                                   for p in forward.navigation.app_pages})
                elif kind == "delta" and forward.delta.new_element.WhichOneof("type") == "exception":
                    row["error"] = forward.delta.new_element.exception.message[:200]
                elif kind == "script_finished":
                    row["seconds"] = round(time.perf_counter() - started, 3)
                    return row

        for name in pages:
            try:
                out.append(await run_page(name))
            except (TimeoutError, asyncio.TimeoutError):
                out.append({"page": name, "timeout": f"no script_finished in {timeout_s} s"})
            except Exception as exc:  # a closed socket: counted, not fatal
                out.append({"page": name, "error": f"{type(exc).__name__}: {exc}"[:200]})
    return out


async def protocol_trial(port: int, visitors: int, pages: list[str], timeout_s: float) -> list[dict]:
    walks = await asyncio.gather(*(protocol_visit(port, pages, timeout_s) for _ in range(visitors)))
    return [row for walk in walks for row in walk]


async def visit(browser, url: str, pages: list[str], timeout_s: float) -> list[dict]:
    """One visitor in a browser: a fresh context, the first page by URL, the others by the
    sidebar's links (as a person moves through the app: one session)."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    out = []
    try:
        for i, name in enumerate(pages):
            started = time.perf_counter()
            row = {"page": name}
            try:
                if i == 0:
                    await page.goto(f"{url}/{'' if name == 'overview' else name}",
                                    timeout=timeout_s * 1000)
                else:
                    await page.locator(f"[data-testid=stSidebarNav] a[href$='/{name}']").click(
                        timeout=timeout_s * 1000)
                    await page.wait_for_url(f"**/{name}*", timeout=timeout_s * 1000)
                await page.wait_for_function(
                    """() => {
                        const app = document.querySelector('[data-testid=stApp]');
                        const main = document.querySelector('[data-testid=stMain]');
                        return app && app.dataset.testScriptState === 'notRunning' && main
                            && main.innerText.trim().length > 40
                            && !document.querySelector('[data-testid=stSpinner]');
                    }""", timeout=timeout_s * 1000)
                row["seconds"] = round(time.perf_counter() - started, 3)
                if await page.locator("[data-testid=stException]").count():
                    row["error"] = (await page.locator("[data-testid=stException]").first
                                    .inner_text())[:200]
            except Exception as exc:  # a timeout or a crashed page: counted, not fatal
                row["timeout" if "Timeout" in type(exc).__name__ else "error"] = str(exc)[:200]
            out.append(row)
    finally:
        await context.close()
    return out


async def browser_trial(url: str, visitors: int, pages: list[str], timeout_s: float) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            walks = await asyncio.gather(*(visit(browser, url, pages, timeout_s)
                                           for _ in range(visitors)))
        finally:
            await browser.close()
    return [row for walk in walks for row in walk]


def summarise(rows: list[dict], pages: list[str]) -> dict:
    per_page = {}
    for name in pages:
        mine = [r for r in rows if r["page"] == name]
        times = sorted(r["seconds"] for r in mine if "seconds" in r)
        per_page[name] = {
            "p50_s": round(statistics.median(times), 2) if times else None,
            "p95_s": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2) if times else None,
            "max_s": round(times[-1], 2) if times else None,
            "timeouts": sum("timeout" in r for r in mine),
            "errors": sum("error" in r for r in mine),
        }
    return per_page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=os.environ.get("MASHUP_WORKSPACE", "workspace"))
    parser.add_argument("--visitors", type=lambda t: [int(x) for x in t.split(",")],
                        default=[1, 5, 20, 30])
    parser.add_argument("--pages", type=lambda t: t.split(","),
                        default=["overview", "relevance", "merge", "convergence"])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per page")
    parser.add_argument("--browser-visitors", type=int, default=5,
                        help="a last trial with this many browsers at once (0: none)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpus = cpus[0], set(cpus[1:]) or {cpus[0]}
    os.sched_setaffinity(0, client_cpus)  # this process and the browser it starts
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_visitors_server_{port}.log"
    server = start_server(Path(args.workspace).resolve(), port, server_cpu, log)
    url = f"http://127.0.0.1:{port}"
    result = {"machine": {"cpus": len(cpus), "server_cpu": server_cpu,
                          "client_cpus": sorted(client_cpus)},
              "workspace": str(Path(args.workspace).resolve()), "pages": args.pages,
              "goal": GOAL, "trials": {}}
    try:
        def measured(kind: str, n: int) -> dict:
            started = time.perf_counter()
            with ServerMeter(server.pid) as meter:
                rows = asyncio.run(protocol_trial(port, n, args.pages, args.timeout)
                                   if kind == "protocol" else
                                   browser_trial(url, n, args.pages, args.timeout))
            entry = {"client": kind, "visitors": n, "pages": summarise(rows, args.pages),
                     "server_cpu_s": meter.cpu_s, "server_rss_mb": meter.rss_mb,
                     "wall_s": round(time.perf_counter() - started, 1)}
            worst = max((p["p95_s"] or float("inf")) for p in entry["pages"].values())
            entry["meets_goal"] = (worst <= GOAL["p95_s"] and meter.rss_mb <= GOAL["server_rss_mb"]
                                   and not any(p["timeouts"] or p["errors"]
                                               for p in entry["pages"].values()))
            print(f"{kind} x{n}: {json.dumps(entry)}", file=sys.stderr)
            return entry

        cold = measured("browser", 1)  # the first visitor of a freshly started server
        cold["first_visit_s"] = cold["pages"][args.pages[0]]["max_s"]
        result["cold"] = cold
        for n in args.visitors:
            result["trials"][str(n)] = measured("protocol", n)
        if args.browser_visitors:
            result["browser"] = measured("browser", args.browser_visitors)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
