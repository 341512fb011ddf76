"""The study's report, the way the paper shows it: figures and tables from one `StudyTable`.

Shared by the dashboard's Report page and `study.export.write_report` (CSV, Markdown, HTML):
- Fig. 2: accuracy after training vs the number of scoring samples n (per target and mean);
- Fig. 3: the mean-rank heatmap, merged zero-shot and after training (`views.rank_heatmap`);
- Fig. 4: accuracy vs learning rate, mean over targets, scratch vs mashup;
- Fig. 5: the same per target;
- the results table per target with its mean row (`compare.protocol.results_table`).

A figure the study cannot draw (one lr, one n, no training) comes back as None with the
reason, so a page or an export says what study would draw it. Error bars are the std over
seeds. Figures 2, 4 and 5 show one mashup setting: by default the best by mean rank after
training (`StudyTable.best_setting`), or the one the caller names.
"""

from __future__ import annotations

import html
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mashup_core import views
from mashup_core.compare.protocol import MEAN, SETTING, at_best_lr, summarise
from mashup_core.errors import MashupError
from mashup_core.views._format import fmt, styled


@dataclass
class ReportFigure:
    name: str  # the file stem of its export
    title: str
    figure: go.Figure | None  # None: the study lacks the axis; `reason` says what is needed
    reason: str = ""
    caption: str = ""


def _setting(table, setting: Mapping | None, kind: str = "train") -> dict | None:
    return dict(setting) if setting is not None else table.best_setting(kind)


def _matching(rows: pd.DataFrame, setting: Mapping, columns) -> pd.DataFrame:
    mask = pd.Series(True, index=rows.index)
    for column in columns:
        mask &= rows[column] == setting[column]
    return rows[mask]


def setting_name(setting: Mapping | None, with_n: bool = True) -> str:
    """'linear · k=2' — a setting's label and k, for titles and legends."""
    if not setting:
        return "–"
    label = str(setting.get("label") or setting["method"])
    if not with_n:
        label = " · ".join(p for p in label.split(" · ") if not p.startswith("n="))
    return f"{label} · k={setting['k']}"


def _ns(table) -> list[int]:
    return sorted({int(n) for n in table.cells["n"].dropna()}) if "n" in table.cells else []


def _lrs(table) -> list[float]:
    runs = table.records[table.records["kind"].isin(["scratch", "train"])]
    return sorted({float(lr) for lr in runs["lr"].dropna()})


