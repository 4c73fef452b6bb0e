"""The Insights page (role analyst): metrics with charts, a conversation browser, exports.

The numbers come from :mod:`ui.metrics` (pure functions, unit-tested) over one time window
of the event log read by :mod:`ui.insights_data`. Personal data was masked when logged.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from ui import metrics
from ui.access import require
from ui.insights_data import EventWindow, load_window
from ui.resources import shared_assistant
from ui.review import render_conversation

DEFAULT_DAYS = 30


@st.cache_data(ttl=30, show_spinner="Reading the event log...")
def _window(_log: Any, url: str, since: datetime, until: datetime) -> EventWindow:
    return load_window(_log, since=since, until=until)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _bounds(days: Any) -> tuple[datetime, datetime]:
    if isinstance(days, tuple | list) and len(days) == 2:
        first, last = days
    else:
        first = last = days[0] if isinstance(days, tuple | list) and days else days
    return (datetime.combine(first, time.min, UTC),
            datetime.combine(last + timedelta(days=1), time.min, UTC))


def _metrics_tab(window: EventWindow) -> None:
    rates = metrics.conversion_rates(window.impressions)
    cols = st.columns(5)
    cols[0].metric("Searches", f"{len(window.queries):,}")
    cols[1].metric("Zero-result rate", _pct(metrics.zero_result_rate(window.queries)))
    cols[2].metric("Click-through", _pct(rates["ctr"]), help="Impressions clicked, added "
                   "to the cart or bought")
    cols[3].metric("Add-to-cart rate", _pct(rates["add_to_cart_rate"]),
                   help="Per impression; per search: "
                   f"{_pct(rates['searches_with_add_to_cart'])}")
    cols[4].metric("Purchase rate", _pct(rates["purchase_rate"]),
                   help=f"Per impression; per search: {_pct(rates['searches_with_purchase'])}")
    per_day = metrics.searches_per_day(window.queries)
    st.subheader("Searches per day")
    if per_day:
        frame = pd.DataFrame(per_day).set_index("day")[["searches", "zero_results"]]
        st.line_chart(frame)
    else:
        st.caption("No searches in this window.")
    left, right = st.columns(2)
    with left:
        st.subheader("Click-through by rank")
        by_rank = metrics.ctr_by_rank(window.impressions)
        if by_rank:
            st.bar_chart(pd.DataFrame(by_rank).set_index("rank")[["ctr"]])
        else:
            st.caption("No impressions yet.")
    with right:
        st.subheader("Latency per tool (ms)")
        latency = metrics.latency_by_tool(window.tool_calls)
        if latency:
            frame = pd.DataFrame(latency).set_index("tool")
            st.bar_chart(frame[["p50_ms", "p95_ms"]], stack=False)
            st.dataframe(frame, width="stretch")
        else:
            st.caption("No tool calls yet.")
    st.subheader("By model")
    by_model = metrics.rates_by_model(window.impressions)
    if by_model:
        st.caption("What ordered the list: the fusion's version, +ranker-vNNNN when a ranker "
                   "re-ordered it, +shuffle for lists shown in a random order (exploration).")
        frame = pd.DataFrame(by_model)[["model", "searches", "impressions", "ctr",
                                        "searches_with_add_to_cart", "searches_with_purchase"]]
        st.dataframe(frame.rename(columns={
            "ctr": "click-through", "searches_with_add_to_cart": "searches with add to cart",
            "searches_with_purchase": "searches with purchase"}), hide_index=True,
            width="stretch", column_config={c: st.column_config.NumberColumn(format="percent")
                                            for c in ("click-through",
                                                      "searches with add to cart",
                                                      "searches with purchase")})
    else:
        st.caption("No impressions yet.")
    st.subheader("Top searches without results")
    empty = metrics.top_zero_result_queries(window.queries)
    if empty:
        st.dataframe(pd.DataFrame(empty), hide_index=True, width="stretch")
    else:
        st.caption("Every search showed something.")


def _conversations_tab(window: EventWindow, assistant: Any) -> None:
    rows = metrics.summarise_conversations(window.conversations, window.queries,
                                           window.tool_calls, window.feedback)
    tools = sorted({t for r in rows for t in r["tools"]})
    kinds = sorted({k for r in rows for k in r["feedback"]})
    a, b, c, d, e = st.columns(5)
    text = a.text_input("Search", placeholder="id or query words", key="ins_text")
    chosen_tools = b.multiselect("Tool", tools, key="ins_tools")
    outcomes = c.multiselect("Outcome", list(metrics.OUTCOMES), key="ins_outcomes")
    zero = d.selectbox("Zero results", ["any", "with", "without"], key="ins_zero")
    feedback = e.multiselect("Feedback", kinds, key="ins_feedback")
    shown = metrics.filter_conversations(
        rows, text=text, tools=chosen_tools, outcomes=outcomes, feedback=feedback,
        zero_results=None if zero == "any" else zero == "with")
    st.caption(f"{len(shown)} of {len(rows)} conversations")
    if not shown:
        return
    table = pd.DataFrame([{**r, "tools": ", ".join(r["tools"]),
                           "feedback": ", ".join(f"{k} {n}" for k, n in r["feedback"].items()),
                           "queries": "; ".join(r["queries"][:3])} for r in shown])
    st.dataframe(table, hide_index=True, width="stretch")
    opened = st.selectbox("Open a conversation", [r["id"] for r in shown], index=None,
                          key="ins_open", placeholder="Choose a conversation id")
    if opened:
        try:
            record = assistant.log.conversation(opened)
        except KeyError:
            st.warning("That conversation is gone (purged?).")
            return
        render_conversation(record, assistant.engine)


def export_zip(log: Any, fmt: str, since: datetime, until: datetime) -> bytes:
    """Every table of the window as ``fmt`` files (plus manifest.json), zipped."""
    from assistant.eventlog.retention import export

    with tempfile.TemporaryDirectory(prefix="shopassist-export-") as folder:
        export(log, folder, fmt=fmt, since=since, until=until)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(folder).iterdir()):
                archive.write(path, arcname=path.name)
    return buffer.getvalue()


def _export_tab(log: Any, since: datetime, until: datetime) -> None:
    fmt = st.radio("Format", ["parquet", "csv"], horizontal=True, key="ins_format")
    st.caption("One file per table (conversations, messages, tool calls, queries, impressions, "
               "feedback) for the chosen dates, plus manifest.json. Personal data is already "
               "masked in the log. From a shell: `shopassist logs export`.")
    if st.button("Prepare export", key="ins_export"):
        data = export_zip(log, fmt, since, until)
        st.download_button("Download", data, file_name=f"shopassist-events-{fmt}.zip",
                           mime="application/zip", key="ins_download")


def render() -> None:
    """The Insights page."""
    require("insights")
    assistant = shared_assistant()
    st.title("Insights")
    if assistant.log is None:
        st.info("The event log is off: there is nothing to analyse.")
        return
    today = date.today()
    days = st.date_input("Dates", (today - timedelta(days=DEFAULT_DAYS - 1), today),
                         key="ins_dates")
    since, until = _bounds(days)
    window = _window(assistant.log, assistant.log.url, since, until)
    if window.capped:
        st.warning(f"Only the first {len(window.queries):,} rows of "
                   f"{', '.join(window.capped)} are counted; choose fewer days.")
    overview, browser, exports = st.tabs(["Metrics", "Conversations", "Export"])
    with overview:
        _metrics_tab(window)
    with browser:
        _conversations_tab(window, assistant)
    with exports:
        _export_tab(assistant.log, since, until)
