"""The event log writer: the one place that inserts rows — masked rows only.

Every writer method builds its rows with :mod:`assistant.eventlog.rows`, which passes each
text-like value (message text, tool arguments, error messages, query text, filters, ids and
references) through :mod:`assistant.eventlog.pii`; there is no other insert path, and the
read-only :meth:`EventLog.reading` transactions cannot write. Log lines here carry ids and
counts, never text.

One :class:`EventLog` (one SQLAlchemy engine) serves a whole process — a Streamlit server
included — from any number of threads: each call is one short transaction on a pooled
connection. With SQLite the writes of a process are also serialised by a lock and start
with ``BEGIN IMMEDIATE``, so concurrent writers queue on SQLite's busy timeout instead of
failing with "database is locked" when a read transaction tries to upgrade.

A write that waited the whole busy timeout in vain (another process held the lock: a long
purge, a backup) makes the process's next writes fail at once for ``LOCK_BACKOFF_S``, so
a chat turn during such a lock waits once, not once per row it logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError

from assistant.eventlog import readers, rows
from assistant.eventlog.engine import (
    WRITE_OPTION,
    EventLogError,
    LogLockedError,
    connect,
    database_error,
    is_memory,
    prepare_schema,
    resolve_url,
    schema_current,
)
from assistant.eventlog.pii import mask
from assistant.eventlog.readers import ConversationRecord, LabelledImpression
from assistant.eventlog.schema import (
    conversations,
    feedback,
    impressions,
    messages,
    queries,
    tool_calls,
)
from assistant.eventlog.schema import meta as meta_table

logger = logging.getLogger(__name__)

LOCK_BACKOFF_S = 15.0  # after a write timed out on the lock, later writes fail at once this long


@contextlib.contextmanager
def best_effort(what: str) -> Iterator[None]:
    """Runs a write the app must survive: a log that is locked, gone or full costs one
    warning line; any other error (a bug) is logged with its traceback. Never raises."""
    try:
        yield
    except EventLogError as exc:
        logger.warning("could not log %s: %s", what, exc)
    except Exception:
        logger.exception("could not log %s", what)


class EventLog:
    """Conversations, searches, impressions and feedback: the assistant's training data.

    Open with :meth:`open`; share one instance per process. All methods are thread-safe.
    """

    def __init__(self, engine: Engine) -> None:
        """Wraps an engine made by :meth:`open` (use that instead).

        ``engine`` stays reachable for read-only analysis (e.g. ``pandas.read_sql``); rows
        are written only through the writer methods below.
        """
        self.engine = engine
        url = engine.url
        self._memory = is_memory(url)
        # Writes of one process queue here rather than on SQLite's file lock; an in-memory
        # database has a single connection, so reads must queue too.
        sqlite = url.get_backend_name() == "sqlite"
        lock: Any = threading.RLock() if sqlite else contextlib.nullcontext()
        self._write_lock = lock
        self._read_lock = lock if self._memory else contextlib.nullcontext()
        # Messages about the file name it as given, not as a URL.
        self._where = str(url.database) if sqlite and not self._memory else self.url
        self._locked_at: float | None = None  # when a write last timed out on the lock
        # Only a SQLite file has a busy timeout to wait out (a server answers at once).
        self._backs_off = sqlite and not self._memory

    @classmethod
    def open(cls, url: str | os.PathLike[str] | URL | None = None, *, create: bool = True,
             **engine_kwargs: Any) -> EventLog:
        """Opens (and on first use creates) the event log database.

        Args:
            url: A SQLAlchemy URL: ``sqlite:///data/events.sqlite`` (the default) or
                ``postgresql+psycopg://user@host/db``, or the path of a SQLite file.
            create: Create the database file and tables when missing; with ``False`` a
                missing log is an error (for tools that only read or purge).
            **engine_kwargs: Passed to ``sqlalchemy.create_engine`` (e.g. ``pool_size``).

        Returns:
            The open log.

        Raises:
            EventLogError: The log is missing (``create=False``), the database holds
                tables of the same names that are not an event log, the file is no SQLite
                database, another process holds its write lock past the busy timeout, or
                the URL is not one this install can open.
            SchemaVersionError: The database was written by a newer (or older) schema.
        """
        engine = connect(resolve_url(url), create=create, **engine_kwargs)
        log = cls(engine)
        try:
            # A log at this schema opens with a read: a writer holding the lock (a long
            # purge) does not keep the app, an export or a dataset build from starting.
            with log._driver_errors(), log.reading() as conn:
                current = schema_current(conn)
            if not current:
                with log._writing("the schema") as conn:
                    prepare_schema(conn, where=log.url, create=create)
        except BaseException:
            engine.dispose()
            raise
        logger.debug("event log open at %s", log.url)
        return log

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"EventLog({self.url!r})"

    def close(self) -> None:
        """Closes the pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _driver_errors(self) -> Iterator[None]:
        """Raises the driver's errors a user can cause as one-line EventLogErrors."""
        try:
            yield
        except DBAPIError as exc:
            error = database_error(exc, self._where)
            if error is None:
                raise
            raise error from exc

    @contextlib.contextmanager
    def _connecting(self) -> Iterator[Connection]:
        # A new connection runs the pragmas: that is where a file that is no database, or
        # a lock held by another process, shows first.
        with self._driver_errors():
            conn = self.engine.connect()
        with conn:
            yield conn

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[Connection]:
        # The back-off is read and set under the process's write lock: threads queued
        # behind a write that timed out see it too, instead of each waiting again.
        with self._write_lock:
            if self._backs_off and self._locked_at is not None:
                ago = time.monotonic() - self._locked_at
                if ago < LOCK_BACKOFF_S:
                    raise LogLockedError(
                        f"The event log {self._where} is locked: another process is writing "
                        f"to it (a write waited in vain {ago:.0f} s ago); writes are skipped "
                        f"without waiting for {LOCK_BACKOFF_S - ago:.0f} s more.")
            try:
                with self._connecting() as conn:
                    conn.execution_options(**{WRITE_OPTION: True})
                    with self._driver_errors():
                        try:
                            with conn.begin():
                                yield conn
                        except IntegrityError as exc:
                            raise EventLogError(
                                f"Could not log {what}: it refers to a conversation, message, "
                                f"query or impression that does not exist, or repeats a "
                                f"unique key ({exc.orig}).") from exc
            except LogLockedError:
                if self._backs_off:
                    self._locked_at = time.monotonic()
                raise
            self._locked_at = None

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only transaction (one consistent snapshot) for analysis queries.

        Writes inside it fail: rows enter the log only through the writer methods, which
        mask them.

        Yields:
            A connection inside the transaction.
        """
        backend = self.engine.url.get_backend_name()
        with self._read_lock, self._connecting() as conn, conn.begin():
            if backend == "sqlite":
                conn.exec_driver_sql("PRAGMA query_only = ON")
            elif backend == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            try:
                yield conn
            finally:
                if backend == "sqlite":
                    try:  # the flag belongs to the pooled connection, not the transaction
                        conn.exec_driver_sql("PRAGMA query_only = OFF")
                    except Exception:
                        conn.invalidate()  # never hand a read-only connection to a writer

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        with self.reading() as conn:
            return int(conn.execute(select(meta_table.c.value)
                                    .where(meta_table.c.key == "schema_version")).scalar_one())

    # --- writers -------------------------------------------------------------------------

    def start_conversation(self, *, channel: str = "shop", user_id: str | None = None,
                           session_id: str | None = None, llm_backend: str | None = None,
                           meta: Mapping[str, Any] | None = None,
                           conversation_id: str | None = None,
                           at: datetime | None = None) -> str:
        """Records the start of a conversation.

        Args:
            channel: Where it happens: ``shop``, ``support``, ``simulator``, ``cli``...
            user_id: A pseudonymous user id (never an e-mail; it would be masked).
            session_id: A pseudonymous browser / app session id.
            llm_backend: The backend spec answering, e.g. ``rules`` or ``hf:Qwen/...``.
            meta: Extra JSON-able facts (app version, persona...).
            conversation_id: An id to use instead of a new UUID (e.g. from the simulator).
            at: When it started (timezone-aware; default now).

        Returns:
            The conversation id to pass to the other writers.

        Raises:
            ValueError: A field is too long, or ``at`` is naive.
        """
        row = rows.conversation_row(channel=channel, user_id=user_id, session_id=session_id,
                                    llm_backend=llm_backend, meta=meta,
                                    conversation_id=conversation_id, at=at)
        with self._writing("a conversation") as conn:
            conn.execute(conversations.insert(), row)
        logger.debug("conversation %s started", row["id"])
        return str(row["id"])

    def log_message(self, conversation_id: str, role: str, text: str, *,
                    has_image: bool = False, upload_ref: str | None = None,
                    meta: Mapping[str, Any] | None = None, at: datetime | None = None) -> int:
        """Records one message of a conversation (masked).

        Args:
            conversation_id: From :meth:`start_conversation`.
            role: ``user``, ``assistant``, ``system`` or ``tool``.
            text: The message text.
            has_image: Whether the message came with a photo.
            upload_ref: The upload id of the photo (never the image itself).
            meta: Extra JSON-able facts, e.g. ``{"fallback": "rules", "reason": "timeout"}``.
            at: When it was sent (timezone-aware; default now).

        Returns:
            The message id.

        Raises:
            ValueError: Unknown role, a field too long, or a naive ``at``.
            EventLogError: The conversation does not exist.
        """
        row = rows.message_row(conversation_id, role, text, has_image=has_image,
                               upload_ref=upload_ref, meta=meta, at=at)
        with self._writing("a message") as conn:
            message_id = int(conn.execute(messages.insert(), row).inserted_primary_key[0])
        logger.debug("message %d (%s) in conversation %s", message_id, role,
                     row["conversation_id"])
        return message_id

    def log_tool_call(self, conversation_id: str, tool: str, arguments: Any, *,
                      message_id: int | None = None, duration_ms: float | None = None,
                      error: str | BaseException | None = None,
                      at: datetime | None = None) -> int:
        """Records one tool call with its (masked) arguments, timing and error.

        Args:
            conversation_id: From :meth:`start_conversation`.
            tool: The tool's name, e.g. ``visual_search``.
            arguments: The call's JSON-able arguments; every string in them is masked.
            message_id: The message (turn) that made the call.
            duration_ms: How long the call took.
            error: The error text or exception, when the call failed.
            at: When the call started (timezone-aware; default now).

        Returns:
            The tool call id.

        Raises:
            ValueError: A field is too long or negative, or ``at`` is naive.
            EventLogError: The conversation or message does not exist.
        """
        row = rows.tool_call_row(conversation_id, tool, arguments, message_id=message_id,
                                 duration_ms=duration_ms, error=error, at=at)
        with self._writing("a tool call") as conn:
            call_id = int(conn.execute(tool_calls.insert(), row).inserted_primary_key[0])
        logger.debug("tool call %d (%s, error=%s) in conversation %s", call_id, row["tool"],
                     row["error"] is not None, row["conversation_id"])
        return call_id

    def log_query(self, *, conversation_id: str | None = None, message_id: int | None = None,
                  text: str | None = None, has_image: bool = False,
                  image_ref: str | None = None, filters: Any = None,
                  hits: Iterable[Any] = (), result: Any = None,
                  index_version: str | None = None, model_version: str | None = None,
                  latency_ms: float | None = None, query_id: str | None = None,
                  at: datetime | None = None) -> str:
        """Records a search request and the result list shown (one impression per hit).

        Args:
            conversation_id: The conversation it belongs to, if any.
            message_id: The message (turn) that asked for it.
            text: The query text (masked).
            has_image: Whether a photo was part of the query.
            image_ref: The upload id of that photo.
            filters: Structured filters: a mapping or an object with ``to_dict()``.
            hits: The ranked list shown: ``SearchHit`` objects or mappings with
                ``product_id`` and optional ``rank`` (1-based; default position),
                ``score`` and ``scores`` (per modality).
            result: A ``retrieval.search.SearchResult``; fills ``hits``, ``filters``,
                ``index_version``, ``model_version`` and ``latency_ms`` where those are not
                given.
            index_version: The index version searched.
            model_version: What ordered the list: the fusion's version, ``+ranker-<v>``
                when a ranker re-ordered it, ``+shuffle`` when it was shown in a random
                order (exploration).
            latency_ms: Time to answer the query.
            query_id: An id to use instead of a new UUID.
            at: When the results were shown (timezone-aware; default now).

        Returns:
            The query id (for :meth:`log_feedback`).

        Raises:
            ValueError: A hit without a product id, a field too long, or a naive ``at``.
            EventLogError: The conversation or message does not exist, or two hits share
                a rank.
        """
        row, shown = rows.query_rows(
            conversation_id=conversation_id, message_id=message_id, text=text,
            has_image=has_image, image_ref=image_ref, filters=filters, hits=hits, result=result,
            index_version=index_version, model_version=model_version, latency_ms=latency_ms,
            query_id=query_id, at=at)
        with self._writing("a query") as conn:
            conn.execute(queries.insert(), row)
            if shown:
                conn.execute(impressions.insert(), shown)
        logger.debug("query %s with %d impressions", row["id"], len(shown))
        return str(row["id"])

    def log_feedback(self, kind: str, *, impression_id: int | None = None,
                     query_id: str | None = None, product_id: str | None = None,
                     dwell_ms: float | None = None, value: float | None = None,
                     at: datetime | None = None) -> int:
        """Records a shopper's reaction to a product that was shown.

        Pass ``impression_id``, or ``query_id`` and ``product_id`` (the impression is then
        looked up, so training joins it; a product that was never shown for that query is
        stored with no impression).

        Args:
            kind: ``click``, ``add_to_cart``, ``purchase``, ``dwell``, ``thumbs_up`` or
                ``thumbs_down``.
            impression_id: The impression reacted to.
            query_id: The query whose results were reacted to.
            product_id: The product reacted to.
            dwell_ms: Time spent on the product (``dwell``; optional on other kinds).
            value: A number for the event, e.g. the quantity or amount of a purchase.
            at: When it happened (timezone-aware; default now).

        Returns:
            The feedback id.

        Raises:
            ValueError: Unknown kind, missing target, a mismatch between the impression and
                the query / product given, or a negative dwell.
            EventLogError: The impression or query does not exist.
        """
        row = rows.feedback_row(kind, impression_id=impression_id, query_id=query_id,
                                product_id=product_id, dwell_ms=dwell_ms, value=value, at=at)
        qid, pid = row["query_id"], row["product_id"]
        with self._writing("feedback") as conn:
            impression_id = row["impression_id"]
            if impression_id is not None:
                shown = conn.execute(select(impressions.c.query_id, impressions.c.product_id)
                                     .where(impressions.c.id == impression_id)).one_or_none()
                if shown is None:
                    raise EventLogError(f"No impression {impression_id} in the log.")
                if (qid is not None and qid != shown.query_id) or (
                        pid is not None and pid != shown.product_id):
                    raise ValueError(f"Impression {impression_id} is not that query / "
                                     "product; pass the impression id alone.")
                qid, pid = shown.query_id, shown.product_id
            else:
                impression_id = conn.execute(
                    select(func.min(impressions.c.id))
                    .where(impressions.c.query_id == qid, impressions.c.product_id == pid)
                ).scalar()
            row.update(impression_id=impression_id, query_id=qid, product_id=pid)
            feedback_id = int(conn.execute(feedback.insert(), row).inserted_primary_key[0])
        logger.debug("feedback %d (%s) on impression %s of query %s", feedback_id, kind,
                     impression_id, qid)
        return feedback_id

    # --- readers (see assistant.eventlog.readers) -----------------------------------------

    def conversation(self, conversation_id: str) -> ConversationRecord:
        """One conversation with its messages, tool calls, queries, impressions and feedback.

        Raises:
            KeyError: No such conversation.
        """
        with self.reading() as conn:
            return readers.conversation(conn, mask(conversation_id))

    def list_conversations(self, *, since: datetime | None = None, channel: str | None = None,
                           limit: int = 100) -> list[dict[str, Any]]:
        """The most recent conversations (newest first), with their message counts."""
        with self.reading() as conn:
            return readers.list_conversations(conn, since=since, channel=channel, limit=limit)

    def iter_impressions(self, *, since: datetime | None = None, until: datetime | None = None,
                         batch_size: int = 1000) -> Iterator[LabelledImpression]:
        """Every impression with its query and the feedback it got: the training rows.

        Rows come in the order shown (time, query, rank), streamed in batches.
        """
        with self.reading() as conn:
            yield from readers.iter_impressions(conn, since=since, until=until,
                                                batch_size=batch_size)

    def counts(self, *, since: datetime | None = None) -> dict[str, int]:
        """Rows per table (optionally only those dated at or after ``since``)."""
        with self.reading() as conn:
            return readers.counts(conn, since=since)

    def feedback_counts(self, *, since: datetime | None = None) -> dict[str, int]:
        """Feedback events per kind (every kind present, zero when none)."""
        with self.reading() as conn:
            return readers.feedback_counts(conn, since=since)

    def checkpoint(self) -> None:
        """Folds SQLite's write-ahead log into the database file (no-op elsewhere)."""
        if self.engine.url.get_backend_name() != "sqlite" or self._memory:
            return
        with self._write_lock:
            raw = self.engine.raw_connection()
            try:
                raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                raw.close()
