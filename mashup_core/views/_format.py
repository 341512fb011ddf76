"""Small formatting and cache-key helpers every view module shares."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

TEMPLATE = "plotly_white"  # every figure's, on screen and in the PNG, SVG and PDF exports


def fingerprint(*paths: Path) -> tuple[tuple[str, int, int], ...]:
    """(path, file count, newest mtime) per path: a cheap cache key that changes with the files."""
    stamp = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            stamp.append((str(path), -1, -1))
            continue
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        newest = max((p.stat().st_mtime_ns for p in files), default=path.stat().st_mtime_ns)
        stamp.append((str(path), len(files), newest))
    return tuple(stamp)


def on_first_use(module: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) that imports each name of `homes` from its home module
    when first asked for: what a page reads through a view without importing torch, PEFT or
    transformers on every page's first run (seconds on a laptop)."""
    def __getattr__(name: str) -> Any:
        if name in homes:
            return getattr(importlib.import_module(homes[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def fmt(value: Any, pattern: str = "{:.2f}") -> str:
    """A number for a metric card; an en dash for a missing one (None or NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return pattern.format(value)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def styled(fig: go.Figure, *, top: int = 30, **extra: Any) -> go.Figure:
    """The dashboard's figure style: its template, tight margins (`top` leaves room for a
    title), the legend in a row above the plot; `extra` is any other layout. (Plotly validates
    the template anew for each figure, 15 ms; the pages build a figure once for all sessions.)"""
    fig.update_layout(**{"margin": {"l": 10, "r": 10, "t": top, "b": 10}, "template": TEMPLATE,
                         "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
                         **extra})
    return fig
