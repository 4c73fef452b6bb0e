"""LLM backends for the agent, chosen by one spec string.

``hf:<model id or folder>``
    A local Hugging Face chat model through ``transformers`` (:class:`ChatTransformers`):
    the model's chat template with ``tools=``, its tool calls parsed, streaming,
    ``device_map="auto"`` and 4-bit (bitsandbytes) on a GPU. ``hf:`` alone means
    ``hf:Qwen/Qwen2.5-1.5B-Instruct``.
``openai:<model>``
    Any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, OpenAI) at a base URL.
``rules``
    No LLM: :func:`create_chat_model` returns ``None`` and the agent uses its rule-based
    planner.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel

from assistant.llm.errors import LLMTimeoutError, LLMUnavailableError
from assistant.llm.hf import ChatTransformers
from assistant.llm.hf_loading import DEFAULT_HF_MODEL
from assistant.llm.openai_compat import check_server, create_openai_chat_model
from assistant.llm.toolcalls import ParsedReply, parse_tool_calls

if TYPE_CHECKING:
    from assistant.config import AssistantSettings

logger = logging.getLogger(__name__)

RULES = "rules"
SPEC_HELP = (f"Use 'rules' (no LLM), 'hf:<model id or folder>' (e.g. hf:{DEFAULT_HF_MODEL}), "
             "or 'openai:<model>' with llm_base_url set to an OpenAI-compatible server.")

__all__ = [
    "DEFAULT_HF_MODEL",
    "RULES",
    "ChatTransformers",
    "LLMTimeoutError",
    "LLMUnavailableError",
    "ParsedReply",
    "chat_model_from_settings",
    "check_server",
    "create_chat_model",
    "parse_spec",
    "parse_tool_calls",
]


def parse_spec(spec: str) -> tuple[str, str]:
    """Splits an LLM spec into its backend and target.

    Args:
        spec: ``rules``, ``hf:<id or folder>`` or ``openai:<model>`` (backend case-insensitive,
            surrounding spaces ignored).

    Returns:
        ``("rules", "")``, ``("hf", model)`` (the default model when none is given) or
        ``("openai", model)``.

    Raises:
        ValueError: Any other spec, or ``openai:`` without a model.
    """
    if not isinstance(spec, str):
        raise ValueError(f"The LLM spec must be a string, got {spec!r}. {SPEC_HELP}")
    backend, colon, target = spec.strip().partition(":")
    backend, target = backend.strip().lower(), target.strip()
    if backend == RULES and not target:
        return RULES, ""
    if backend == "hf":
        return "hf", target or DEFAULT_HF_MODEL
    if backend == "openai" and colon:
        if not target:
            raise ValueError(f"LLM spec {spec!r} names no model. Write openai:<model>, e.g. "
                             "openai:qwen2.5:7b for Ollama.")
        return "openai", target
    raise ValueError(f"Unknown LLM spec {spec!r}. {SPEC_HELP}")


def create_chat_model(spec: str, *, base_url: str | None = None, api_key: str | None = None,
                      device: str = "auto", load_in_4bit: bool | None = None,
                      check: bool = True, **kw: Any) -> BaseChatModel | None:
    """Creates the chat model a spec names.

    Args:
        spec: See :func:`parse_spec`.
        base_url: ``openai:`` only: the server's API root (``http://127.0.0.1:8000/v1``).
        api_key: ``openai:`` only: the key (local servers need none).
        device: ``hf:`` only: ``auto`` or a torch device string.
        load_in_4bit: ``hf:`` only: ``None`` = 4-bit on a CUDA GPU when bitsandbytes is there.
        check: Load the weights (``hf:``) or ask the server for its models (``openai:``) now,
            so a bad setting fails here rather than in the middle of a conversation.
        **kw: Passed to :class:`ChatTransformers` or ``ChatOpenAI`` (``timeout``,
            ``temperature``...). ``max_new_tokens`` is translated to ``max_tokens`` for
            ``openai:``.

    Returns:
        The chat model, or ``None`` for ``rules`` (the caller uses the rule-based planner).

    Raises:
        ValueError: The spec is malformed.
        LLMUnavailableError: ``check`` found the model or server unavailable.
    """
    backend, target = parse_spec(spec)
    if backend == RULES:
        return None
    if backend == "hf":
        if base_url or api_key:
            logger.debug("base_url / api_key do not apply to hf: models; ignored")
        model = ChatTransformers(model=target, device=device, load_in_4bit=load_in_4bit, **kw)
        return model.load() if check else model
    if device != "auto" or load_in_4bit is not None:
        logger.debug("device / load_in_4bit do not apply to openai: models; ignored")
    if "max_new_tokens" in kw:
        kw["max_tokens"] = kw.pop("max_new_tokens")
    return create_openai_chat_model(target, base_url=base_url, api_key=api_key, check=check,
                                    **kw)


def chat_model_from_settings(settings: AssistantSettings, *, device: str = "auto",
                             check: bool = True, **kw: Any) -> BaseChatModel | None:
    """:func:`create_chat_model` with the ``llm*`` fields of the assistant settings.

    Args:
        settings: The resolved settings (``llm``, ``llm_base_url``, ``llm_api_key``,
            ``llm_timeout_s``, ``llm_max_new_tokens``, ``llm_load_in_4bit``).
        device: ``hf:`` only: ``auto`` or a torch device string.
        check: See :func:`create_chat_model`.
        **kw: Further backend arguments; they win over the settings.

    Returns:
        The chat model, or ``None`` for ``rules``.
    """
    options: dict[str, Any] = {"timeout": settings.llm_timeout_s,
                               "max_new_tokens": settings.llm_max_new_tokens, **kw}
    return create_chat_model(settings.llm, base_url=settings.llm_base_url,
                             api_key=settings.llm_api_key, device=device,
                             load_in_4bit=settings.llm_load_in_4bit, check=check, **options)
