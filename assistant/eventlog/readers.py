"""Reading the event log: one conversation for review, training rows, and counts.

Functions take an open connection (``EventLog.reading()`` gives one inside a consistent
snapshot) and return plain, typed values. Everything read here was masked when written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, case, func, select

from assistant.eventlog.schema import (
    FEEDBACK_KINDS,
    TABLES,
    TIME_COLUMN,
    conversations,
    feedback,
    impressions,
    messages,
    queries,
    tool_calls,
)


@dataclass(frozen=True)
class ConversationRecord:
    """One conversation as an analyst reviews it.

    Attributes:
        conversation: The ``conversations`` row.
        messages: Its messages, oldest first.
        tool_calls: Its tool calls, oldest first.
        queries: Its searches, oldest first; each dict also holds ``impressions`` (by rank)
            and ``feedback`` (oldest first) lists.
    """

    conversation: dict[str, Any]
    messages: list[dict[str, Any]]
    tool_calls: list[dict[str, Any]]
    queries: list[dict[str, Any]]


@dataclass(frozen=True)
class LabelledImpression:
    """One product shown for one query, with what the shopper then did: a training row.

    Attributes:
        impression_id: The impression's id.
        query_id: The query it answered.
        conversation_id: The conversation of the query, if any.
        query_text: The (masked) query text.
        has_image: Whether the query had a photo.
        filters: The query's structured filters.
        product_id: The product shown.
        rank: Its 1-based position (for position-bias correction).
        score: The fused score it was ranked by.
        scores: Per-modality scores.
        index_version: The index searched.
        model_version: The model that ranked it.
        shown_at: When it was shown.
        clicked: Any click on it.
        added_to_cart: Any add-to-cart.
        purchased: Any purchase.
        purchase_value: Sum of the purchases' ``value`` (0 when none).
        dwell_ms: Total dwell time recorded on it (0 when none).
        thumbs_up: Any thumbs-up.
        thumbs_down: Any thumbs-down.
    """

    impression_id: int
    query_id: str
    conversation_id: str | None
    query_text: str | None
    has_image: bool
    filters: dict[str, Any] | None
    product_id: str
    rank: int
    score: float | None
    scores: dict[str, float] | None
    index_version: str | None
    model_version: str | None
    shown_at: datetime
    clicked: bool
    added_to_cart: bool
    purchased: bool
    purchase_value: float
    dwell_ms: float
    thumbs_up: bool
    thumbs_down: bool


def _dicts(conn: Connection, stmt: Select[Any]) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in conn.execute(stmt)]


def _window(stmt: Select[Any], table_name: str, since: datetime | None,
            until: datetime | None = None) -> Select[Any]:
    column = TABLES[table_name].c[TIME_COLUMN[table_name]]
    if since is not None:
        stmt = stmt.where(column >= since)
    if until is not None:
        stmt = stmt.where(column < until)
    return stmt


def conversation(conn: Connection, conversation_id: str) -> ConversationRecord:
    """Reads one conversation with everything logged in it.

    Args:
        conn: An open connection.
        conversation_id: The conversation's id.

    Returns:
        The conversation, its messages, tool calls, queries, impressions and feedback.

    Raises:
        KeyError: No conversation has that id.
    """
    head = conn.execute(select(conversations).where(conversations.c.id == conversation_id)
                        ).one_or_none()
    if head is None:
        raise KeyError(f"No conversation {conversation_id!r} in the event log.")
    in_conversation = select(queries.c.id).where(queries.c.conversation_id == conversation_id)
    query_rows = _dicts(conn, select(queries).where(queries.c.conversation_id == conversation_id)
                        .order_by(queries.c.created_at, queries.c.id))
    shown = _dicts(conn, select(impressions).where(impressions.c.query_id.in_(in_conversation))
                   .order_by(impressions.c.query_id, impressions.c.rank))
    reactions = _dicts(conn, select(feedback).where(feedback.c.query_id.in_(in_conversation))
                       .order_by(feedback.c.created_at, feedback.c.id))
    for query in query_rows:
        query["impressions"] = [i for i in shown if i["query_id"] == query["id"]]
        query["feedback"] = [f for f in reactions if f["query_id"] == query["id"]]
    return ConversationRecord(
        conversation=dict(head._mapping),
        messages=_dicts(conn, select(messages).where(messages.c.conversation_id ==
                                                     conversation_id)
                        .order_by(messages.c.created_at, messages.c.id)),
        tool_calls=_dicts(conn, select(tool_calls).where(tool_calls.c.conversation_id ==
                                                         conversation_id)
                          .order_by(tool_calls.c.created_at, tool_calls.c.id)),
        queries=query_rows)


def list_conversations(conn: Connection, *, since: datetime | None = None,
                       channel: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The most recent conversations, newest first, with ``n_messages`` and ``n_queries``.

    Args:
        conn: An open connection.
        since: Only conversations started at or after this time.
        channel: Only this channel (``shop``, ``support``...).
        limit: At most this many.

    Returns:
        One dict per conversation: its columns plus the two counts.
    """
    n_messages = (select(func.count()).where(messages.c.conversation_id == conversations.c.id)
                  .scalar_subquery().label("n_messages"))
    n_queries = (select(func.count()).where(queries.c.conversation_id == conversations.c.id)
                 .scalar_subquery().label("n_queries"))
    stmt = _window(select(conversations, n_messages, n_queries), "conversations", since)
    if channel is not None:
        stmt = stmt.where(conversations.c.channel == channel)
    stmt = stmt.order_by(conversations.c.started_at.desc(), conversations.c.id).limit(limit)
    return _dicts(conn, stmt)


