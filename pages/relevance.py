"""Relevance: how well each checkpoint already fits the target, and which top-k to merge."""

import streamlit as st

from mashup_core import defaults, views
from mashup_core.views import teaching
from mashup_core.views.catalog import SCORERS, NotCachedError, get_scorer
from mashup_core.views.halving import (
    DEFAULT_ETA,
    DEFAULT_MARGIN,
    DEFAULT_MIN_N,
    SELECTIONS,
    halving_figure,
)
from mashup_core.views.launch import explain_choice
from mashup_core.workspace import Workspace
from pages import _ui

ws, config = _ui.open_workspace(__file__)
chosen = _ui.require_target(ws, config)
_ui.page_header("Relevance", f"Every checkpoint scored on **{chosen.n}** train examples of "
                f"**{chosen.label}** with the base model `{views.short_path(config.base_model, ws)}`. "
                "The best *k* are the ones Mashup Learning merges.")


@st.cache_data(show_spinner=False, max_entries=16)
def score(root: str, spec: dict, n: int, stamp: tuple, cached_only: bool):
    """The score table (the score store keeps it on disk, so a restart does not rescore);
    `cached_only` for a session that may not write: it reads what is stored, never scores."""
    return views.relevance_table(Workspace.resolve(root), spec, n, cached_only=cached_only)


@st.cache_data(show_spinner=False, max_entries=16)
def halving(root: str, spec: dict, n: int, settings: dict, stamp: tuple):
    """Successive halving's rounds (cached on disk too, like the scores)."""
    from mashup_core.views.halving import halving_for_target

    return halving_for_target(Workspace.resolve(root), spec, n, **settings)


strategy = st.radio(
    "Selection", list(SELECTIONS), format_func={"full": "score all on n",
                                                "halving": "successive halving"}.get,
    horizontal=True, key="selection_strategy",
    help="; ".join(f"{name}: {text}" for name, text in SELECTIONS.items())
    + ". Halving scores a large library for a fraction of the cost; the ranking charts below "
    "need every checkpoint scored, so they show with the full strategy only.")
if strategy == "halving":
    with _ui.shown_errors():
        cols = st.columns(5)
        scorer = cols[0].selectbox("rank by", list(SCORERS), key="halving_scorer",
                                   index=list(SCORERS).index(defaults.SCORER),
                                   format_func=lambda s: get_scorer(s).label)
        k_h = cols[1].number_input("k", min_value=1, value=defaults.TOP_K, step=1, key="halving_k")
        eta = cols[2].number_input("eta (keep 1/eta a round)", min_value=1.5, max_value=8.0,
                                   value=DEFAULT_ETA, step=0.5, key="halving_eta")
        min_n = cols[3].number_input("first round's n", min_value=1, max_value=chosen.n,
                                     value=min(DEFAULT_MIN_N, chosen.n), step=1, key="halving_min_n")
        margin = cols[4].number_input(
            "margin (SE)", min_value=0.0, max_value=5.0, value=DEFAULT_MARGIN, step=0.5,
            key="halving_margin",
            help="a checkpoint within this many paired standard errors of the k-th best goes on "
                 "past the 1/eta cut: a few rows cannot tell it from a top-k one yet")
        own = chosen.spec["kind"] == "demo"
        exclude_task = chosen.spec["name_or_path"] if own and st.toggle(
            f"Leave out checkpoints trained on {chosen.spec['name_or_path']}", value=True,
            key="halving_exclude") else None
        settings = {"scorer": scorer, "k": int(k_h), "eta": float(eta), "min_n": int(min_n),
                    "margin": float(margin), "exclude_task": exclude_task}
        with st.spinner(f"Successive halving over {len(_ui.library(ws))} checkpoints…"):
            result = halving(str(ws.root), chosen.spec, chosen.n, settings,
                             (_ui.read("library_stamp", ws), _ui.read("target_stamp", ws, chosen.spec)))
        st.session_state["selection"] = {"k": int(k_h), "exclude_task": exclude_task,
                                         "strategy": "halving", "selected": result.selected}
        st.plotly_chart(halving_figure(result), key="halving")
        st.caption(f"Each column is a round: the bar counts the checkpoints scored on the first n "
                   f"examples, crosses are the ones dropped there, stars the top {result.k}. "
                   f"{result.cost:,} example-forwards, {result.cost_ratio:.2f}x scoring all "
                   f"{len(result.rounds[0].alive)} on all {result.n} ({result.full_cost:,}).")
        why, warnings = views.explanation_parts(explain_choice(result.table, scorer, int(k_h)))
        st.info(why, icon=":material/lightbulb:")
        for warning in warnings:
            st.warning(warning, icon=":material/warning:")
    st.stop()

