"""Retention (purge) and analyst exports (Parquet, CSV), through the API and the CLI."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from assistant.eventlog.retention import export, parse_duration, parse_time, purge
from assistant.eventlog.store import EventLog
from retrieval.cli import main
from tests.assistant.conftest import populate

NOW = datetime(2024, 6, 1, tzinfo=UTC)
OLD = NOW - timedelta(days=100)
NEW = NOW - timedelta(days=10)


@pytest.mark.parametrize("text, expected", [
    ("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("2w", timedelta(weeks=2)),
    ("30m", timedelta(minutes=30)), ("45s", timedelta(seconds=45)),
    ("1d12h", timedelta(days=1, hours=12)), (" 7 days ", timedelta(days=7)),
    ("3W", timedelta(weeks=3)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "90", "d", "90x", "-5d", "1.5d", "ninety days", "90d!",
                                  "0d"])
def test_parse_duration_refuses_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match="Duration"):
        parse_duration(text)


def test_parse_time() -> None:
    assert parse_time("7d", now=NOW) == NOW - timedelta(days=7)
    assert parse_time("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_time("2024-05-01T12:00:00+02:00") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="is neither a duration"):
        parse_time("last tuesday")


def _scenario(log: EventLog) -> dict[str, dict]:
    old = populate(log, at=OLD, user="old")
    new = populate(log, at=NEW, user="new")
    # An old standalone search (no conversation) and new feedback on an old result: the
    # search is past retention, so its feedback goes with it.
    old_query = log.log_query(text="standalone", at=OLD, hits=[{"product_id": "A"}])
    log.log_feedback("click", query_id=old_query, product_id="A", at=NEW)
    # Old feedback on a new result goes; the result stays.
    log.log_feedback("thumbs_up", query_id=new["query"], product_id="53759", at=OLD)
    return {"old": old, "new": new, "old_query": {"query": old_query}}


def test_purge_removes_old_rows_and_their_dependents(event_log: EventLog,
                                                     db_path: Path) -> None:
    ids = _scenario(event_log)
    before = event_log.counts()
    planned = purge(event_log, "90d", dry_run=True, now=NOW)
    assert event_log.counts() == before  # a dry run deletes nothing
    assert planned == {"conversations": 1, "messages": 1, "tool_calls": 1, "queries": 2,
                       "impressions": 3, "feedback": 3}

    deleted = purge(event_log, "90d", now=NOW)
    assert deleted == planned
    assert event_log.counts() == {"conversations": 1, "messages": 1, "tool_calls": 1,
                                  "queries": 1, "impressions": 2, "feedback": 1}
    with pytest.raises(KeyError):
        event_log.conversation(ids["old"]["conversation"])
    kept = event_log.conversation(ids["new"]["conversation"])
    assert [m["id"] for m in kept.messages] == [ids["new"]["message"]]
    assert [f["id"] for f in kept.queries[0]["feedback"]] == [ids["new"]["feedback"]]
    assert {r.query_id for r in event_log.iter_impressions()} == {ids["new"]["query"]}
    with sqlite3.connect(db_path) as raw:  # nothing left pointing at a purged row
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    assert purge(event_log, timedelta(days=90), now=NOW)["conversations"] == 0


def test_a_large_purge_runs_as_short_transactions_oldest_first(
        event_log: EventLog, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each transaction is a whole purge at an earlier cutoff, so the app's writers wait
    for one batch at most, and the total is the one-transaction purge's."""
    for days in range(95, 400, 30):  # 11 conversations of 7 rows, 95 to 395 days old
        populate(event_log, at=NOW - timedelta(days=days))
    populate(event_log, at=NEW)
    planned = purge(event_log, "90d", dry_run=True, now=NOW)
    assert planned["conversations"] == 11

    transactions: list[dict[str, int]] = []
    writing = event_log._writing

    def counted(what: str):  # the log's counts as each purge transaction begins
        transactions.append(event_log.counts())
        return writing(what)

    monkeypatch.setattr(event_log, "_writing", counted)
    assert purge(event_log, "90d", now=NOW, batch_rows=20) == planned
    assert len(transactions) == 4  # 77 rows in batches of about 20
    conversations = [t["conversations"] for t in transactions]
    assert conversations[0] == 12 and conversations == sorted(conversations, reverse=True)
    assert event_log.counts()["conversations"] == 1
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []


def test_purge_keeps_everything_newer(event_log: EventLog) -> None:
    _scenario(event_log)
    before = event_log.counts()
    assert set(purge(event_log, "200d", now=NOW).values()) == {0}
    assert event_log.counts() == before


