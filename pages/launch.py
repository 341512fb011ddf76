"""Launch: finetune from the merged top-k and from scratch, as background jobs, watched live."""

import streamlit as st

from mashup_core import views
from mashup_core.merging.lora import MERGE_METHODS
from mashup_core.merging.weights import WEIGHT_STRATEGIES
from mashup_core.workspace import Workspace
from pages import _ui

ws = _ui.require_world(__file__)
chosen = _ui.target(ws)
selection = st.session_state.get("selection", {"k": 2})
_ui.page_header("Launch a run", f"A **mashup** run (start from the merged top-k) and its "
                f"**from-scratch** baseline on **{chosen.label}**, with the same training and "
                "seed. Jobs run in the background: reload or leave the page, nothing is lost.")


with st.form("launch"):
    merge_col, train_col = st.columns(2)
    with merge_col:
        st.markdown("**Merge**")
        scorer = st.selectbox("Rank checkpoints by", ["acc", "nll"],
                              format_func={"acc": "accuracy (reference code)",
                                           "nll": "answer loss (paper text)"}.get)
        k = st.number_input("k (checkpoints to merge)", 1, 32, int(selection.get("k", 2)))
        method = st.selectbox("Merge method", list(MERGE_METHODS),
                              format_func=lambda m: f"{m} — {MERGE_METHODS[m].summary}")
        strategy = st.selectbox("Weights", list(WEIGHT_STRATEGIES),
                                format_func=lambda w: f"{w} — {WEIGHT_STRATEGIES[w].summary}")
        budget = st.number_input("Weight-search budget (evaluations, CMA-ES / LoraHub)", 2, 500, 20)
    with train_col:
        st.markdown("**Finetune** (both runs)")
        steps = st.number_input("Steps", 1, 100_000, 100, step=10)
        lr = st.number_input("Learning rate", 1e-6, 1.0, 3e-3, format="%.0e", step=1e-4)
        batch = st.number_input("Batch size", 1, 1024, 32)
        eval_every = st.number_input("Evaluate every (steps)", 1, 10_000, 10)
        seed = st.number_input("Seed", 0, 2**31 - 1, 0)
        eval_limit = st.number_input("Validation examples per evaluation (0 = all)", 0, 100_000, 0,
                                     help="fewer makes the live curve quicker on a CPU")
        device = st.selectbox("Device", ["auto", "cpu", "cuda"],
                              help="auto = CUDA when present, else CPU; one job trains per device "
                              "at a time, the rest queue")
    submitted = st.form_submit_button("Launch mashup + scratch", type="primary",
                                      icon=":material/rocket_launch:")

if submitted:
    with _ui.shown_errors():
        from mashup_core.jobs.runner import launch_pair
        from mashup_core.jobs.spec import RunSpec
        from mashup_core.training.loop import TrainConfig

        extra = list(_ui.extra_sources())  # added on the Library page, on top of the demo library
        spec = RunSpec(
            target=chosen.spec, kind="mashup", name=chosen.label,
            library=[str(ws.library_dir), *extra] if extra else [],
            scorer=scorer, n=chosen.n, k=int(k), merge_method=method, weight_strategy=strategy,
            weight_budget=int(budget), eval_every=int(eval_every), eval_limit=int(eval_limit),
            checkpoint_every=max(int(eval_every), 20), seed=int(seed), device=device,
            train=TrainConfig(steps=int(steps), batch_size=int(batch), lr=float(lr), seed=int(seed)),
        )
        pair = launch_pair(ws, spec)
        st.session_state["watch"] = pair.group
        note = " (an identical finished baseline is reused)" if pair.reused_baseline else ""
        st.success(f"Launched pair {pair.group}: mashup {pair.mashup_id}, "
                   f"scratch {pair.baseline_id}{note}.", icon=":material/check_circle:")


@st.fragment(run_every=2)
def monitor(root: str) -> None:
    """Re-reads the run folders every 2 s: progress, live curves, cancel and resume."""
    from mashup_core.jobs.runner import cancel, resume
    from mashup_core.jobs.store import get_run, list_runs

    ws = Workspace.resolve(root)
    rows = list_runs(ws)
    if not rows:
        st.info("No runs yet: launch one above.", icon=":material/info:")
        return
    groups = list(dict.fromkeys(r["group_id"] for r in rows if r["group_id"]))
    watch = st.session_state.get("watch")
    if watch not in groups:
        watch = groups[0] if groups else None
    if groups:
        targets = {r["group_id"]: r["target"] for r in rows}
        watch = st.selectbox("Watch pair", groups, index=groups.index(watch),
                             format_func=lambda g: f"{targets[g]} · {g}")
        st.session_state["watch"] = watch
    members = [r for r in rows if r["group_id"] == watch] if watch else rows[:4]
    if watch:  # a reused baseline belongs to an older group: follow the pair link
        members += [r for r in rows if r["id"] in {m["baseline_id"] for m in members}
                    and r not in members]
    records = [get_run(ws, r["id"]) for r in members]
    for record in records:
        progress = views.run_progress(record)
        left, right = st.columns([5, 1])
        acc = f" · accuracy {progress.acc:.2f}" if progress.acc is not None else ""
        left.progress(progress.fraction, text=f"**{progress.kind}** {progress.id}: {progress.state}, "
                      f"step {progress.step}/{progress.steps}{acc}")
        if progress.active:
            if right.button("Cancel", key=f"cancel-{record.id}", icon=":material/stop:"):
                with _ui.shown_errors():
                    cancel(ws, record.id)
                    st.rerun()
        elif progress.problem:
            st.error(progress.problem, icon=":material/error:")
            if right.button("Resume", key=f"resume-{record.id}", icon=":material/play_arrow:"):
                with _ui.shown_errors():
                    resume(ws, record.id)
                    st.rerun()
    curves = views.curves_frame(records)
    if not curves.empty:
        st.plotly_chart(views.curves_figure(curves), key="live_curve")
        st.caption("Validation accuracy as the runs train (refreshes every 2 s): orange = from the "
                   "merge, dashed blue = from scratch. Step 0 is the starting point itself.")
    elif any(views.run_progress(r).active for r in records):
        st.caption("Loading, scoring and merging before the first evaluation…")
    with st.expander(f"All runs ({len(rows)})"):
        st.dataframe(views.runs_frame(rows), hide_index=True, width="stretch")
    st.page_link("pages/convergence.py", label="Compare finished runs on Convergence",
                 icon=":material/show_chart:")


st.subheader("Runs")
with _ui.shown_errors():
    monitor(str(ws.root))
