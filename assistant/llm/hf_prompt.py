"""LangChain messages and tools in the shape a model's chat template expects.

The chat template (Jinja, shipped with the model) decides the final text; this module only
hands it plain dicts: ``{"role", "content"}``, assistant ``tool_calls`` in the OpenAI shape
with arguments as objects (templates apply ``tojson`` to them), and ``tool`` messages. Tool
choice is honoured by *prefilling* the reply with the opening of a call in the model's own
format, which forces a call without a grammar engine.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.utils.function_calling import convert_to_openai_tool

logger = logging.getLogger(__name__)

ToolFormat = Literal["hermes", "llama3"]
ANY_TOOL = "*"
_FORCE_ANY = {"any", "required"}
_MEDIA_BLOCKS = {"image", "image_url", "input_image", "audio", "input_audio", "file", "video"}


def format_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Tools (``BaseTool``, functions, pydantic classes, JSON schemas) as OpenAI tool dicts."""
    return [convert_to_openai_tool(tool) for tool in tools]


def tool_names(tools: Sequence[dict[str, Any]]) -> list[str]:
    """The function names of OpenAI-format tool dicts."""
    return [tool["function"]["name"] for tool in tools]


def resolve_tool_choice(tool_choice: Any, tools: Sequence[dict[str, Any]]
                        ) -> tuple[list[dict[str, Any]], str | None]:
    """Interprets an OpenAI-style ``tool_choice``.

    Args:
        tool_choice: ``None``/``"auto"`` (the model decides), ``"none"`` (no tools offered),
            ``"any"``/``"required"``/``True`` (some tool must be called), a tool name, or
            ``{"type": "function", "function": {"name": ...}}``.
        tools: The bound tools, in OpenAI format.

    Returns:
        The tools to render into the prompt, and the forced call: ``None``, :data:`ANY_TOOL`,
        or a tool name (also when ``any`` leaves a single tool to choose from).

    Raises:
        ValueError: A call is forced but there are no tools, or the named tool is not bound.
    """
    if tool_choice is None or tool_choice is False or tool_choice == "auto":
        return list(tools), None
    if tool_choice == "none":
        return [], None
    names = tool_names(tools)
    if tool_choice is True or (isinstance(tool_choice, str) and tool_choice in _FORCE_ANY):
        forced = ANY_TOOL
    elif isinstance(tool_choice, str):
        forced = tool_choice
    elif isinstance(tool_choice, dict):
        forced = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    else:
        forced = None
    if not isinstance(forced, str):
        raise ValueError(f"tool_choice {tool_choice!r} is not understood. Use 'auto', 'none', "
                         "'any', a tool name, or {'type': 'function', 'function': {'name': ...}}.")
    if not tools:
        raise ValueError(f"tool_choice={tool_choice!r} forces a tool call, but no tools are "
                         "bound. Use bind_tools([...], tool_choice=...).")
    if forced != ANY_TOOL and forced not in names:
        raise ValueError(f"tool_choice names {forced!r}, which is not a bound tool. Bound "
                         f"tools: {', '.join(names)}.")
    if forced == ANY_TOOL and len(names) == 1:  # e.g. with_structured_output: name it too
        forced = names[0]
    return list(tools), forced


def detect_tool_format(chat_template: str | None) -> ToolFormat:
    """Which call syntax a model was trained on, read from its chat template."""
    template = chat_template or ""
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or '"parameters"' in template:
        return "llama3"
    return "hermes"


def tool_prefill(tool_format: ToolFormat, forced: str | None) -> str:
    """The opening of the reply that forces a call (empty when nothing is forced)."""
    if forced is None:
        return ""
    if tool_format == "hermes":
        if forced == ANY_TOOL:
            return "<tool_call>\n"
        return f'<tool_call>\n{{"name": {json.dumps(forced)}, "arguments": '
    if forced == ANY_TOOL:
        return '{"name": "'
    return f'{{"name": {json.dumps(forced)}, "parameters": '


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as chat-template dicts.

    Raises:
        ValueError: A message type this backend cannot render, or a photo / audio / file
            block (this backend is text-only: photos reach the tools by upload id).
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": text_of(message.content)})
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": text_of(message.content)})
        elif isinstance(message, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": text_of(message.content)}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {"id": call.get("id"), "type": "function",
                     "function": {"name": call["name"], "arguments": call["args"]}}
                    for call in message.tool_calls]
            out.append(entry)
        elif isinstance(message, ToolMessage):
            out.append({"role": "tool", "content": text_of(message.content),
                        "tool_call_id": message.tool_call_id, "name": message.name})
        elif isinstance(message, ChatMessage):
            out.append({"role": message.role, "content": text_of(message.content)})
        else:
            raise ValueError(f"Cannot render a {type(message).__name__} into a chat template; "
                             "use System, Human, AI, Tool or Chat messages.")
    return out


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text blocks of a block list."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return json.dumps(content, ensure_ascii=False, default=str)
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in _MEDIA_BLOCKS:
            raise ValueError(
                f"A {block['type']!r} block reached a text-only chat model. Photos go to the "
                "tools by upload id (visual_search), never into the prompt.")
        elif isinstance(block, dict) and "type" in block:
            logger.debug("dropping a %r content block from the prompt", block["type"])
        else:
            parts.append(json.dumps(block, ensure_ascii=False, default=str))
    return "\n".join(parts)
