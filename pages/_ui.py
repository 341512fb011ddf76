"""What every page shares: the open workspace, the chosen target, error display and caches.

Caches are keyed on the workspace path plus a fingerprint (file count, newest mtime) of the
folders they read, so a background job writing to disk shows up on the next rerun.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from mashup_core import views
from mashup_core.errors import MashupError
from mashup_core.workspace import Workspace

DEFAULT_N = 64
NAVIGATION_KEY = "_navigation"  # set by app.py once its st.navigation has run
WANTED_PAGE_KEY = "_wanted_page"  # the page to show once app.py has taken over


@contextmanager
def shown_errors() -> Iterator[None]:
    """Show a user-fixable error as a message instead of a stack trace; the page goes on."""
    try:
        yield
    except MashupError as exc:
        st.error(str(exc), icon=":material/error:")


def hand_over_to_app(page_file: str) -> None:
    """Run this page through app.py if Streamlit ran it alone.

    A fresh server runs its first session in the old `pages/`-folder mode until app.py calls
    `st.navigation`; a first visit straight to a page's URL would then show that page without
    the app's sidebar and navigation. Such a run is sent to app.py, which comes back here.
    """
    if st.session_state.get(NAVIGATION_KEY):
        return
    st.session_state[WANTED_PAGE_KEY] = f"pages/{Path(page_file).name}"
    st.switch_page("app.py")


def workspace() -> Workspace:
    return Workspace.resolve(st.session_state.get("workspace") or None)


def require_world(page_file: str) -> Workspace:
    """The open workspace if it holds a usable demo world; else a page saying how to get one.

    Every page starts with `require_world(__file__)`.
    """
    hand_over_to_app(page_file)
    ws = workspace()
    summary = views.workspace_summary(ws)
    if summary.usable:
        return ws
    st.title("No demo world here yet")
    st.markdown(f"The workspace `{ws.root}` has no usable demo world ({summary.reason}).")
    if summary.building:
        _build_progress(ws)
        st.stop()
    st.markdown("Build it once from a terminal (about 2 minutes on a laptop CPU), then reload:")
    st.code(f"mashup demo build --workspace {ws.root}", language="bash")
    profile = st.radio("or build it from here", ["full", "tiny"], horizontal=True,
                       captions=["about 2 min, the demo's numbers", "about 15 s, for a quick look"])
    if st.button("Build the demo world", type="primary", icon=":material/construction:"):
        with shown_errors():
            views.launch_demo_build(ws, profile)
            st.rerun()
    st.stop()


@st.fragment(run_every=2)
def _build_progress(ws: Workspace) -> None:
    st.info("A build is running in the background; this page refreshes when it is done.",
            icon=":material/hourglass_top:")
    log = views.build_log_path(ws)
    if log.exists():
        st.code("\n".join(log.read_text(errors="replace").splitlines()[-8:]) or "starting…")
    if views.workspace_summary(ws).usable:
        st.rerun()


# --- the target, chosen on the Target page and used by the others ------------------------------


@dataclass(frozen=True)
class Target:
    spec: dict[str, Any]  # TargetSpec.to_dict()
    n: int
    label: str


def target(ws: Workspace) -> Target:
    """The chosen target; the demo default until one is chosen on the Target page."""
    chosen = st.session_state.get("target")
    if chosen is not None:
        return chosen
    task = views.default_target(ws) or "min"  # the world's clearest measured story
    return Target({"kind": "demo", "name_or_path": task, "split": "train", "mapping": None},
                  DEFAULT_N, f"{task} (demo task)")


def set_target(value: Target) -> None:
    st.session_state["target"] = value


@st.cache_data(show_spinner=False, max_entries=16)
def load_examples(root: str, spec: dict, stamp: tuple) -> list:
    from mashup_core.data.targets import TargetSpec, load_target

    return load_target(TargetSpec.from_dict(spec), Workspace.resolve(root))


def target_examples(ws: Workspace, chosen: Target) -> list:
    where = Path(chosen.spec["name_or_path"]) if chosen.spec["kind"] == "file" else ws.tasks_dir
    return load_examples(str(ws.root), chosen.spec, views.fingerprint(where))


# --- the library -------------------------------------------------------------------------------


@st.cache_data(show_spinner="Validating the library…", max_entries=8)
def _scan(root: str, extra: tuple[str, ...], stamp: tuple):
    return views.library_scan(Workspace.resolve(root), extra)


def extra_sources() -> tuple[str, ...]:
    return tuple(st.session_state.setdefault("library_sources", []))


def library(ws: Workspace, extra: tuple[str, ...] | None = None):
    """The demo library plus the folders or Hub ids added on the Library page (`extra`,
    default: this session's), validated."""
    extra = extra_sources() if extra is None else extra
    local = [Path(s) for s in extra if Path(s).exists()]
    return _scan(str(ws.root), extra, views.fingerprint(ws.library_dir, *local))


def page_header(title: str, lead: str) -> None:
    st.title(title)
    st.markdown(lead)
