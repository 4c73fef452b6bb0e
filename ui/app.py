"""The Streamlit app's entry point: ``streamlit run ui/app.py`` (``shopassist serve`` runs it).

Three pages: Shop (public), Support (role staff) and Insights (role analyst); ``admin``
sees both staff pages. The page scripts in ``ui/views/`` only call the renderers in
``ui/``; the assistant itself is built in ``assistant/`` (see :mod:`ui.resources`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
try:
    from ui.access import current_identity, logout_button, visible_pages
except ImportError:  # run from a checkout that was never installed (pip install -e .)
    sys.path.insert(0, str(HERE.parent))
    from ui.access import current_identity, logout_button, visible_pages

st.set_page_config(page_title="Shop Assistant", page_icon=":material/storefront:", layout="wide")

PAGES = {
    "shop": st.Page(HERE / "views" / "shop.py", title="Shop", icon=":material/storefront:",
                    url_path="shop", default=True),
    "support": st.Page(HERE / "views" / "support.py", title="Support",
                       icon=":material/support_agent:", url_path="support"),
    "insights": st.Page(HERE / "views" / "insights.py", title="Insights",
                        icon=":material/insights:", url_path="insights"),
}

identity = current_identity()
page = st.navigation([PAGES[name] for name in visible_pages(identity.role if identity
                                                             else None)])
if identity is not None:
    with st.sidebar:
        st.caption(f"Logged in as {identity.name} ({identity.role})")
        logout_button()
page.run()