with _ui.shown_errors():
    try:
        with st.spinner(f"Scoring {len(_ui.library(ws))} checkpoints on {chosen.n} examples…"):
            scored_under = (str(ws.root), chosen.spec, chosen.n,
                            (_ui.read("library_stamp", ws), _ui.read("target_stamp", ws, chosen.spec),
                             _ui.read("fingerprint", ws, ws.cache_dir / "scores")),
                            not _ui.can_write())
            table = score(*scored_under)
    except NotCachedError:
        st.info(f"**{chosen.label}** is not scored yet at n = {chosen.n}, and this dashboard "
                "only shows what is computed (`mashup score` computes it).",
                icon=":material/visibility:")
        st.stop()
    if table.unscored:
        st.caption(f"{len(table.unscored)} checkpoints are not scored yet at this n: "
                   + ", ".join(table.unscored[:5]) + (" …" if len(table.unscored) > 5 else ""))

    left, right = st.columns([1, 2])
    k = left.number_input("k (checkpoints to merge)", min_value=1, value=defaults.TOP_K, step=1,
                          key="k", help=f"the paper merges the top {defaults.TOP_K}")
    # A demo task's own adapters are in the library; a new task would have none, so the
    # reference leaves them out. Other targets have no adapters of their own to leave out.
    own = chosen.spec["kind"] == "demo"
    exclude = own and right.toggle(
        f"Leave out checkpoints trained on {chosen.spec['name_or_path']}", value=True,
        help="the reference leaves out the target's own adapters: they would not exist for a "
        "new task")
    exclude_task = chosen.spec["name_or_path"] if exclude else None
    st.session_state["selection"] = {"k": int(k), "exclude_task": exclude_task}

    # The paper's text ranks by loss, lm-eval scores choices by accuracy, the reference code ranks
    # by token accuracy: one tab each, from the same scoring pass.
    shown = {"nll": "Loss (answer NLL, paper)", "acc": "Accuracy (lm-eval)",
             "token_acc": "Token accuracy (reference code)"}
    tabs = _ui.url_tabs(list(shown.values()), param="rank", key="relevance_tab")
    for tab, scorer in zip(tabs, shown, strict=True):
        if not tab.open:  # only the open tab is drawn; a click on another reruns the page
            continue
        with tab, _ui.shown_errors():
            top = table.select_top_k(scorer, int(k), exclude_task=exclude_task)
            _ui.chart(views.relevance_figure, table, scorer, top, exclude_task, key=f"bars_{scorer}",
                      inputs=(scored_under, scorer, int(k), exclude_task))
            direction = "higher" if get_scorer(scorer).higher_is_better else "lower"
            st.caption(f"Bars are checkpoints, best first ({direction} is better); the top {k} "
                       "in orange are merged; hatched bars are left out. The dashed line is the base "
                       "model with no adapter.")
            why, warnings = views.explanation_parts(
                explain_choice(table, scorer, int(k), exclude_task=exclude_task))
            st.info(why, icon=":material/lightbulb:")
            _ui.teach(teaching.relevance_notes(table, scorer, top))
            for warning in warnings:
                st.warning(warning, icon=":material/warning:")

    st.subheader("How many examples are enough?")
    with _ui.shown_errors():
        _ui.chart(views.sweep_figure, table, exclude_task, key="sweep",
                  inputs=(scored_under, exclude_task))
        st.caption("Each point re-ranks the library on the first n examples only. Kendall tau near "
                   "1 means the ranking already matches the one on all examples; the dotted line "
                   "is how often a fresh sample of n picks the same best checkpoint.")

    with st.expander("All scores"):
        scores = _ui.derived(views.scores_frame, table, inputs=scored_under)
        _ui.paged_table(scores, key="scores", search=["name", "source_task"],
                        hide_index=True, width="stretch")
        if table.skipped:
            for name, reason in table.skipped.items():
                st.warning(f"{name} not scored: {reason}")

_ui.next_step(__file__)
