"""What every page shares: the open workspace and its config, who may change it, the chosen
target, error display and caches.

Caches are keyed on the workspace path plus a fingerprint (file count, newest mtime) of the
files they read, so a background job writing to disk, or a source added to mashup.toml, shows
up on the next rerun.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from mashup_core import access, views
from mashup_core.errors import MashupError
from mashup_core.workspace import Workspace

DEFAULT_N = 64
NAVIGATION_KEY = "_navigation"  # set by app.py once its st.navigation has run
WANTED_PAGE_KEY = "_wanted_page"  # the page to show once app.py has taken over
TOKEN_KEY = "access_token"  # this session's access token, once it matched
TOKEN_INPUT_KEY = "access_token_input"  # the sidebar's password field


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


# --- who may change the workspace ----------------------------------------------------------


def session_token() -> str | None:
    """The access token this session gave, once it matched. Kept under its own key: the
    password field's state goes when the field is no longer drawn (after unlocking)."""
    typed = st.session_state.get(TOKEN_INPUT_KEY)
    if typed and access.token_matches(typed):
        st.session_state[TOKEN_KEY] = typed
    return st.session_state.get(TOKEN_KEY)


def can_write() -> bool:
    """May this session launch, cancel or change anything? Pages show write buttons only then;
    the core checks again (`access.require_write`) whatever a page shows."""
    return access.can_write(session_token())


@contextmanager
def writing() -> Iterator[None]:
    """Run a write action with this session's token (if any), its refusal shown as a message."""
    with shown_errors(), access.granted(session_token()):
        yield


def access_panel() -> None:
    """The sidebar's word on access: read-only, locked (with the token field) or unlocked."""
    if access.read_only():
        st.caption(":material/visibility: **Read-only**: browse the study; nothing can be "
                   "launched or changed from here.")
        return
    if not access.token_required():
        return
    if can_write():
        st.caption(":material/lock_open: Unlocked: you can launch runs and change the study.")
        return
    token = st.text_input("Access token", type="password", key=TOKEN_INPUT_KEY,
                          help="this dashboard is shared: the token enables launching and "
                          "changing the study")
    if token:  # a right one unlocked the session in can_write() above
        time.sleep(1)  # a wrong guess costs a second: guessing by script stays slow
        st.error("That is not this dashboard's access token.", icon=":material/lock:")
    else:
        st.caption(":material/lock: Browsing only: enter the access token to launch or change "
                   "anything.")


# --- the open workspace --------------------------------------------------------------------


def workspace() -> Workspace:
    """The workspace chosen in the sidebar; fixed at start ($MASHUP_WORKSPACE) unless this
    session may write (a visitor who may not must not open other folders of the server)."""
    chosen = st.session_state.get("workspace") if can_write() else None
    return Workspace.resolve(chosen or None)


def open_workspace(page_file: str):
    """(workspace, config) of the open study; else the first screen, which sets one up.

    Every page starts with `ws, config = open_workspace(__file__)`.
    """
    hand_over_to_app(page_file)
    ws = workspace()
    state = views.workspace_state(ws)
    if state.building:
        st.title("Building the demo world")
        _build_progress(ws)
        st.stop()
    if state.error:
        st.title("This workspace's config cannot be used")
        st.error(state.error, icon=":material/error:")
        st.markdown(f"Fix `{ws.root / 'mashup.toml'}` (the message names the key), then reload. "
                    "`mashup config --workspace …` shows what it reads.")
        st.stop()
    if state.config is None:
        setup_screen(ws, state)
        st.stop()
    return ws, state.config


@st.fragment(run_every=2)
def _build_progress(ws: Workspace) -> None:
    st.info("A build is running in the background; this page refreshes when it is done.",
            icon=":material/hourglass_top:")
    log = views.build_log_path(ws)
    if log.exists():
        st.code("\n".join(log.read_text(errors="replace").splitlines()[-8:]) or "starting…")
    if not views.build_running(ws):
        st.rerun()


