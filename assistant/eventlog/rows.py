"""Caller values → validated, masked rows: the masking choke point of the event log.

Each function here turns the arguments of one :class:`~assistant.eventlog.store.EventLog`
writer into the row(s) it inserts. Every text-like value — free text, JSON arguments,
filters, ids, names and references — goes through :mod:`assistant.eventlog.pii` here, and
the writer inserts nothing else. The functions are pure, so the masking of each table is
testable without a database.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from assistant.eventlog.pii import mask, mask_data
from assistant.eventlog.schema import (
    FEEDBACK_KINDS,
    ID_LEN,
    NAME_LEN,
    PRODUCT_ID_LEN,
    REF_LEN,
    ROLES,
    utcnow,
)

Row = dict[str, Any]


def _no_nul(value: Any) -> Any:
    # PostgreSQL text and JSON cannot hold NUL characters; SQLite can. Drop them so a log
    # moves between the two.
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    return value


def _text(value: Any) -> str:
    return _no_nul(mask(str(value)))


def _json(value: Any) -> Any:
    return _no_nul(mask_data(value)) if value is not None else None


def when(at: datetime | None) -> datetime:
    """``at``, or now; a naive datetime is refused (its time zone would be a guess)."""
    if at is None:
        return utcnow()
    if at.tzinfo is None:
        raise ValueError("Event timestamps must be timezone-aware (e.g. datetime.now(UTC)); "
                         "got a naive datetime.")
    return at


def short_text(name: str, value: Any, limit: int, *, required: bool = False) -> str | None:
    """Masks a short text field (an id, a name, a reference) and checks it fits its column."""
    if value is None or value == "":
        if required:
            raise ValueError(f"{name} is required.")
        return None
    text = _text(value)
    if len(text) > limit:
        raise ValueError(f"{name} is {len(text)} characters long; at most {limit} fit.")
    return text


def _duration(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not 0 <= number < math.inf:
        raise ValueError(f"{name} must be a non-negative number of milliseconds, got {number}.")
    return number


def _finite(value: Any) -> float | None:
    # NaN and infinities are not JSON and not portable between databases.
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _scores(scores: Any) -> dict[str, float | None] | None:
    if not scores:
        return None
    return {_text(k): _finite(v) for k, v in dict(scores).items()}


def conversation_row(*, channel: str, user_id: str | None, session_id: str | None,
                     llm_backend: str | None, meta: Mapping[str, Any] | None,
                     conversation_id: str | None, at: datetime | None) -> Row:
    """The ``conversations`` row of :meth:`EventLog.start_conversation`."""
    return {"id": short_text("conversation_id", conversation_id or uuid.uuid4().hex, ID_LEN),
            "started_at": when(at),
            "channel": short_text("channel", channel, ID_LEN, required=True),
            "user_id": short_text("user_id", user_id, ID_LEN),
            "session_id": short_text("session_id", session_id, ID_LEN),
            "llm_backend": short_text("llm_backend", llm_backend, NAME_LEN),
            "meta": _json(meta)}


def message_row(conversation_id: str, role: str, text: str, *, has_image: bool,
                upload_ref: str | None, meta: Mapping[str, Any] | None,
                at: datetime | None) -> Row:
    """The ``messages`` row of :meth:`EventLog.log_message`."""
    if role not in ROLES:
        raise ValueError(f"Message role must be one of {', '.join(ROLES)}; got "
                         f"{mask(repr(role))}.")
    return {"conversation_id": short_text("conversation_id", conversation_id, ID_LEN,
                                          required=True),
            "role": role, "text": _text(text), "created_at": when(at),
            "has_image": bool(has_image or upload_ref),
            "upload_ref": short_text("upload_ref", upload_ref, REF_LEN), "meta": _json(meta)}


def tool_call_row(conversation_id: str, tool: str, arguments: Any, *, message_id: int | None,
                  duration_ms: float | None, error: str | BaseException | None,
                  at: datetime | None) -> Row:
    """The ``tool_calls`` row of :meth:`EventLog.log_tool_call`."""
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    return {"conversation_id": short_text("conversation_id", conversation_id, ID_LEN,
                                          required=True),
            "message_id": int(message_id) if message_id is not None else None,
            "tool": short_text("tool", tool, NAME_LEN, required=True),
            "arguments": _json(arguments if arguments is not None else {}),
            "duration_ms": _duration("duration_ms", duration_ms),
            "error": _text(error) if error else None, "created_at": when(at)}


def _hit_fields(hit: Any, position: int) -> tuple[Any, int, Any, Any]:
    """product_id, rank, score, scores of a ``SearchHit``-like object or a mapping."""
    if isinstance(hit, Mapping):
        return (hit.get("product_id"), int(hit.get("rank") or position), hit.get("score"),
                hit.get("scores"))
    product_id = getattr(hit, "product_id", None)
    if product_id is None:
        product_id = getattr(getattr(hit, "product", None), "product_id", None)
    return (product_id, int(getattr(hit, "rank", None) or position),
            getattr(hit, "score", None), getattr(hit, "scores", None))


def query_rows(*, conversation_id: str | None, message_id: int | None, text: str | None,
               has_image: bool, image_ref: str | None, filters: Any, hits: Iterable[Any],
               result: Any, index_version: str | None, model_version: str | None,
               latency_ms: float | None, query_id: str | None,
               at: datetime | None) -> tuple[Row, list[Row]]:
    """The ``queries`` row and the ``impressions`` rows of :meth:`EventLog.log_query`."""
    if result is not None:
        hits = list(hits) or list(getattr(result, "hits", ()))
        filters = filters if filters is not None else getattr(result, "filters", None)
        index_version = index_version or getattr(result, "index_version", None)
        model_version = model_version or getattr(result, "model_version", None)
        if latency_ms is None:
            latency_ms = dict(getattr(result, "timings_ms", None) or {}).get("total")
    if filters is not None and hasattr(filters, "to_dict"):
        filters = filters.to_dict()
    shown_at = when(at)
    query = {"id": short_text("query_id", query_id or uuid.uuid4().hex, ID_LEN),
             "conversation_id": short_text("conversation_id", conversation_id, ID_LEN),
             "message_id": int(message_id) if message_id is not None else None,
             "text": _text(text) if text is not None else None,
             "has_image": bool(has_image or image_ref),
             "image_ref": short_text("image_ref", image_ref, REF_LEN),
             "filters": _json(filters),
             "index_version": short_text("index_version", index_version, NAME_LEN),
             "model_version": short_text("model_version", model_version, NAME_LEN),
             "latency_ms": _duration("latency_ms", latency_ms), "created_at": shown_at}
    shown = []
    for position, hit in enumerate(hits, start=1):
        product_id, rank, score, scores = _hit_fields(hit, position)
        if product_id is None or product_id == "":
            raise ValueError(f"Hit {position} has no product_id.")
        shown.append({"query_id": query["id"],
                      "product_id": short_text("product_id", product_id, PRODUCT_ID_LEN),
                      "rank": rank, "score": _finite(score), "scores": _scores(scores),
                      "index_version": query["index_version"],
                      "model_version": query["model_version"], "shown_at": shown_at})
    return query, shown


def feedback_row(kind: str, *, impression_id: int | None, query_id: str | None,
                 product_id: str | None, dwell_ms: float | None, value: float | None,
                 at: datetime | None) -> Row:
    """The ``feedback`` row of :meth:`EventLog.log_feedback`, before its impression is resolved."""
    if kind not in FEEDBACK_KINDS:
        raise ValueError(f"Feedback kind must be one of {', '.join(FEEDBACK_KINDS)}; got "
                         f"{mask(repr(kind))}.")
    if kind == "dwell" and dwell_ms is None:
        raise ValueError("Feedback of kind 'dwell' needs dwell_ms.")
    if impression_id is None and (query_id in (None, "") or product_id in (None, "")):
        raise ValueError("Feedback needs impression_id, or query_id and product_id.")
    return {"impression_id": int(impression_id) if impression_id is not None else None,
            "query_id": short_text("query_id", query_id, ID_LEN),
            "product_id": short_text("product_id", product_id, PRODUCT_ID_LEN),
            "kind": kind, "dwell_ms": _duration("dwell_ms", dwell_ms), "value": _finite(value),
            "created_at": when(at)}
