"""Target: what to adapt to — a demo task, one of the paper's benchmarks, or your own file."""

import streamlit as st

from mashup_core import views
from pages import _ui

ws = _ui.require_world(__file__)
_ui.page_header("Target task", "Choose what the library is scored on and the model is finetuned "
                "for. The choice is kept for the other pages (see the sidebar).")

SOURCES = {"demo": "Demo task", "benchmark": "Benchmark", "file": "Upload a file"}
current = _ui.target(ws)
default = SOURCES[current.spec["kind"]]
kind = st.segmented_control("Source", list(SOURCES.values()), default=default) or default


def choose(spec: dict, label: str, examples: list) -> None:
    """Preview the examples, pick n, and keep the choice for the other pages."""
    st.dataframe(views.examples_frame(examples), hide_index=True, width="stretch")
    st.caption(f"The first rows of {label}; ✔ marks the gold answer. {len(examples)} examples in all.")
    n = st.number_input("Scoring examples n", min_value=1, max_value=len(examples),
                        value=min(current.n, len(examples)), step=8,
                        help="how many train examples score each checkpoint (the paper: 256)")
    chosen = _ui.Target(spec, int(n), label)
    if chosen != current:
        _ui.set_target(chosen)
        st.rerun()  # the sidebar, drawn before this page, shows the new choice
    st.success(f"Target: **{label}**, n = {n}. Next: see which checkpoints fit it.",
               icon=":material/check_circle:")
    st.page_link("pages/relevance.py", label="Relevance", icon=":material/leaderboard:")


if kind == "Demo task":
    tasks = views.demo_tasks_frame(ws)
    names = list(tasks["task"])
    start = current.spec["name_or_path"] if current.spec["kind"] == "demo" else names[0]
    task = st.selectbox("Demo task", names, index=names.index(start) if start in names else 0,
                        format_func=lambda t: f"{t} — {tasks.set_index('task').loc[t, 'what it asks']}")
    with _ui.shown_errors():
        spec = {"kind": "demo", "name_or_path": task, "split": "train", "mapping": None}
        choose(spec, f"{task} (demo task)", _ui.target_examples(ws, _ui.Target(spec, 0, "")))

elif kind == "Benchmark":
    benches = views.benchmarks_frame()
    st.dataframe(benches, hide_index=True, width="stretch")
    st.caption("The paper's eight benchmarks, with lm-eval's prompts; loaded through `datasets`.")
    name = st.selectbox("Benchmark", list(benches["benchmark"]))
    if views.hub_offline():
        st.warning("Offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): a benchmark loads "
                   "only if it is already in the datasets cache. Without the Hub, export a split to "
                   "JSONL and upload it as a file.", icon=":material/cloud_off:")
    else:
        st.info("Benchmarks need the Hugging Face Hub once; later loads come from the cache.",
                icon=":material/cloud_download:")
    if st.button("Load the train split", icon=":material/download:"):
        st.session_state["benchmark_loaded"] = name
    if st.session_state.get("benchmark_loaded") == name:
        with st.spinner(f"Loading {name}…"), _ui.shown_errors():
            spec = {"kind": "benchmark", "name_or_path": name, "split": "train", "mapping": None}
            choose(spec, f"{name} (benchmark)", _ui.target_examples(ws, _ui.Target(spec, 0, "")))

else:
    upload = st.file_uploader("JSONL, JSON, CSV or TSV, one example per row",
                              type=[s.lstrip(".") for s in views.UPLOAD_SUFFIXES])
    st.caption(f"Stored in the workspace's uploads folder only; at most "
               f"{views.human_size(views.MAX_UPLOAD_BYTES)}.")
    if upload is None and current.spec["kind"] == "file":
        st.info(f"Current target: **{current.label}**. Upload a file to change it or its field "
                "mapping.", icon=":material/info:")
    if upload is not None:
        with _ui.shown_errors():
            from mashup_core.data.targets import GOLD_FORMATS, FieldMapping, file_fields, load_file

            path = views.save_upload(ws, upload.name, upload.getvalue())
            fields = file_fields(path)
            guess = views.guess_mapping(fields)
            st.markdown(f"Saved as `{path.name}`. Map its fields:")
            c1, c2, c3, c4 = st.columns([2, 3, 2, 1.4])
            prompt = c1.selectbox("Prompt field", fields, index=fields.index(guess["prompt"]))
            choices = c2.multiselect("Choices (one list field, or several columns)", fields,
                                     default=[c for c in guess["choices"] if c in fields])
            gold = c3.selectbox("Gold label field", fields, index=fields.index(guess["gold"]))
            gold_format = c4.selectbox("Gold format", list(GOLD_FORMATS))
            delimiter = st.text_input("Choices delimiter (when one text field holds all choices)",
                                      value="", max_chars=5)
            if not choices:
                st.warning("Pick the field (or columns) that holds the choices.",
                           icon=":material/warning:")
            else:
                mapping = FieldMapping(prompt=prompt, choices=tuple(choices), gold=gold,
                                       gold_format=gold_format, choices_delimiter=delimiter or None)
                examples = load_file(path, mapping)
                spec = {"kind": "file", "name_or_path": str(path), "split": "train",
                        "mapping": mapping.to_dict()}
                choose(spec, f"{path.name} (file)", examples)
