"""Target: what to adapt to — the workspace's targets, a demo task, one of the paper's
benchmarks (from the Hub or local files), or your own file with its field mapping."""

from pathlib import Path

import streamlit as st

from mashup_core import access, views
from mashup_core.views import teaching
from mashup_core.views.catalog import list_demo_tasks
from pages import _ui

ws, config = _ui.open_workspace(__file__)
_ui.page_header("Target task", "Choose what the library is scored on and the model is finetuned "
                "for. The choice is kept for the other pages (see the sidebar); adding it to the "
                "workspace keeps it in `mashup.toml` for everyone.")

current = _ui.target(ws, config)
configured = {views.target_label(t): views.target_spec_dict(t) for t in config.targets}
SOURCES = ["Workspace targets", *(["Demo task"] if list_demo_tasks(ws) else []), "Benchmark", "File"]
if current is None or current.spec in configured.values():
    default = "Workspace targets"
else:
    default = {"demo": "Demo task", "benchmark": "Benchmark", "file": "File"}[current.spec["kind"]]
    default = default if default in SOURCES else "Workspace targets"
kind = st.segmented_control("Source", SOURCES, default=default) or default


def choose(spec: dict, label: str, examples: list) -> None:
    """Preview the examples, pick n, keep the choice for the other pages, and offer to add it
    to the workspace's targets if it is not one yet."""
    st.dataframe(views.examples_frame(examples), hide_index=True, width="stretch")
    st.caption(f"The first rows of {label}; ✔ marks the gold answer. {len(examples)} train "
               "examples in all.")
    n = st.number_input("Scoring examples n", min_value=1, max_value=len(examples),
                        value=min(current.n if current else _ui.DEFAULT_N, len(examples)), step=8,
                        help="how many train examples score each checkpoint (the paper: 256)")
    chosen = _ui.Target(spec, int(n), label, str(ws.root))
    if chosen != current:
        _ui.set_target(chosen, config)  # and in the URL, when it is a workspace target
        st.rerun()  # the sidebar, drawn before this page, shows the new choice
    _ui.teach(teaching.target_notes(examples, int(n)))
    st.success(f"Target: **{label}**, n = {n}. Next: see which checkpoints fit it.",
               icon=":material/check_circle:")
    addable = spec not in configured.values() and _ui.can_write()
    if addable and st.button("Add to the workspace's targets", icon=":material/playlist_add:",
                             help="writes it, with its field mapping or local data, to mashup.toml"):
        with _ui.writing():
            views.add_workspace_target(ws, spec)
            st.rerun()
    st.page_link("pages/relevance.py", label="Relevance", icon=":material/leaderboard:")


if kind == "Workspace targets":
    if not config.targets:
        st.info("No targets in this workspace yet: pick a benchmark or your own file above, "
                "then add it.", icon=":material/info:")
    else:
        st.dataframe(views.targets_frame(config, ws), hide_index=True, width="stretch")
        labels = list(configured)
        start = current.label if current and current.label in labels else labels[0]
        label = st.selectbox("Target", labels, index=labels.index(start))
        with _ui.shown_errors():
            spec = configured[label]
            if spec.get("mapping"):
                st.caption("Field mapping: " + views.mapping_summary(spec["mapping"]))
            choose(spec, label, _ui.target_examples(ws, spec))

elif kind == "Demo task":
    tasks = views.demo_tasks_frame(ws)
    names = list(tasks["task"])
    start = current.spec["name_or_path"] if current and current.spec["kind"] == "demo" else names[0]
    task = st.selectbox("Demo task", names, index=names.index(start) if start in names else 0,
                        format_func=lambda t: f"{t} — {tasks.set_index('task').loc[t, 'what it asks']}")
    with _ui.shown_errors():
        spec = views.target_spec_dict({"kind": "demo", "name_or_path": task})
        choose(spec, views.target_label(spec), _ui.target_examples(ws, spec))

elif kind == "Benchmark":
    benches = views.benchmarks_frame()
    st.dataframe(benches, hide_index=True, width="stretch")
    st.caption("The paper's eight benchmarks, with lm-eval's prompts: from the Hugging Face Hub "
               "through `datasets`, or from local files in the benchmark's Hub schema.")
    name = st.selectbox("Benchmark", list(benches["benchmark"]))
    local = ""
    if _ui.can_write():  # reading the server's folders is for those who may change the study
        local = st.text_input("Local data (optional): a file or folder in the benchmark's Hub "
                              "schema (JSONL, JSON, CSV or Parquet); empty = the Hub")
    if local.strip():
        local = views.local_path(local, ws)
    elif views.hub_offline():
        st.warning("Offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): a benchmark loads "
                   "only if it is already in the datasets cache. Without the Hub, give its local "
                   "data, or export a split to JSONL and use it as a file.",
                   icon=":material/cloud_off:")
    else:
        st.info("Benchmarks need the Hugging Face Hub once; later loads come from the cache.",
                icon=":material/cloud_download:")
    if _ui.can_write() and st.button("Load the train split", icon=":material/download:"):
        st.session_state["benchmark_loaded"] = (name, local)
    if st.session_state.get("benchmark_loaded") == (name, local):
        with st.spinner(f"Loading {name}…"), _ui.shown_errors():
            spec = views.target_spec_dict({"kind": "benchmark", "name_or_path": name,
                                           "data": local or None})
            choose(spec, views.target_label(spec), _ui.target_examples(ws, spec))

elif not _ui.can_write():
    st.info("Files cannot be uploaded or read from this dashboard (it is "
            + ("read-only" if access.read_only() else "locked")
            + "): choose one of the workspace's targets.", icon=":material/info:")

else:
    upload = st.file_uploader("Upload: JSONL, JSON, CSV or TSV, one example per row",
                              type=[s.lstrip(".") for s in views.UPLOAD_SUFFIXES])
    st.caption(f"Stored in the workspace's uploads folder only; at most "
               f"{views.human_size(views.MAX_UPLOAD_BYTES)}.")
    typed = st.text_input("or a file or folder on this machine (a folder holds train and "
                          "validation files; one file has every 5th row held out)")
    path = None
    if upload is not None:
        with _ui.writing():
            path = views.save_upload(ws, upload.name, upload.getvalue())
            st.markdown(f"Saved as `{path.name}`. Map its fields:")
    elif typed.strip():
        path = Path(views.local_path(typed, ws))
    elif current is not None and current.spec["kind"] == "file":
        st.info(f"Current target: **{current.label}**. Upload or name a file to change it or "
                "its field mapping.", icon=":material/info:")
    if path is not None:
        with _ui.shown_errors():
            mapping = _ui.mapping_editor(str(path), "target")
            if mapping is not None:
                spec = views.target_spec_dict({"kind": "file", "name_or_path": str(path),
                                               "mapping": mapping})
                choose(spec, views.target_label(spec), _ui.target_examples(ws, spec))

_ui.next_step(__file__)
