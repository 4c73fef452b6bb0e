"""Mistakes a user can make with the event log reach them as one line, and lose nothing.

Each case goes through ``shopassist`` (``retrieval.cli.main``): exit code 2, ``error: ...``
on one line, and the database or file given left as it was.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from assistant.eventlog import EventLog, EventLogError, engine, store
from assistant.eventlog.engine import LogLockedError, resolve_url
from assistant.eventlog.retention import parse_time, purge
from assistant.eventlog.schema import utcnow
from retrieval.cli import main
from tests.assistant.conftest import populate


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("given, database", [
    ("data/events.sqlite", "data/events.sqlite"),
    ("/var/log/events.sqlite", "/var/log/events.sqlite"),
    (r"C:\logs\events.sqlite", r"C:\logs\events.sqlite"),
    ("C:/logs/events.sqlite", "C:/logs/events.sqlite"),
    (" events.db ", "events.db"),
    ("sqlite:///data/events.sqlite", "data/events.sqlite"),
])
def test_a_plain_path_is_a_sqlite_file(given: str, database: str) -> None:
    url = resolve_url(given)
    assert url.get_backend_name() == "sqlite" and url.database == database


def test_home_is_expanded_in_paths_and_sqlite_urls(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_url("~/events.sqlite").database == str(tmp_path / "events.sqlite")
    assert resolve_url("sqlite:///~/events.sqlite").database == str(tmp_path / "events.sqlite")


def test_urls_and_the_default_pass_through() -> None:
    assert resolve_url(None) == make_url(engine.DEFAULT_URL)
    assert resolve_url("sqlite://").database is None  # in memory stays in memory
    pg = resolve_url("postgresql+psycopg://shop@db.internal/events")
    assert pg.drivername == "postgresql+psycopg" and pg.database == "events"


def test_cli_takes_a_plain_path(event_log: EventLog, db_path: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    populate(event_log)
    assert main(["logs", "purge", "--older-than", "1s", "--dry-run", "--db",
                 str(db_path)]) == 0
    assert "Would delete" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert main(["logs", "export", "--out", "out", "--db", db_path.name]) == 0
    assert (tmp_path / "out" / "conversations.parquet").is_file()
    assert event_log.counts()["conversations"] == 1


@pytest.mark.parametrize("content", [b"product_id,title\n1,red dress\n",
                                     bytes(range(256)) * 8])
def test_a_file_that_is_no_database_is_named(tmp_path: Path, content: bytes,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes(content)
    assert main(["logs", "purge", "--older-than", "90d", "--db", str(path)]) == 2
    err = _error(capsys)
    assert f"{path} is not a SQLite database, or a damaged one" in err
    assert path.read_bytes() == content  # not turned into a database, not truncated
    with pytest.raises(EventLogError, match="not a SQLite database"):
        EventLog.open(path)  # the writer, which may create a log, refuses it too


def test_a_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "purge", "--older-than", "90d", "--db", str(tmp_path)]) == 2
    assert "is a folder; give the path of the SQLite file" in _error(capsys)


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_S", 0.2)


@pytest.fixture
def locked(db_path: Path, event_log: EventLog) -> sqlite3.Connection:
    """Another process's write transaction on a log with a year-old conversation (a
    purge has work to do), held for the test."""
    populate(event_log, at=utcnow() - timedelta(days=365))
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    yield other
    other.rollback()
    other.close()


def test_a_locked_log_says_another_process_is_writing(
        short_busy_timeout: None, locked: sqlite3.Connection, event_log: EventLog,
        db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = event_log.counts()
    assert main(["logs", "purge", "--older-than", "1s", "--db", str(db_path)]) == 2
    assert "locked: another process is writing to it" in _error(capsys)
    with pytest.raises(EventLogError, match="Retry when it has finished"):
        purge(event_log, "1s")  # a log opened before the lock was taken
    with pytest.raises(EventLogError, match="another process is writing"):
        event_log.start_conversation()
    locked.rollback()
    assert event_log.counts() == before  # nothing purged


def test_after_a_write_times_out_on_the_lock_the_next_ones_do_not_wait(
        short_busy_timeout: None, locked: sqlite3.Connection, event_log: EventLog,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A chat turn logs several rows: during another process's long lock it waits the
    busy timeout once, not once per row."""
    before = event_log.counts()["conversations"]
    started = time.perf_counter()
    with pytest.raises(LogLockedError, match=r"waited 0.2 s"):
        event_log.start_conversation()
    assert time.perf_counter() - started >= 0.15
    for _ in range(3):
        started = time.perf_counter()
        with pytest.raises(LogLockedError, match="skipped without waiting"):
            event_log.start_conversation()
        assert time.perf_counter() - started < 0.15
    locked.rollback()
    # the back-off runs its course even once the lock is free; then writes resume
    with pytest.raises(LogLockedError, match="skipped without waiting"):
        event_log.start_conversation()
    monkeypatch.setattr(store, "LOCK_BACKOFF_S", 0.0)
    event_log.start_conversation()
    monkeypatch.setattr(store, "LOCK_BACKOFF_S", 60.0)
    event_log.start_conversation()  # a write that succeeded ended the back-off
    assert event_log.counts()["conversations"] == before + 2


