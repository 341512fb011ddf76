"""A study's report as files: results.csv, results.md, a standalone report.html, each figure.

`write_report(study_dir)` writes into STUDY/report/ (or `out_dir`):
- results.csv: the whole results table (every mashup setting, per target and mean; numbers);
- results.md: the results table of the setting shown (best mean rank after training), per
  target and mean (mean ± std where there are several seeds), every setting's mean row, and the
  mean-rank tables; a study without training gets the best merge against the base model;
- report.html: every figure (interactive) and the tables, with plotly.js inlined, so it opens
  offline and can be mailed as one file;
- one .html per figure, loading plotly.min.js from beside it (offline; one copy of the 4.8 MB
  bundle for all of them), and .png/.svg when kaleido is installed (it is not a dependency;
  without it images are skipped and the returned dict says so under 'note').
  `views.report.figure_html` gives a single figure as one standalone file (download buttons).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
from plotly.offline import get_plotlyjs

from mashup_core.study.report import StudyTable, study_table
from mashup_core.views.report import (
    figure_html,
    html_to_pdf,
    images_available,
    merge_frame,
    page_html,
    report_figures,
    results_frame,
    setting_name,
    settings_frame,
    text_frame,
    write_images,
)

REPORT_DIR = "report"


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table of strings (no tabulate dependency); '|' in cells escaped."""
    def cell(value) -> str:
        return "–" if value is None or (isinstance(value, float) and pd.isna(value)) \
            else str(value).replace("|", "\\|")

    header = [cell(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _rank_text(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    if frame is None or frame.empty:
        return None
    out = frame.map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
    out.columns = [f"k={k}" for k in frame.columns]
    return out.rename_axis("setting").reset_index()


def _about(table: StudyTable) -> list[str]:
    spec = table.spec
    status = "complete" if table.complete else f"{table.finished}/{table.planned} cells finished"
    return [
        f"- targets: {', '.join(spec.tasks)} ({status})",
        f"- merge methods: {', '.join(spec.methods)}; k: {', '.join(map(str, spec.ks))}; "
        f"n: {', '.join(map(str, spec.ns))}",
        f"- learning rates: {', '.join(f'{lr:g}' for lr in spec.lrs) or '–'}; "
        f"seeds: {', '.join(map(str, spec.seeds))}" + (f"; init: {', '.join(spec.inits)}"
                                                      if spec.train else ""),
        f"- evaluation: {table.metric_label} ({spec.eval_metric}); best lr: per (target, setting) "
        "on its mean over seeds, separately for scratch and each mashup setting (ties: the "
        "smaller lr)",
    ]


def results_markdown(table: StudyTable, study_name: str = "") -> str:
    """The report's Markdown: what the study is, the results table, every setting, the ranks."""
    lines = [f"# Study {study_name}".rstrip(), "", *_about(table), ""]
    best = table.best_setting("train")
    frame = results_frame(table, best)
    if not frame.empty:
        lines += [f"## Results: {setting_name(best)} (best mean rank after training)", "",
                  markdown_table(text_frame(frame)), "",
                  "Accuracy on the study's evaluation split, each side at its own best lr; mean ± "
                  "std over seeds. Δ = mashup − scratch in percentage points. Parity = share of "
                  "the scratch run's steps the mashup run needs to reach the scratch run's final "
                  "accuracy (0% when the merge reaches it already; normal: 100% when never "
                  "reached; strict, as the reference: a target where any seed never reaches it "
                  "is left out). Wall-clock ratio = (scoring + merging + mashup training to "
                  "parity) / scratch training, scoring counted as the sum over the fold's "
                  "checkpoints; the reference's ratio counts scoring as the cheapest single "
                  "checkpoint's relevance job on the target (its analysis/timing.py), a lower "
                  "figure for the same work.", ""]
        settings = settings_frame(table)
        if len(settings) > 1:
            lines += ["## Every setting (mean over targets)", "", markdown_table(text_frame(settings)),
                      ""]
    elif not (merged := merge_frame(table)).empty:
        lines += [f"## Merged zero-shot: {setting_name(table.best_setting('merge'))} (best mean "
                  "rank) vs the base model", "", markdown_table(text_frame(merged)), "",
                  "This study does not train; run it with training for the scratch/mashup table.",
                  ""]
    for title, ranks in (("merged zero-shot", table.mean_rank),
                         ("after training (each cell at its best lr)", table.trained_mean_rank)):
        if (text := _rank_text(ranks)) is not None:
            lines += [f"## Mean rank, {title} (1 = best)", "", markdown_table(text), ""]
    return "\n".join(lines).rstrip() + "\n"


def report_html(table: StudyTable, study_name: str = "") -> str:
    """Every figure and table on one standalone page (plotly.js inlined once)."""
    parts = [f"<h1>Study {html.escape(study_name)}</h1>",
             "<ul>" + "".join(f"<li>{html.escape(line[2:])}</li>" for line in _about(table)) + "</ul>"]
    best = table.best_setting("train")
    frame = results_frame(table, best)
    if not frame.empty:
        parts += [f"<h2>Results: {html.escape(setting_name(best))}</h2>",
                  text_frame(frame).to_html(index=False, border=0)]
    elif not (merged := merge_frame(table)).empty:
        parts += [f"<h2>Merged zero-shot: {html.escape(setting_name(table.best_setting('merge')))}"
                  " vs the base model</h2>",
                  text_frame(merged).to_html(index=False, border=0)]
    bundled = False
    for item in report_figures(table):
        parts.append(f"<h2>{html.escape(item.title)}</h2>")
        if item.figure is None:
            parts.append(f"<p class=\"reason\">Not drawn: {html.escape(item.reason)}.</p>")
            continue
        parts.append(item.figure.to_html(full_html=False, include_plotlyjs=not bundled))
        bundled = True
        parts.append(f"<p>{html.escape(item.caption)}</p>")
    return page_html(f"Study {study_name}", "\n".join(parts))


def write_report(study_dir: str | Path, out_dir: str | Path | None = None, *,
                 pdf: bool = True) -> dict[str, Path | str]:
    """Write the study's report files: results.csv/.md, report.html (and report.pdf, printed
    by a headless Chrome/Chromium), each figure as HTML, PNG and SVG (kaleido); returns
    {name: path}, plus 'note' (a string) when something was skipped (images without kaleido,
    the PDF without a browser, figures the study cannot draw)."""
    study_dir = Path(study_dir)
    table = study_table(study_dir)
    out = Path(out_dir) if out_dir is not None else study_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | str] = {}
    notes = []

    def write(name: str, text: str) -> None:
        path = out / name
        path.write_text(text, encoding="utf-8")
        written[name] = path

    write("results.csv", table.results.to_csv(index=False))
    write("results.md", results_markdown(table, study_dir.name))
    write("report.html", report_html(table, study_dir.name))
    images = images_available()
    if not images:
        notes.append("PNG/SVG skipped: kaleido is not installed (pip install kaleido)")
    drawn = []
    for item in report_figures(table):
        if item.figure is None:
            notes.append(f"{item.name} not drawn: {item.reason}")
            continue
        if "plotly.min.js" not in written:  # the figure pages share one copy, beside them
            write("plotly.min.js", get_plotlyjs())
        write(f"{item.name}.html", figure_html(item.figure, item.title, "directory"))
        drawn.append(item)
    if images and drawn:
        paths = [out / f"{item.name}.{suffix}" for item in drawn for suffix in ("png", "svg")]
        try:  # for slides: one browser renders them all
            write_images([item.figure for item in drawn for _ in ("png", "svg")], paths)
            written.update({p.name: p for p in paths})
        except Exception as exc:  # kaleido present but no Chrome/Chromium to drive
            notes.append(f"PNG/SVG skipped: {type(exc).__name__}: {exc}")
    if pdf:
        try:
            written["report.pdf"] = html_to_pdf(out / "report.html", out / "report.pdf")
        except Exception as exc:  # no browser, or it failed: the HTML report stands
            notes.append(f"PDF skipped: {exc}")
    if notes:
        written["note"] = "; ".join(notes)
    return written
