"""The event log: conversations, searches, impressions and feedback — the training data.

``EventLog`` writes (masking personal data first) and reads; ``schema`` is the one table
definition shared by the app, the shopper simulator and training; ``pii`` masks;
``retention`` purges and exports (imported on its own: it needs pyarrow).
"""

from __future__ import annotations

from assistant.eventlog.engine import (
    DEFAULT_URL,
    EventLogError,
    LogLockedError,
    SchemaVersionError,
)
from assistant.eventlog.pii import mask, mask_data
from assistant.eventlog.readers import ConversationRecord, LabelledImpression
from assistant.eventlog.schema import FEEDBACK_KINDS, ROLES, SCHEMA_VERSION
from assistant.eventlog.store import EventLog, best_effort

__all__ = ["DEFAULT_URL", "FEEDBACK_KINDS", "ROLES", "SCHEMA_VERSION", "ConversationRecord",
           "EventLog", "EventLogError", "LabelledImpression", "LogLockedError",
           "SchemaVersionError", "best_effort", "mask", "mask_data"]
