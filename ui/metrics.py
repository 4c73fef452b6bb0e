"""Search-quality and conversation metrics for the Insights page: pure functions over rows.

Rows are plain mappings as read from the event log (see :mod:`ui.insights_data`):

- a *query* row: ``id``, ``conversation_id``, ``text``, ``has_image``, ``created_at``,
  ``latency_ms`` and ``n_results`` (impressions it showed);
- an *impression* row: ``rank``, ``query_id``, ``clicked``, ``added_to_cart``,
  ``purchased`` (a :class:`~assistant.eventlog.readers.LabelledImpression` or its dict);
- a *tool call* row: ``tool``, ``duration_ms``, ``error``, ``conversation_id``;
- a *feedback* row: ``kind``, ``query_id``.

Click-through counts an impression as clicked through when the shopper acted on it at
all: a click (the app logs one for "Similar" and "Goes with"), an add-to-cart or a
purchase. Rates are ``None`` when there is nothing to divide by, never a made-up 0.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

Row = Mapping[str, Any]
OUTCOMES = ("purchased", "added to cart", "engaged", "no results", "no interaction")
ENGAGEMENT_KINDS = ("click", "thumbs_up", "thumbs_down", "dwell")


def _get(row: Any, key: str, default: Any = None) -> Any:
    if isinstance(row, Mapping):
        return row.get(key, default)
    return getattr(row, key, default)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default)."""
    data = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not data:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"Percentile must be between 0 and 100 (got {q}).")
    position = (len(data) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (position - low)


def rate(part: int, whole: int) -> float | None:
    """``part / whole``, or ``None`` when ``whole`` is 0."""
    return part / whole if whole else None


def _day(value: Any) -> date:
    return value.date() if isinstance(value, datetime) else date.fromisoformat(str(value)[:10])


def searches_per_day(queries: Iterable[Row]) -> list[dict[str, Any]]:
    """Searches and zero-result searches per calendar day (UTC), oldest first."""
    total: Counter[date] = Counter()
    empty: Counter[date] = Counter()
    for q in queries:
        day = _day(_get(q, "created_at"))
        total[day] += 1
        empty[day] += int(not _get(q, "n_results"))
    return [{"day": day, "searches": total[day], "zero_results": empty[day],
             "zero_result_rate": rate(empty[day], total[day])} for day in sorted(total)]


def zero_result_rate(queries: Iterable[Row]) -> float | None:
    """Share of searches that showed nothing."""
    rows = list(queries)
    return rate(sum(1 for q in rows if not _get(q, "n_results")), len(rows))


def clicked_through(impression: Any) -> bool:
    """Whether the shopper acted on a shown product (click, add to cart or purchase)."""
    return bool(_get(impression, "clicked") or _get(impression, "added_to_cart")
                or _get(impression, "purchased"))


def ctr_by_rank(impressions: Iterable[Any], max_rank: int = 20) -> list[dict[str, Any]]:
    """Click-through per result position, 1..``max_rank`` (positions shown at least once).

    Returns:
        One row per rank: ``rank``, ``shown``, ``clicked_through``, ``ctr``.
    """
    shown: Counter[int] = Counter()
    through: Counter[int] = Counter()
    for imp in impressions:
        rank = int(_get(imp, "rank"))
        if 1 <= rank <= max_rank:
            shown[rank] += 1
            through[rank] += int(clicked_through(imp))
    return [{"rank": r, "shown": shown[r], "clicked_through": through[r],
             "ctr": rate(through[r], shown[r])} for r in sorted(shown)]


def conversion_rates(impressions: Iterable[Any]) -> dict[str, Any]:
    """Per impression and per search: click-through, add-to-cart and purchase rates.

    Returns:
        ``impressions``, ``searches``; ``ctr``, ``add_to_cart_rate``, ``purchase_rate``
        (per impression); ``searches_with_add_to_cart``, ``searches_with_purchase``
        (shares of searches).
    """
    n = through = carted = bought = 0
    queries: dict[Any, set[str]] = defaultdict(set)
    for imp in impressions:
        n += 1
        query = queries[_get(imp, "query_id")]
        through += int(clicked_through(imp))
        if _get(imp, "added_to_cart"):
            carted += 1
            query.add("cart")
        if _get(imp, "purchased"):
            bought += 1
            query.add("purchase")
    searches = len(queries)
    return {"impressions": n, "searches": searches, "ctr": rate(through, n),
            "add_to_cart_rate": rate(carted, n), "purchase_rate": rate(bought, n),
            "searches_with_add_to_cart": rate(sum("cart" in s for s in queries.values()),
                                              searches),
            "searches_with_purchase": rate(sum("purchase" in s for s in queries.values()),
                                           searches)}


def rates_by_model(impressions: Iterable[Any]) -> list[dict[str, Any]]:
    """:func:`conversion_rates` per ``model_version`` — what ordered the list: the fusion,
    ``+ranker-vNNNN`` when a ranker re-ordered it, ``+shuffle`` for exploration — most
    searches first: how a promoted model fares with shoppers next to the one before it.

    Returns:
        One row per model: ``model`` (``unknown`` when none was logged) and the rates.
    """
    groups: dict[str, list[Any]] = defaultdict(list)
    for imp in impressions:
        groups[str(_get(imp, "model_version") or "unknown")].append(imp)
    rows = [{"model": model, **conversion_rates(group)} for model, group in groups.items()]
    return sorted(rows, key=lambda r: (-r["searches"], r["model"]))


def latency_by_tool(tool_calls: Iterable[Row]) -> list[dict[str, Any]]:
    """Calls, errors and p50 / p95 duration (ms) per tool, slowest p95 first."""
    durations: dict[str, list[float]] = defaultdict(list)
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for call in tool_calls:
        tool = str(_get(call, "tool"))
        calls[tool] += 1
        errors[tool] += int(bool(_get(call, "error")))
        if _get(call, "duration_ms") is not None:
            durations[tool].append(float(_get(call, "duration_ms")))
    rows = [{"tool": t, "calls": calls[t], "errors": errors[t],
             "p50_ms": percentile(durations[t], 50), "p95_ms": percentile(durations[t], 95)}
            for t in calls]
    return sorted(rows, key=lambda r: (-(r["p95_ms"] or 0.0), r["tool"]))


def query_label(query: Row) -> str:
    """A search as an analyst reads it: its words, lower-cased, or ``(photo)``."""
    text = " ".join(str(_get(query, "text") or "").lower().split())
    if _get(query, "has_image"):
        return f"(photo) {text}".strip()
    return text or "(empty)"


def top_zero_result_queries(queries: Iterable[Row], n: int = 20) -> list[dict[str, Any]]:
    """The most frequent searches that showed nothing, with how often and when last."""
    counts: Counter[str] = Counter()
    last: dict[str, Any] = {}
    for q in queries:
        if _get(q, "n_results"):
            continue
        label = query_label(q)
        counts[label] += 1
        when = _get(q, "created_at")
        if label not in last or (when is not None and when > last[label]):
            last[label] = when
    return [{"query": label, "searches": count, "last_seen": last.get(label)}
            for label, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def summarise_conversations(conversations: Iterable[Row], queries: Iterable[Row],
                            tool_calls: Iterable[Row], feedback: Iterable[Row]
                            ) -> list[dict[str, Any]]:
    """One row per conversation for the browser: tools, searches, feedback and outcome.

    Args:
        conversations: Conversation rows (``id``, ``started_at``, ``channel``,
            ``llm_backend``, ``n_messages``).
        queries: Query rows (with ``n_results``).
        tool_calls: Tool call rows.
        feedback: Feedback rows (``kind``, ``query_id``).

    Returns:
        Rows with ``id``, ``started_at``, ``channel``, ``backend``, ``messages``,
        ``searches``, ``zero_result_searches``, ``tools``, ``tool_errors``, ``feedback``
        (kind -> count), ``queries`` (labels) and ``outcome`` (one of :data:`OUTCOMES`),
        in the order of ``conversations``.
    """
    by_conversation: dict[Any, list[Row]] = defaultdict(list)
    conversation_of: dict[Any, Any] = {}
    for q in queries:
        by_conversation[_get(q, "conversation_id")].append(q)
        conversation_of[_get(q, "id")] = _get(q, "conversation_id")
    tools: dict[Any, Counter[str]] = defaultdict(Counter)
    errors: Counter[Any] = Counter()
    for call in tool_calls:
        cid = _get(call, "conversation_id")
        tools[cid][str(_get(call, "tool"))] += 1
        errors[cid] += int(bool(_get(call, "error")))
    reactions: dict[Any, Counter[str]] = defaultdict(Counter)
    for f in feedback:
        cid = conversation_of.get(_get(f, "query_id"))
        if cid is not None:
            reactions[cid][str(_get(f, "kind"))] += 1
    rows = []
    for c in conversations:
        cid = _get(c, "id")
        searched = by_conversation.get(cid, [])
        zero = sum(1 for q in searched if not _get(q, "n_results"))
        kinds = dict(reactions.get(cid, Counter()))
        rows.append({"id": cid, "started_at": _get(c, "started_at"),
                     "channel": _get(c, "channel"), "backend": _get(c, "llm_backend"),
                     "messages": int(_get(c, "n_messages") or 0), "searches": len(searched),
                     "zero_result_searches": zero, "tools": sorted(tools.get(cid, {})),
                     "tool_errors": errors.get(cid, 0), "feedback": kinds,
                     "queries": [query_label(q) for q in searched],
                     "outcome": outcome(kinds, len(searched), zero)})
    return rows


def outcome(feedback: Mapping[str, int], searches: int, zero_results: int) -> str:
    """How a conversation ended up, the strongest signal first (see :data:`OUTCOMES`)."""
    if feedback.get("purchase"):
        return "purchased"
    if feedback.get("add_to_cart"):
        return "added to cart"
    if any(feedback.get(kind) for kind in ENGAGEMENT_KINDS):
        return "engaged"
    if searches and zero_results == searches:
        return "no results"
    return "no interaction"


def filter_conversations(rows: Iterable[Row], *, text: str = "", tools: Sequence[str] = (),
                         outcomes: Sequence[str] = (), zero_results: bool | None = None,
                         feedback: Sequence[str] = (), since: datetime | None = None,
                         until: datetime | None = None) -> list[Row]:
    """The conversation rows that pass every given filter.

    Args:
        rows: From :func:`summarise_conversations`.
        text: Words that must appear in the id or in one of the searches.
        tools: Conversations that used any of these tools.
        outcomes: Conversations with any of these outcomes.
        zero_results: True: with a zero-result search; False: without one.
        feedback: Conversations with any of these feedback kinds.
        since: Started at or after.
        until: Started before.
    """
    needle = " ".join(text.lower().split())
    out = []
    for row in rows:
        started = row.get("started_at")
        if since is not None and (started is None or started < since):
            continue
        if until is not None and (started is None or started >= until):
            continue
        if needle and needle not in str(row.get("id", "")).lower() and not any(
                needle in q for q in row.get("queries", [])):
            continue
        if tools and not set(tools) & set(row.get("tools", [])):
            continue
        if outcomes and row.get("outcome") not in outcomes:
            continue
        if zero_results is not None and bool(row.get("zero_result_searches")) != zero_results:
            continue
        if feedback and not any(row.get("feedback", {}).get(kind) for kind in feedback):
            continue
        out.append(row)
    return out
