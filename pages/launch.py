"""Launch: finetune from the merged top-k and from scratch, as background jobs, watched live."""

import streamlit as st

from mashup_core import access, defaults, views
from mashup_core.errors import MashupError
from mashup_core.views import teaching
from mashup_core.views.catalog import (
    EVAL_METRICS,
    FINETUNE_MODES,
    MERGE_METHODS,
    SCORERS,
    WEIGHT_STRATEGIES,
    NotCachedError,
    PredictionError,
)
from mashup_core.workspace import Workspace
from pages import _ui

ws, config = _ui.open_workspace(__file__)
chosen = _ui.target(ws, config)
selection = st.session_state.get("selection", {"k": defaults.TOP_K})
# Where each scorer comes from, as the README tells it.
SCORER_NAMES = {"nll": "answer loss (the paper's text)", "acc": "accuracy (lm-eval)",
                "acc_norm": "length-normalised accuracy (lm-eval)",
                "token_acc": "token accuracy (the reference code)",
                "exact_match": "exact match (the reference code)"}
writable = _ui.can_write()
_ui.page_header("Launch a run", "A **mashup** run (start from the merged top-k) and its "
                "**from-scratch** baseline on one target, with the same training and seed. Jobs "
                "run in the background: reload or leave the page, nothing is lost.")

st.markdown(f"**Study** · base model `{views.short_path(config.base_model, ws)}` · library "
            + (", ".join(f"`{views.short_path(s, ws)}`" for s in config.sources) or "none")
            + f" · finetune {config.defaults.finetune}")

def payoff_note(target_spec: dict, n: int, finetune: str) -> None:
    """Before anything trains: what the workspace's finished studies predict for this target
    (the reference's k and merge, the workspace's lr), or why they cannot."""
    from mashup_core.views import payoff

    k = int(selection.get("k", defaults.TOP_K))
    try:
        query = payoff.payoff_query(ws, target_spec, k=k, method=defaults.MERGE_METHOD,
                                    lr=config.learning_rate(finetune), n=n, scorer=defaults.SCORER)
        found = payoff.predictions(ws, query)
    except NotCachedError:
        st.caption(f"Predicted payoff: score the library on this target first (Relevance page, "
                   f"n = {n}); the prediction reads those scores.")
        return
    except (PredictionError, MashupError) as exc:
        st.caption(f"Predicted payoff: {exc}")
        return
    st.info(f"For k = {k}, {defaults.MERGE_METHOD}, lr {config.learning_rate(finetune):g}: "
            + payoff.prediction_text(found) + f" (merging {query['selected'].iloc[0]}).",
            icon=":material/insights:")


# Targets to launch on: the one chosen on the Target page first, then the workspace's own.
options: dict[str, tuple[dict, int]] = {}
if chosen is not None:
    options[chosen.label] = (chosen.spec, chosen.n)
for entry in config.targets:
    options.setdefault(views.target_label(entry), (views.target_spec_dict(entry), _ui.DEFAULT_N))

if not writable:
    st.info("Launching is disabled here (this dashboard is "
            + ("read-only" if access.read_only() else "locked: enter the access token in the "
               "sidebar") + "). The runs below update live.", icon=":material/visibility:")
elif not options:
    st.info("No target yet: choose or add one on the Target page.", icon=":material/info:")
    st.page_link("pages/target.py", label="Target", icon=":material/target:")
