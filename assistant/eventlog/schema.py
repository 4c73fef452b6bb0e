"""The event log's tables: one schema shared by the app, the shopper simulator and training.

Everything here is portable SQLAlchemy Core, so the same tables live in the embedded SQLite
file and in PostgreSQL. Conversation and query ids are opaque strings (UUID hex by default)
because they travel: the UI holds them, feedback refers back to them, and logs written by
different processes or machines can be merged without renumbering. High-volume child rows
(messages, tool calls, impressions, feedback) use integer keys.

Timestamps are stored in UTC and always read back timezone-aware (see :class:`UTCDateTime`).
Text columns only ever hold masked text; the writer (:mod:`assistant.eventlog.store`) is the
only code that inserts rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

# Bump when a table or column changes; a database written by newer code is refused.
SCHEMA_VERSION = 1

ROLES = ("user", "assistant", "system", "tool")
FEEDBACK_KINDS = ("click", "add_to_cart", "purchase", "dwell", "thumbs_up", "thumbs_down")

# Longest accepted value of the short string columns (checked by the writer, so SQLite
# and PostgreSQL agree on what is too long).
ID_LEN = 64
PRODUCT_ID_LEN = 128
NAME_LEN = 128
REF_LEN = 512


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back timezone-aware on every backend.

    SQLite has no time zone type: it stores the naive UTC text, which still sorts and
    compares correctly. PostgreSQL stores ``timestamptz``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw text from a hand-made SQLite row
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only treats INTEGER PRIMARY KEY as the auto-incrementing rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

meta = Table(
    "eventlog_meta", metadata,
    Column("key", String(ID_LEN), primary_key=True),
    Column("value", String(REF_LEN), nullable=False),
)

conversations = Table(
    "conversations", metadata,
    Column("id", String(ID_LEN), primary_key=True),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("channel", String(ID_LEN), nullable=False),  # shop | support | simulator | cli
    Column("user_id", String(ID_LEN)),  # pseudonymous
    Column("session_id", String(ID_LEN)),  # pseudonymous
    Column("llm_backend", String(NAME_LEN)),
    Column("meta", Json),
    Index(None, "started_at"),
    Index(None, "user_id"),
)

messages = Table(
    "messages", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("conversation_id", String(ID_LEN),
           ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("has_image", Boolean, nullable=False),
    Column("upload_ref", String(REF_LEN)),
    Column("meta", Json),  # e.g. the backend that answered, or why a turn fell back to rules
    CheckConstraint(Column("role").in_(ROLES), name="role"),
    Index(None, "conversation_id", "created_at"),
    Index(None, "created_at"),
)

tool_calls = Table(
    "tool_calls", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("conversation_id", String(ID_LEN),
           ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("message_id", BigId, ForeignKey("messages.id", ondelete="CASCADE")),
    Column("tool", String(NAME_LEN), nullable=False),
    Column("arguments", Json, nullable=False),
    Column("duration_ms", Float),
    Column("error", Text),
    Column("created_at", UTCDateTime(), nullable=False),
    Index(None, "conversation_id", "created_at"),
    Index(None, "message_id"),
    Index(None, "tool"),
    Index(None, "created_at"),
)

queries = Table(
    "queries", metadata,
    Column("id", String(ID_LEN), primary_key=True),
    Column("conversation_id", String(ID_LEN),
           ForeignKey("conversations.id", ondelete="CASCADE")),
    Column("message_id", BigId, ForeignKey("messages.id", ondelete="CASCADE")),
    Column("text", Text),
    Column("has_image", Boolean, nullable=False),
    Column("image_ref", String(REF_LEN)),
    Column("filters", Json),
    Column("index_version", String(NAME_LEN)),
    Column("model_version", String(NAME_LEN)),  # encoder / fusion / ranking head
    Column("latency_ms", Float),
    Column("created_at", UTCDateTime(), nullable=False),
    Index(None, "conversation_id", "created_at"),
    Index(None, "message_id"),
    Index(None, "created_at"),
)

impressions = Table(
    "impressions", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("query_id", String(ID_LEN), ForeignKey("queries.id", ondelete="CASCADE"),
           nullable=False),
    Column("product_id", String(PRODUCT_ID_LEN), nullable=False),
    Column("rank", Integer, nullable=False),  # 1-based position shown
    Column("score", Float),
    Column("scores", Json),  # per-modality scores
    Column("index_version", String(NAME_LEN)),
    Column("model_version", String(NAME_LEN)),
    Column("shown_at", UTCDateTime(), nullable=False),
    UniqueConstraint("query_id", "rank"),
    Index(None, "product_id", "shown_at"),
    Index(None, "query_id", "product_id"),
    Index(None, "shown_at"),
)

feedback = Table(
    "feedback", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("impression_id", BigId, ForeignKey("impressions.id", ondelete="CASCADE")),
    Column("query_id", String(ID_LEN), ForeignKey("queries.id", ondelete="CASCADE")),
    Column("product_id", String(PRODUCT_ID_LEN), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("dwell_ms", Float),
    Column("value", Float),  # e.g. quantity or amount of a purchase
    Column("created_at", UTCDateTime(), nullable=False),
    CheckConstraint(Column("kind").in_(FEEDBACK_KINDS), name="kind"),
    CheckConstraint("impression_id IS NOT NULL OR query_id IS NOT NULL", name="target"),
    Index(None, "impression_id"),
    Index(None, "query_id", "product_id"),
    Index(None, "product_id", "created_at"),
    Index(None, "created_at"),
)

# Parents before children: the order to create, export and (reversed) delete.
TABLES: dict[str, Table] = {t.name: t for t in (conversations, messages, tool_calls, queries,
                                                 impressions, feedback)}
# The column that dates each row (retention and time-window exports).
TIME_COLUMN: dict[str, str] = {"conversations": "started_at", "messages": "created_at",
                               "tool_calls": "created_at", "queries": "created_at",
                               "impressions": "shown_at", "feedback": "created_at"}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only clock the log uses)."""
    return datetime.now(UTC)
