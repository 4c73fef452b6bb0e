"""PostgreSQL: the same schema and SQL compile for it; a live round trip when one is given.

The live test needs ``psycopg`` and ``SHOPASSIST_TEST_PG_URL`` (e.g.
``postgresql+psycopg://user@127.0.0.1/db``); it works in a throwaway schema and drops it.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, create_mock_engine, text
from sqlalchemy.dialects import postgresql

from assistant.eventlog.readers import training_select
from assistant.eventlog.retention import purge, purge_conditions
from assistant.eventlog.schema import TABLES, metadata
from assistant.eventlog.store import EventLog
from tests.assistant.conftest import populate


def test_schema_and_queries_compile_for_postgresql() -> None:
    ddl: list[str] = []
    engine = create_mock_engine("postgresql+psycopg://",
                                lambda sql, *a, **k: ddl.append(str(sql.compile(
                                    dialect=engine.dialect))))
    metadata.create_all(engine, checkfirst=False)
    script = "\n".join(ddl)
    assert "BIGSERIAL" in script and "JSONB" in script
    assert "TIMESTAMP WITH TIME ZONE" in script and "ON DELETE CASCADE" in script
    dialect = postgresql.dialect()
    cutoff = datetime(2024, 1, 1, tzinfo=UTC)
    for name, condition in purge_conditions(cutoff).items():
        sql = str(TABLES[name].delete().where(condition).compile(dialect=dialect))
        assert sql.startswith(f"DELETE FROM {name}")
    sql = str(training_select(since=cutoff).compile(dialect=dialect))
    assert "LEFT OUTER JOIN" in sql and "PRAGMA" not in sql


def _pg_url() -> str:
    pytest.importorskip("psycopg", reason="psycopg is not installed")
    url = os.environ.get("SHOPASSIST_TEST_PG_URL")
    if not url:
        pytest.skip("set SHOPASSIST_TEST_PG_URL to run against a PostgreSQL server")
    return url


def test_postgresql_round_trip_and_purge() -> None:
    url = _pg_url()
    schema = f"shopassist_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        log = EventLog.open(url, connect_args={"options": f"-csearch_path={schema}"})
        old = datetime.now(UTC) - timedelta(days=100)
        gone = populate(log, at=old)
        kept = populate(log, user="u-2")
        log.log_message(kept["conversation"], "user", "mail jane@example.com")
        record = log.conversation(kept["conversation"])
        assert record.messages[-1]["text"] == "mail [EMAIL]"
        assert record.queries[0]["impressions"][0]["scores"] == {"text": 0.8}
        assert [r.clicked for r in log.iter_impressions()] == [True, False, True, False]
        assert purge(log, "90d")["conversations"] == 1
        with pytest.raises(KeyError):
            log.conversation(gone["conversation"])
        assert log.counts()["impressions"] == 2
        log.close()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