def lr_text(lr: float) -> str:
    """1.6e-4, 5e-5: a learning rate as a short tick label."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _lr_axis(fig: go.Figure, lrs: list[float], **extra) -> None:
    fig.update_xaxes(type="log", tickvals=lrs, ticktext=[lr_text(lr) for lr in lrs], **extra)


def _error(values: pd.Series) -> dict:
    array = [0.0 if pd.isna(v) else float(v) for v in values]
    return {"type": "data", "array": array, "visible": any(array)}


def _line(fig: go.Figure, x, rows: pd.DataFrame, name: str, color: str, *, mean: bool,
          dash: str | None = None, showlegend: bool = True, **where) -> None:
    fig.add_trace(go.Scatter(
        x=list(x), y=list(rows["acc"]), error_y=_error(rows["acc_std"]), name=name,
        mode="lines+markers", legendgroup=name, showlegend=showlegend,
        line={"color": color, "width": 3 if mean else 1.5, "dash": dash},
        opacity=1.0 if mean else 0.55,
        customdata=list(rows["seeds"]),
        hovertemplate=f"{name}<br>%{{x}}: %{{y:.3f}} (%{{customdata}} seeds)<extra></extra>"), **where)


# --- Fig. 2: accuracy vs n ---------------------------------------------------------------------


def accuracy_vs_n_figure(table, setting: Mapping | None = None) -> ReportFigure:
    """Accuracy after training (each n at its best lr; merged zero-shot when the study does
    not train) against the number of scoring samples n, per target and their mean."""
    title = "Fig. 2 · accuracy vs number of selection samples n"
    if len(_ns(table)) < 2:
        return ReportFigure("fig2_accuracy_vs_n", title, None,
                            "needs a study with several n (scoring-sample sizes, `ns`)")
    trained = not table.runs("train").empty
    kind = "train" if trained else "merge"
    setting = _setting(table, setting, kind)
    family = [c for c in SETTING if c != "n" and (trained or c != "init")]
    rows = at_best_lr(table.runs("train"), [*SETTING, "target"]) if trained else table.runs("merge")
    rows = _matching(rows, setting, family)
    if rows["n"].nunique() < 2:
        return ReportFigure("fig2_accuracy_vs_n", title, None,
                            f"{setting_name(setting, False)} has results for one n only so far")
    summary = summarise(rows, ["n", "target"], ["acc"]).sort_values("n", kind="stable")
    fig = go.Figure()
    palette = views.COLORS
    for target, g in summary[summary["target"] != MEAN].groupby("target", sort=False):
        _line(fig, g["n"], g, str(target), palette["other"], mean=False)
    mean = summary[summary["target"] == MEAN]
    _line(fig, mean["n"], mean, "mean over targets", palette["mashup"], mean=True)
    if trained and table.scratch:
        level = sum(table.scratch.values()) / len(table.scratch)
        fig.add_hline(y=level, line_dash="dash", line_color=palette["scratch"],
                      annotation_text="scratch (mean, best lr)", annotation_position="bottom right")
    fig.update_xaxes(title="scoring samples n", type="log", tickvals=_ns(table))
    fig.update_yaxes(title=table.metric_label + (" after training" if trained else ", merged"))
    what = "after training, each n at its best lr" if trained else "merged, zero-shot (no training in this study)"
    return ReportFigure("fig2_accuracy_vs_n", title, styled(fig, height=380),
                        caption=f"{setting_name(setting, False)}: accuracy {what}; thin lines "
                        "are targets, the thick line their mean; bars = std over seeds.")


# --- Fig. 3: mean rank --------------------------------------------------------------------------


def rank_figure(table, trained: bool = False) -> ReportFigure:
    """The mean-rank heatmap (`views.rank_heatmap`), merged zero-shot or after training."""
    name = "fig3_mean_rank_trained" if trained else "fig3_mean_rank_merged"
    title = f"Fig. 3 · mean rank, {'after training (best lr)' if trained else 'merged zero-shot'}"
    ranks = table.trained_mean_rank if trained else table.mean_rank
    if ranks is None or ranks.empty:
        return ReportFigure(name, title, None, "needs a study that trains from each merge"
                            if trained and not table.spec.train else "no finished cells yet")
    return ReportFigure(name, title, views.rank_heatmap(table, trained),
                        caption="Mean rank across targets (1 = best on every target)"
                        + ("; each cell at its best lr, accuracy averaged over seeds." if trained else "."))


# --- Fig. 4 and 5: accuracy vs learning rate -----------------------------------------------------


def _lr_summaries(table, setting: Mapping) -> tuple[pd.DataFrame, pd.DataFrame]:
    scratch = summarise(table.runs("scratch"), ["lr", "target"], ["acc"])
    mashup = summarise(_matching(table.runs("train"), setting, SETTING), ["lr", "target"], ["acc"])
    return scratch.sort_values("lr", kind="stable"), mashup.sort_values("lr", kind="stable")


def _lr_reason(table, setting: Mapping | None) -> str | None:
    if table.runs("train").empty or table.runs("scratch").empty:
        return "needs a study that trains (scratch and from the merges)"
    if len(_lrs(table)) < 2:
        return "needs a study with several lrs"
    if setting is None:
        return "no finished train cells yet"
    return None


def accuracy_vs_lr_figure(table, setting: Mapping | None = None) -> ReportFigure:
    """Accuracy after training at each lr, mean over targets: scratch vs the mashup setting."""
    name, title = "fig4_accuracy_vs_lr", "Fig. 4 · accuracy vs learning rate (mean over targets)"
    setting = _setting(table, setting)
    if (reason := _lr_reason(table, setting)) is not None:
        return ReportFigure(name, title, None, reason)
    scratch, mashup = _lr_summaries(table, setting)
    fig = go.Figure()
    for rows, label, color, dash in ((scratch, "from scratch", views.COLORS["scratch"], "dash"),
                                     (mashup, f"mashup ({setting_name(setting)})",
                                      views.COLORS["mashup"], None)):
        mean = rows[rows["target"] == MEAN]
        _line(fig, mean["lr"], mean, label, color, mean=True, dash=dash)
    _lr_axis(fig, _lrs(table), title="learning rate")
    fig.update_yaxes(title=f"{table.metric_label} after training")
    return ReportFigure(name, title, styled(fig, height=380),
                        caption="Mean over targets at each lr; bars = std over seeds of that mean.")


def accuracy_vs_lr_per_target_figure(table, setting: Mapping | None = None,
                                     columns: int = 4) -> ReportFigure:
    """Fig. 4 per target, one facet each."""
    name, title = "fig5_accuracy_vs_lr_per_target", "Fig. 5 · accuracy vs learning rate, per target"
    setting = _setting(table, setting)
    if (reason := _lr_reason(table, setting)) is not None:
        return ReportFigure(name, title, None, reason)
    scratch, mashup = _lr_summaries(table, setting)
    targets = [t for t in dict.fromkeys([*mashup["target"], *scratch["target"]]) if t != MEAN]
    columns = max(1, min(columns, len(targets)))
    rows_n = -(-len(targets) // columns)
    fig = make_subplots(rows=rows_n, cols=columns, subplot_titles=targets, shared_xaxes=True,
                        vertical_spacing=0.12 if rows_n > 1 else 0.1, horizontal_spacing=0.05)
    for i, target in enumerate(targets):
        where = {"row": i // columns + 1, "col": i % columns + 1}
        for rows, label, color, dash in ((scratch, "from scratch", views.COLORS["scratch"], "dash"),
                                         (mashup, f"mashup ({setting_name(setting)})",
                                          views.COLORS["mashup"], None)):
            mine = rows[rows["target"] == target]
            _line(fig, mine["lr"], mine, label, color, mean=True, dash=dash, showlegend=i == 0,
                  **where)
    _lr_axis(fig, _lrs(table))
    fig.update_yaxes(matches="y")  # one accuracy scale, so targets compare at a glance
    return ReportFigure(name, title, styled(fig, height=90 + 230 * rows_n,
                                                   margin={"l": 10, "r": 10, "t": 80, "b": 10},
                                                   legend={"orientation": "h", "y": 0.99,
                                                           "yanchor": "top", "x": 0,
                                                           "yref": "container"}),
                        caption="Validation accuracy after training at each lr; bars = std over seeds.")


def report_figures(table, setting: Mapping | None = None) -> list[ReportFigure]:
    """Every figure of the report, in the paper's order (None figures carry their reason)."""
    return [accuracy_vs_n_figure(table, setting), rank_figure(table, False),
            rank_figure(table, True), accuracy_vs_lr_figure(table, setting),
            accuracy_vs_lr_per_target_figure(table, setting)]


