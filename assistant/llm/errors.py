"""Errors the LLM backends raise, so the agent can fall back to the rule-based planner."""

from __future__ import annotations

from retrieval.encoders.base import ModelUnavailableError


class LLMUnavailableError(ModelUnavailableError):
    """The configured LLM cannot be used here; the message names the setting to change."""


class LLMTimeoutError(TimeoutError):
    """A reply took longer than the backend's time budget (``llm_timeout_s``)."""
