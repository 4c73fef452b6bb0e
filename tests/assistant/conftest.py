"""Fixtures for the event log tests: a real SQLite file per test, and a populated scenario."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from assistant.eventlog.store import EventLog


def luhn_complete(partial: str) -> str:
    """``partial`` plus the check digit that makes it pass the Luhn test."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:  # these digits are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return partial + str((10 - total % 10) % 10)


def populate(log: EventLog, *, at: datetime | None = None, user: str = "u-1") -> dict[str, Any]:
    """One conversation touching every table; returns the ids it made."""
    conversation = log.start_conversation(channel="shop", user_id=user, session_id="s-1",
                                          llm_backend="rules", meta={"app": "test"}, at=at)
    message = log.log_message(conversation, "user", "red dress under 1500", at=at,
                              upload_ref="upload-1")
    call = log.log_tool_call(conversation, "text_search", {"query": "red dress", "k": 5},
                             message_id=message, duration_ms=12.5, at=at)
    query = log.log_query(conversation_id=conversation, message_id=message, text="red dress",
                          filters={"price_max": 1500}, index_version="v7", model_version="f1",
                          latency_ms=30.0, at=at,
                          hits=[{"product_id": "15970", "score": 0.9, "scores": {"text": 0.8}},
                                {"product_id": "53759", "score": 0.7}])
    click = log.log_feedback("click", query_id=query, product_id="15970", at=at)
    return {"conversation": conversation, "message": message, "tool_call": call,
            "query": query, "feedback": click}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite"


@pytest.fixture
def db_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
def event_log(db_url: str) -> Iterator[EventLog]:
    log = EventLog.open(db_url)
    yield log
    log.close()
