"""What every page shares: the open workspace and its config, who may change it, the chosen
target, error display and caches.

Caches are keyed on the workspace path plus a fingerprint (file count, newest mtime) of the
files they read, so a background job writing to disk, or a source added to mashup.toml, shows
up on the next rerun.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import streamlit as st

from mashup_core import access, views
from mashup_core.errors import MashupError
from mashup_core.views import catalog, studies
from mashup_core.workspace import Workspace

DEFAULT_N = 64
NAVIGATION_KEY = "_navigation"  # set by app.py once its st.navigation has run
WANTED_PAGE_KEY = "_wanted_page"  # the page to show once app.py has taken over
TOKEN_KEY = "access_token"  # this session's access token, once it matched
TOKEN_INPUT_KEY = "access_token_input"  # the sidebar's password field
TEACH_KEY = "teach"  # the sidebar's teaching-mode toggle (and the link's ?teach=1)
_SEEN = "_url_seen_"  # + a param name: the value this session last read from or wrote to the URL
_KEPT = "_url_kept_"  # + a widget key: its value, kept across pages (widget state is not)
_NOTICES = "_url_notices"  # what a link asked for that this workspace does not have
PAGE_SIZE = 50  # tables longer than this get a filter box and pages


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
    # The link's query string goes along: a page switch starts without one.
    params = {k: (v if len(v := st.query_params.get_all(k)) > 1 else v[0]) for k in st.query_params}
    st.session_state[WANTED_PAGE_KEY] = (f"pages/{Path(page_file).name}", params)
    st.switch_page("app.py")


_frozen_modules = 0  # len(sys.modules) when the heap was last frozen
_freeze_lock = threading.Lock()


def keep_imports_out_of_gc() -> None:
    """Move what the imports made out of the garbage collector's sight, once per new import.

    Streamlit runs a full `gc.collect(2)` after every script run (`runner.postScriptGC`). With
    torch, transformers and plotly imported that walks millions of long-lived objects: 40 % of
    the server's CPU in a room of 30 visitors. After a run that imported new modules, the
    objects alive then (modules, classes, their caches) go to the permanent generation
    (`gc.freeze`), so each later collection walks only what the runs themselves make. Imports
    stop after each page's first run, so this happens a few times per process.
    """
    global _frozen_modules
    if len(sys.modules) <= _frozen_modules:
        return
    with _freeze_lock:
        if len(sys.modules) > _frozen_modules:
            gc.freeze()
            _frozen_modules = len(sys.modules)


# What the scoring, merging and training pages import: torch, transformers, PEFT (seconds of
# CPU on a laptop). No page's first run needs them for what it reads from disk, so the Overview
# a room opens first does not wait; they are imported once, in the background, after it.
HEAVY_MODULES = ("mashup_core.selection.loglik", "mashup_core.merging.lora",
                 "mashup_core.training.loop")
_warming = threading.Event()


def warm_up_heavy_imports() -> None:
    """Import HEAVY_MODULES in a daemon thread, once per process (a page that needs one first
    waits on Python's import lock for the rest, never imports twice)."""
    if _warming.is_set():
        return
    _warming.set()

    def run() -> None:
        import importlib

        for name in HEAVY_MODULES:
            with contextlib.suppress(Exception):  # the page that needs it reports any failure
                importlib.import_module(name)

    threading.Thread(target=run, name="mashup-warm-up", daemon=True).start()


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


# A session that cannot write (a read-only room, a locked dashboard's visitors) changes nothing,
# so what it reads of the workspace only moves with background jobs, which pages poll every
# few seconds anyway. Those reads are made once per SHARED_FOR_S for every such session
# together: thirty visitors cost one walk of the folders, not thirty. A session that may write
# reads afresh, so its own change shows on the very next rerun.
SHARED_FOR_S = 2.0
_READS = {
    "state": views.workspace_state,  # config, demo world, a build running
    "content": views.demo_content_status,  # the demo's first-open content (reads run records)
    "library_stamp": views.library_stamp,  # walks every file of the base and local sources
    "target_stamp": lambda ws, spec: views.target_stamp(spec, ws),
    "fingerprint": lambda ws, *paths: views.fingerprint(*paths),
}


@st.cache_resource(show_spinner=False, max_entries=256)
def _shared_read(name: str, root: str, args: tuple, period: int) -> Any:
    return _READS[name](Workspace.resolve(root), *args)  # `period` keys it: one per SHARED_FOR_S


def read(name: str, ws: Workspace, *args: Any) -> Any:
    """`_READS[name](ws, *args)`: afresh for a session that may write, else shared (see above).
    The result is shared too, so it is never changed in place."""
    if can_write():
        return _READS[name](ws, *args)
    return _shared_read(name, str(ws.root), args, int(time.monotonic() // SHARED_FOR_S))


def open_workspace(page_file: str):
    """(workspace, config) of the open study; else the first screen, which sets one up.

    Every page starts with `ws, config = open_workspace(__file__)`.
    """
    hand_over_to_app(page_file)
    ws = workspace()
    state = read("state", ws)
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
    target(ws, state.config)  # a link's ?target= is read (and the chosen one written) here
    teaching()  # ... and its ?teach=1
    return ws, state.config


@st.fragment(run_every=2)
def _build_progress(ws: Workspace) -> None:
    building = views.build_status(ws)  # which stage, "adapter 3 of 8", elapsed, time left
    st.info((f"Building in the background: {building}." if building else
             "A build is running in the background.") + " This page refreshes when it is done.",
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
    benchmarks = st.multiselect("Benchmarks", list(catalog.BENCHMARKS), key="setup_benchmarks",
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
    formats = list(catalog.GOLD_FORMATS)
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
    """The chosen target: the link's (`?target=`), else the session's, else the workspace's
    default. A workspace target is written back to the URL, so the link opens it again."""
    adopt_url_target(ws, config)
    chosen = st.session_state.get("target")
    if chosen is None or chosen.root not in ("", str(ws.root)):
        entry = views.default_target_entry(ws, config)
        chosen = None if entry is None else Target(views.target_spec_dict(entry), DEFAULT_N,
                                                   views.target_label(entry), str(ws.root))
    _write_target_params(config, chosen)
    return chosen


def _workspace_target_name(config, spec: dict) -> str | None:
    """The name a workspace target has in mashup.toml (and in links); None for another one."""
    for entry in config.targets:
        if views.target_spec_dict(entry) == spec:
            return catalog.target_name(entry)
    return None


def target_for(ws: Workspace, config, name: str, n: int = DEFAULT_N) -> Target | None:
    """The workspace target named `name` (as mashup.toml names it), or None."""
    for entry in config.targets:
        if catalog.target_name(entry) == name:
            return Target(views.target_spec_dict(entry), n, views.target_label(entry), str(ws.root))
    return None


def adopt_url_target(ws: Workspace, config) -> None:
    """A link's `?target=NAME&n=N` becomes the session's target when it names one of the
    workspace's targets; an unknown one leaves a notice (shown by `url_notices`)."""
    name = st.query_params.get("target")
    n = _int_param("n")
    current = st.session_state.get("target")
    if not name or (name, n) == st.session_state.get(_SEEN + "target"):
        return
    st.session_state[_SEEN + "target"] = (name, n)
    found = target_for(ws, config, name, n or (current.n if current else DEFAULT_N))
    if found is None:
        known = ", ".join(config.target_names()) or "none yet"
        _notice(f"The link names target **{name}**, which this workspace does not have "
                f"(its targets: {known}); showing the current one instead.")
        return
    with contextlib.suppress(MashupError):  # a target that cannot load says so on its page
        rows = len(target_examples(ws, found.spec))
        if found.n > rows:  # checked against the workspace: n within the split
            _notice(f"The link asks for n = {found.n}, more than the {rows} train rows of "
                    f"**{found.label}**; showing n = {rows}.")
            found = replace(found, n=rows)
    if found != current:
        st.session_state["target"] = found


def _write_target_params(config, chosen: Target | None) -> None:
    name = _workspace_target_name(config, chosen.spec) if chosen else None
    set_params(target=name, n=chosen.n if name else None)
    if name:
        st.session_state[_SEEN + "target"] = (name, chosen.n)

def require_target(ws: Workspace, config) -> Target:
    """The chosen target, or a note saying where to add one (and the page stops)."""
    chosen = target(ws, config)
    if chosen is None:
        st.info("This workspace has no target yet: add one on the Target page.",
                icon=":material/info:")
        st.page_link("pages/target.py", label="Target", icon=":material/target:")
        st.stop()
    return chosen


def set_target(value: Target, config=None) -> None:
    """Keep `value` for every page, and in the URL when it is one of the workspace's targets."""
    st.session_state["target"] = value
    if config is not None:
        _write_target_params(config, value)


@st.cache_data(show_spinner=False, max_entries=16)
def load_examples(root: str, spec: dict, stamp: tuple) -> list:
    return views.read_target(Workspace.resolve(root), spec)


def target_examples(ws: Workspace, spec: dict) -> list:
    return load_examples(str(ws.root), spec, read("target_stamp", ws, spec))


# --- the library -------------------------------------------------------------------------------


@st.cache_data(show_spinner="Validating the library…", max_entries=8)
def _scan(root: str, stamp: tuple):
    return views.library_scan(Workspace.resolve(root))


def library(ws: Workspace):
    """The workspace's library (mashup.toml's sources on its base model), validated."""
    return _scan(str(ws.root), read("library_stamp", ws))


def page_header(title: str, lead: str, *, content_detail: bool = False) -> None:
    """The page's title and lead, a link's notices, and the demo content's progress (while
    `mashup demo start` computes it; a line per stage with `content_detail`)."""
    st.title(title)
    st.markdown(lead)
    for notice in st.session_state.pop(_NOTICES, []):
        st.warning(notice, icon=":material/link_off:")
    status = demo_content(workspace())
    if status and status["state"] != "done":  # once done, no line and no polling
        content_line(workspace(), content_detail)


# --- figures and what they are drawn from --------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=256)
def _derived(_build, _args: tuple, _kwargs: dict, name: str, inputs: Any) -> Any:
    return _build(*_args, **_kwargs)  # `name` and `inputs` key it; the rest is not hashed


def derived(build, *args: Any, inputs: Any = None, **kwargs: Any) -> Any:
    """`build(*args, **kwargs)` of a pure function (a view's figure, frame or notes), computed
    once for every session that asks under the same `inputs`: drawing the figures was most of
    a page's run, and a room of thirty now draws each once.

    `inputs` names the arguments in a few small values: the stamp the page read its data under
    and the choices applied to it (hashing a table on every run costs as much as drawing it).
    Without it the arguments themselves are hashed (for small ones: counts, names). The result
    is shared, so it is only read (st.plotly_chart copies a figure)."""
    name = f"{build.__module__}.{build.__qualname__}"
    return _derived(build, args, kwargs, name, (args, kwargs) if inputs is None else inputs)


def chart(build, *args: Any, key: str, inputs: Any = None, options: dict | None = None,
          **kwargs: Any):
    """`st.plotly_chart(build(*args, **kwargs), key=key, **options)`, the figure `derived`."""
    figure = derived(build, *args, inputs=inputs, **kwargs)
    return st.plotly_chart(figure, key=key, **(options or {}))


# --- the demo's first-open content (`mashup demo start`: world -> study -> pair) -------------

STAGES = {"world": "the demo world", "study": "the leave-one-out study",
          "pair": "the mashup + scratch pair"}


def demo_content(ws: Workspace) -> dict | None:
    """`content_status(ws)` of a workspace whose demo content was started here; None for one
    where it never was (a user's workspace: nothing to say)."""
    return read("content", ws)


def _count(stage: dict) -> str:
    p = stage.get("progress") or {}
    if not p.get("total") or p.get("unit") == "world":
        return ""
    return f"{p.get('done', 0)} of {p['total']} {p.get('unit', '')}".rstrip()


def computing_note(ws: Workspace, stage: str) -> bool:
    """Where a page would say "no runs" or "no study": if the demo's content job is computing
    that stage, say so ("computing — 12 of 48 cells") and return True."""
    status = demo_content(ws)
    if not status or status["state"] != "running":
        return False
    part = status["stages"][stage]
    if part["state"] == "done":
        return False
    count = _count(part)
    st.info(f"Computing {STAGES[stage]} in the background"
            + (f" — {count}" if count else "") + ". This page fills in when it is ready.",
            icon=":material/hourglass_top:")
    return True


@st.fragment(run_every=3)
def content_line(ws: Workspace, detailed: bool = False) -> None:
    """While the demo's content is computing: one line saying what is ready and what is still
    computing (on the Overview, a line per stage), refreshed every few seconds; nothing once it
    is done. A stage that finishes reruns the page, so its content appears."""
    status = demo_content(ws)
    if not status:
        return
    states = {name: part["state"] for name, part in status["stages"].items()}
    seen_key = f"_content_states-{ws.root}"
    seen = st.session_state.get(seen_key)
    st.session_state[seen_key] = states
    if seen is not None and seen != states:
        st.rerun(scope="app")  # a stage finished (or started): the page's content changed
    if status["state"] == "done":
        return
    if status["state"] == "failed":
        st.warning(f"Demo content: {status['message']}", icon=":material/warning:")
    elif status["state"] == "running":
        ready = [STAGES[n] for n, s in states.items() if s == "done"]
        st.info(status["message"] + (f" Ready: {', '.join(ready)}." if ready else ""),
                icon=":material/hourglass_top:")
    if not detailed or status["state"] == "pending":
        return
    for name, part in status["stages"].items():
        count = _count(part)
        mark = {"done": ":material/check_circle:", "running": ":material/progress_activity:",
                "failed": ":material/error:"}.get(part["state"], ":material/schedule:")
        st.caption(f"{mark} {STAGES[name]}: {part['state']}" + (f" ({count})" if count else "")
                   + (f" — {part['error']}" if part.get("error") else ""))


# --- studies ---------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=16)
def _study_table(path: str, stamp: tuple):
    return studies.load_study_table(path)


def study_table(study_dir: Path):
    """The study's `StudyTable`, cached until its files change."""
    return _study_table(str(study_dir), read("fingerprint", workspace(), study_dir))


def choose_study(ws: Workspace, studies: list[Path], key: str) -> Path:
    """The study picker (`?study=` in the URL), shared by the study pages: the one chosen last
    on any of them is the default."""
    names = [d.name for d in studies]
    current = st.session_state.get("study_id")
    name = url_widget(st.selectbox, "Study", names, param="study", key=key,
                      default=current if current in names else names[0], what="study")
    st.session_state["study_id"] = name
    return ws.studies_dir / name


# --- shareable views: the choices live in the URL's query string ------------------------------
#
# A page reads a choice from the link when the link changed (opened, shared, the browser's back
# button), checks it against the workspace (an unknown value leaves a notice, never an error),
# and writes the choice back when the user changes it, so the address bar is always a link to
# the view on screen. The target (`target`, `n`) and teaching mode (`teach`) are kept on every
# page; a page's own choices (`study`, `runs`, `pair`, `tab`, ...) through `url_widget`.


def _notice(text: str) -> None:
    notices = st.session_state.setdefault(_NOTICES, [])
    if text not in notices:
        notices.append(text)


def _int_param(name: str) -> int | None:
    try:
        value = int(st.query_params.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def set_params(**values: Any) -> None:
    """Write these query parameters (None removes one); an unchanged one is left alone, so the
    browser's history gets an entry only for a real change."""
    for name, value in values.items():
        if value is None or value == [] or value == "":
            if name in st.query_params:
                del st.query_params[name]
            st.session_state.pop(_SEEN + name, None)
            continue
        text = [str(v) for v in value] if isinstance(value, list | tuple) else str(value)
        now = st.query_params.get_all(name) if isinstance(text, list) else st.query_params.get(name)
        if now != text:
            st.query_params[name] = text


def url_widget(widget, label: str, options, *, param: str, key: str, default: Any = None,
               what: str = "choice", multi: bool = False, format_func=str, **kwargs: Any) -> Any:
    """A selectbox / radio / segmented_control / multiselect whose value is in the URL as
    `?param=...` (a multiselect's as one entry per value): read from a new link, checked
    against `options` (unknown values leave a notice), kept across pages, written back."""
    options = list(options)
    by_text = {str(o): o for o in options}
    fallback = [o for o in (default or []) if o in options] if multi else (
        default if default in options else (options[0] if options else None))

    def valid(value: Any) -> bool:
        if multi:
            return isinstance(value, list) and all(v in options for v in value)
        return value in options

    raw = st.query_params.get_all(param)
    if raw and raw != st.session_state.get(_SEEN + param):  # a new link, or back in history
        st.session_state[_SEEN + param] = raw
        good = [by_text[v] for v in raw if v in by_text]
        if bad := [v for v in raw if v not in by_text]:  # said here: the header is drawn
            st.warning(f"The link's {what} **{', '.join(bad)}** is not in this workspace; "
                       + ("showing the others." if good and multi else "showing the default."),
                       icon=":material/link_off:")
        if good:
            st.session_state[key] = good if multi else good[0]
    if not valid(st.session_state.get(key)):
        kept = st.session_state.get(_KEPT + key)
        st.session_state[key] = kept if valid(kept) else fallback
    value = widget(label, options, key=key, format_func=format_func, **kwargs)
    if value is None and not multi:  # a segmented control clicked off: its default
        value = fallback
    st.session_state[_KEPT + key] = value
    text = [str(v) for v in value] if multi else ([] if value is None else [str(value)])
    set_params(**{param: text if multi else (text[0] if text else None)})
    st.session_state[_SEEN + param] = text
    return value


def url_tabs(labels: list[str], *, param: str = "tab", key: str) -> tuple[Any, ...]:
    """st.tabs whose open tab is in the URL (`?tab=Loss`), read from a link, written back."""
    raw = st.query_params.get(param)
    if raw and [raw] != st.session_state.get(_SEEN + param) and raw in labels:
        st.session_state[key] = raw
    st.session_state[_SEEN + param] = [raw] if raw else []
    if st.session_state.get(key) not in labels:
        kept = st.session_state.get(_KEPT + key)
        st.session_state[key] = kept if kept in labels else labels[0]
    tabs = st.tabs(labels, key=key, on_change="rerun")
    chosen = st.session_state.get(key) or labels[0]
    st.session_state[_KEPT + key] = chosen
    set_params(**{param: None if chosen == labels[0] else chosen})
    if chosen != labels[0]:
        st.session_state[_SEEN + param] = [chosen]
    return tuple(tabs)


# --- teaching mode and the guided walk -------------------------------------------------------

# Every page of the dashboard, in method order: (file, title, icon, what to look at there on
# the walk through the method; None: not a step of it). app.py's navigation and the "Next step"
# links are both read from here.
PAGES = [
    ("pages/overview.py", "Overview", ":material/home:", "the method in one picture"),
    ("pages/library.py", "Library", ":material/inventory_2:", "the checkpoints, and which task helps which"),
    ("pages/target.py", "Target", ":material/target:", "what to adapt to, and what guessing would score"),
    ("pages/relevance.py", "Relevance", ":material/leaderboard:", "which checkpoints fit the target"),
    ("pages/relevance_map.py", "Relevance map", ":material/grid_on:",
     "which part of the library helps which target"),
    ("pages/merge.py", "Merge methods", ":material/merge:", "which merge method and k win across targets"),
    ("pages/recycle.py", "Recycle", ":material/recycling:", None),
    ("pages/launch.py", "Launch", ":material/rocket_launch:", "finetune from the merge and from scratch"),
    ("pages/convergence.py", "Convergence", ":material/show_chart:",
     "how much sooner the mashup run gets there"),
    ("pages/report.py", "Report", ":material/summarize:", "the study's results table and figures, for slides"),
]
WALK = [(file, title, what) for file, title, _, what in PAGES if what is not None]


def teaching_toggle() -> bool:
    """The sidebar's switch (off by default; a link's ?teach=1 turns it on)."""
    teaching()  # a new link's ?teach= is read into the toggle's state first
    on = st.toggle("Teaching mode", key=TEACH_KEY,
                   help="adds, beside each chart, what to notice in this study's numbers, and a "
                   "next step at the bottom of each page")
    st.session_state[_KEPT + TEACH_KEY] = on
    set_params(teach=1 if on else None)
    return on


def teaching() -> bool:
    """Is teaching mode on for this session? (The sidebar's toggle, or the link's ?teach=1.)"""
    raw = st.query_params.get(TEACH_KEY)
    if raw is not None and [raw] != st.session_state.get(_SEEN + TEACH_KEY):
        st.session_state[_SEEN + TEACH_KEY] = [raw]
        st.session_state[_KEPT + TEACH_KEY] = raw not in ("0", "", "false", "off")
        st.session_state[TEACH_KEY] = st.session_state[_KEPT + TEACH_KEY]
    on = bool(st.session_state.get(_KEPT + TEACH_KEY, False))
    set_params(teach=1 if on else None)
    if on:
        st.session_state[_SEEN + TEACH_KEY] = ["1"]
    return on


def teach(notes: list[str]) -> None:
    """In teaching mode: what to notice, computed from the chart's own numbers."""
    if notes and teaching():
        st.info("**What to notice here**\n\n" + "\n".join(f"- {n}" for n in notes),
                icon=":material/school:")


def next_step(page_file: str) -> None:
    """In teaching mode, a link to the next page in method order (the guided walk)."""
    if not teaching():
        return
    files = [f for f, *_ in WALK if (Path(__file__).parent.parent / f).exists()]
    here = f"pages/{Path(page_file).name}"
    if here not in files or here == files[-1]:
        if here == files[-1]:
            st.success("That is the whole method: from the library to a run that gets there "
                       "sooner, and the study that says so across targets. Change the target "
                       "in the sidebar and walk it again.",
                       icon=":material/flag:")
        return
    nxt = files[files.index(here) + 1]
    _, title, what = next(w for w in WALK if w[0] == nxt)
    st.divider()
    st.page_link(nxt, label=f"**Next step: {title}** — {what}", icon=":material/arrow_forward:")


# --- long tables -----------------------------------------------------------------------------


def paged_table(frame, *, key: str, search: list[str] | None = None, page_size: int = PAGE_SIZE,
                **kwargs: Any) -> None:
    """st.dataframe, with a filter box and pages once the table is longer than `page_size`
    rows (a library of 200 or 50 runs is not dumped in one grid)."""
    if len(frame) <= page_size:
        st.dataframe(frame, **kwargs)
        return
    columns = search or [c for c in frame.columns if frame[c].dtype == object]
    query = st.text_input(f"Filter the {len(frame)} rows", key=f"{key}-filter",
                          placeholder=f"text in {', '.join(columns)}").strip().lower()
    if query:
        hit = frame[columns].astype(str).apply(lambda col: col.str.lower().str.contains(
            query, regex=False)).any(axis=1)
        frame = frame[hit]
    pages = max(1, -(-len(frame) // page_size))
    page = st.pagination(pages, key=f"{key}-page") if pages > 1 else 1
    page = min(page, pages)
    st.dataframe(frame.iloc[(page - 1) * page_size : page * page_size], **kwargs)
    st.caption(f"{len(frame)} row(s){' match' if query else ''}; page {page} of {pages}, "
               f"{page_size} a page.")
