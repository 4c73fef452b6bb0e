"""The process-wide assistant and each browser session's conversations.

One :class:`~assistant.agent.ShopAssistant` per server process (``st.cache_resource``):
the search engine, encoders and event log are read-only or thread-safe and shared by every
session. Each browser session keeps its own :class:`~assistant.agent.Conversation` (uploads,
shown products, history) in ``st.session_state``, so shoppers never see each other's
messages, photos or cart.

``SHOPASSIST_UI_FACTORY`` (``package.module:function``) names the function that builds the
assistant; the default, :func:`assistant.factory.build_assistant`, reads the index, LLM
and event log from the settings (``SHOPASSIST_INDEX_DIR``, ``SHOPASSIST_LLM``,
``SHOPASSIST_LOG_DB`` or ``shopassist.toml``). Tests and custom deployments point it at
their own factory; it is called with no arguments.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

import streamlit as st

from assistant.agent import Conversation, ShopAssistant

logger = logging.getLogger(__name__)

FACTORY_ENV = "SHOPASSIST_UI_FACTORY"
DEFAULT_FACTORY = "assistant.factory:build_assistant"


def load_factory(spec: str) -> Callable[[], ShopAssistant]:
    """Imports ``package.module:function``.

    Raises:
        ValueError: The spec is malformed, or names nothing callable.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{FACTORY_ENV}={spec!r} must read package.module:function.")
    try:
        target: Any = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{FACTORY_ENV}={spec!r} cannot be loaded: {exc}") from None
    if not callable(target):
        raise ValueError(f"{FACTORY_ENV}={spec!r} is not callable.")
    return target


@st.cache_resource(show_spinner="Opening the catalog (the first visit loads the models)...")
def _shared_assistant(spec: str) -> ShopAssistant:
    assistant = load_factory(spec)()
    warm_up = getattr(getattr(assistant, "engine", None), "warm_up", None)
    if warm_up is not None:  # the first shopper's photo should not wait for it
        warm_up()
    logger.info("assistant ready: index %s, backend %s",
                getattr(assistant.engine, "version", "?"), assistant.llm_name)
    return assistant


def shared_assistant() -> ShopAssistant:
    """The process-wide assistant; on failure the page shows why and stops."""
    spec = os.environ.get(FACTORY_ENV, "").strip() or DEFAULT_FACTORY
    try:
        return _shared_assistant(spec)
    except Exception as exc:  # no index, a bad config: say what to do, never a traceback
        logger.exception("could not build the assistant")
        st.error(f"The shop is not ready: {exc}")
        st.info("Build an index first (`shopassist ingest CATALOG` or `shopassist demo`), "
                "then start the app with `shopassist serve --index DIR`.")
        st.stop()
        raise  # st.stop() raises; this keeps type checkers informed


def session_conversation(key: str, assistant: ShopAssistant, persona: str = "shopper"
                         ) -> Conversation:
    """This browser session's conversation under ``key`` (made on first use)."""
    conversation = st.session_state.get(key)
    if not isinstance(conversation, Conversation) or conversation.assistant is not assistant:
        conversation = assistant.conversation(persona=persona, app="streamlit")
        st.session_state[key] = conversation
    return conversation