def test_export_parquet_and_csv(event_log: EventLog, tmp_path: Path) -> None:
    ids = _scenario(event_log)
    written = export(event_log, tmp_path / "pq")
    counts = event_log.counts()
    assert {name: e.rows for name, e in written.items()} == counts
    queries = pq.read_table(tmp_path / "pq" / "queries.parquet").to_pylist()
    assert len(queries) == counts["queries"]
    first = next(q for q in queries if q["id"] == ids["old"]["query"])
    assert json.loads(first["filters"]) == {"price_max": 1500}
    assert first["created_at"] == OLD and first["has_image"] is False
    impressions = pq.read_table(tmp_path / "pq" / "impressions.parquet")
    assert impressions.schema.field("rank").type == "int64"
    assert str(impressions.schema.field("shown_at").type) == "timestamp[us, tz=UTC]"
    manifest = json.loads((tmp_path / "pq" / "manifest.json").read_text())
    assert manifest["tables"]["feedback"]["rows"] == counts["feedback"]
    assert not list((tmp_path / "pq").glob(".*partial"))

    window = export(event_log, tmp_path / "csv", fmt="csv", since=NOW - timedelta(days=30),
                    tables=["conversations", "feedback"])
    assert set(window) == {"conversations", "feedback"}
    conversations = pa_csv.read_csv(tmp_path / "csv" / "conversations.csv").to_pylist()
    assert [c["user_id"] for c in conversations] == ["new"]
    assert json.loads(conversations[0]["meta"]) == {"app": "test"}
    assert window["feedback"].rows == 2  # the two dated NEW


def test_export_of_an_empty_window_writes_typed_empty_files(event_log: EventLog,
                                                            tmp_path: Path) -> None:
    populate(event_log, at=OLD)
    written = export(event_log, tmp_path, since=NOW)
    assert all(e.rows == 0 for e in written.values())
    table = pq.read_table(tmp_path / "messages.parquet")
    assert table.num_rows == 0 and "text" in table.schema.names


def test_export_refuses_bad_arguments(event_log: EventLog, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format 'xlsx'"):
        export(event_log, tmp_path, fmt="xlsx")
    with pytest.raises(ValueError, match="Unknown tables"):
        export(event_log, tmp_path, tables=["users"])


def test_cli_purge_and_export(event_log: EventLog, db_url: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    _scenario(event_log)  # dated 2024: nothing is ten years old, everything is a second old
    before = event_log.counts()
    assert main(["logs", "purge", "--older-than", "3650d", "--db", db_url, "--dry-run",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True and set(report["deleted"].values()) == {0}
    assert main(["logs", "purge", "--older-than", "1s", "--db", db_url, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Would delete events older than 1s" in out and "conversations" in out
    assert event_log.counts() == before

    out_dir = tmp_path / "export"
    assert main(["logs", "export", "--format", "csv", "--out", str(out_dir), "--db", db_url,
                 "--tables", "queries,impressions", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tables"]["impressions"]["rows"] == before["impressions"]
    assert pa_csv.read_csv(out_dir / "queries.csv").num_rows == before["queries"]

    assert main(["logs", "purge", "--older-than", "1s", "--db", db_url]) == 0
    assert "Deleted" in capsys.readouterr().out
    assert set(event_log.counts().values()) == {0}


def test_cli_reads_the_db_from_the_environment(event_log: EventLog, db_url: str,
                                               tmp_path: Path, monkeypatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    populate(event_log)
    monkeypatch.delenv("SHOPASSIST_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHOPASSIST_LOG_DB", db_url)
    assert main(["logs", "export", "--out", "out", "--since", "1d"]) == 0
    assert "conversations" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "out" / "conversations.parquet").num_rows == 1


def test_cli_errors(tmp_path: Path, db_url: str, event_log: EventLog,
                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "purge", "--older-than", "ninety", "--db", db_url]) == 2
    assert "Duration 'ninety' is not valid" in capsys.readouterr().err
    missing = tmp_path / "typo.sqlite"
    assert main(["logs", "purge", "--older-than", "90d", "--db", f"sqlite:///{missing}"]) == 2
    assert "No event log" in capsys.readouterr().err
    assert not missing.exists()  # maintenance never creates a log
    assert main(["logs", "export", "--out", str(tmp_path), "--since", "someday",
                 "--db", db_url]) == 2
    assert "neither a duration" in capsys.readouterr().err
