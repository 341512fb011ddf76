"""Page-ready data for the dashboard: tables, counts and Plotly figures.

Nearly every function here is pure (workspace files in, frames and figures out) so the pages
stay thin and the same views can be tested without a browser. The few that change the
workspace (create it, add a source or a target, save an upload, launch a pair or the demo
build) do it through the core's own functions, which check `access.require_write` first.
Nothing here imports streamlit. The modules beside this one hold the workspace's setup and
summary, the library, the targets and launching; their names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from mashup_core import defaults
from mashup_core.errors import MashupError
from mashup_core.views._format import fingerprint, fmt, human_size, styled  # noqa: F401
from mashup_core.views.launch import (  # noqa: F401
    launch_pair_for,
    relevance_table,
)
from mashup_core.views.library import (  # noqa: F401
    ANY,
    FILTER_PARAMS,
    add_library_source,
    default_merge_method,
    filter_library,
    filter_options,
    library_frame,
    library_scan,
    library_stamp,
    mixed_library,
    remove_library_source,
)
from mashup_core.views.targets import (  # noqa: F401
    MAX_UPLOAD_BYTES,
    UPLOAD_SUFFIXES,
    UploadError,
    add_workspace_target,
    benchmarks_frame,
    default_target,
    default_target_entry,
    demo_tasks_frame,
    examples_frame,
    guess_mapping,
    hub_offline,
    mapping_guess,
    mapping_summary,
    read_target,
    save_upload,
    target_fields,
    target_label,
    target_spec_dict,
    target_stamp,
    targets_frame,
)
from mashup_core.views.workspace import (  # noqa: F401 - the pages read them as views.<name>
    WorkspaceState,
    WorkspaceSummary,
    build_log_path,
    build_running,
    build_status,
    check_target,
    create_workspace,
    demo_content_status,
    launch_demo_build,
    local_path,
    short_path,
    workspace_state,
    workspace_summary,
)
from mashup_core.workspace import Workspace

# One palette for every page, so "mashup" and "scratch" look the same everywhere.
COLORS = {
    "mashup": "#E4572E", "scratch": "#4C78A8", "chosen": "#E4572E", "other": "#B8C4D6",
    "base": "#54585D", "accent": "#F3A712",
}


def _tint(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def method_diagram(n_checkpoints: int | None = None, k: int = defaults.TOP_K) -> go.Figure:
    """Mashup Learning in one picture: library -> score -> merge top-k -> finetune vs scratch."""
    library = f"{n_checkpoints} checkpoints" if n_checkpoints else "LoRA checkpoints"
    steps = [
        ("Library", f"{library}<br>of one base model", "#8E9AAF",
         "Adapters trained on other tasks: the raw material."),
        ("1 · Score", "each checkpoint on<br>n target train examples", "#4C78A8",
         "Answer accuracy or loss on a small sample (the paper: 256)."),
        ("2 · Merge", f"the top {k}, averaged<br>(lora_A and lora_B)", COLORS["accent"],
         "Equal, score-proportional, CMA-ES or LoraHub weights."),
        ("3 · Train", "finetune on the target<br>from the merge", COLORS["mashup"],
         "Compared with the same finetune from scratch: parity and wall-clock."),
    ]
    fig = go.Figure()
    width, gap = 1.0, 0.45
    for i, (title, body, color, hover) in enumerate(steps):
        x0 = i * (width + gap)
        fig.add_shape(type="rect", x0=x0, x1=x0 + width, y0=0, y1=1, layer="below",
                      line={"color": color, "width": 2}, fillcolor=_tint(color, 0.12))
        fig.add_annotation(x=x0 + width / 2, y=0.72, text=f"<b>{title}</b>", showarrow=False,
                           font={"size": 17, "color": color})
        fig.add_annotation(x=x0 + width / 2, y=0.35, text=body, showarrow=False,
                           font={"size": 13, "color": "#31333F"})
        # an invisible marker carries the hover text of the box
        fig.add_trace(go.Scatter(x=[x0 + width / 2], y=[0.5], mode="markers", hoverinfo="text",
                                 hovertext=hover, marker={"size": 60, "opacity": 0}, showlegend=False))
        if i:
            fig.add_annotation(x=x0 - 0.04, y=0.5, ax=x0 - gap + 0.04, ay=0.5, xref="x", yref="y",
                               axref="x", ayref="y", showarrow=True, arrowhead=3, arrowsize=1.3,
                               arrowwidth=2, arrowcolor="#54585D", text="")
    span = len(steps) * (width + gap) - gap
    fig.update_xaxes(visible=False, range=[-0.05, span + 0.05])
    fig.update_yaxes(visible=False, range=[-0.05, 1.05])
    return styled(fig, height=190, margin={"l": 0, "r": 0, "t": 0, "b": 0}, dragmode=False)


# --- the library (the scan and its table: views/library.py) -------------------------------


def transfer_heatmap(manifest: dict) -> go.Figure:
    """Adapter (row) x task (column) validation accuracy from the demo world's build report."""
    cross = manifest.get("report", {}).get("cross_accuracy", {})
    if not cross:
        raise MashupError("the world manifest has no transfer report (report.cross_accuracy); "
                          "rebuild the world with `mashup demo build --force`")
    tasks = list(manifest.get("tasks") or next(iter(cross.values())))
    adapters = [a for a in tasks if a in cross] + [a for a in cross if a not in tasks]
    base = manifest.get("report", {}).get("base_accuracy", {})
    z = [[cross[a].get(t) for t in tasks] for a in adapters]
    y = list(adapters)
    if base:
        z.append([base.get(t) for t in tasks])
        y.append("base model")
    fig = go.Figure(go.Heatmap(
        z=z, x=tasks, y=y, zmin=0, zmax=1, colorscale="Blues",
        text=[[f"{v:.2f}" if v is not None else "" for v in row] for row in z],
        texttemplate="%{text}", colorbar={"title": "acc"},
        hovertemplate="adapter %{y} on task %{x}: accuracy %{z:.2f}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", title="adapter trained on")
    fig.update_xaxes(title="evaluated on task", side="top")
    return styled(fig, height=90 + 34 * len(y))


def transfer_caption(ws: Workspace) -> str:
    """What the transfer heatmap shows in THIS world, from the build's own measurements."""
    from mashup_core.demo.story import world_story

    story = world_story(ws)
    text = ("Each cell is an adapter's validation accuracy on a task (darker = better). The "
            "diagonal is its own task; off-diagonal dark cells are the donors Mashup Learning "
            "can find. The last row is the base model alone.")
    if story is None:
        return text
    if story.transfers:
        text += " Measured in this world: " + "; ".join(t.sentence() for t in story.transfers[:3]) + "."
    else:
        text += " In this world no adapter beats the base on another task by 20 points or more."
    if story.harmful:
        worst = min(story.harmful.values(), key=lambda t: t.gain)
        text += f" A trap: {worst.sentence()}."
    return text


# --- relevance -------------------------------------------------------------------------------


def relevance_figure(table, scorer: str, chosen: Iterable[str] = (),
                     excluded_task: str | None = None) -> go.Figure:
    """Checkpoints sorted best-first by `scorer`: the chosen top-k in colour, those left out
    (trained on the target itself) hatched, the base model as a dashed line."""
    from mashup_core.selection.scoring import get_scorer

    s, chosen = get_scorer(scorer), set(chosen)
    rows = sorted(table.rows, key=lambda r: (s.sort_key(r.value(s.name)), r.nll, r.name))

    def status(r) -> str:
        if r.name in chosen:
            return "chosen"
        return "left out: trained on the target" if excluded_task and r.source_task == excluded_task else ""

    fig = go.Figure(go.Bar(
        x=[r.name for r in rows], y=[r.value(s.name) for r in rows],
        marker={"color": [COLORS["chosen"] if r.name in chosen else COLORS["other"] for r in rows],
                "pattern": {"shape": ["/" if status(r).startswith("left") else "" for r in rows],
                            "fgcolor": "#FFFFFF"},
                "opacity": [0.45 if status(r).startswith("left") else 1.0 for r in rows]},
        customdata=[[r.source_task or "-", r.acc, r.nll, status(r)] for r in rows],
        hovertemplate=("<b>%{x}</b> %{customdata[3]}<br>trained on %{customdata[0]}<br>" + s.label
                       + " %{y:.3f}<br>accuracy %{customdata[1]:.2f} · NLL %{customdata[2]:.3f}"
                       "<extra></extra>"),
        name="checkpoint",
    ))
    if table.base is not None:
        value = table.base.value(s.name)
        fig.add_hline(y=value, line_dash="dash", line_color=COLORS["base"],
                      annotation_text=f"base model {value:.3f}", annotation_position="top left",
                      annotation_bgcolor="rgba(255,255,255,0.8)")
    fig.update_xaxes(title="checkpoint (best first)", tickangle=-40)
    fig.update_yaxes(title=s.label + (" ↑" if s.higher_is_better else " ↓"),
                     range=[0, 1.05] if s.higher_is_better else None)
    return styled(fig, height=380, showlegend=False)


def explanation_parts(text: str) -> tuple[str, list[str]]:
    """`explain_choice`'s text split into the explanation and its warnings (shown apart)."""
    lines = [line for line in text.splitlines() if line.strip()]
    warnings = [line.removeprefix("Warning: ") for line in lines if line.startswith("Warning: ")]
    return "  \n".join(line for line in lines if not line.startswith("Warning: ")), warnings


def sweep_ns(n: int) -> list[int]:
    """Sample sizes for the n-sweep: powers of two below n, then n itself."""
    ns = [2 ** i for i in range(2, 12) if 2 ** i < n]
    return [*ns, n]


def sweep_figure(table, exclude_task: str | None = None) -> go.Figure:
    """Rank stability vs n: the table re-ranked (by loss) on its first n examples for growing
    n, Kendall tau with the ranking on all of them, and top-1 agreement."""
    from mashup_core.selection.scoring import sweep_from_table

    sweep = sweep_from_table(table, sweep_ns(table.n), "nll", exclude_task=exclude_task)
    ns = list(sweep.ns)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ns, y=[sweep.tau[n] for n in ns], mode="lines+markers",
                             name="Kendall tau vs largest n", line={"color": COLORS["scratch"]},
                             hovertemplate="n=%{x}: tau %{y:.2f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=ns, y=[sweep.top1_agreement[n] for n in ns], mode="lines+markers",
                             name=f"same top-1 ({sweep.reshuffles} reshuffles)",
                             line={"color": COLORS["mashup"], "dash": "dot"},
                             hovertemplate="n=%{x}: top-1 agrees %{y:.0%}<extra></extra>"))
    fig.update_xaxes(type="log", title="scoring examples n", tickvals=ns)
    fig.update_yaxes(range=[-1.05 if any((sweep.tau[n] or 0) < 0 for n in ns) else 0, 1.05])
    return styled(fig, height=320)


