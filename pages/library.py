"""Library: the checkpoints Mashup Learning draws on, validated, where they come from, and
(in the demo world) how they transfer."""

import streamlit as st

from mashup_core import views
from mashup_core.views import teaching
from pages import _ui

ws, config = _ui.open_workspace(__file__)
_ui.page_header(
    "Checkpoint library",
    f"Every checkpoint of the workspace's sources is validated against the base model "
    f"`{views.short_path(config.base_model, ws)}` before any model work: safetensors only, "
    "finite values, complete LoRA pairs, layers and shapes that exist in the base model.",
)

with _ui.shown_errors():
    scan = _ui.library(ws)
    frame = views.library_frame(scan, ws.manifest(), config.sources, ws)
    ok, rejected = len(scan.checkpoints), len(scan.rejected)
    st.markdown(f"**{ok}** usable checkpoints" + (f", **{rejected}** rejected" if rejected else ""))
    if options := views.filter_options(frame):  # a large library: narrow it down
        columns = st.columns(len(options))
        chosen = {name: _ui.url_widget(col.selectbox, name, values, param=views.FILTER_PARAMS[name],
                                       key=f"library-filter-{name}", default=views.ANY,
                                       what=name)
                  for col, (name, values) in zip(columns, options.items(), strict=True)}
        frame = views.filter_library(frame, chosen)
    _ui.paged_table(
        frame, key="library",
        search=[c for c in ("name", "source task", "tags", "status", "source") if c in frame],
        hide_index=True, width="stretch",
        column_config={
            "own-task accuracy": st.column_config.ProgressColumn(
                "own-task accuracy", min_value=0.0, max_value=1.0, format="%.2f",
                help="validation accuracy on the task it was trained on (final checkpoints)"),
            "status": st.column_config.TextColumn("status", width="medium"),
            "source": st.column_config.TextColumn(
                "source", help="the configured source (folder or Hub id) it was found in"),
            "trained on": st.column_config.TextColumn(
                "trained on", help="the base model the checkpoint records it was trained from"),
        },
    )
    st.caption("One row per checkpoint found. Snapshots are intermediate saves of the same "
               "training run; a rejected row says why and what to do.")
    _ui.teach(teaching.library_notes(frame))
    for r in scan.rejected:
        st.error(f"**{r.name}** rejected: {r.reason}", icon=":material/block:")

st.subheader("Sources")
st.caption("Kept in the workspace's `mashup.toml`: they stay after a reload or a restart, and "
           "`mashup` on the command line reads the same ones.")
writable = _ui.can_write()
for i, source in enumerate(config.sources):
    left, right = st.columns([6, 1])
    left.markdown(f"`{views.short_path(source, ws)}`")
    if writable and right.button("Remove", key=f"remove-source-{i}", icon=":material/delete:"):
        with _ui.writing():
            views.remove_library_source(ws, source)
            st.rerun()
if not config.sources:
    st.info("No sources yet: add a folder of checkpoints or a Hub id.", icon=":material/info:")

if writable:
    with st.form("add_source", border=True):
        st.markdown("**Add checkpoints** — a folder (searched recursively) or a Hugging Face "
                    "Hub id; a relative folder is read from the workspace folder")
        source = st.text_input("Folder or Hub id", placeholder="/path/to/adapters or owner/name",
                               label_visibility="collapsed")
        if st.form_submit_button("Validate and add", icon=":material/add:") and source.strip():
            with _ui.writing():
                views.add_library_source(ws, source)
                st.rerun()

if ws.manifest() is not None:  # the transfer report is the demo build's own measurement
    st.subheader("Transfer: which adapter helps which task?")
    with _ui.shown_errors():
        st.plotly_chart(views.transfer_heatmap(ws.manifest()), key="transfer")
        st.caption(views.transfer_caption(ws))
        chosen = _ui.target(ws, config)
        _ui.teach(teaching.transfer_notes(ws.manifest().get("report", {}),
                                          chosen.spec["name_or_path"] if chosen else None))

_ui.next_step(__file__)
