"""Connecting to the event log database: the engine, SQLite's settings, the schema check.

SQLite gets WAL journal mode (readers never block the writer), foreign keys, a busy
timeout and secure deletes, all set on every new connection by a ``connect`` event, plus
``BEGIN IMMEDIATE`` for write transactions. Other databases (PostgreSQL) get a plain engine:
nothing in the writer or the readers is SQLite-specific SQL.

:func:`resolve_url` is the one place a ``--db`` value becomes a URL: a plain path is a
SQLite file. :func:`database_error` turns the driver's errors a user can cause (a file that
is no database, a lock held by another process) into one-line :class:`EventLogError`
messages; :func:`connect` does so for a database kind or driver it cannot load.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from assistant.eventlog.schema import SCHEMA_VERSION, TABLES, meta, metadata, utcnow
from retrieval.paths import output_folder

logger = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///data/events.sqlite"
SQLITE_BUSY_TIMEOUT_S = 30  # how long a write waits for another process's lock
SUPPORTED_URLS = ("a SQLite file path (data/events.sqlite), sqlite:///PATH, sqlite:// (in "
                  "memory) or postgresql+psycopg://USER@HOST/DB")
WRITE_OPTION = "eventlog_write"  # execution option marking a transaction that writes


class EventLogError(RuntimeError):
    """The event log database cannot be used as asked (missing, foreign, or a bad reference)."""


class LogLockedError(EventLogError):
    """Another process held the log's write lock past the busy timeout."""


class SchemaVersionError(EventLogError):
    """The database was written by a different version of the event log schema."""


def resolve_url(value: str | os.PathLike[str] | URL | None) -> URL:
    """The event log URL for a ``--db`` value: a SQLAlchemy URL, or a path to a SQLite file.

    A value without ``://`` is a file path (relative, absolute, ``~/...`` or a Windows
    path such as ``C:\\logs\\events.sqlite``); ``~`` is expanded in SQLite URLs too.

    Args:
        value: The URL or path; ``None`` or empty means :data:`DEFAULT_URL`.

    Returns:
        The parsed URL.

    Raises:
        EventLogError: The value is neither a path nor a URL SQLAlchemy can parse.
    """
    if isinstance(value, URL):
        url = value
    else:
        text = str(value or "").strip() or DEFAULT_URL
        if "://" not in text:
            return URL.create("sqlite", database=str(Path(text).expanduser()))
        try:
            url = make_url(text)
        except ArgumentError:
            raise EventLogError(f"Event log {text!r} is not a database URL; give "
                                f"{SUPPORTED_URLS}.") from None
    if url.get_backend_name() == "sqlite" and not is_memory(url):
        url = url.set(database=str(Path(str(url.database)).expanduser()))
    return url


def database_error(exc: DBAPIError, where: str) -> EventLogError | None:
    """The one-line error for a driver error a user can cause, or ``None`` for others.

    Args:
        exc: The error raised while opening or using the database.
        where: The database, as shown in messages (password hidden).

    Returns:
        The error to raise instead (``raise ... from exc``), or ``None``.
    """
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    lowered = reason.lower()
    if "not a database" in lowered or "malformed" in lowered:
        return EventLogError(f"{where} is not a SQLite database, or a damaged one ({reason}); "
                             "give the path of the event log file, or a new path to start "
                             "one.")
    if "locked" in lowered or "busy" in lowered:
        return LogLockedError(f"The event log {where} is locked: another process is writing "
                             f"to it (waited {SQLITE_BUSY_TIMEOUT_S:g} s). Retry when it "
                             "has finished.")
    if "unable to open" in lowered:
        return EventLogError(f"Cannot open the event log {where} ({reason}): check that the "
                             "path is a file in a folder you may write to.")
    if exc.connection_invalidated or "connect" in lowered:
        return EventLogError(f"Cannot connect to the event log {where} ({reason}); check "
                             "the URL and that the server is running.")
    return None


