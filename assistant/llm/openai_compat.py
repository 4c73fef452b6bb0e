"""The ``openai:<model>`` backend: any OpenAI-compatible server (vLLM, llama.cpp, Ollama, OpenAI).

``langchain_openai.ChatOpenAI`` does the talking. What this module adds is a quick check
that the server is there before the first conversation, so a wrong URL fails in seconds
with a message naming the setting, instead of minutes of retries mid-turn.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any

from langchain_core.language_models import BaseChatModel

from assistant.llm.errors import LLMUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
_NO_KEY = "none"  # local servers ignore the key, but the client insists on one


def resolve_base_url(base_url: str | None) -> str:
    """The explicit URL, else ``$OPENAI_BASE_URL``, else OpenAI's (trailing ``/`` removed)."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str:
    """The explicit key, else ``$OPENAI_API_KEY``, else a placeholder local servers accept."""
    return api_key or os.environ.get("OPENAI_API_KEY") or _NO_KEY


def check_server(base_url: str, *, api_key: str | None = None,
                 timeout_s: float = 3.0) -> list[str]:
    """Asks ``GET {base_url}/models`` whether an OpenAI-compatible server answers.

    Args:
        base_url: The API root, usually ending in ``/v1``.
        api_key: Sent as a bearer token.
        timeout_s: Connect-and-read limit.

    Returns:
        The model ids the server lists (empty when it does not list them).

    Raises:
        LLMUnavailableError: Nothing answers, the answer is an error, or the key is refused;
            the message names the URL and the setting to change.
    """
    url = base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={
        "Authorization": f"Bearer {resolve_api_key(api_key)}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise LLMUnavailableError(
                f"The LLM server at {base_url} refused the API key (HTTP {exc.code} from {url})."
                " Set llm_api_key (SHOPASSIST_LLM_API_KEY) or OPENAI_API_KEY.") from None
        if exc.code == 404:  # some servers do not list models; the chat endpoint may still work
            logger.warning("%s answered 404; if chat fails too, check that llm_base_url ends "
                           "with the API root (usually /v1)", url)
            return []
        raise LLMUnavailableError(
            f"The LLM server at {base_url} answered HTTP {exc.code} to GET {url}. Check the "
            "server's log, or set llm_base_url (SHOPASSIST_LLM_BASE_URL) to a working "
            "server, or llm = \"rules\".") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LLMUnavailableError(
            f"No OpenAI-compatible server answers at {base_url} ({reason}; GET {url}, "
            f"{timeout_s:g} s timeout). Start one (`vllm serve MODEL`, `llama-server -m FILE "
            "--port 8080`, `ollama serve`), or set llm_base_url (SHOPASSIST_LLM_BASE_URL) to "
            "where it listens, or use llm = \"rules\" (no LLM).") from None
    try:
        data = json.loads(body)
        return [str(entry["id"]) for entry in data.get("data", []) if "id" in entry]
    except (ValueError, TypeError, AttributeError):
        logger.warning("%s did not answer with an OpenAI model list", url)
        return []


def create_openai_chat_model(model: str, *, base_url: str | None = None,
                             api_key: str | None = None, timeout: float = 60.0,
                             max_retries: int = 1, check: bool = True,
                             check_timeout_s: float = 3.0, **kwargs: Any) -> BaseChatModel:
    """A ``ChatOpenAI`` for ``model`` on an OpenAI-compatible server.

    Args:
        model: The model name the server knows (``Qwen/Qwen2.5-7B-Instruct`` on vLLM,
            ``qwen2.5:7b`` on Ollama, ``gpt-4o-mini`` on OpenAI).
        base_url: The API root (``http://127.0.0.1:8000/v1``); see :func:`resolve_base_url`.
        api_key: See :func:`resolve_api_key`.
        timeout: Seconds per request.
        max_retries: Retries per request; kept small so a dead server fails the turn quickly
            (the agent then answers with the rule-based planner).
        check: Ask the server for its models first (fails fast when nothing answers).
        check_timeout_s: Time limit of that check.
        **kwargs: Further ``ChatOpenAI`` arguments (``temperature``, ``max_tokens``...).

    Returns:
        The chat model.

    Raises:
        LLMUnavailableError: ``check`` found no server, or langchain-openai is missing.
    """
    try:
        from langchain_openai import ChatOpenAI
    except ImportError as exc:
        raise LLMUnavailableError(
            "The openai: backend needs langchain-openai: `pip install "
            "'shop-assistant[agent]'`, or use llm = \"rules\".") from exc
    url = resolve_base_url(base_url)
    key = resolve_api_key(api_key)
    if check:
        served = check_server(url, api_key=key, timeout_s=check_timeout_s)
        if served and model not in served:
            logger.warning("the server at %s does not list model %r (it lists: %s); requests "
                           "may fail", url, model, ", ".join(served[:10]))
    return ChatOpenAI(model=model, base_url=url, api_key=key, timeout=timeout,
                      max_retries=max_retries, **kwargs)
