"""The event log on a real SQLite file: round trips, settings, validation, concurrency."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from assistant.eventlog import EventLog, EventLogError, SchemaVersionError
from assistant.eventlog.schema import SCHEMA_VERSION, messages
from tests.assistant.conftest import populate

T0 = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def test_round_trip_every_table(event_log: EventLog) -> None:
    at = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    conv = event_log.start_conversation(channel="support", user_id="u-42", session_id="s-9",
                                        llm_backend="hf:Qwen/Qwen2.5-1.5B-Instruct",
                                        meta={"persona": "support"}, at=at)
    msg = event_log.log_message(conv, "user", "like this but in red", has_image=True,
                                upload_ref="upload-7", meta={"lang": "en"}, at=at)
    reply = event_log.log_message(conv, "assistant", "Here are 2 red dresses.",
                                  meta={"fallback": "rules", "reason": "timeout"},
                                  at=at + timedelta(seconds=2))
    call = event_log.log_tool_call(conv, "visual_search",
                                   {"upload": "upload-7", "text": "in red", "k": 2},
                                   message_id=msg, duration_ms=41.5, at=at)
    failed = event_log.log_tool_call(conv, "product_details", {"product_id": "nope"},
                                     message_id=msg, error=KeyError("nope"), at=at)
    hit = SimpleNamespace(product=SimpleNamespace(product_id="15970"), rank=1, score=0.91,
                          scores={"image": 0.95, "text": 0.6})
    query = event_log.log_query(conversation_id=conv, message_id=msg, text="in red",
                                has_image=True, image_ref="upload-7",
                                filters=SimpleNamespace(to_dict=lambda: {"colour": ["Red"]}),
                                hits=[hit, {"product_id": "53759", "rank": 2, "score": 0.8}],
                                index_version="v3", model_version="fusion-1",
                                latency_ms=55.0, at=at)
    click = event_log.log_feedback("click", query_id=query, product_id="15970", at=at)
    dwell = event_log.log_feedback("dwell", query_id=query, product_id="15970", dwell_ms=4200,
                                   at=at)
    buy = event_log.log_feedback("purchase", query_id=query, product_id="53759", value=2,
                                 at=at)

    record = event_log.conversation(conv)
    utc = at.astimezone(UTC)
    assert record.conversation == {
        "id": conv, "started_at": utc, "channel": "support", "user_id": "u-42",
        "session_id": "s-9", "llm_backend": "hf:Qwen/Qwen2.5-1.5B-Instruct",
        "meta": {"persona": "support"}}
    assert record.conversation["started_at"].tzinfo is not None
    assert [m["id"] for m in record.messages] == [msg, reply]
    assert record.messages[0] == {
        "id": msg, "conversation_id": conv, "role": "user", "text": "like this but in red",
        "created_at": utc, "has_image": True, "upload_ref": "upload-7", "meta": {"lang": "en"}}
    assert record.messages[1]["meta"] == {"fallback": "rules", "reason": "timeout"}
    assert [c["id"] for c in record.tool_calls] == [call, failed]
    assert record.tool_calls[0]["arguments"] == {"upload": "upload-7", "text": "in red", "k": 2}
    assert record.tool_calls[0]["duration_ms"] == 41.5 and record.tool_calls[0]["error"] is None
    assert record.tool_calls[1]["error"] == "KeyError: 'nope'"
    [q] = record.queries
    assert (q["id"], q["text"], q["has_image"], q["image_ref"], q["filters"]) == (
        query, "in red", True, "upload-7", {"colour": ["Red"]})
    assert (q["index_version"], q["model_version"], q["latency_ms"]) == ("v3", "fusion-1", 55.0)
    assert [(i["product_id"], i["rank"], i["score"]) for i in q["impressions"]] == [
        ("15970", 1, 0.91), ("53759", 2, 0.8)]
    assert q["impressions"][0]["scores"] == {"image": 0.95, "text": 0.6}
    assert q["impressions"][0]["model_version"] == "fusion-1"
    assert [(f["id"], f["kind"], f["product_id"]) for f in q["feedback"]] == [
        (click, "click", "15970"), (dwell, "dwell", "15970"), (buy, "purchase", "53759")]
    assert q["feedback"][0]["impression_id"] == q["impressions"][0]["id"]
    assert q["feedback"][1]["dwell_ms"] == 4200 and q["feedback"][2]["value"] == 2


def test_log_query_from_a_search_result(event_log: EventLog) -> None:
    hits = [SimpleNamespace(product=SimpleNamespace(product_id=f"P{i}"), rank=i, score=1 / i,
                            scores={"text": 1 / i}) for i in (1, 2, 3)]
    result = SimpleNamespace(hits=hits, filters={"price_max": 80.0}, index_version="v9",
                             timings_ms={"total": 12.0})
    query = event_log.log_query(text="red shirt", result=result)
    rows = list(event_log.iter_impressions())
    assert [(r.query_id, r.product_id, r.rank, r.index_version) for r in rows] == [
        (query, "P1", 1, "v9"), (query, "P2", 2, "v9"), (query, "P3", 3, "v9")]
    assert rows[0].filters == {"price_max": 80.0}


def test_training_rows_join_feedback(event_log: EventLog) -> None:
    early = event_log.log_query(text="a", at=T0, hits=[{"product_id": p} for p in "xyz"])
    late = event_log.log_query(text="b", at=T0 + timedelta(hours=1),
                               hits=[{"product_id": "x"}])
    event_log.log_feedback("click", query_id=early, product_id="y")
    event_log.log_feedback("add_to_cart", query_id=early, product_id="y")
    event_log.log_feedback("purchase", query_id=early, product_id="y", value=59.0)
    event_log.log_feedback("purchase", query_id=early, product_id="y", value=1.0)
    event_log.log_feedback("dwell", query_id=early, product_id="y", dwell_ms=1000)
    event_log.log_feedback("dwell", query_id=early, product_id="y", dwell_ms=500)
    event_log.log_feedback("thumbs_down", query_id=late, product_id="x")
    # Feedback on a product that was not shown for the query: kept, but not a training label.
    orphan = event_log.log_feedback("click", query_id=early, product_id="never-shown")
    assert event_log.counts()["feedback"] == 8

    rows = list(event_log.iter_impressions(batch_size=2))
    assert [(r.query_id, r.product_id, r.rank) for r in rows] == [
        (early, "x", 1), (early, "y", 2), (early, "z", 3), (late, "x", 1)]
    x, y, _z, late_x = rows
    assert not (x.clicked or x.purchased or x.added_to_cart) and x.dwell_ms == 0
    assert y.clicked and y.added_to_cart and y.purchased
    assert y.purchase_value == 60.0 and y.dwell_ms == 1500
    assert late_x.thumbs_down and not late_x.thumbs_up and not late_x.clicked
    assert y.shown_at == T0 and y.query_text == "a"
    assert [r.product_id for r in event_log.iter_impressions(since=T0 + timedelta(minutes=1))
            ] == ["x"]
    assert len(list(event_log.iter_impressions(until=T0 + timedelta(minutes=1)))) == 3
    counts = event_log.feedback_counts()
    assert counts == {"click": 2, "add_to_cart": 1, "purchase": 2, "dwell": 2, "thumbs_up": 0,
                      "thumbs_down": 1}
    assert orphan > 0


def test_feedback_by_impression_id(event_log: EventLog) -> None:
    query = event_log.log_query(hits=[{"product_id": "A"}, {"product_id": "B"}])
    [a, b] = list(event_log.iter_impressions())
    event_log.log_feedback("thumbs_up", impression_id=b.impression_id)
    [_, b] = list(event_log.iter_impressions())
    assert b.thumbs_up and b.query_id == query
    with pytest.raises(ValueError, match="not that query"):
        event_log.log_feedback("click", impression_id=a.impression_id, product_id="B")
    with pytest.raises(EventLogError, match="No impression"):
        event_log.log_feedback("click", impression_id=999)


def test_counts_and_listing(event_log: EventLog) -> None:
    populate(event_log, at=T0)
    newest = populate(event_log, at=T0 + timedelta(days=1), user="u-2")
    assert event_log.counts() == {"conversations": 2, "messages": 2, "tool_calls": 2,
                                  "queries": 2, "impressions": 4, "feedback": 2}
    assert event_log.counts(since=T0 + timedelta(hours=1))["impressions"] == 2
    listed = event_log.list_conversations()
    assert [c["user_id"] for c in listed] == ["u-2", "u-1"]  # newest first
    assert listed[0]["id"] == newest["conversation"]
    assert listed[0]["n_messages"] == 1 and listed[0]["n_queries"] == 1
    assert event_log.list_conversations(channel="support") == []
    assert len(event_log.list_conversations(limit=1)) == 1
    with pytest.raises(KeyError, match="No conversation"):
        event_log.conversation("missing")


def test_sqlite_settings(event_log: EventLog, db_path: Path) -> None:
    populate(event_log)
    with event_log.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA secure_delete")).scalar() == 1
    assert db_path.with_name(db_path.name + "-wal").exists()
    assert event_log.schema_version() == SCHEMA_VERSION


def test_foreign_keys_are_enforced(event_log: EventLog) -> None:
    with pytest.raises(EventLogError, match="does not exist"):
        event_log.log_message("no-such-conversation", "user", "hi")
    with pytest.raises(EventLogError, match="does not exist"):
        event_log.log_feedback("click", query_id="no-such-query", product_id="A")
    conv = event_log.start_conversation()
    with pytest.raises(EventLogError, match="does not exist"):
        event_log.log_tool_call(conv, "text_search", {}, message_id=12345)
    query = event_log.log_query(hits=[{"product_id": "A"}])
    with pytest.raises(EventLogError):  # repeated id
        event_log.log_query(query_id=query)
    with pytest.raises(EventLogError):  # two hits at one rank
        event_log.log_query(hits=[{"product_id": "A", "rank": 1}, {"product_id": "B", "rank": 1}])
    assert event_log.counts()["queries"] == 1  # failed writes left nothing behind


@pytest.mark.parametrize("call, message", [
    (lambda log, c: log.log_message(c, "robot", "hi"), "role must be one of"),
    (lambda log, c: log.log_feedback("like", query_id="q", product_id="A"), "kind must be"),
    (lambda log, c: log.log_feedback("dwell", query_id="q", product_id="A"), "needs dwell_ms"),
    (lambda log, c: log.log_feedback("click", query_id="q"), "needs impression_id"),
    (lambda log, c: log.log_message(c, "user", "hi", at=datetime(2024, 1, 1)),
     "timezone-aware"),
    (lambda log, c: log.log_tool_call(c, "t", {}, duration_ms=-1), "non-negative"),
    (lambda log, c: log.log_tool_call(c, "", {}), "tool is required"),
    (lambda log, c: log.start_conversation(user_id="u" * 65), "at most 64"),
    (lambda log, c: log.log_query(hits=[{"score": 1.0}]), "no product_id"),
])
def test_bad_arguments_are_refused(event_log: EventLog, call, message: str) -> None:
    conv = event_log.start_conversation()
    with pytest.raises(ValueError, match=message):
        call(event_log, conv)


def test_error_messages_do_not_echo_personal_data(event_log: EventLog) -> None:
    conv = event_log.start_conversation()
    with pytest.raises(ValueError) as info:
        event_log.log_message(conv, "jane@example.com", "hi")
    assert "jane@example.com" not in str(info.value) and "[EMAIL]" in str(info.value)


def test_non_finite_numbers_become_null(event_log: EventLog) -> None:
    event_log.log_query(hits=[{"product_id": "A", "score": float("nan"),
                               "scores": {"text": float("inf")}}])
    [row] = list(event_log.iter_impressions())
    assert row.score is None and row.scores == {"text": None}


def test_schema_version_newer_than_code_is_refused(db_url: str, db_path: Path) -> None:
    EventLog.open(db_url).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE eventlog_meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION + 1),))
    with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}.*Upgrade"):
        EventLog.open(db_url)


def test_foreign_tables_are_refused(db_url: str, db_path: Path) -> None:
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT)")
    with pytest.raises(EventLogError, match="not an event log"):
        EventLog.open(db_url)


def test_open_without_create(tmp_path: Path) -> None:
    missing = tmp_path / "nested" / "missing.sqlite"
    with pytest.raises(EventLogError, match="No event log"):
        EventLog.open(f"sqlite:///{missing}", create=False)
    assert not missing.exists() and not missing.parent.exists()
    created = EventLog.open(f"sqlite:///{missing}")  # creates the folder and file
    created.close()
    assert missing.exists()
    with EventLog.open(f"sqlite:///{missing}", create=False) as log:
        assert log.counts()["conversations"] == 0


def test_reopen_keeps_data(db_url: str) -> None:
    with EventLog.open(db_url) as log:
        ids = populate(log)
    with EventLog.open(db_url) as log:
        assert log.conversation(ids["conversation"]).messages[0]["id"] == ids["message"]
        assert "events.sqlite" in repr(log)


def test_concurrent_writers(db_url: str) -> None:
    """Threads sharing one log, plus a second log (as another process would) on the file."""
    logs = [EventLog.open(db_url), EventLog.open(db_url)]
    threads, per_thread, errors = 6, 15, []
    barrier = threading.Barrier(threads + 1)

    def write(n: int) -> None:
        log = logs[n % 2]
        barrier.wait()
        try:
            for i in range(per_thread):
                conv = log.start_conversation(user_id=f"u{n}")
                msg = log.log_message(conv, "user", f"thread {n} message {i}")
                log.log_tool_call(conv, "text_search", {"i": i}, message_id=msg)
                query = log.log_query(conversation_id=conv, message_id=msg,
                                      hits=[{"product_id": f"P{k}"} for k in range(4)])
                log.log_feedback("click", query_id=query, product_id="P1")
        except Exception as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    def read() -> None:
        barrier.wait()
        try:
            for _ in range(10):
                list(logs[0].iter_impressions())
                logs[1].counts()
        except Exception as exc:
            errors.append(exc)

    workers = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
    workers.append(threading.Thread(target=read))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    total = threads * per_thread
    assert logs[0].counts() == {"conversations": total, "messages": total, "tool_calls": total,
                                "queries": total, "impressions": 4 * total, "feedback": total}
    assert sum(r.clicked for r in logs[1].iter_impressions()) == total
    for log in logs:
        log.close()


def test_in_memory_log_is_shared_across_threads() -> None:
    with EventLog.open("sqlite://") as log:
        conv = log.start_conversation()
        workers = [threading.Thread(target=lambda: log.log_message(conv, "user", "hi"))
                   for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert len(log.conversation(conv).messages) == 4


def test_reading_is_read_only(event_log: EventLog) -> None:
    conv = event_log.start_conversation()
    with pytest.raises(OperationalError, match="readonly"), event_log.reading() as conn:
        conn.execute(messages.insert(), {"conversation_id": conv, "role": "user",
                                         "text": "jane@example.com", "created_at": T0,
                                         "has_image": False})
    event_log.log_message(conv, "user", "still writable")  # the pooled connection was reset
    assert [m["text"] for m in event_log.conversation(conv).messages] == ["still writable"]
