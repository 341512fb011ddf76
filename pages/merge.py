"""Merge methods: which merge method and k win, across targets (a leave-one-out study)."""

import os

import streamlit as st

from mashup_core import defaults, views
from mashup_core.views import catalog, teaching
from mashup_core.views.studies import cancel_study, launch_study, spec_from_form, study_job
from pages import _ui

ws, config = _ui.open_workspace(__file__)
_ui.page_header("Merge methods", "A leave-one-out study: each of the workspace's targets in turn "
                "is the target, and the library's adapters trained on it are left out; every "
                "(method, k) merge is evaluated on it. Cells are ranked per target, then the ranks "
                "averaged.")


def method_reference() -> None:
    """Every merge method the registry holds, by family: what it does, its parameters and
    defaults (mergekit's where they differ), what it needs, and its paper."""
    with st.expander("The merge methods: families, parameters, papers", icon=":material/menu_book:"):
        for tab, kind in zip(st.tabs(["LoRA adapters → adapter", "full checkpoints → checkpoint"]),
                             ("lora", "full"), strict=True):
            with tab:
                for family, rows in catalog.method_families(kind).items():
                    st.markdown(f"**{family}**")
                    lines = ["| method | what it does | parameters (default) | needs | paper |",
                             "|---|---|---|---|---|"]
                    for row in rows:
                        params = ", ".join(
                            f"{p['name']}={p['default']}"
                            + (f" (mergekit: {p['mergekit_default']})" if "mergekit_default" in p else "")
                            for p in row["params"]) or "–"
                        lines.append(f"| `{row['name']}` | {row['summary']} | {params} | "
                                     f"{', '.join(row['needs']) or '–'} | {row['citation']} |")
                    st.markdown("\n".join(lines))


def _family_label(methods: dict, name: str) -> str:
    return f"{name} · {methods[name].family}"


def preset_note() -> None:
    """What the last preset study started with: each value, and where an override came from."""
    if lines := st.session_state.get("preset_lines"):
        with st.expander("The preset's settings", expanded=True, icon=":material/tune:"):
            st.code("\n".join(lines), language=None)


def study_form(studies: list) -> None:
    """Run a new study, or extend the selected one, as a background job (for those who may
    change the workspace, over the workspace's targets)."""
    tasks = config.target_names()
    if not tasks or not _ui.can_write():
        return
    with st.form("new_study"):
        st.markdown("**Run or extend a study** (in the background; finished cells are kept)")
        c1, c2, c3 = st.columns([3, 3, 2])
        chosen_tasks = c1.multiselect("Targets", tasks, default=tasks)
        by_family = sorted(catalog.MERGE_METHODS, key=lambda m: list(dict.fromkeys(
            s.family for s in catalog.MERGE_METHODS.values())).index(catalog.MERGE_METHODS[m].family))
        methods = c2.multiselect("Merge methods", by_family,
                                 default=[m for m in ("linear", "cat_svd", "ties") if m in catalog.MERGE_METHODS],
                                 format_func=lambda m: _family_label(catalog.MERGE_METHODS, m),
                                 help="any LoRA method of the registry, grouped by family (see "
                                 "the table of methods below)")
        ks = c3.multiselect("k", [1, 2, 3, 4, 5], default=[1, 2, 3])
        preset = st.selectbox(
            "Preset", ["(none)", *catalog.PRESETS], help="'reference': every setting as the reference "
            "pipeline's configs set it (methods, k, n, scorer, lrs, epochs, metric); the targets "
            "chosen here, and what the workspace says of its own (its lr, a base without a chat "
            "template), override it: the values are shown when it starts",
            format_func=lambda p: p if p == "(none)" else f"{p}: {catalog.PRESETS[p].summary}")
        c4, c5, c6 = st.columns(3)
        n = c4.number_input("Scoring examples n", 1, 4096, defaults.STUDY_N)
        eval_limit = c5.number_input("Validation examples (0 = all)", 0, 100_000, 0)
        train = c6.toggle("Also finetune from each merge (slow)", value=False)
        extend = st.toggle("Extend the selected study", value=bool(studies), disabled=not studies)
        address = st.text_input("Ray cluster address", value=os.environ.get("RAY_ADDRESS", ""),
                                placeholder="empty = a local Ray instance on this machine",
                                help="ray://HOST:10001 runs the study's cells on that cluster "
                                "(every node needs the workspace's folder at the same path)")
        if st.form_submit_button("Run in the background", icon=":material/play_arrow:"):
            with _ui.writing():
                spec, lines = spec_from_form(  # a preset's settings, the workspace's overrides
                    ws, config, chosen_tasks, preset=None if preset == "(none)" else preset,
                    methods=methods, ks=ks, n=int(n), eval_limit=int(eval_limit), train=train)
                if lines:
                    st.session_state["preset_lines"] = lines
                study_id = st.session_state.get("study_id") if extend and studies else None
                study_dir = launch_study(ws, spec, study_id, address=address.strip() or None)
                st.session_state["study_id"] = study_dir.name
                st.rerun()