def setup_screen(ws: Workspace, state) -> None:
    """The first screen of a folder with neither mashup.toml nor a demo world: describe your
    study (base model, checkpoint sources, targets), or build the demo world."""
    st.title("Set up this workspace")
    why = "" if state.demo_reason == "no demo world yet" else f" ({state.demo_reason})"
    st.markdown(f"The workspace `{ws.root}` has no study yet: no `mashup.toml` and no usable "
                f"demo world{why}. A workspace is one study of one base model: the model, the "
                "checkpoints to draw on, and the targets to adapt to.")
    if not can_write():
        st.info("This dashboard " + ("is read-only" if access.read_only() else "is locked")
                + ", so it cannot set one up. Create it from a terminal, then reload:",
                icon=":material/info:")
        st.code(f"mashup init --workspace {ws.root} --base BASE --source CHECKPOINTS\n"
                f"mashup demo build --workspace {ws.root}", language="bash")
        return
    own, demo = st.tabs(["Your model and checkpoints", "The demo world"])
    with own:
        _setup_form(ws)
    with demo:
        st.markdown("A tiny world built on this machine: a base model, 8 synthetic tasks and "
                    "16 LoRA adapters trained on them. Build it once from a terminal (about 2 "
                    "minutes on a laptop CPU), then reload:")
        st.code(f"mashup demo build --workspace {ws.root}", language="bash")
        log = views.build_log_path(ws)
        if log.exists():  # a build that ended without a world: say why
            with st.expander("The last build's log"):
                st.code("\n".join(log.read_text(errors="replace").splitlines()[-20:]))
        profile = st.radio("or build it from here", ["full", "tiny"], horizontal=True,
                           captions=["about 2 min, the demo's numbers", "about 15 s, for a quick look"])
        if st.button("Build the demo world", type="primary", icon=":material/construction:"):
            with writing():
                views.launch_demo_build(ws, profile)
                st.rerun()


def _setup_form(ws: Workspace) -> None:
    from mashup_core.data.targets import BENCHMARKS

    base = st.text_input("Base model", key="setup_base",
                         placeholder="/models/Llama-3.2-1B or meta-llama/Llama-3.2-1B",
                         help="a folder with config.json, weights and tokenizer, or a Hub id; a "
                         "relative folder is read from the workspace folder")
    sources = st.text_area("Checkpoint sources, one per line", key="setup_sources",
                           placeholder="/path/to/adapters\nowner/adapter-repo",
                           help="folders searched recursively for LoRA adapters and full "
                           "checkpoints (safetensors), or Hub ids")
    st.markdown("**Targets** — what to adapt to; more can be added later on the Target page")
    data = st.text_input("Your data: a JSONL, JSON, CSV, TSV or Parquet file, or a folder with "
                         "train and validation files", key="setup_data")
    targets: list[dict[str, Any]] = []
    if data.strip():
        path = views.local_path(data, ws)
        with shown_errors():
            mapping = mapping_editor(path, "setup")
            if mapping is not None:
                entry = {"kind": "file", "name_or_path": path, "mapping": mapping}
                examples = target_examples(ws, views.target_spec_dict(entry))
                st.dataframe(views.examples_frame(examples, limit=3), hide_index=True,
                             width="stretch")
                st.caption(f"The first rows through this mapping; ✔ marks the gold answer. "
                           f"{len(examples)} train examples.")
                targets.append(entry)
    benchmarks = st.multiselect("Benchmarks", list(BENCHMARKS), key="setup_benchmarks",
                                help="the paper's eight, with lm-eval's prompts")
    for name in benchmarks:
        local = st.text_input(f"Local data for {name} (optional: its Hub schema, JSONL, JSON, "
                              "CSV or Parquet; empty = the Hugging Face Hub)", key=f"setup_data_{name}")
        targets.append({"kind": "benchmark", "name_or_path": name,
                        "data": views.local_path(local, ws) if local.strip() else None})
    left, right = st.columns(2)
    finetune = left.radio("Finetune", ["lora", "full"], horizontal=True, key="setup_finetune",
                          format_func={"lora": "LoRA", "full": "full (every weight)"}.get)
    device = right.selectbox("Device", ["auto", "cpu", "cuda"], key="setup_device")
    if st.button("Create the workspace", type="primary", icon=":material/create_new_folder:"):
        with writing():
            views.create_workspace(ws, base, sources.splitlines(), targets, finetune=finetune,
                                   device=device)
            st.rerun()


