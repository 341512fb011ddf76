"""Report: a study's results the way the paper shows them, with one-click export for slides."""

import streamlit as st

from mashup_core import views
from mashup_core.views import report, teaching
from mashup_core.views.export import results_markdown
from pages import _ui

ws, config = _ui.open_workspace(__file__)
_ui.page_header("Report", "A study's results as the paper reports them: the results table per "
                "target with its mean row, every setting's mean, and Fig. 2–5 where the study "
                "has their axes. Each figure and table downloads in one click (HTML, PNG/SVG, "
                "CSV, Markdown); `mashup study report` writes the same files.")

studies = views.list_studies(ws)
if not studies:
    if not _ui.computing_note(ws, "study"):
        st.info("No study in this workspace yet: run one on the Merge methods page or with "
                "`mashup study`.", icon=":material/info:")
        st.page_link("pages/merge.py", label="Merge methods", icon=":material/merge:")
    st.stop()

with _ui.shown_errors():
    study_dir = _ui.choose_study(ws, studies, "report_study")
    table = _ui.study_table(study_dir)
    if not table.finished:
        if not _ui.computing_note(ws, "study"):
            st.info(f"Study {study_dir.name} has no finished cells yet (0 of {table.planned}).",
                    icon=":material/info:")
        st.stop()
    status = "complete" if table.complete else f"{table.finished} of {table.planned} cells so far"
    st.caption(f"{status} · targets {', '.join(table.spec.tasks)} · seeds "
               f"{', '.join(map(str, table.spec.seeds))}")

    # --- the table ------------------------------------------------------------------------------
    best = table.best_setting("train")
    results = report.results_frame(table, best)
    merged = report.merge_frame(table) if results.empty else None
    if not results.empty:
        st.subheader(f"Results: {report.setting_name(best)}")
        shown = results
        st.dataframe(report.text_frame(results), hide_index=True, width="stretch",
                     key="results_table")
        st.caption("Each side at its own best lr; mean ± std over seeds where there are several. "
                   "Δ = mashup − scratch in percentage points; parity = share of scratch's steps "
                   "the mashup run needs to reach scratch's final accuracy; the wall-clock ratio "
                   "counts scoring and merging.")
        settings = report.settings_frame(table)
        if len(settings) > 1:
            st.markdown("**Every setting** (mean over targets, best mean rank first)")
            st.dataframe(report.text_frame(settings), hide_index=True, width="stretch",
                         key="settings_table")
    else:
        st.subheader(f"Merged zero-shot: {report.setting_name(table.best_setting('merge'))} vs "
                     "the base model")
        shown = merged
        st.dataframe(report.text_frame(merged), hide_index=True, width="stretch",
                     key="merge_table")
        st.caption("This study does not train: the best merge by mean rank against the base "
                   "model. Run it with training for the scratch / mashup table.")
    _ui.teach(teaching.report_notes(results, merged))
    left, right, _ = st.columns([1, 1, 3])
    left.download_button("Table (CSV)", shown.to_csv(index=False), f"{study_dir.name}-results.csv",
                         mime="text/csv", icon=":material/download:", on_click="ignore",
                         key="table_csv")
    right.download_button("Report (Markdown)", results_markdown(table, study_dir.name),
                          f"{study_dir.name}-results.md", mime="text/markdown",
                          icon=":material/download:", on_click="ignore", key="table_md")

    # --- the figures ----------------------------------------------------------------------------
    images = report.images_available()
    for item in report.report_figures(table, best):
        st.subheader(item.title)
        if item.figure is None:
            st.caption(f"Not drawn: {item.reason}.")
            continue
        st.plotly_chart(item.figure, key=item.name)
        st.caption(item.caption)
        cols = st.columns([1, 1, 1, 2])
        # Deferred (built on click): a standalone page inlines plotly.js (about 4.8 MB).
        cols[0].download_button(
            "HTML", lambda fig=item.figure, title=item.title: report.figure_html(fig, title),
            f"{study_dir.name}-{item.name}.html", mime="text/html", icon=":material/download:",
            on_click="ignore", key=f"{item.name}-html")
        if images:
            for col, suffix in zip(cols[1:3], ("png", "svg"), strict=True):
                col.download_button(
                    suffix.upper(), lambda fig=item.figure, s=suffix: report.figure_image(fig, s),
                    f"{study_dir.name}-{item.name}.{suffix}",
                    mime="image/png" if suffix == "png" else "image/svg+xml",
                    icon=":material/image:", on_click="ignore", key=f"{item.name}-{suffix}")
    if not images:
        st.caption("PNG/SVG downloads need kaleido (`pip install kaleido`); the HTML downloads "
                   "open offline in any browser.")

    # --- predicting the payoff before training ----------------------------------------------------
    st.subheader("Could this have been predicted before training?")
    from mashup_core.views.payoff import payoff_check, teaching_note, validation_figure

    payoff = payoff_check(ws, table.spec.eval_metric)  # gains in this study's metric
    check = payoff.validation
    if payoff.reason:
        st.caption(payoff.reason)
    if check is not None:
        st.plotly_chart(validation_figure(check), key="payoff_scatter")
        st.caption(f"Each point is a finished train cell, its Δ final accuracy predicted by a "
                   f"model fit on the other targets' cells only (bars: 80 % split-conformal "
                   f"intervals; they held {check.coverage:.0%} of the measured values; "
                   f"Spearman {check.spearman if check.spearman is None else f'{check.spearman:+.2f}'}).")
        if not check.beats_baseline:
            st.warning(f"On this workspace the predictor does not beat predicting the mean gain "
                       f"(mean absolute error {check.mae:.2f} vs {check.baseline_mae:.2f} pp): "
                       "treat its Launch-page numbers as a rough guide.", icon=":material/warning:")
        _ui.teach([teaching_note(check)])
        if lacking := payoff.missing:
            st.caption("Studies run before these were recorded lack them: "
                       + "; ".join(f"{s}: {', '.join(f)}" for s, f in lacking.items()))

_ui.next_step(__file__)
