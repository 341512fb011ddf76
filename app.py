"""Mashup Explorer: the dashboard over a workspace (`mashup serve`, `make serve`).

Each page renders what `mashup_core` computes and launches jobs through it; the workspace
folder (its mashup.toml, runs and studies) is the only state shared with background jobs,
so a reload loses nothing.
"""

import sys
from pathlib import Path

import streamlit as st

# `streamlit run` puts this folder on sys.path for the pages' shared helpers; AppTest does not.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from mashup_core.workspace import Workspace  # noqa: E402
from pages import _ui  # noqa: E402

st.set_page_config(page_title="Mashup Explorer", page_icon=":material/hub:", layout="wide")

PAGES = [st.Page(file, title=title, icon=icon, default=i == 0)  # the one list, in _ui
         for i, (file, title, icon, _) in enumerate(_ui.PAGES)]
page = st.navigation(PAGES)
st.session_state[_ui.NAVIGATION_KEY] = True
if wanted := st.session_state.pop(_ui.WANTED_PAGE_KEY, None):  # see _ui.hand_over_to_app
    wanted_page, link_params = wanted
    st.switch_page(wanted_page, query_params=link_params)

with st.sidebar:
    _ui.access_panel()
    if _ui.can_write():
        st.text_input("Workspace", value=str(Workspace.resolve().root), key="workspace",
                      help="The folder of one study: its mashup.toml, runs and studies "
                      "(default: $MASHUP_WORKSPACE, else ./workspace).")
    else:  # fixed at start: a visitor cannot point the server at its other folders
        st.caption(f"**Workspace:** `{_ui.workspace().root}`")
    with _ui.shown_errors():
        state = _ui.read("state", _ui.workspace())
        if state.usable:
            chosen = _ui.target(_ui.workspace(), state.config)
            st.caption(f"**Target:** {chosen.label} · n = {chosen.n}" if chosen else
                       "**Target:** none yet (add one on the Target page)")
    _ui.teaching_toggle()

try:
    page.run()
finally:  # also after a page's st.stop or st.rerun
    _ui.keep_imports_out_of_gc()
    _ui.warm_up_heavy_imports()