def mapping_editor(path: str, key: str) -> dict[str, Any] | None:
    """Map a file's fields onto prompt, choices and gold, with a preview of the examples they
    make; returns the mapping (a FieldMapping dict), or None until the choices are picked."""
    from mashup_core.data.targets import GOLD_FORMATS

    fields, guess = views.mapping_guess(path)
    if not fields:
        st.warning(f"`{Path(path).name}` has no rows to map.", icon=":material/warning:")
        return None
    key = f"{key}-{path}"  # another file starts from its own guess
    c1, c2, c3, c4 = st.columns([2, 3, 2, 1.4])
    prompt = c1.selectbox("Prompt field", fields, index=fields.index(guess["prompt"])
                          if guess["prompt"] in fields else 0, key=f"{key}-prompt")
    choices = c2.multiselect("Choices (one list field, or several columns)", fields,
                             default=[c for c in guess["choices"] if c in fields], key=f"{key}-choices")
    gold = c3.selectbox("Gold label field", fields, index=fields.index(guess["gold"])
                        if guess["gold"] in fields else len(fields) - 1, key=f"{key}-gold")
    formats = list(GOLD_FORMATS)
    gold_format = c4.selectbox("Gold format", formats, index=formats.index(guess["gold_format"]),
                               key=f"{key}-format")
    t1, t2 = st.columns([4, 1])
    template = t1.text_input("Prompt template (optional; overrides the prompt field)",
                             placeholder="Question: {question}\\nAnswer:", key=f"{key}-template",
                             help="fields in braces; \\n for a new line")
    delimiter = t2.text_input("Choices delimiter", value="", max_chars=5, key=f"{key}-delimiter",
                              help="when one text field holds all choices")
    if not choices:
        st.warning("Pick the field (or columns) that holds the choices.", icon=":material/warning:")
        return None
    return {"prompt": template.replace("\\n", "\n") if template.strip() else prompt,
            "choices": list(choices), "gold": gold, "gold_format": gold_format,
            "choices_delimiter": delimiter or None}


# --- the target, chosen on the Target page and used by the others ------------------------------


@dataclass(frozen=True)
class Target:
    spec: dict[str, Any]  # TargetSpec.to_dict()
    n: int
    label: str
    root: str = ""  # the workspace it was chosen in (another one starts from its own default)


def target(ws: Workspace, config) -> Target | None:
    """The chosen target; the workspace's default until one is chosen on the Target page."""
    chosen = st.session_state.get("target")
    if chosen is not None and chosen.root in ("", str(ws.root)):
        return chosen
    entry = views.default_target_entry(ws, config)
    if entry is None:
        return None
    return Target(views.target_spec_dict(entry), DEFAULT_N, views.target_label(entry), str(ws.root))


def require_target(ws: Workspace, config) -> Target:
    """The chosen target, or a note saying where to add one (and the page stops)."""
    chosen = target(ws, config)
    if chosen is None:
        st.info("This workspace has no target yet: add one on the Target page.",
                icon=":material/info:")
        st.page_link("pages/target.py", label="Target", icon=":material/target:")
        st.stop()
    return chosen


def set_target(value: Target) -> None:
    st.session_state["target"] = value


@st.cache_data(show_spinner=False, max_entries=16)
def load_examples(root: str, spec: dict, stamp: tuple) -> list:
    from mashup_core.data.targets import TargetSpec, load_target

    return load_target(TargetSpec.from_dict(spec), Workspace.resolve(root))


def target_examples(ws: Workspace, spec: dict) -> list:
    return load_examples(str(ws.root), spec, views.target_stamp(spec, ws))


# --- the library -------------------------------------------------------------------------------


@st.cache_data(show_spinner="Validating the library…", max_entries=8)
def _scan(root: str, stamp: tuple):
    return views.library_scan(Workspace.resolve(root))


def library(ws: Workspace):
    """The workspace's library (mashup.toml's sources on its base model), validated."""
    return _scan(str(ws.root), views.library_stamp(ws))


def page_header(title: str, lead: str) -> None:
    st.title(title)
    st.markdown(lead)
