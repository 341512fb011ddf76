"""Overview: Mashup Learning in one screen, the open study, and where to go next."""

import streamlit as st

from mashup_core import views
from mashup_core.errors import MashupError
from mashup_core.views import teaching
from pages import _ui

ws, config = _ui.open_workspace(__file__)
try:
    checkpoints = len(_ui.library(ws).checkpoints)
except MashupError:  # no sources yet, an unreadable base: the Library page says why
    checkpoints = 0
summary = views.workspace_summary(ws, config, checkpoints)

_ui.page_header(
    "Mashup Explorer",
    "Finetuning a model on a new task? Start from a **merge of the most relevant checkpoints** "
    "you already have, instead of from scratch. Mashup Learning scores every checkpoint of a "
    "library on a few target examples, merges the best *k*, and trains from there.",
    content_detail=True,  # while the demo's first content computes: a line per stage
)
_ui.chart(views.method_diagram, summary.checkpoints, k=2, key="diagram",
          options={"config": {"displayModeBar": False}})
st.caption("Read left to right: the library is scored on the target, the top-k are merged, and "
           "the merge is finetuned next to a from-scratch baseline. Hover a box for details.")

cols = st.columns(4)
cols[0].metric("Checkpoints", summary.checkpoints,
               help=f"usable checkpoints in the library's {summary.sources} source(s)")
cols[1].metric("Targets", summary.targets, help="targets configured in this workspace")
cols[2].metric("Runs", summary.runs, help="finetuning runs in this workspace")
cols[3].metric("Studies", summary.studies, help="leave-one-out merge-method studies")
world = f" · {summary.profile} demo world" if summary.profile else ""
st.caption(f"Workspace `{summary.root}` · base model `{summary.base}`{world}")
_ui.teach(teaching.overview_notes(summary))
if not summary.checkpoints:
    st.warning("No usable checkpoint in the library yet: add a source on the Library page.",
               icon=":material/warning:")

st.subheader("Walk through it")
steps = [
    ("pages/library.py", "Library", ":material/inventory_2:",
     "the checkpoints, validated, and where they come from"),
    ("pages/target.py", "Target", ":material/target:",
     "the workspace's targets, a benchmark or your own file"),
    ("pages/relevance.py", "Relevance", ":material/leaderboard:",
     "which checkpoints fit the target"),
    ("pages/relevance_map.py", "Relevance map", ":material/grid_on:",
     "which part of the library helps which target"),
    ("pages/merge.py", "Merge methods", ":material/merge:",
     "which merge method and k win across targets"),
    ("pages/launch.py", "Launch", ":material/rocket_launch:",
     "finetune from the merge and from scratch, live"),
    ("pages/convergence.py", "Convergence", ":material/show_chart:",
     "how much sooner the mashup run gets there"),
    ("pages/report.py", "Report", ":material/summarize:",
     "the study's results table and figures, exported for slides"),
]
left, right = st.columns(2)
for i, (path, label, icon, what) in enumerate(steps):
    with left if i < (len(steps) + 1) // 2 else right:
        st.page_link(path, label=f"**{label}** — {what}", icon=icon)

_ui.next_step(__file__)
