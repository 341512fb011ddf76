"""Library: the checkpoints Mashup Learning draws on, validated, and how they transfer."""

import streamlit as st

from mashup_core import views
from pages import _ui

ws = _ui.require_world(__file__)
_ui.page_header(
    "Checkpoint library",
    "Every checkpoint is validated before any model work: safetensors only, finite values, "
    "complete LoRA pairs, layers and shapes that exist in the base model.",
)

with _ui.shown_errors():
    scan = _ui.library(ws)
    frame = views.library_frame(scan, ws.manifest())
    ok, rejected = len(scan.checkpoints), len(scan.rejected)
    st.markdown(f"**{ok}** usable checkpoints" + (f", **{rejected}** rejected" if rejected else ""))
    st.dataframe(
        frame, hide_index=True, width="stretch",
        column_config={
            "own-task accuracy": st.column_config.ProgressColumn(
                "own-task accuracy", min_value=0.0, max_value=1.0, format="%.2f",
                help="validation accuracy on the task it was trained on (final checkpoints)"),
            "status": st.column_config.TextColumn("status", width="medium"),
        },
    )
    st.caption("One row per checkpoint found. Snapshots are intermediate saves of the same "
               "training run; a rejected row says why and what to do.")
    for r in scan.rejected:
        st.error(f"**{r.name}** rejected: {r.reason}", icon=":material/block:")

with st.form("add_source", border=True):
    st.markdown("**Add checkpoints** — a folder (searched recursively) or a Hugging Face Hub id")
    source = st.text_input("Folder or Hub id", placeholder="/path/to/adapters or owner/name",
                           label_visibility="collapsed")
    if st.form_submit_button("Validate and add", icon=":material/add:") and source.strip():
        sources = st.session_state.setdefault("library_sources", [])
        if source.strip() not in sources:
            sources.append(source.strip())
        st.rerun()
if _ui.extra_sources():
    st.caption("Added this session: " + ", ".join(f"`{s}`" for s in _ui.extra_sources()))
    if st.button("Forget added sources", icon=":material/undo:"):
        st.session_state["library_sources"] = []
        st.rerun()

st.subheader("Transfer: which adapter helps which task?")
with _ui.shown_errors():
    st.plotly_chart(views.transfer_heatmap(ws.manifest()), key="transfer")
    st.caption(views.transfer_caption(ws))