def test_writers_queued_behind_a_timed_out_write_do_not_wait_again(
        short_busy_timeout: None, locked: sqlite3.Connection, event_log: EventLog) -> None:
    """Several sessions of one server write at once during another process's lock: the
    first waits the busy timeout, the ones queued behind it fail at once."""
    from concurrent.futures import ThreadPoolExecutor

    def write(_: int) -> float:
        started = time.perf_counter()
        with pytest.raises(LogLockedError):
            event_log.start_conversation()
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        waits = sorted(pool.map(write, range(4)))
    assert time.perf_counter() - started < 0.55  # one busy timeout (0.2 s), not four
    assert waits[-1] >= 0.15 and waits[0] < waits[-1]


def test_a_log_being_written_still_opens_for_reading(
        short_busy_timeout: None, locked: sqlite3.Connection, event_log: EventLog,
        db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Opening a log at this schema takes no write lock: while another process writes
    (a long purge), the app starts, and exports and dataset builds read."""
    before = event_log.counts()
    with EventLog.open(db_path) as again:  # as the app opens it
        assert again.counts() == before
    assert main(["logs", "export", "--out", str(tmp_path / "out"), "--db",
                 str(db_path)]) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "conversations.parquet").is_file()


@pytest.mark.parametrize("url", ["foo://x", "postgres://shop@db/events",
                                 "postgresql+nosuchdriver://shop@db/events"])
def test_an_unknown_database_kind_lists_what_is_supported(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "purge", "--older-than", "90d", "--db", url]) == 2
    err = _error(capsys)
    assert "unknown database kind" in err and "sqlite:///PATH" in err
    assert "postgresql+psycopg://" in err


def test_purge_refuses_a_duration_past_any_date(event_log: EventLog, db_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    populate(event_log)
    before = event_log.counts()
    for older_than in ("99999999d", "9" * 400 + "w"):
        assert main(["logs", "purge", "--older-than", older_than, "--db", str(db_path)]) == 2
        assert "longer than 100 years (36525d)" in _error(capsys)
    with pytest.raises(ValueError, match="at most 36525 days"):
        purge(event_log, timedelta(days=99_999_999))
    with pytest.raises(ValueError, match="longer than 100 years"):
        parse_time("99999999d")
    assert event_log.counts() == before


def test_export_into_a_file_fails_before_reading(event_log: EventLog, db_path: Path,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    populate(event_log)
    report = tmp_path / "report.txt"
    report.write_text("keep me\n")
    for out in (report, report / "export"):
        assert main(["logs", "export", "--out", str(out), "--db", str(db_path)]) == 2
        assert "is not a folder" in _error(capsys)
    assert report.read_text() == "keep me\n"


def test_export_refuses_a_window_that_ends_before_it_starts(
        event_log: EventLog, db_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    populate(event_log)
    out = tmp_path / "export"
    assert main(["logs", "export", "--out", str(out), "--db", str(db_path),
                 "--since", "2024-06-01", "--until", "2024-05-01"]) == 2
    assert "--since 2024-06-01T00:00:00+00:00 is after --until" in _error(capsys)
    assert not out.exists()
    assert main(["logs", "export", "--out", str(out), "--db", str(db_path),
                 "--since", "1d", "--until", "2d"]) == 2  # 2 days ago is before 1 day ago
    assert "swap them" in _error(capsys)


def test_chat_with_an_unknown_device_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from retrieval.encoders import resolve_device
    from retrieval.search import SearchEngine

    def open_engine(*_args: object, settings: object, **_kwargs: object) -> None:
        resolve_device(settings.device)  # what loading the encoders does first

    monkeypatch.setattr(SearchEngine, "open", open_engine)
    assert main(["chat", "--device", "gpu", "--message", "hi", "--no-log"]) == 2
    assert "Unknown device 'gpu'" in _error(capsys)


def test_a_log_below_a_file_is_refused(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    with pytest.raises(ValueError, match=f"The event log's folder {notes} is not a folder"):
        EventLog.open(notes / "events.sqlite")
    assert notes.read_text() == "keep me\n"
