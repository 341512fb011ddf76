"""Relevance map: every checkpoint scored on every workspace target, sorted or clustered; a
click on a cell opens that target's Relevance page."""

import streamlit as st

from mashup_core import defaults
from mashup_core.views import relevance_map as rmap
from mashup_core.views import teaching
from mashup_core.views.catalog import SCORERS, get_scorer
from mashup_core.workspace import Workspace
from pages import _ui

ws, config = _ui.open_workspace(__file__)
chosen = _ui.target(ws, config)
n = chosen.n if chosen else _ui.DEFAULT_N
_ui.page_header("Relevance map", f"Every checkpoint (rows) scored on **{n}** train examples of "
                "each of the workspace's targets (columns): which part of the library helps which "
                "task, at a glance. Click a cell to open that target's Relevance page.")


@st.cache_data(show_spinner=False, max_entries=16)
def cached_tables(root: str, n: int, stamp: tuple) -> rmap.MapTables:
    """The score tables already cached on disk (the score cache is in the stamp)."""
    ws = Workspace.resolve(root)
    return rmap.map_tables(ws, None, n, _ui.library(ws))


if not config.targets:
    st.info("This workspace has no targets yet: add them on the Target page.",
            icon=":material/info:")
    st.page_link("pages/target.py", label="Target", icon=":material/target:")
    st.stop()

with _ui.shown_errors():
    scan = _ui.library(ws)
    stamp = (_ui.read("library_stamp", ws), _ui.read("fingerprint", ws, ws.cache_dir / "scores"),
             *(_ui.read("target_stamp", ws, spec) for spec in rmap.map_targets(config).values()))
    found = cached_tables(str(ws.root), n, stamp)
    for label, why in found.errors.items():
        st.error(f"**{label}** cannot be scored: {why}", icon=":material/error:")

    if found.missing:
        names = ", ".join(found.missing)
        if _ui.can_write():
            left, right = st.columns([3, 1])
            left.info(f"Not scored yet at n = {n}: **{names}**. The map shows the "
                      f"{len(found.tables)} target(s) already scored.", icon=":material/hourglass_empty:")
            if right.button(f"Score {len(found.missing)} target(s)", icon=":material/calculate:",
                            help="scores the library on each (kept in the score cache)"):
                bar = st.progress(0.0)
                with _ui.writing():
                    rmap.score_missing(
                        ws, config, n, scan, found.missing,
                        on_target=lambda i, label: bar.progress(
                            i / len(found.missing), text=f"Scoring {len(scan)} checkpoints on "
                            f"{label} ({i + 1}/{len(found.missing)})…"))
                    st.rerun()
        else:
            st.info(f"Not scored yet at n = {n}: **{names}** (this dashboard only shows scores "
                    "already computed; `mashup score` scores them).", icon=":material/visibility:")

    if unscored := found.unscored():
        where = ", ".join(found.partial)
        text = (f"{len(unscored)} of {len(scan)} checkpoints are not scored yet on **{where}** "
                f"at n = {n} (e.g. {', '.join(unscored[:3])}); the map shows what is scored.")
        if _ui.can_write():
            left, right = st.columns([3, 1])
            left.info(text, icon=":material/hourglass_empty:")
            if right.button(f"Score {len(unscored)} checkpoint(s)", icon=":material/calculate:",
                            help="scores only what the score store lacks"):
                with st.spinner(f"Scoring {len(unscored)} checkpoints…"), _ui.writing():
                    rmap.score_missing(ws, config, n, scan, list(found.partial))
                    st.rerun()
        else:
            st.info(text, icon=":material/visibility:")

    scorer = defaults.SCORER
    if found.tables:

        c1, c2, c3 = st.columns([2, 2, 3])
        with c1:
            scorer = _ui.url_widget(st.segmented_control, "Scorer", list(SCORERS), param="scorer",
                                    key="map_scorer", default=defaults.SCORER, what="scorer",
                                    format_func=lambda s: get_scorer(s).label)
        with c2:
            shown = _ui.url_widget(st.segmented_control, "Values", ["gain", "raw"], param="values",
                                   key="map_values", default="gain", what="value kind",
                                   format_func={"gain": "gain over base", "raw": "raw score"}.get)
        with c3:
            order = _ui.url_widget(st.segmented_control, "Order", list(rmap.ORDERS), param="order",
                                   key="map_order", default="cluster", what="order")
        relative = shown == "gain"
        higher = rmap.better_is_higher(scorer, relative)
        frame = rmap.order_matrix(rmap.relevance_matrix(found.tables, scorer, relative), order, higher)
        sources = {c.name: c.source_task for c in scan.checkpoints}
        figure = rmap.relevance_map_figure(frame, scorer, relative,
                                           rmap.base_values(found.tables, scorer), sources)
        event = st.plotly_chart(figure, key="relevance_map", on_select="rerun",
                                selection_mode="points")
        st.caption(f"Rows: {len(frame)} checkpoints ({rmap.ORDERS[order]}); columns: targets. "
                   + ("Each cell is the checkpoint's gain over the base model on that target (blue: "
                      "better than the base, red: worse). " if relative else
                      f"Each cell is the checkpoint's {get_scorer(scorer).label}. ")
                   + "Hover for the base model's value; click a cell to open its target.")
        _ui.teach(teaching.relevance_map_notes(frame, higher, relative))

        points = (event.selection.points if event and event.selection else []) or []
        if points:  # a click: that target on its Relevance page
            picked = _ui.target_for(ws, config, str(points[0]["x"]), n)
            if picked is not None:
                _ui.set_target(picked, config)
                st.switch_page("pages/relevance.py", query_params=dict(st.query_params))

        with st.expander("The map as a table"):
            _ui.paged_table(frame.reset_index(), key="map_table", search=["checkpoint"],
                            hide_index=True, width="stretch")

