"""For the slides: every figure as PNG and SVG, and the report as one PDF, out of the box."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from mashup_core.study.grid import run_study
from mashup_core.study.spec import StudySpec
from mashup_core.views.export import write_report


def _need(what: str, ok: bool) -> None:
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{what} is missing on CI")
        pytest.skip(f"{what} is missing")


@pytest.mark.browser
def test_png_svg_and_a_pdf_report(world_copy, tmp_path):
    from PIL import Image

    from mashup_core.views.report import find_browser

    _need("Chrome/Chromium", find_browser() is not None)
    study = run_study(world_copy, StudySpec(tasks=("min", "sort"), methods=("linear", "ties"),
                                            ks=(1, 2), ns=(8,), eval_limit=8), "loo-slides",
                      progress=False, engine="inline")
    written = write_report(study, tmp_path / "report")
    assert "PNG/SVG skipped" not in written.get("note", "") and "PDF" not in written.get("note", "")
    png, svg, pdf = (tmp_path / "report" / name for name in
                     ("fig3_mean_rank_merged.png", "fig3_mean_rank_merged.svg", "report.pdf"))
    image = Image.open(png)
    assert image.size[0] >= 1000 and len(set(image.convert("L").getdata())) > 20, "drawn, not blank"
    assert svg.read_text().lstrip().startswith("<svg") and "mean rank" in svg.read_text()
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 20_000
    _need("pdftoppm (poppler-utils)", shutil.which("pdftoppm") is not None)
    subprocess.run(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", str(pdf),
                    str(tmp_path / "page")], check=True)
    (page,) = tmp_path.glob("page*.png")
    shades = Image.open(page).convert("L").getdata()
    assert sum(1 for v in shades if v < 128) > 500, "the printed page has the tables and figures"