def scores_frame(table) -> pd.DataFrame:
    frame = table.to_frame()
    return frame[["name", "source_task", "acc", "acc_norm", "nll", "token_acc", "exact_match", "n",
                  "seconds", "is_base"]]


# --- runs ------------------------------------------------------------------------------------

PROBLEM_STATES = {
    "failed": "failed",
    "killed": "stopped without recording a result (its process died)",
    "cancelled": "was cancelled",
}


def runs_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """`runs.list_runs` rows as a table, newest first."""
    columns = ["id", "kind", "target", "status", "steps", "final acc", "best acc", "created",
               "pair"]
    frame = pd.DataFrame([{
        "id": r["id"], "kind": r["kind"], "target": r["target"], "status": r["status"],
        "steps": r["steps"], "final acc": r["final_acc"], "best acc": r["best_acc"],
        "created": pd.to_datetime(r["created"], unit="s") if r.get("created") else None,
        "pair": r.get("group_id") or "",
    } for r in rows], columns=columns)
    return frame


@dataclass(frozen=True)
class RunProgress:
    id: str
    kind: str
    state: str
    step: int
    steps: int
    acc: float | None  # latest evaluation
    init_acc: float | None  # the evaluation at step 0 (the merge, or the fresh base + LoRA)
    problem: str | None  # a sentence for failed, killed and cancelled runs

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.steps) if self.steps else 0.0

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


