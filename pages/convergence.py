"""Convergence: the mashup run beside its from-scratch baseline, by step and by wall-clock."""

import streamlit as st

from mashup_core import views
from mashup_core.views import teaching
from mashup_core.workspace import Workspace
from pages import _ui

ws, _config = _ui.open_workspace(__file__)
_ui.page_header("Convergence", "Does starting from the merge get there sooner? Each mashup run is "
                "compared with its from-scratch baseline: same target, steps, learning rate and seed.")


@st.cache_data(show_spinner=False, max_entries=64)
def load_run(root: str, run_id: str, stamp: tuple):
    from mashup_core.jobs.store import get_run

    return get_run(Workspace.resolve(root), run_id)


with _ui.shown_errors():
    from mashup_core.jobs.store import list_runs

    rows = [r for r in list_runs(ws) if r["status"] != "queued"]
    if not rows and _ui.computing_note(ws, "pair"):
        st.stop()
    if not rows:
        st.info("No runs with results yet. Launch a mashup run and its baseline first.",
                icon=":material/info:")
        st.page_link("pages/launch.py", label="Launch", icon=":material/rocket_launch:")
        st.stop()
    names = {r["id"]: f"{r['kind']} · {r['target']} · {r['status']} · {r['id']}" for r in rows}
    latest = next((r for r in rows if r["kind"] == "mashup"), rows[0])
    default = [latest["id"]] + ([latest["baseline_id"]] if latest.get("baseline_id") in names else [])
    picked = _ui.url_widget(st.multiselect, "Runs", list(names), param="runs", key="conv_runs",
                            default=default, multi=True, what="run", format_func=names.get,
                            help="a mashup run's baseline is added for the comparison")
    if not picked:
        st.info("Pick at least one run to plot.", icon=":material/info:")
        st.stop()
    # a mashup run is compared with its baseline, so the baseline comes along
    baselines = [r["baseline_id"] for r in rows if r["id"] in picked and r.get("baseline_id")]
    ids = list(dict.fromkeys([*picked, *(b for b in baselines if b in names)]))
    stamps = [_ui.read("fingerprint", ws, ws.runs_dir / i / "status.json",
                       ws.runs_dir / i / "metrics.jsonl") for i in ids]
    read_under = (str(ws.root), tuple(ids), tuple(stamps))
    records = [load_run(str(ws.root), i, stamp) for i, stamp in zip(ids, stamps, strict=True)]
    for record in records:
        if (problem := views.run_progress(record).problem) is not None:
            st.error(problem, icon=":material/error:")
    curves = _ui.derived(views.curves_frame, records, inputs=read_under)
    if curves.empty:
        st.info("These runs have no evaluations yet.", icon=":material/hourglass_top:")
        st.stop()
    comparison = _ui.derived(views.compare_pairs, records, inputs=read_under)

    axis = st.segmented_control("x axis", list(views.AXES), default="step",
                                format_func={"step": "training step",
                                             "seconds": "wall-clock"}.get) or "step"
    acc_tab, loss_tab = _ui.url_tabs(["Accuracy", "Loss"], param="tab", key="conv_tab")
    # The metric the runs are compared on (their spec's eval_metric: lm-eval's acc, or the
    # reference's token_acc); a mix of runs reads the first mashup run's.
    metric = next((r.spec.eval_metric for r in records if r.spec.kind == "mashup"),
                  records[0].spec.eval_metric)
    with acc_tab:
        _ui.chart(views.curves_figure, curves, axis, metric, comparison.parity[axis],
                  key="acc_curve", inputs=(read_under, axis, metric))
        st.caption(f"{views.METRICS[metric].capitalize()} ({metric}); orange = from the merge, "
                   "dashed blue = from scratch. The "
                   "star is where the mashup run first reaches the scratch run's final accuracy "
                   "(parity); wall-clock excludes the one-off scoring and merging.")
        if _ui.teaching():
            _ui.teach(_ui.derived(teaching.curves_notes, curves, inputs=read_under)
                      + teaching.parity_notes(comparison.table))
    with loss_tab:
        metric = st.radio("Loss", ["loss", "nll"], horizontal=True,
                          format_func={"loss": "training loss", "nll": "validation answer NLL"}.get)
        _ui.chart(views.curves_figure, curves, axis, metric, key="loss_curve",
                  inputs=(read_under, axis, metric))
        st.caption("Lower is better. Training loss is averaged over the steps since the previous "
                   "evaluation; validation NLL is per answer token.")
    st.download_button("Download the curves (CSV)", curves.to_csv(index=False),
                       file_name="curves.csv", mime="text/csv", icon=":material/download:")

    st.subheader("Training to parity")
    if comparison.table.empty:
        st.info("Pick a mashup run with a baseline to see parity and time.", icon=":material/info:")
    else:
        first = comparison.table.iloc[0]
        cards = st.columns(4)
        cards[0].metric("Training to parity", views.fmt(first["parity %"], "{:.0f}%"),
                        help="share of the scratch run's steps the mashup run needs to match "
                        "the scratch run's final accuracy")
        cards[1].metric("Δ final accuracy", views.fmt(first["Δ final acc"], "{:+.3f}"))
        cards[2].metric("Time ratio incl. overhead", views.fmt(first["time ratio incl. overhead"], "{:.2f}×"),
                        help="below 1: the mashup run, scoring and merging included, reaches "
                        "parity in less wall-clock than scratch training takes")
        cards[3].metric("Scoring + merging", views.fmt(first["overhead s (score+merge)"], "{:.1f} s"))
        st.dataframe(
            comparison.table, hide_index=True, width="stretch",
            column_config={
                "parity %": st.column_config.NumberColumn(format="%.0f%%"),
                "parity % (strict)": st.column_config.NumberColumn(format="%.0f%%"),
                "Δ final acc": st.column_config.NumberColumn(format="%+.3f"),
                "time ratio incl. overhead": st.column_config.NumberColumn(format="%.2f×"),
            },
        )
        st.caption("Parity % = share of the scratch run's steps the mashup run needs to match its "
                   "final accuracy (100% if never; strict leaves those out). Time ratio = "
                   "(scoring + merging + mashup training to parity) / scratch training; below 1 "
                   "the method saves time.")
        st.download_button("Download the comparison (CSV)", comparison.table.to_csv(index=False),
                           file_name="parity.csv", mime="text/csv", icon=":material/download:")
    for note in comparison.notes:
        st.warning(note, icon=":material/warning:")
_ui.next_step(__file__)