# --- Tables -------------------------------------------------------------------------------------

RESULT_NAMES = {
    "target": "target", "scratch_lr": "lr scratch", "mashup_lr": "lr mashup",
    "scratch_acc": "scratch acc", "mashup_acc": "mashup acc", "delta_pp": "Δ (pp)",
    "parity": "parity", "parity_strict": "parity (strict)", "wallclock": "wall-clock ratio",
    "wallclock_reference": "wall-clock ratio (reference)", "seeds": "seeds",
}


def results_frame(table, setting: Mapping | None = None) -> pd.DataFrame:
    """The results table of one mashup setting (default: the best by mean rank after
    training): a row per target and the mean row; numbers, with `… std` columns beside them.
    Parity is a fraction of the scratch run's steps; the wall-clock ratio counts scoring and
    merging (below 1: the method saves time). Empty when the study does not train."""
    setting = _setting(table, setting)
    if table.results.empty or setting is None:
        return pd.DataFrame(columns=list(RESULT_NAMES.values()))
    rows = _matching(table.results, setting, SETTING)
    columns = {}
    for key, name in RESULT_NAMES.items():
        columns[name] = rows[key]
        if f"{key}_std" in rows:
            columns[f"{name} std"] = rows[f"{key}_std"]
    return pd.DataFrame(columns).reset_index(drop=True)


def settings_frame(table) -> pd.DataFrame:
    """Every mashup setting's mean row (mean over targets), best mean rank first: how the
    settings compare before one is picked for the results table."""
    if table.results.empty:
        return pd.DataFrame()
    means = table.results[table.results["target"] == MEAN].copy()
    names = table.settings("train")
    means = means.merge(names, on=list(SETTING), how="left")
    means.insert(0, "setting", [setting_name(r) for r in means.to_dict("records")])
    ranks = table.trained_mean_rank
    if ranks is not None and not ranks.empty:
        means["mean rank"] = [ranks.at[r["label"], r["k"]] if r["label"] in ranks.index else None
                              for r in means.to_dict("records")]
        means = means.sort_values("mean rank", kind="stable")
    keep = ["setting", "mean rank", "scratch_acc", "mashup_acc", "delta_pp", "parity",
            "parity_strict", "wallclock", "wallclock_reference", "seeds"]
    return means[[c for c in keep if c in means]].rename(columns=RESULT_NAMES).reset_index(drop=True)


def merge_frame(table, setting: Mapping | None = None) -> pd.DataFrame:
    """For a study without training: the best merge setting (by mean rank) against the base
    model, per target and mean."""
    setting = _setting(table, setting, "merge")
    if setting is None:
        return pd.DataFrame(columns=["target", "base acc", "merged acc", "Δ (pp)"])
    rows = _matching(table.runs("merge"), setting, [c for c in SETTING if c != "init"])
    frame = pd.DataFrame({"target": rows["target"],
                          "base acc": [table.base.get(t) for t in rows["target"]],
                          "merged acc": rows["acc"]}).astype({"base acc": float, "merged acc": float})
    frame.loc[len(frame)] = [MEAN, frame["base acc"].mean(), frame["merged acc"].mean()]
    frame["Δ (pp)"] = 100.0 * (frame["merged acc"] - frame["base acc"])
    return frame.reset_index(drop=True)