def _flag(kind: str) -> Any:
    return func.max(case((feedback.c.kind == kind, 1), else_=0))


def training_select(*, since: datetime | None = None,
                    until: datetime | None = None) -> Select[Any]:
    """The query behind :func:`iter_impressions`: impressions, their queries and feedback labels.

    Args:
        since: Only impressions shown at or after this time.
        until: Only impressions shown before this time.

    Returns:
        A SELECT with one row per impression, in the order shown.
    """
    labels = (select(feedback.c.impression_id,
                     _flag("click").label("clicked"),
                     _flag("add_to_cart").label("added_to_cart"),
                     _flag("purchase").label("purchased"),
                     func.sum(case((feedback.c.kind == "purchase",
                                    func.coalesce(feedback.c.value, 0.0)), else_=0.0)
                              ).label("purchase_value"),
                     func.sum(func.coalesce(feedback.c.dwell_ms, 0.0)).label("dwell_ms"),
                     _flag("thumbs_up").label("thumbs_up"),
                     _flag("thumbs_down").label("thumbs_down"))
              .where(feedback.c.impression_id.is_not(None))
              .group_by(feedback.c.impression_id).subquery())
    stmt = (select(impressions.c.id.label("impression_id"), impressions.c.query_id,
                   queries.c.conversation_id, queries.c.text.label("query_text"),
                   queries.c.has_image, queries.c.filters, impressions.c.product_id,
                   impressions.c.rank, impressions.c.score, impressions.c.scores,
                   impressions.c.index_version, impressions.c.model_version,
                   impressions.c.shown_at, labels.c.clicked, labels.c.added_to_cart,
                   labels.c.purchased, labels.c.purchase_value, labels.c.dwell_ms,
                   labels.c.thumbs_up, labels.c.thumbs_down)
            .join(queries, queries.c.id == impressions.c.query_id)
            .outerjoin(labels, labels.c.impression_id == impressions.c.id))
    stmt = _window(stmt, "impressions", since, until)
    return stmt.order_by(impressions.c.shown_at, impressions.c.query_id, impressions.c.rank)


def iter_impressions(conn: Connection, *, since: datetime | None = None,
                     until: datetime | None = None,
                     batch_size: int = 1000) -> Iterator[LabelledImpression]:
    """Streams every impression with its query and feedback labels.

    Args:
        conn: An open connection (kept busy until the iterator is exhausted or closed).
        since: Only impressions shown at or after this time.
        until: Only impressions shown before this time.
        batch_size: Rows fetched per round trip.

    Yields:
        One :class:`LabelledImpression` per impression, in the order shown.
    """
    stmt = training_select(since=since, until=until).execution_options(yield_per=batch_size)
    for row in conn.execute(stmt):
        r = row._mapping
        yield LabelledImpression(
            impression_id=int(r["impression_id"]), query_id=r["query_id"],
            conversation_id=r["conversation_id"], query_text=r["query_text"],
            has_image=bool(r["has_image"]), filters=r["filters"], product_id=r["product_id"],
            rank=int(r["rank"]), score=r["score"], scores=r["scores"],
            index_version=r["index_version"], model_version=r["model_version"],
            shown_at=r["shown_at"], clicked=bool(r["clicked"]),
            added_to_cart=bool(r["added_to_cart"]), purchased=bool(r["purchased"]),
            purchase_value=float(r["purchase_value"] or 0.0),
            dwell_ms=float(r["dwell_ms"] or 0.0), thumbs_up=bool(r["thumbs_up"]),
            thumbs_down=bool(r["thumbs_down"]))


def counts(conn: Connection, *, since: datetime | None = None) -> dict[str, int]:
    """Rows per table, optionally only those dated at or after ``since``."""
    return {name: int(conn.execute(_window(select(func.count()).select_from(table), name,
                                           since)).scalar_one())
            for name, table in TABLES.items()}


def feedback_counts(conn: Connection, *, since: datetime | None = None) -> dict[str, int]:
    """Feedback events per kind; every kind is present (0 when none)."""
    stmt = _window(select(feedback.c.kind, func.count()).group_by(feedback.c.kind), "feedback",
                   since)
    found = {kind: int(n) for kind, n in conn.execute(stmt)}
    return {kind: found.get(kind, 0) for kind in FEEDBACK_KINDS}
