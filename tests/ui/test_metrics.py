"""Insights metrics: pure functions checked by hand, then over a real event log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from ui import metrics
from ui.insights_data import load_window

DAY1 = datetime(2026, 5, 1, 10, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)


def query(qid, n_results, when=DAY1, text="red dress", conversation="c1", has_image=False):
    return {"id": qid, "conversation_id": conversation, "text": text, "has_image": has_image,
            "created_at": when, "n_results": n_results, "latency_ms": 10.0}


def shown(rank, qid="q1", **flags):
    return {"rank": rank, "query_id": qid, "clicked": False, "added_to_cart": False,
            "purchased": False, **flags}


@pytest.mark.parametrize("q", [0, 5, 50, 95, 100])
def test_percentile_matches_numpy(q, seeded_rng):
    values = seeded_rng.exponential(100, size=37).tolist()
    assert metrics.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert metrics.percentile([], q) is None


def test_searches_per_day_and_zero_results():
    rows = [query("a", 3), query("b", 0), query("c", 0, DAY2, "Blue  Jeans"),
            query("d", 0, DAY2, "blue jeans"), query("e", 0, DAY2, "", has_image=True)]
    per_day = metrics.searches_per_day(rows)
    assert [(r["day"].isoformat(), r["searches"], r["zero_results"]) for r in per_day] == \
        [("2026-05-01", 2, 1), ("2026-05-02", 3, 3)]
    assert metrics.zero_result_rate(rows) == pytest.approx(4 / 5)
    assert metrics.zero_result_rate([]) is None
    top = metrics.top_zero_result_queries(rows)
    assert [(t["query"], t["searches"]) for t in top] == \
        [("blue jeans", 2), ("(photo)", 1), ("red dress", 1)]


def test_click_through_by_rank_and_conversion():
    imps = [shown(1, clicked=True), shown(2), shown(3, added_to_cart=True),
            shown(1, "q2", purchased=True, added_to_cart=True), shown(2, "q2"),
            shown(25, "q2", clicked=True)]
    by_rank = {r["rank"]: r for r in metrics.ctr_by_rank(imps)}
    assert sorted(by_rank) == [1, 2, 3]
    assert by_rank[1]["ctr"] == 1.0 and by_rank[2]["ctr"] == 0.0 and by_rank[3]["ctr"] == 1.0
    rates = metrics.conversion_rates(imps)
    assert rates["impressions"] == 6 and rates["searches"] == 2
    assert rates["ctr"] == pytest.approx(4 / 6)
    assert rates["add_to_cart_rate"] == pytest.approx(2 / 6)
    assert rates["purchase_rate"] == pytest.approx(1 / 6)
    assert rates["searches_with_add_to_cart"] == 1.0
    assert rates["searches_with_purchase"] == 0.5
    assert metrics.conversion_rates([])["ctr"] is None


def test_rates_by_model():
    imps = [shown(1, clicked=True, model_version="concat-v1"), shown(2, model_version="concat-v1"),
            shown(1, "q2", model_version="concat-v1+ranker-v0002", purchased=True),
            shown(1, "q3", model_version="concat-v1+ranker-v0002"),
            shown(1, "q4", model_version="concat-v1+ranker-v0002+shuffle"), shown(1, "q5")]
    ordered = metrics.rates_by_model(imps)
    assert ordered[0]["model"] == "concat-v1+ranker-v0002"  # most searches first
    rows = {r["model"]: r for r in ordered}
    assert rows["concat-v1"]["searches"] == 1 and rows["concat-v1"]["ctr"] == 0.5
    assert rows["concat-v1+ranker-v0002"]["searches"] == 2
    assert rows["concat-v1+ranker-v0002"]["searches_with_purchase"] == 0.5
    assert rows["concat-v1+ranker-v0002+shuffle"]["ctr"] == 0.0
    assert rows["unknown"]["impressions"] == 1
    assert metrics.rates_by_model([]) == []


def test_latency_per_tool():
    calls = [{"tool": "text_search", "duration_ms": float(ms), "error": None}
             for ms in range(1, 101)]
    calls += [{"tool": "recommend", "duration_ms": 5.0, "error": "boom"},
              {"tool": "recommend", "duration_ms": None, "error": None}]
    rows = {r["tool"]: r for r in metrics.latency_by_tool(calls)}
    assert rows["text_search"]["p50_ms"] == pytest.approx(50.5)
    assert rows["text_search"]["p95_ms"] == pytest.approx(95.05)
    assert rows["recommend"] == {"tool": "recommend", "calls": 2, "errors": 1,
                                 "p50_ms": 5.0, "p95_ms": 5.0}
    assert metrics.latency_by_tool([])[:1] == []


def test_conversation_summaries_and_filters():
    conversations = [{"id": "c1", "started_at": DAY1, "channel": "shop", "llm_backend": "rules",
                      "n_messages": 4},
                     {"id": "c2", "started_at": DAY2, "channel": "shop", "llm_backend": "rules",
                      "n_messages": 2},
                     {"id": "c3", "started_at": DAY2, "channel": "support",
                      "llm_backend": "rules", "n_messages": 0}]
    queries = [query("q1", 3), query("q2", 0, conversation="c2", text="gold boots")]
    calls = [{"conversation_id": "c1", "tool": "text_search", "error": None},
             {"conversation_id": "c1", "tool": "recommend", "error": None},
             {"conversation_id": "c2", "tool": "text_search", "error": "bad"}]
    feedback = [{"kind": "add_to_cart", "query_id": "q1"}, {"kind": "click", "query_id": "q1"}]
    rows = metrics.summarise_conversations(conversations, queries, calls, feedback)
    by_id = {r["id"]: r for r in rows}
    assert by_id["c1"]["outcome"] == "added to cart"
    assert by_id["c1"]["tools"] == ["recommend", "text_search"]
    assert by_id["c1"]["feedback"] == {"add_to_cart": 1, "click": 1}
    assert by_id["c2"]["outcome"] == "no results" and by_id["c2"]["tool_errors"] == 1
    assert by_id["c3"]["outcome"] == "no interaction"
    pick = metrics.filter_conversations
    assert [r["id"] for r in pick(rows, tools=["recommend"])] == ["c1"]
    assert [r["id"] for r in pick(rows, zero_results=True)] == ["c2"]
    assert [r["id"] for r in pick(rows, zero_results=False)] == ["c1", "c3"]
    assert [r["id"] for r in pick(rows, text="GOLD")] == ["c2"]
    assert [r["id"] for r in pick(rows, feedback=["add_to_cart"])] == ["c1"]
    assert [r["id"] for r in pick(rows, outcomes=["no interaction"])] == ["c3"]
    assert [r["id"] for r in pick(rows, since=DAY2)] == ["c2", "c3"]
    assert [r["id"] for r in pick(rows, until=DAY2)] == ["c1"]


def test_metrics_over_a_real_event_log(event_log):
    cid = event_log.start_conversation(channel="shop", llm_backend="rules", at=DAY1)
    q1 = event_log.log_query(conversation_id=cid, text="red dress", at=DAY1, latency_ms=12.0,
                             hits=[{"product_id": "p1"}, {"product_id": "p2"}])
    event_log.log_query(conversation_id=cid, text="gold boots", at=DAY2)
    event_log.log_feedback("add_to_cart", query_id=q1, product_id="p2", at=DAY2)
    event_log.log_tool_call(cid, "text_search", {"query": "red dress"}, duration_ms=12.0,
                            at=DAY1)
    window = load_window(event_log, since=DAY1 - timedelta(hours=1),
                         until=DAY2 + timedelta(hours=1))
    assert not window.capped
    assert sorted(q["n_results"] for q in window.queries) == [0, 2]
    assert metrics.zero_result_rate(window.queries) == 0.5
    assert [(r["rank"], r["ctr"]) for r in metrics.ctr_by_rank(window.impressions)] == \
        [(1, 0.0), (2, 1.0)]
    [by_model] = metrics.rates_by_model(window.impressions)
    assert by_model["model"] == "unknown" and by_model["searches_with_add_to_cart"] == 1.0
    rows = metrics.summarise_conversations(window.conversations, window.queries,
                                           window.tool_calls, window.feedback)
    assert rows[0]["outcome"] == "added to cart" and rows[0]["messages"] == 0
    narrow = load_window(event_log, since=DAY2 - timedelta(hours=1), limit=1)
    assert len(narrow.queries) == 1 and narrow.queries[0]["text"] == "gold boots"
