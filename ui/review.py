"""One logged conversation as staff and analysts review it: messages, tool calls with
timings, and every result list with the products shown and what the shopper did.

Shared by the Support and Insights pages. Everything shown was masked when logged; it is
still rendered as literal text (Markdown escaped), never as HTML.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from assistant.eventlog.readers import ConversationRecord
from ui.display import FEEDBACK_LABELS, display_dir, display_image, md_escape

SHOWN_PER_QUERY = 12
THUMB_COLUMNS = 6


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else str(value)


def tool_call_table(record: ConversationRecord) -> pd.DataFrame:
    """The conversation's tool calls as a table (time, tool, arguments, ms, error)."""
    return pd.DataFrame([{"time": _when(c["created_at"]), "tool": c["tool"],
                          "arguments": json.dumps(c["arguments"], ensure_ascii=False),
                          "ms": round(c["duration_ms"], 1) if c["duration_ms"] is not None
                          else None, "error": c["error"] or ""}
                         for c in record.tool_calls],
                        columns=["time", "tool", "arguments", "ms", "error"])


def render_conversation(record: ConversationRecord, engine: Any) -> None:
    """Renders one conversation (``EventLog.conversation``) for review."""
    head = record.conversation
    ident = str(head["id"]).replace("`", "")
    st.markdown(f"**Conversation** `{ident}` · {_when(head['started_at'])} · "
                f"channel {md_escape(head['channel'])} · backend "
                f"{md_escape(head.get('llm_backend') or '?')}")
    st.subheader("Messages")
    if not record.messages:
        st.caption("No messages.")
    for message in record.messages:
        role = "user" if message["role"] == "user" else "assistant"
        with st.chat_message(role):
            photo = " 📷" if message["has_image"] else ""
            st.caption(f"{_when(message['created_at'])} · {message['role']}{photo}")
            st.markdown(md_escape(message["text"]) or "*(no text)*")
    st.subheader("Tool calls")
    st.dataframe(tool_call_table(record), hide_index=True, width="stretch")
    st.subheader("Searches and products shown")
    if not record.queries:
        st.caption("No searches.")
    folder = display_dir()
    for query in record.queries:
        words = query["text"] or ""
        latency = f"{query['latency_ms']:.0f} ms" if query["latency_ms"] is not None else "?"
        st.markdown(f"{'📷 ' if query['has_image'] else ''}*{md_escape(words) or '(photo)'}* · "
                    f"{len(query['impressions'])} shown · {latency}")
        reactions: dict[str, list[str]] = {}
        for f in query["feedback"]:
            reactions.setdefault(f["product_id"], []).append(
                FEEDBACK_LABELS.get(f["kind"], f["kind"]))
        shown = query["impressions"][:SHOWN_PER_QUERY]
        if not shown:
            st.caption("No results.")
            continue
        columns = st.columns(THUMB_COLUMNS)
        for i, impression in enumerate(shown):
            pid = impression["product_id"]
            try:
                product = engine.product(pid)
                title, own = product.title, product.image
            except KeyError:  # the index changed since
                title, own = "(no longer in the catalog)", None
            with columns[i % THUMB_COLUMNS]:
                image = display_image(pid, own, folder)
                if image:
                    st.image(image, width="stretch")
                done = ", ".join(reactions.get(pid, []))
                st.caption(f"#{impression['rank']} · {md_escape(pid)} · {md_escape(title)}"
                           + (f" · **{md_escape(done)}**" if done else ""))