def plus_minus(mean, std, pattern: str = "{:.3f}") -> str:
    """'0.512 ± 0.010', or the mean alone when there is no std (one seed); '–' when missing."""
    if mean is None or pd.isna(mean):
        return "–"
    text = fmt(float(mean), pattern)
    if std is None or pd.isna(std):
        return text
    return f"{text} ± {fmt(float(std), pattern.replace('+', ''))}"


# How each report column reads as text: (pattern, scale).
FORMATS = {
    "scratch acc": ("{:.3f}", 1), "mashup acc": ("{:.3f}", 1), "base acc": ("{:.3f}", 1),
    "merged acc": ("{:.3f}", 1), "Δ (pp)": ("{:+.1f}", 1), "parity": ("{:.0f}%", 100),
    "parity (strict)": ("{:.0f}%", 100), "wall-clock ratio": ("{:.2f}×", 1),
    "wall-clock ratio (reference)": ("{:.2f}×", 1),
    "mean rank": ("{:.2f}", 1), "lr scratch": ("{:.2g}", 1), "lr mashup": ("{:.2g}", 1),
}


def text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A report frame as strings (Markdown, HTML): each known column formatted, as mean ± std
    where its `… std` column has a value (several seeds); parity in %; '–' for missing."""
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        if column.endswith(" std") and column[:-4] in frame:
            continue
        if column in FORMATS:
            pattern, scale = FORMATS[column]
            stds = frame[f"{column} std"] if f"{column} std" in frame else [None] * len(frame)
            out[column] = [plus_minus(None if pd.isna(m) else m * scale,
                                      None if s is None or pd.isna(s) else s * scale, pattern)
                           for m, s in zip(frame[column], stds, strict=True)]
        elif column == "seeds":
            out[column] = ["–" if pd.isna(v) else str(int(v)) for v in frame[column]]
        else:
            out[column] = frame[column]
    return out.reset_index(drop=True)


# --- Exporting one figure -------------------------------------------------------------------------


def page_html(title: str, body: str) -> str:
    """A minimal HTML page around report content (the export's and the download buttons')."""
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
            "max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
            ".reason{color:#666;font-style:italic}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def figure_html(fig: go.Figure, title: str = "", plotlyjs: bool | str = True) -> str:
    """One figure as a page. `plotlyjs=True` inlines plotly.js (one standalone file that opens
    offline: what a download button gives); 'directory' loads plotly.min.js from beside it."""
    body = fig.to_html(full_html=False, include_plotlyjs=plotlyjs)
    return page_html(title, f"<h1>{html.escape(title)}</h1>\n{body}")


def images_available() -> bool:
    """Whether figures can be written as PNG/SVG (plotly needs kaleido; not a dependency)."""
    return importlib.util.find_spec("kaleido") is not None


def figure_image(fig: go.Figure, fmt: str = "png", scale: float = 2.0) -> bytes | None:
    """The figure as PNG or SVG bytes (for slides); None without kaleido."""
    if not images_available():
        return None
    return fig.to_image(format=fmt, scale=scale)


def write_images(figures: list[go.Figure], paths: list[Path], scale: float = 2.0) -> None:
    """Many figures to PNG/SVG/PDF files with one browser (kaleido 1.x starts Chrome once)."""
    import plotly.io as pio

    if hasattr(pio, "write_images"):
        pio.write_images(figures, [str(p) for p in paths], scale=scale)
    else:  # an older plotly: one at a time
        for fig, path in zip(figures, paths, strict=True):
            fig.write_image(str(path), scale=scale)


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """A Chrome or Chromium to print with (the one kaleido renders figures with, too)."""
    import shutil

    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def html_to_pdf(html_path: Path, pdf_path: Path, timeout: float = 180) -> Path:
    """A page (the report, its figures drawn by plotly.js) printed to one PDF by a headless
    Chrome/Chromium; a clear error when none is installed."""
    import subprocess

    browser = find_browser()
    if browser is None:
        raise MashupError("the PDF report needs Chrome or Chromium (Debian: apt-get install "
                          "chromium; the HTML report opens in any browser)")
    pdf_path = Path(pdf_path)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync",
           f"--user-data-dir={pdf_path.parent / '.pdf-profile'}", "--no-pdf-header-footer",
           "--virtual-time-budget=20000", f"--print-to-pdf={pdf_path}", Path(html_path).resolve().as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if not pdf_path.exists() or pdf_path.stat().st_size == 0:
        raise MashupError(f"printing {html_path.name} to PDF failed: {result.stderr.strip()[-300:]}")
    import shutil

    shutil.rmtree(pdf_path.parent / ".pdf-profile", ignore_errors=True)
    return pdf_path