def run_progress(record) -> RunProgress:
    """Where a run is, from its files (`runs.get_run`), with a clear sentence if it went wrong."""
    trained = [m["step"] for m in record.metrics if m.get("phase") == "train"]
    evals = record.evals
    problem = None
    if record.state in PROBLEM_STATES:
        error = record.status.get("error")
        problem = f"Run {record.id} {PROBLEM_STATES[record.state]}" + (f": {error}" if error else ".")
        if record.state in ("killed", "cancelled") or "resume" not in (error or ""):
            problem += " You can resume it from its last checkpoint."
    return RunProgress(
        id=record.id, kind=record.spec.kind, state=record.state,
        step=max(trained, default=0), steps=record.spec.train.steps,
        acc=evals[-1]["acc"] if evals else None, init_acc=evals[0]["acc"] if evals else None,
        problem=problem,
    )


def curves_frame(records: Sequence) -> pd.DataFrame:
    """Every evaluation of these runs, long format: run, kind, step, seconds, each metric, loss."""
    columns = ["run", "kind", "label", "step", "seconds", *CURVE_METRICS, "loss"]
    rows = [{"run": r.id, "kind": r.spec.kind, "label": run_label(r), "step": m["step"],
             "seconds": m.get("seconds"), "loss": m.get("loss"),
             **{k: m.get(k) for k in CURVE_METRICS}}
            for r in records for m in r.evals]
    return pd.DataFrame(rows, columns=columns)


