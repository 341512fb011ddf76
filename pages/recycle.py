"""Recycle: merge weights searched for several targets at once, and the trade-off front."""

import streamlit as st

from mashup_core.views import recycle as rviews
from pages import _ui

ws, config = _ui.open_workspace(__file__)
_ui.page_header("Recycle", "One weight per checkpoint, searched with CMA-ES so that the merge "
                "does well on several targets at once, without training (Khalifa et al. 2024, "
                "*If You Can't Use Them, Recycle Them*). Every merge is evaluated in the low-rank "
                "space on one loaded base model; a held-out target shows what the merge does "
                "beyond the targets it was searched for.")


@st.cache_data(show_spinner=False, max_entries=16)
def load_front(root: str, front_id: str, stamp: tuple) -> dict:
    from mashup_core.workspace import Workspace

    return rviews.load_front(Workspace.resolve(root), front_id)


def search_form() -> None:
    """Start a search in the background (for those who may change the workspace)."""
    targets = config.target_names()
    if len(targets) < 2 or not _ui.can_write():
        if len(targets) < 2:
            st.info("A recycle search needs at least two targets: add them on the Target page.",
                    icon=":material/info:")
        return
    names = [c.name for c in _ui.library(ws).checkpoints if c.kind == "lora"]
    with st.form("recycle_search"):
        st.markdown("**Search merge weights for several targets** (in the background)")
        c1, c2, c3 = st.columns([4, 2, 2])
        chosen = c1.multiselect("Targets", targets, default=targets[:3])
        held_out = c2.selectbox("Held-out target", ["(none)", *targets],
                                index=4 if len(targets) > 3 else 0)
        objective = c3.text_input("Objective", "mean", help="mean, min, or weighted:0.5,0.3,0.2")
        c4, c5, c6 = st.columns(3)
        budget = c4.number_input("Budget (evaluations)", 1, 10_000, 60)
        front_k = c5.number_input("Front: preference searches", 0, 20, 2)
        n = c6.number_input("Rows per target", 1, 4096, 64)
        subset = st.multiselect("Checkpoints (empty = every LoRA checkpoint)", names)
        if st.form_submit_button("Search in the background", icon=":material/play_arrow:"):
            with _ui.writing():
                req = rviews.RecycleRequest(
                    targets=tuple(chosen), held_out=None if held_out == "(none)" else held_out,
                    objective=objective.strip(), checkpoints=tuple(subset), budget=int(budget),
                    front_k=int(front_k), n=int(n))
                st.session_state["recycle_job"] = rviews.launch_recycle(ws, req)
                st.rerun()


@st.fragment(run_every=3)
def job_status(front_id: str) -> None:
    job = rviews.recycle_job(ws, front_id)
    state = job.get("state")
    if state == "running":
        st.info(f"Search {front_id} is running in the background; it shows here when done.",
                icon=":material/hourglass_top:")
    elif state == "failed":
        st.error(f"Search {front_id} failed: {job.get('error')}", icon=":material/error:")
    if state != st.session_state.get(f"recycle-state-{front_id}"):
        st.session_state[f"recycle-state-{front_id}"] = state
        if state == "done":
            st.session_state["recycle_id"] = front_id
            st.rerun()


if job := st.session_state.get("recycle_job"):
    job_status(job)

fronts = rviews.list_fronts(ws)
if not fronts:
    st.info("No recycle search in this workspace yet. "
            + ("Start one below, or from a terminal: "
               if _ui.can_write() else "Run one from a terminal: ")
            + "`mashup search-weights --targets A,B,C --held-out D --front 2`.",
            icon=":material/info:")
    search_form()
    st.stop()

