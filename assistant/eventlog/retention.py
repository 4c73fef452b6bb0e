"""Retention and export: purge events past their time, hand the rest to analysts as files.

Purging is strict: after ``purge(log, "90d")`` no row dated more than 90 days ago remains,
and neither does any row that depends on a purged one (a conversation takes its messages,
tool calls, queries, impressions and feedback with it; a query its impressions and
feedback), so the log never holds orphans — even where the database does not enforce
foreign keys. All deletes run in one transaction.

Exports write one file per table (Parquet or CSV) plus a ``manifest.json``; JSON columns
are written as JSON text and timestamps in UTC. Rows are streamed, so a large log is never
held in memory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlalchemy import JSON, Boolean, ColumnElement, Float, Integer, Table, func, or_, select

from assistant.eventlog.schema import (
    SCHEMA_VERSION,
    TABLES,
    TIME_COLUMN,
    UTCDateTime,
    conversations,
    feedback,
    impressions,
    messages,
    queries,
    tool_calls,
    utcnow,
)
from assistant.eventlog.store import EventLog
from retrieval.paths import output_folder

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "csv")
_UNITS = {"s": "seconds", "sec": "seconds", "secs": "seconds", "second": "seconds",
          "seconds": "seconds", "m": "minutes", "min": "minutes", "mins": "minutes",
          "minute": "minutes", "minutes": "minutes", "h": "hours", "hr": "hours",
          "hrs": "hours", "hour": "hours", "hours": "hours", "d": "days", "day": "days",
          "days": "days", "w": "weeks", "wk": "weeks", "wks": "weeks", "week": "weeks",
          "weeks": "weeks"}
_PART = re.compile(r"(\d+)\s*([a-z]+)")
PURGE_BATCH_ROWS = 20_000  # rows per purge transaction, roughly (see purge)
MAX_DURATION = timedelta(days=36525)  # 100 years: longer is a typo, and overflows dates


def _is_duration(text: str) -> bool:
    cleaned = str(text).strip().lower()
    return (re.fullmatch(r"(?:\d+\s*[a-z]+\s*)+", cleaned) is not None
            and all(unit in _UNITS for _, unit in _PART.findall(cleaned)))


def parse_duration(text: str) -> timedelta:
    """Parses a duration such as ``90d``, ``12h``, ``2w``, ``30m`` or ``1d12h``.

    Args:
        text: Whole numbers each followed by a unit: s, m (minutes), h, d or w (the long
            forms ``days``, ``hours``... work too).

    Returns:
        The duration (always positive).

    Raises:
        ValueError: The text is not such a duration, it is zero, or longer than
            :data:`MAX_DURATION` (100 years).
    """
    cleaned = str(text).strip().lower()
    parts = _PART.findall(cleaned)
    if not _is_duration(text):
        raise ValueError(f"Duration {text!r} is not valid: use a whole number and a unit, "
                         "e.g. 90d, 12h, 2w or 1d12h (units: s, m, h, d, w).")
    too_long = ValueError(f"Duration {text!r} is longer than 100 years "
                          f"({MAX_DURATION.days}d); give at most that (every event is younger).")
    total = timedelta()
    for amount, unit in parts:
        if len(amount.lstrip("0")) > 12:  # int() and timedelta() fail on such numbers
            raise too_long
        total += timedelta(**{_UNITS[unit]: int(amount)})
        if total > MAX_DURATION:
            raise too_long
    if total <= timedelta():
        raise ValueError(f"Duration {text!r} is zero; give a positive duration such as 90d.")
    return total


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """Parses a point in time: a duration ago (``7d``) or an ISO date / datetime.

    Args:
        text: ``7d``, ``12h`` (that long before ``now``), ``2024-05-01`` or
            ``2024-05-01T12:00:00+02:00`` (a time without a zone is read as UTC).
        now: The reference for durations (default: the current time).

    Returns:
        A timezone-aware datetime.

    Raises:
        ValueError: Neither a duration nor an ISO date, or a duration refused by
            :func:`parse_duration`.
    """
    if _is_duration(text):  # its own message (zero, too long) beats "neither"
        return (now or utcnow()) - parse_duration(text)
    try:
        parsed = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise ValueError(f"Time {text!r} is neither a duration (7d, 12h) nor an ISO date "
                         "(2024-05-01 or 2024-05-01T12:00:00+00:00).") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def check_window(since: datetime | None, until: datetime | None) -> None:
    """Refuses a time window that selects nothing because it ends before it starts.

    Raises:
        ValueError: ``since`` is after ``until``.
    """
    if since is not None and until is not None and since > until:
        raise ValueError(f"--since {since.isoformat()} is after --until {until.isoformat()}: "
                         "the window would select nothing; swap them, or give an --until "
                         "later than --since.")


def purge_conditions(cutoff: datetime) -> dict[str, ColumnElement[bool]]:
    """Per table, which rows a purge at ``cutoff`` deletes (old rows and their dependents)."""
    old_conversations = select(conversations.c.id).where(conversations.c.started_at < cutoff)
    old_messages = select(messages.c.id).where(or_(
        messages.c.created_at < cutoff, messages.c.conversation_id.in_(old_conversations)))
    old_queries = select(queries.c.id).where(or_(
        queries.c.created_at < cutoff, queries.c.conversation_id.in_(old_conversations),
        queries.c.message_id.in_(old_messages)))
    old_impressions = select(impressions.c.id).where(or_(
        impressions.c.shown_at < cutoff, impressions.c.query_id.in_(old_queries)))
    # Children first: each condition still sees the parents it refers to.
    return {
        "feedback": or_(feedback.c.created_at < cutoff,
                        feedback.c.impression_id.in_(old_impressions),
                        feedback.c.query_id.in_(old_queries)),
        "impressions": impressions.c.id.in_(old_impressions),
        "tool_calls": or_(tool_calls.c.created_at < cutoff,
                          tool_calls.c.conversation_id.in_(old_conversations),
                          tool_calls.c.message_id.in_(old_messages)),
        "queries": queries.c.id.in_(old_queries),
        "messages": messages.c.id.in_(old_messages),
        "conversations": conversations.c.id.in_(old_conversations),
    }


def purge(log: EventLog, older_than: timedelta | str, *, dry_run: bool = False,
          now: datetime | None = None, batch_rows: int = PURGE_BATCH_ROWS,
          show: bool | None = False) -> dict[str, int]:
    """Deletes events older than a duration, with every row that depends on them.

    A large purge runs as several short transactions, each a complete purge at an earlier
    cutoff (the oldest events first, about ``batch_rows`` rows each): the app's writers
    wait for one of them at most, never for the whole purge, and an interrupted purge
    leaves a log as a purge at an earlier cutoff would (run it again to finish).

    Args:
        log: The event log.
        older_than: A duration (``timedelta`` or text such as ``90d``).
        dry_run: Only count what would be deleted.
        now: The reference time (default: the current time).
        batch_rows: Rows to delete per transaction, roughly (events spread evenly in time).
        show: A progress bar (``None``: when stderr is a terminal).

    Returns:
        Rows deleted (or that would be) per table, parents first.

    Raises:
        ValueError: ``older_than`` is not a valid duration.
    """
    from retrieval.progress import progress

    age = parse_duration(older_than) if isinstance(older_than, str) else older_than
    if not timedelta() < age <= MAX_DURATION:
        raise ValueError(f"older_than must be positive and at most {MAX_DURATION.days} days, "
                         f"got {age}.")
    cutoff = (now or utcnow()) - age
    with log.reading() as conn:
        planned = {name: int(conn.execute(select(func.count()).select_from(TABLES[name])
                                          .where(condition)).scalar_one())
                   for name, condition in purge_conditions(cutoff).items()}
        oldest = min((t for t in (conn.execute(select(func.min(column))).scalar()
                                  for column in (TABLES[name].c[time] for name, time in
                                                 TIME_COLUMN.items()))
                      if t is not None), default=cutoff)
    deleted = dict.fromkeys(planned, 0)
    if not dry_run and any(planned.values()):
        steps = max(1, math.ceil(sum(planned.values()) / max(1, batch_rows)))
        with progress(steps, "purge", "batch", show=show) as bar:
            for step in range(1, steps + 1):
                at = cutoff if step == steps else oldest + (cutoff - oldest) * step / steps
                # Each a purge like any other: same lock, same BEGIN IMMEDIATE on SQLite.
                with log._writing("a purge") as conn:
                    for name, condition in purge_conditions(at).items():
                        deleted[name] += int(conn.execute(
                            TABLES[name].delete().where(condition)).rowcount)
                bar.update(1)
    result = planned if dry_run else deleted
    logger.info("%s events before %s: %s", "would purge" if dry_run else "purged",
                cutoff.isoformat(timespec="seconds"), result)
    return {name: result[name] for name in TABLES}


@dataclass(frozen=True)
class ExportedTable:
    """One exported table.

    Attributes:
        table: The table name.
        path: The file written.
        rows: Rows written.
    """

    table: str
    path: Path
    rows: int


def arrow_schema(table: Table) -> pa.Schema:
    """The Arrow schema a table is exported with (JSON columns as JSON text)."""
    fields = []
    for column in table.columns:
        kind = column.type
        if isinstance(kind, UTCDateTime):
            arrow_type = pa.timestamp("us", tz="UTC")
        elif isinstance(kind, Boolean):
            arrow_type = pa.bool_()
        elif isinstance(kind, Integer):
            arrow_type = pa.int64()
        elif isinstance(kind, Float):
            arrow_type = pa.float64()
        else:
            arrow_type = pa.string()
        fields.append(pa.field(column.name, arrow_type, nullable=column.nullable))
    return pa.schema(fields)


def _batches(log: EventLog, table: Table, schema: pa.Schema, since: datetime | None,
             until: datetime | None, batch_size: int) -> Iterable[pa.RecordBatch]:
    time_column = table.c[TIME_COLUMN[table.name]]
    stmt = select(table).order_by(time_column, *table.primary_key.columns)
    if since is not None:
        stmt = stmt.where(time_column >= since)
    if until is not None:
        stmt = stmt.where(time_column < until)
    json_columns = [c.name for c in table.columns if isinstance(c.type, JSON)]
    with log.reading() as conn:
        result = conn.execute(stmt.execution_options(yield_per=batch_size))
        for chunk in result.partitions():
            columns: dict[str, list[Any]] = {name: [] for name in schema.names}
            for row in chunk:
                for name, value in row._mapping.items():
                    if name in json_columns and value is not None:
                        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
                    columns[name].append(value)
            yield pa.RecordBatch.from_pydict(columns, schema=schema)


def export(log: EventLog, out_dir: str | os.PathLike[str], *, fmt: str = "parquet",
           since: datetime | None = None, until: datetime | None = None,
           tables: Iterable[str] | None = None,
           batch_size: int = 10_000) -> dict[str, ExportedTable]:
    """Writes tables (or a time window of them) to Parquet or CSV files for analysts.

    Each file is written under a temporary name and renamed when complete, so a reader
    never sees half a file. A ``manifest.json`` records the window, schema version and
    row counts.

    Args:
        log: The event log.
        out_dir: The folder to write ``<table>.parquet`` / ``<table>.csv`` into (created).
        fmt: ``parquet`` or ``csv``.
        since: Only rows dated at or after this time (each table by its own time column).
        until: Only rows dated before this time.
        tables: Which tables (default: all of them).
        batch_size: Rows fetched and written per batch.

    Returns:
        Per table, the file written and its row count.

    Raises:
        ValueError: Unknown format or table name, ``since`` after ``until``, or
            ``out_dir`` (or a parent) is a file.
    """
    check_window(since, until)
    if fmt not in FORMATS:
        raise ValueError(f"Export format {fmt!r} is not supported; use one of "
                         f"{', '.join(FORMATS)}.")
    names = list(tables) if tables is not None else list(TABLES)
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise ValueError(f"Unknown tables {unknown}; the event log has {', '.join(TABLES)}.")
    folder = output_folder(out_dir, "The export folder")
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, ExportedTable] = {}
    for name in names:
        table = TABLES[name]
        schema = arrow_schema(table)
        path = folder / f"{name}.{fmt}"
        partial = path.with_name(f".{path.name}.partial")
        rows = 0
        writer: Any = (pq.ParquetWriter(partial, schema) if fmt == "parquet"
                       else pa_csv.CSVWriter(partial, schema))
        try:
            for batch in _batches(log, table, schema, since, until, batch_size):
                writer.write_batch(batch)
                rows += batch.num_rows
        except BaseException:
            writer.close()
            partial.unlink(missing_ok=True)
            raise
        writer.close()
        os.replace(partial, path)
        written[name] = ExportedTable(table=name, path=path, rows=rows)
        logger.info("exported %d rows of %s to %s", rows, name, path)
    manifest = {"format": fmt, "schema_version": SCHEMA_VERSION,
                "exported_at": utcnow().isoformat(),
                "since": since.isoformat() if since else None,
                "until": until.isoformat() if until else None,
                "tables": {n: {"file": e.path.name, "rows": e.rows} for n, e in written.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return written
