"""The test hook of the app: ``SHOPASSIST_UI_FACTORY=tests.ui.harness:current_assistant``.

The app builds its assistant by calling the factory that variable names (see
``ui.resources``); the fixtures put a ready assistant (small index, a real SQLite event
log, the rules planner or a scripted chat model) here first.
"""

from __future__ import annotations

from typing import Any

CURRENT: dict[str, Any] = {}
FACTORY = "tests.ui.harness:current_assistant"


def current_assistant() -> Any:
    """The assistant the running test prepared."""
    return CURRENT["assistant"]