def is_memory(url: URL) -> bool:
    """Whether ``url`` names an in-memory SQLite database."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _sqlite_pragmas(dbapi_connection: Any, *, memory: bool) -> None:
    # Let SQLAlchemy's "begin" hook emit BEGIN, so transactions (and DDL) behave as written.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        # Purged rows are overwritten on disk, not left readable in free pages.
        cursor.execute("PRAGMA secure_delete=ON")
        if not memory:
            mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("SQLite refused WAL journal mode (got %s); readers will block "
                               "the writer", mode)
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, far fewer fsyncs
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front: a deferred transaction that reads first and
    # then writes fails at once with SQLITE_BUSY instead of waiting on the busy timeout.
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def connect(url: URL, *, create: bool, **kwargs: Any) -> Engine:
    """Creates the engine for ``url``, with SQLite's settings where it is SQLite.

    Args:
        url: The parsed database URL.
        create: Whether a missing SQLite file (and its folder) may be created.
        **kwargs: Passed to ``sqlalchemy.create_engine``.

    Returns:
        The engine.

    Raises:
        EventLogError: The SQLite file is missing and ``create`` is false, the path is a
            folder, or the URL's database kind or driver is unknown here.
        ValueError: A folder above the SQLite file is a file.
    """
    if url.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        where = url.render_as_string(hide_password=True)
        try:
            return create_engine(url, **kwargs)
        except NoSuchModuleError:
            raise EventLogError(f"Event log {where}: unknown database kind "
                                f"{url.drivername!r}; give {SUPPORTED_URLS}.") from None
        except ImportError as exc:
            raise EventLogError(
                f"Event log {where}: its database driver is not installed ({exc}); install "
                "it (e.g. pip install 'psycopg[binary]' for postgresql+psycopg://) or give "
                f"{SUPPORTED_URLS}.") from exc
    memory = is_memory(url)
    if memory:  # one shared connection; EventLog serialises every use of it
        kwargs.setdefault("poolclass", StaticPool)
        kwargs.setdefault("connect_args", {"check_same_thread": False})
    else:
        path = Path(str(url.database))
        if path.is_dir():
            raise EventLogError(f"The event log {path} is a folder; give the path of the "
                                f"SQLite file, e.g. {path / 'events.sqlite'}.")
        if not path.exists():
            if not create:
                raise EventLogError(f"No event log at {path}. Check --db or SHOPASSIST_LOG_DB; "
                                    "the app creates the file on first use.")
            output_folder(path.parent, "The event log's folder").mkdir(parents=True,
                                                                       exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_S})
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", lambda dbapi, _record: _sqlite_pragmas(dbapi, memory=memory))
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def schema_current(conn: Connection) -> bool:
    """Whether the database already holds every event log table at this code's schema
    version: then opening it needs no write (nor its lock)."""
    inspector = inspect(conn)
    if not inspector.has_table(meta.name):
        return False
    version = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    return version is not None and int(version) == SCHEMA_VERSION and all(
        inspector.has_table(name) for name in TABLES)


def prepare_schema(conn: Connection, *, where: str, create: bool) -> None:
    """Checks the recorded schema version and creates missing tables (in ``conn``'s transaction).

    Args:
        conn: A connection inside a write transaction.
        where: The database, as shown in messages (password hidden).
        create: Whether an empty database may be given the event log tables.

    Raises:
        EventLogError: The database holds same-named tables that are not an event log, or
            no event log while ``create`` is false.
        SchemaVersionError: The recorded schema version is not this code's.
    """
    inspector = inspect(conn)
    version = None
    if inspector.has_table(meta.name):
        version = conn.execute(
            select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    if version is None:
        clashing = [name for name in TABLES if inspector.has_table(name)]
        if clashing:
            raise EventLogError(
                f"{where} already has tables {clashing} that are not an event log (no "
                f"{meta.name} schema version). Use a separate database.")
        if not create:
            raise EventLogError(f"{where} holds no event log. Check --db or SHOPASSIST_LOG_DB.")
    elif int(version) != SCHEMA_VERSION:
        newer = int(version) > SCHEMA_VERSION
        raise SchemaVersionError(
            f"The event log at {where} has schema version {version}, but this code reads "
            f"version {SCHEMA_VERSION}. "
            + ("Upgrade shop-assistant to open it." if newer else
               "No migration exists for it; export it and start a new log."))
    metadata.create_all(conn)
    if version is None:
        conn.execute(meta.insert(), [
            {"key": "schema_version", "value": str(SCHEMA_VERSION)},
            {"key": "created_at", "value": utcnow().isoformat()}])