def run_label(record) -> str:
    return f"{record.spec.kind} · {record.spec.target_label} · {record.id[-6:]}"


CURVE_METRICS = ("acc", "acc_norm", "nll", "token_acc", "exact_match")
METRICS = {"acc": "validation accuracy", "acc_norm": "validation length-normalised accuracy",
           "nll": "validation answer NLL", "token_acc": "validation token accuracy",
           "exact_match": "validation exact match",
           "loss": "training loss (mean since the last evaluation)"}
AXES = {"step": "training step", "seconds": "wall-clock seconds of training"}


def curves_figure(curves: pd.DataFrame, x: str = "step", metric: str = "acc",
                  parity: Iterable[tuple[str, float, float]] = ()) -> go.Figure:
    """One line per run (mashup solid orange family, scratch dashed blue); parity points marked.

    `parity`: (label, x, y) of the points where a mashup run reaches the scratch final accuracy.
    """
    fig = go.Figure()
    for i, (label, run) in enumerate(curves.groupby("label", sort=False)):
        kind = run["kind"].iloc[0]
        run = run.dropna(subset=[metric, x]).sort_values(x)
        fig.add_trace(go.Scatter(
            x=run[x], y=run[metric], mode="lines+markers", name=label,
            line={"color": COLORS.get(kind),
                  "dash": "dash" if kind == "scratch" else "solid", "width": 2.5 - 0.3 * (i // 2)},
            hovertemplate=f"{label}<br>{AXES[x]} %{{x:.4g}}<br>{METRICS[metric]} %{{y:.3f}}<extra></extra>",
        ))
    points = list(parity)
    for level in sorted({round(p[2], 6) for p in points})[:3]:  # more lines would be clutter
        fig.add_hline(y=level, line_dash="dot", line_color=COLORS["accent"], line_width=1.5,
                      annotation_text=f"scratch final {level:.2f}", annotation_position="top left")
    if points:
        fig.add_trace(go.Scatter(
            x=[p[1] for p in points], y=[p[2] for p in points], mode="markers", name="parity",
            marker={"symbol": "star", "size": 16, "color": COLORS["accent"],
                    "line": {"width": 1, "color": "#333"}},
            text=[p[0] for p in points],
            hovertemplate="%{text}<br>reaches the scratch final accuracy at %{x:.4g}<extra></extra>",
        ))
    fig.update_xaxes(title=AXES[x])
    fig.update_yaxes(title=METRICS[metric], range=None if metric in ("nll", "loss") else [0, 1.02])
    return styled(fig, height=380)


# --- convergence: a mashup run against its scratch baseline -------------------------------


@dataclass(frozen=True)
class PairComparison:
    table: pd.DataFrame  # one row per mashup run with a finished baseline
    parity: dict[str, list[tuple[str, float, float]]]  # axis -> (label, x, accuracy) markers
    notes: list[str]  # why a selected mashup run has no row


def compare_pairs(records: Sequence) -> PairComparison:
    """`study.compare_runs` for every mashup run whose scratch baseline is among `records`."""
    from mashup_core.compare.parity import compare_runs, eval_curve, first_reach

    by_id = {r.id: r for r in records}
    rows, notes = [], []
    parity: dict[str, list[tuple[str, float, float]]] = {"step": [], "seconds": []}
    for run in records:
        if run.spec.kind != "mashup":
            continue
        baseline = by_id.get((run.pair or {}).get("baseline", ""))
        if baseline is None:
            notes.append(f"{run_label(run)}: its scratch baseline is not loaded")
            continue
        if not run.evals or not baseline.evals:
            notes.append(f"{run_label(run)}: no evaluations yet on "
                         f"{'it' if not run.evals else 'its baseline'}")
            continue
        try:
            metric = run.spec.eval_metric
            result = compare_runs(baseline.metrics, run.metrics, run.timings, baseline.timings,
                                  metric=metric)
        except MashupError as exc:
            notes.append(f"{run_label(run)}: {exc}")
            continue
        target = result["target_acc"]
        label = run_label(run)
        for axis in parity:
            reached = first_reach(eval_curve(run.metrics, axis, metric), target)
            if reached is not None:
                parity[axis].append((label, reached, target))
        # everything compare_runs timed that is not training is the method's own cost
        overhead = sum(v for k, v in result["seconds"].items() if "training" not in k)
        ratio = result["wallclock_ratio_timed"]
        rows.append({
            "target": run.spec.target_label,
            "parity %": _pct(result["parity"]),
            "parity % (strict)": _pct(result["parity_strict"]),
            "Δ final acc": result["delta_final_acc"],
            "time ratio incl. overhead": ratio if ratio is not None else result["wallclock_ratio"],
            "scratch final acc": result["scratch_final_acc"],
            "mashup start acc": result["mashup_init_acc"],
            "mashup final acc": result["mashup_final_acc"],
            "parity step": result["parity_step"],
            "overhead s (score+merge)": overhead,
            "scratch train s": baseline.timings.get("training_s"),
            "mashup train s": run.timings.get("training_s"),
            "mashup run": run.id, "baseline": baseline.id,
            "finished": run.state == "done" and baseline.state == "done",
        })
    return PairComparison(pd.DataFrame(rows), parity, notes)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


# --- leave-one-out studies -------------------------------------------------------------------



def list_studies(ws: Workspace) -> list[Path]:
    """Study folders (those with a spec.json), most recently changed first."""
    if not ws.studies_dir.is_dir():
        return []
    found = [d for d in ws.studies_dir.iterdir() if (d / "spec.json").exists()]
    return sorted(found, key=lambda d: max(p.stat().st_mtime for p in d.iterdir()), reverse=True)


def rank_heatmap(table, trained: bool = False) -> go.Figure:
    """Merge setting (row) x k (column): mean rank across targets (1 = best), with the
    per-target accuracies behind each cell in the hover."""
    ranks = table.trained_mean_rank if trained else table.mean_rank
    if ranks is None or ranks.empty:
        raise MashupError("this study has no finished merge cells yet; run or extend it")
    hover = table.hover("train" if trained else "merge").reindex(index=ranks.index,
                                                                 columns=ranks.columns)
    z = ranks.to_numpy().tolist()
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"k={k}" for k in ranks.columns], y=list(ranks.index),
        colorscale="RdYlGn_r", colorbar={"title": "mean rank"},
        text=[[f"{v:.2f}" if v == v else "" for v in row] for row in z], texttemplate="%{text}",
        customdata=hover.fillna("").to_numpy().tolist(),
        hovertemplate="%{y}, %{x}<br>mean rank %{z:.2f}<br>%{customdata}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", title="merge method")
    fig.update_xaxes(title="k (checkpoints merged)", side="top")
    return styled(fig, height=120 + 48 * len(ranks.index))