else:
    # Outside the form, so that the learning rate's default follows the finetune mode.
    left, right = st.columns([3, 2])
    target_label = left.selectbox("Target", list(options))
    modes = list(FINETUNE_MODES)
    finetune = right.radio("Finetune", modes, index=modes.index(config.defaults.finetune),
                           horizontal=True, format_func={"lora": "LoRA",
                                                         "full": "full (every weight)"}.get,
                           help="both runs train the same way: a LoRA on the (merged) base, or "
                           "every weight")
    target_spec, n = options[target_label]
    if target_spec.get("mapping"):
        st.caption("Field mapping: " + views.mapping_summary(target_spec["mapping"]))
    elif target_spec.get("data"):
        st.caption(f"Local data: `{views.short_path(target_spec['data'], ws)}`")

    try:
        scan = _ui.library(ws)
    except MashupError:  # no sources, an unreadable base: the Library page says why
        scan = None
    payoff_note(target_spec, n, finetune)
    with st.form("launch"):
        base = st.text_input("Base model", value=config.base_model,
                             help="a folder or a Hub id; the library's checkpoints must fit it")
        sources = st.multiselect("Library sources", config.sources, default=config.sources,
                                 format_func=lambda s: views.short_path(s, ws),
                                 help="the checkpoints scored and merged (from mashup.toml; add "
                                 "more on the Library page)")
        merge_col, train_col = st.columns(2)
        with merge_col:
            st.markdown("**Merge**")
            scorer = st.selectbox("Rank checkpoints by", list(SCORERS),
                                  index=list(SCORERS).index(defaults.SCORER),
                                  format_func=lambda s: SCORER_NAMES.get(s, SCORERS[s].label))
            k = st.number_input("k (checkpoints to merge)", 1, 32,
                                int(selection.get("k", defaults.TOP_K)))
            methods = list(MERGE_METHODS)
            method = st.selectbox("Merge method", methods,
                                  index=methods.index(views.default_merge_method(scan)),
                                  format_func=lambda m: f"{m} — {MERGE_METHODS[m].summary}",
                                  help="a library whose adapters differ in target modules or "
                                  "rank starts on 'cat', which merges any of them exactly")
            strategy = st.selectbox("Weights", list(WEIGHT_STRATEGIES),
                                    format_func=lambda w: f"{w} — {WEIGHT_STRATEGIES[w].summary}")
            budget = st.number_input("Weight-search budget (evaluations, CMA-ES / LoraHub)", 2, 500, 20)
        with train_col:
            st.markdown("**Finetune** (both runs)")
            steps = st.number_input("Steps", 1, 100_000, defaults.TRAIN_STEPS, step=10)
            lr = st.number_input("Learning rate", 1e-7, 1.0, config.learning_rate(finetune),
                                 format="%.1e", step=1e-5, key=f"lr-{finetune}",
                                 help="default: the workspace's for this finetune mode")
            batch = st.number_input("Batch size", 1, 1024, defaults.BATCH_SIZE)
            eval_every = st.number_input("Evaluate every (steps)", 1, 10_000, defaults.EVAL_EVERY)
            eval_metric = st.selectbox(
                "Evaluate with", list(EVAL_METRICS), index=list(EVAL_METRICS).index(defaults.EVAL_METRIC),
                format_func=lambda s: SCORER_NAMES.get(s, SCORERS[s].label),
                help="what the curves, parity and the comparison read; every metric is recorded")
            seed = st.number_input("Seed", 0, 2**31 - 1, 0)
            train_limit = st.number_input("Train examples (0 = all)", 0, 10_000_000, 0,
                                          help="a sample of the train split, for a quick run")
            eval_limit = st.number_input("Validation examples per evaluation (0 = all)", 0,
                                         100_000, 0, help="fewer makes the live curve quicker on a CPU")
            devices = list(dict.fromkeys([config.defaults.device, "auto", "cpu", "cuda"]))
            device = st.selectbox("Device", devices,
                                  help="auto = CUDA when present, else CPU; one job trains per "
                                  "device at a time, the rest queue")
        submitted = st.form_submit_button("Launch mashup + scratch", type="primary",
                                          icon=":material/rocket_launch:")

    if submitted:
        with _ui.writing():
            pair = views.launch_pair_for(
                ws, target_spec, base=None if base.strip() == config.base_model else base,
                sources=sources, finetune=finetune, lr=float(lr), steps=int(steps),
                batch_size=int(batch), seed=int(seed), device=device, name=target_label,
                scorer=scorer, n=n, k=int(k), merge_method=method, weight_strategy=strategy,
                weight_budget=int(budget), eval_every=int(eval_every), eval_metric=eval_metric,
                eval_limit=int(eval_limit), train_limit=int(train_limit),
                checkpoint_every=max(int(eval_every), 20),
            )
            st.session_state["watch"] = st.session_state["watch_pair"] = pair.group
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
        st.info("No runs yet" + (": launch one above." if writable else "."), icon=":material/info:")
        return
    groups = list(dict.fromkeys(r["group_id"] for r in rows if r["group_id"]))
    watch = st.session_state.get("watch")
    if watch not in groups:
        watch = groups[0] if groups else None
    if groups:
        targets = {r["group_id"]: r["target"] for r in rows}
        watch = _ui.url_widget(st.selectbox, "Watch pair", groups, param="pair", key="watch_pair",
                               default=watch, what="pair of runs",
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
            if writable and right.button("Cancel", key=f"cancel-{record.id}", icon=":material/stop:"):
                with _ui.writing():
                    cancel(ws, record.id)
                    st.rerun()
        elif progress.problem:
            st.error(progress.problem, icon=":material/error:")
            if writable and right.button("Resume", key=f"resume-{record.id}",
                                         icon=":material/play_arrow:"):
                with _ui.writing():
                    resume(ws, record.id)
                    st.rerun()
    curves = views.curves_frame(records)
    if not curves.empty:
        st.plotly_chart(views.curves_figure(curves), key="live_curve")
        st.caption("Validation accuracy as the runs train (refreshes every 2 s): orange = from the "
                   "merge, dashed blue = from scratch. Step 0 is the starting point itself.")
        _ui.teach(teaching.curves_notes(curves))
    elif any(views.run_progress(r).active for r in records):
        st.caption("Loading, scoring and merging before the first evaluation…")
    with st.expander(f"All runs ({len(rows)})"):
        _ui.paged_table(views.runs_frame(rows), key="runs", search=["id", "kind", "target",
                                                                    "status", "pair"],
                        hide_index=True, width="stretch")
    st.page_link("pages/convergence.py", label="Compare finished runs on Convergence",
                 icon=":material/show_chart:")


st.subheader("Runs")
with _ui.shown_errors():
    monitor(str(ws.root))
_ui.next_step(__file__)