with _ui.shown_errors():
    current = st.session_state.get("recycle_id")
    front_id = st.selectbox("Search", fronts, index=fronts.index(current) if current in fronts else 0)
    st.session_state["recycle_id"] = front_id
    path = rviews.recycle_dir(ws) / f"{front_id}.json"
    front = load_front(str(ws.root), front_id, (path.stat().st_mtime_ns,))
    numbers = rviews.summary(front)
    held = front.get("held_out_target")
    st.caption(f"targets {', '.join(front['targets'])} · objective {front['objective']} · "
               f"held out {held or '–'} · {len(front['checkpoints'])} checkpoints "
               f"({front['method']}) · {front['evaluations']} evaluations in "
               f"{front['seconds']:.0f} s · n = {front.get('n')}")

    m1, m2, m3, m4 = st.columns(4)
    m1.metric(f"Searched ({front['objective']})", f"{numbers['searched']['objective']:.3f}",
              f"{numbers['searched']['objective'] - numbers['equal']['objective']:+.3f} vs equal")
    m2.metric("Equal weights", f"{numbers['equal']['objective']:.3f}")
    best = numbers["best_single"]
    m3.metric(f"Best single ({best['label']})", f"{best['objective']:.3f}")
    corr = numbers["spearman_weight_own_score"]
    m4.metric("Weights > 0.05", f"{numbers['weights_above_0.05']}/{numbers['n_checkpoints']}",
              help="Spearman correlation of weight and own score: "
              + ("undefined" if corr is None else f"{corr:.2f}"))

    targets = front["targets"]
    chosen_targets = targets
    if len(targets) > 2:
        view = st.segmented_control("View", ["all targets", "two targets"], default="all targets")
        if view == "two targets":
            a, b = st.columns(2)
            x = a.selectbox("x", targets, index=0)
            y = b.selectbox("y", [t for t in targets if t != x], index=0)
            chosen_targets = [x, y]
    left, right = st.columns([3, 2] if held else [1, 0.001])
    with left:
        if len(chosen_targets) == 2:
            event = st.plotly_chart(rviews.front_scatter(front, *chosen_targets), key="front",
                                    on_select="rerun", selection_mode="points")
            if clicked := rviews.clicked_point(event):
                st.session_state["recycle_point"] = clicked
            st.caption("Each point is a merge; the red line joins the non-dominated ones (no "
                       "other merge is better on both targets). Click one for its weights.")
        elif len(chosen_targets) == 1:
            st.dataframe(rviews.points_frame(front), hide_index=True, width="stretch")
        else:
            st.plotly_chart(rviews.front_parallel(front), key="front-parallel")
            st.caption("One line per merge across the targets' accuracies: the front in red, the "
                       "base, single checkpoints and equal weights in their colours.")
    if held:
        with right:
            st.plotly_chart(rviews.held_out_figure(front), key="held-out")
            st.caption(f"Accuracy on {held}, which no search saw.")

    options = rviews.selectable_points(front)
    if st.session_state.get("recycle_point") not in options:
        st.session_state["recycle_point"] = options[0]
    labels = {p["id"]: rviews.point_label(p) for p in front["points"]}
    point_id = st.selectbox("Merge", options, format_func=labels.get, key="recycle_point")
    w1, w2 = st.columns(2)
    with w1:
        st.dataframe(rviews.weights_frame(front, point_id), hide_index=True, width="stretch")
    with w2:
        searched = next(p["id"] for p in front["points"] if p.get("best_of_run") == 0)
        st.plotly_chart(rviews.weight_score_figure(front, searched), key="weight-score")
        st.caption("Each checkpoint's weight in the searched merge against its own score on the "
                   "targets: does a checkpoint's own performance predict its weight?")
    st.dataframe(rviews.points_frame(front), hide_index=True, width="stretch")

    if _ui.can_write():
        name = st.text_input("Adapter name", value=f"recycle-{front_id}-{point_id}",
                             key=f"recycle-name-{point_id}")
        if st.button("Write this merge as a library adapter", icon=":material/save:"):
            with _ui.writing():
                dest = rviews.write_recycled_adapter(ws, front_id, point_id, name)
                st.success(f"Wrote {dest}: it is in the library now, for a run to start from.",
                           icon=":material/check:")

search_form()