@st.fragment(run_every=3)
def job_status(study_dir) -> None:
    """The study's background job: starting, running (cells and tasks from the engine's
    progress.json, per node) with a Cancel button for those who may write, or how it ended."""
    job = study_job(study_dir)
    state = job.get("state")
    if state == "queued":  # the job layer's name for a job that has not begun its cells
        st.info("The study job is starting (connecting to Ray, loading the base model)…",
                icon=":material/hourglass_top:")
    elif state == "running":
        progress = job.get("progress") or {}
        tasks = progress.get("tasks") or {}
        if progress.get("cells_total"):
            done, total = progress.get("cells_done") or 0, progress["cells_total"]
        else:  # the engine has not written its counts yet: the cells file's
            table = _ui.study_table(study_dir)
            done, total = table.finished, table.planned
        where = (job.get("address") or "local Ray") if job.get("engine", "ray") == "ray" else \
            job.get("engine")
        st.progress(done / max(total, 1), text=f"Study running on {where}: {done}/{total} cells · "
                    f"tasks running {tasks.get('running', 0)}, done {tasks.get('done', 0)}, "
                    f"failed {tasks.get('failed', 0)}, pending {tasks.get('pending', 0)}")
        if nodes := progress.get("nodes"):
            st.caption("Per node: " + " · ".join(
                f"{node}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                if isinstance(counts, dict) else f"{node}: {counts}"
                for node, counts in nodes.items()))
        if _ui.can_write() and st.button("Cancel the study", icon=":material/stop_circle:",
                                         key=f"cancel-{study_dir.name}"):
            with _ui.writing():
                cancel_study(ws, study_dir.name)
                st.rerun(scope="app")
    elif state in ("failed", "killed"):
        st.error(f"The study job {state}: {job.get('error')}", icon=":material/error:")
    elif state == "cancelled":
        st.warning("The study job was cancelled; its finished cells are kept (run it again to "
                   "finish the rest).", icon=":material/stop_circle:")
    if job and state != st.session_state.get(f"job-{study_dir.name}"):
        st.session_state[f"job-{study_dir.name}"] = state
        st.rerun(scope="app")  # the heatmap below is drawn by the full page: refresh it


studies = views.list_studies(ws)
if not studies:
    if _ui.computing_note(ws, "study"):
        st.stop()
    if not config.targets:
        st.info("No study in this workspace, and no targets to run one over: add targets on "
                "the Target page.", icon=":material/info:")
    else:
        st.info("No study in this workspace yet. "
                + ("Start one below (the demo's 8 targets × 3 methods × 3 values of k take a few "
                   "minutes on a CPU), or from a terminal with `mashup study`."
                   if _ui.can_write() else "Run one from a terminal with `mashup study`."),
                icon=":material/info:")
    study_form(studies)
    preset_note()
    method_reference()
    st.stop()

with _ui.shown_errors():
    study_dir = _ui.choose_study(ws, studies, "study_choice")
    job_status(study_dir)
    table = _ui.study_table(study_dir)
    read_under = (str(study_dir), _ui.read("fingerprint", ws, study_dir))
    read_under = (str(study_dir), _ui.read("fingerprint", ws, study_dir))
    if not table.finished and _ui.computing_note(ws, "study"):
        st.stop()
    spec = table.spec
    st.caption(f"{table.finished}/{table.planned} cells · targets {', '.join(spec.tasks)} · "
               f"n = {', '.join(map(str, spec.ns))} · scorer {', '.join(spec.scorers)} · weights {', '.join(spec.weightings)}")

    trained = spec.train and _ui.url_widget(
        st.segmented_control, "Accuracy", ["merged", "finetuned"], param="tab", key="merge_tab",
        default="merged", what="view", format_func={"merged": "merged (zero-shot)",
                                                    "finetuned": "after finetuning"}.get,
    ) == "finetuned"
    event = _ui.chart(views.rank_heatmap, table, trained, key="ranks", inputs=(read_under, trained),
                      options={"on_select": "rerun", "selection_mode": "points"})
    st.caption("Mean rank across targets: 1 = the best merge on every target (green). Hover a "
               "cell for its per-target accuracies; click it (or pick it below) for the detail.")
    _ui.teach(teaching.merge_notes(table, trained))

    ranks = table.trained_mean_rank if trained else table.mean_rank
    points = (event.selection.points if event and event.selection else []) or []
    if points:  # a click on the heatmap picks the cell
        st.session_state["cell_label"] = points[0]["y"]
        st.session_state["cell_k"] = int(str(points[0]["x"]).removeprefix("k="))
    left, right = st.columns(2)
    labels, ks = list(ranks.index), [int(k) for k in ranks.columns]
    if st.session_state.get("cell_label") not in labels:
        st.session_state["cell_label"] = labels[0]
    if st.session_state.get("cell_k") not in ks:
        st.session_state["cell_k"] = ks[0]
    label = left.selectbox("Merge method", labels, key="cell_label")
    k = right.selectbox("k", ks, key="cell_k")
    with _ui.shown_errors():
        _ui.chart(views.cell_figure, table, label, k, trained, key="cell",
                  inputs=(read_under, label, k, trained))
        st.caption(f"{label}, k={k}: accuracy on each target when merging its top-{k} "
                   "checkpoints from the other tasks (orange), beside the "
                   + ("model trained from scratch (grey)." if trained else
                      "base model without any adapter (grey)."))
        st.dataframe(views.cell_frame(table, label, k, trained), hide_index=True, width="stretch")

study_form(studies)
preset_note()
method_reference()
_ui.next_step(__file__)
