"""Reading a time window of the event log for the Insights page (the I/O behind
:mod:`ui.metrics`).

Everything is read inside one read-only snapshot (``EventLog.reading``) and capped at
``limit`` rows per table (the newest; for impressions the first shown), so a large log
cannot exhaust the app's memory; the page says when a cap was hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select

from assistant.eventlog.readers import training_select
from assistant.eventlog.schema import (
    conversations,
    feedback,
    impressions,
    messages,
    queries,
    tool_calls,
)

DEFAULT_LIMIT = 100_000


@dataclass(frozen=True)
class EventWindow:
    """The rows of one time window.

    Attributes:
        conversations: With ``n_messages``.
        queries: With ``n_results`` (impressions shown).
        tool_calls: Tool call rows.
        feedback: Feedback rows.
        impressions: Impressions with their feedback labels (training rows as dicts).
        capped: Tables that had more rows than the limit.
    """

    conversations: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    impressions: list[dict[str, Any]] = field(default_factory=list)
    capped: list[str] = field(default_factory=list)


def _window(stmt: Select[Any], column: Any, since: datetime | None,
            until: datetime | None) -> Select[Any]:
    if since is not None:
        stmt = stmt.where(column >= since)
    if until is not None:
        stmt = stmt.where(column < until)
    return stmt


def load_window(log: Any, *, since: datetime | None = None, until: datetime | None = None,
                limit: int = DEFAULT_LIMIT) -> EventWindow:
    """Reads conversations, searches, tool calls, feedback and impressions of a window.

    Args:
        log: An open :class:`~assistant.eventlog.store.EventLog`.
        since: From this time (inclusive).
        until: Up to this time (exclusive).
        limit: At most this many rows per table.

    Returns:
        The rows, as dicts.
    """
    n_messages = (select(func.count()).where(messages.c.conversation_id == conversations.c.id)
                  .scalar_subquery().label("n_messages"))
    n_results = (select(func.count()).where(impressions.c.query_id == queries.c.id)
                 .scalar_subquery().label("n_results"))
    statements = {
        "conversations": _window(select(conversations, n_messages),
                                 conversations.c.started_at, since, until)
        .order_by(conversations.c.started_at.desc()),
        "queries": _window(select(queries.c.id, queries.c.conversation_id, queries.c.text,
                                  queries.c.has_image, queries.c.filters, queries.c.latency_ms,
                                  queries.c.created_at, n_results),
                           queries.c.created_at, since, until)
        .order_by(queries.c.created_at.desc()),
        "tool_calls": _window(select(tool_calls), tool_calls.c.created_at, since, until)
        .order_by(tool_calls.c.created_at.desc()),
        "feedback": _window(select(feedback), feedback.c.created_at, since, until)
        .order_by(feedback.c.created_at.desc()),
    }
    rows: dict[str, list[dict[str, Any]]] = {}
    capped = []
    with log.reading() as conn:
        for name, stmt in statements.items():
            found = [dict(r._mapping) for r in conn.execute(stmt.limit(limit + 1))]
            if len(found) > limit:
                capped.append(name)
            rows[name] = found[:limit]
        shown = training_select(since=since, until=until).limit(limit + 1)
        labelled = [dict(r._mapping) for r in conn.execute(shown)]
    if len(labelled) > limit:
        capped.append("impressions")
    for row in labelled:
        for flag in ("clicked", "added_to_cart", "purchased", "thumbs_up", "thumbs_down"):
            row[flag] = bool(row.get(flag))
    return EventWindow(conversations=rows["conversations"], queries=rows["queries"],
                       tool_calls=rows["tool_calls"], feedback=rows["feedback"],
                       impressions=labelled[:limit], capped=capped)