st.subheader("Library map: do similar updates help the same targets?")
with _ui.shown_errors():
    from mashup_core.views import library_map as lmap

    try:
        updates = lmap.read_library_map(ws, scan)
    except lmap.MapNotComputed as missing:
        updates = None
        if _ui.can_write():
            left, right = st.columns([3, 1])
            left.info(f"{missing}: it compares every pair of adapters' updates ΔW = BA "
                      "exactly, in rank space (kept once computed).", icon=":material/hub:")
            if right.button("Compute the library map", icon=":material/hub:"):
                bar = st.progress(0.0)
                with _ui.writing():
                    lmap.compute_library_map(ws, scan, on_adapter=lambda i, n: bar.progress(
                        i / max(n, 1), text=f"Reading adapter {i + 1} of {n}…"))
                    st.rerun()
        else:
            st.info(f"{missing} (this dashboard only shows what is computed).",
                    icon=":material/visibility:")
    if updates is not None:
        shown_scorer = scorer
        profiles = lmap.relevance_profiles(found.tables, shown_scorer) if found.tables else {}
        answer = lmap.update_vs_relevance(updates, profiles)
        colour = _ui.url_widget(st.segmented_control, "Colour", ["source task", "cluster", "relevance"],
                                param="colour", key="lmap_colour", default="source task",
                                what="colouring")
        relevance = None
        if colour == "relevance" and chosen is not None:
            table = found.tables.get(chosen.spec.get("name_or_path")) or next(iter(found.tables.values()), None)
            if table is not None and table.base is not None:
                sign = 1.0 if get_scorer(shown_scorer).higher_is_better else -1.0
                relevance = {r.name: sign * (r.value(shown_scorer) - table.base.value(shown_scorer))
                             for r in table.rows}
        picked_map = st.plotly_chart(lmap.map_figure(updates, colour or "source task", relevance,
                                                     f"{get_scorer(shown_scorer).label} gain"),
                                     key="library_map", on_select="rerun", selection_mode="points")
        rho = answer["spearman"]
        st.caption(f"{len(updates.names)} adapters placed by the cosine of their updates "
                   "(classical MDS of 1 − cos; near = alike), coloured by "
                   f"{colour}. Over {answer['pairs']} pairs, update similarity and "
                   "relevance-profile similarity (the correlation of two adapters' gains over "
                   "the base across the targets) have Spearman's rho "
                   + (f"**{rho:+.2f}**" if rho is not None else "– (too few scored pairs)")
                   + ". Click an adapter for its nearest neighbours.")
        points = (picked_map.selection.points if picked_map and picked_map.selection else []) or []
        if points and points[0].get("customdata"):
            name = str(points[0]["customdata"][0])
            st.markdown(f"**{name}**'s nearest neighbours by update")
            st.dataframe(updates.neighbours(name), hide_index=True, width="stretch")
        for name, why in list(updates.skipped.items())[:5]:
            st.caption(f"Not on the map: {name}: {why}")

_ui.next_step(__file__)