def cell_figure(table, label: str, k: int, trained: bool = False) -> go.Figure:
    """One heatmap cell's per-target accuracies, beside the base model's (or scratch's)."""
    acc = table.accuracies(label, k, "train" if trained else "merge")
    if not acc:
        raise MashupError(f"no finished results for {label}, k={k} yet")
    targets = list(acc)
    reference = table.scratch if trained else table.base
    fig = go.Figure([
        go.Bar(x=targets, y=[reference.get(t) for t in targets], marker_color=COLORS["other"],
               name="trained from scratch" if trained else "base model",
               hovertemplate="%{x}: %{y:.3f}<extra></extra>"),
        go.Bar(x=targets, y=[acc[t] for t in targets], marker_color=COLORS["mashup"],
               name=f"{label}, k={k}", hovertemplate="%{x}: %{y:.3f}<extra></extra>"),
    ])
    fig.update_yaxes(title="validation accuracy", range=[0, 1.02])
    fig.update_xaxes(title="target (its own adapters left out)")
    return styled(fig, height=320, barmode="group")


def cell_frame(table, label: str, k: int, trained: bool = False) -> pd.DataFrame:
    """Which checkpoints each target merged for this cell, with what weights and result."""
    kind = "train" if trained else "merge"
    rows = table.cells[(table.cells["kind"] == kind) & (table.cells["label"] == label)
                       & (table.cells["k"] == k)]
    reference = table.scratch if trained else table.base
    return pd.DataFrame({
        "target": rows["target"], "accuracy": rows["acc"],
        "scratch" if trained else "base model": [reference.get(t) for t in rows["target"]],
        "merged checkpoints": [", ".join(s or []) for s in rows["selected"]],
        "weights": [", ".join(f"{w:.2f}" for w in (ws or [])) for ws in rows["weights"]],
    })
