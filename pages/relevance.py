"""Relevance: how well each checkpoint already fits the target, and which top-k to merge."""

import streamlit as st

from mashup_core import views
from mashup_core.selection.scoring import explain_choice, sweep_from_table
from mashup_core.workspace import Workspace
from pages import _ui

ws, config = _ui.open_workspace(__file__)
chosen = _ui.require_target(ws, config)
_ui.page_header("Relevance", f"Every checkpoint scored on **{chosen.n}** train examples of "
                f"**{chosen.label}** with the base model `{views.short_path(config.base_model, ws)}`. "
                "The best *k* are the ones Mashup Learning merges.")


@st.cache_data(show_spinner=False, max_entries=16)
def score(root: str, spec: dict, n: int, stamp: tuple):
    """The score table (`scoring` also caches it on disk, so a restart does not rescore)."""
    return views.relevance_table(Workspace.resolve(root), spec, n)


with _ui.shown_errors():
    with st.spinner(f"Scoring {len(_ui.library(ws))} checkpoints on {chosen.n} examples…"):
        table = score(str(ws.root), chosen.spec, chosen.n,
                      (views.library_stamp(ws), views.target_stamp(chosen.spec, ws)))

    left, right = st.columns([1, 2])
    k = left.number_input("k (checkpoints to merge)", min_value=1, value=2, step=1, key="k",
                          help="the paper merges the top 2")
    # A demo task's own adapters are in the library; a new task would have none, so the
    # reference leaves them out. Other targets have no adapters of their own to leave out.
    own = chosen.spec["kind"] == "demo"
    exclude = own and right.toggle(
        f"Leave out checkpoints trained on {chosen.spec['name_or_path']}", value=True,
        help="the reference leaves out the target's own adapters: they would not exist for a "
        "new task")
    exclude_task = chosen.spec["name_or_path"] if exclude else None
    st.session_state["selection"] = {"k": int(k), "exclude_task": exclude_task}

    tabs = st.tabs(["Loss (answer NLL)", "Accuracy"])
    for tab, scorer in zip(tabs, ("nll", "acc"), strict=True):
        with tab, _ui.shown_errors():
            top = table.select_top_k(scorer, int(k), exclude_task=exclude_task)
            st.plotly_chart(views.relevance_figure(table, scorer, top, exclude_task), key=f"bars_{scorer}")
            direction = "lower" if scorer == "nll" else "higher"
            st.caption(f"Bars are checkpoints, best first ({direction} is better); the top {k} "
                       "in orange are merged; hatched bars are left out. The dashed line is the base "
                       "model with no adapter.")
            why, warnings = views.explanation_parts(
                explain_choice(table, scorer, int(k), exclude_task=exclude_task))
            st.info(why, icon=":material/lightbulb:")
            for warning in warnings:
                st.warning(warning, icon=":material/warning:")

    st.subheader("How many examples are enough?")
    with _ui.shown_errors():
        sweep = sweep_from_table(table, views.sweep_ns(table.n), "nll", exclude_task=exclude_task)
        st.plotly_chart(views.sweep_figure(sweep), key="sweep")
        st.caption("Each point re-ranks the library on the first n examples only. Kendall tau near "
                   "1 means the ranking already matches the one on all examples; the dotted line "
                   "is how often a fresh sample of n picks the same best checkpoint.")

    with st.expander("All scores"):
        st.dataframe(views.scores_frame(table), hide_index=True, width="stretch")
        if table.skipped:
            for name, reason in table.skipped.items():
                st.warning(f"{name} not scored: {reason}")
