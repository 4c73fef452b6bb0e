"""Tool calls out of the text a local chat model generated.

Two families of formats are understood, whichever model produced them:

* Qwen2.5 / Hermes: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, several
  per message, ``arguments`` as an object or as a JSON string.
* Llama 3.1: a reply that *is* JSON, ``{"name": ..., "parameters": {...}}``, optionally after
  ``<|python_tag|>``, one or several separated by ``;``; and its ``<function=NAME>{...}</function>``
  variant.

Parsing never raises: a call the model botched (bad JSON, no name, arguments that are not an
object) becomes a LangChain ``InvalidToolCall`` carrying the raw text and the reason, so the
agent can tell the model or fall back, and the log can say why. :class:`StreamSplitter` applies
the same rules to a reply arriving piece by piece.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.messages.tool import invalid_tool_call, tool_call

logger = logging.getLogger(__name__)

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
FUNCTION_OPEN = "<function="
# Text that starts a tool call (or is dropped, like a stray closing tag): streaming holds
# the reply back from the first of these.
CALL_MARKERS = (HERMES_OPEN, HERMES_CLOSE, PYTHON_TAG, FUNCTION_OPEN)

_FUNCTION_TAG = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", re.DOTALL)
_LOOKS_LIKE_CALL = re.compile(r'^\[?\s*\{\s*"name"\s*:')
_SEPARATORS = " \t\r\n;,"
_DECODER = json.JSONDecoder()


class ParsedReply(NamedTuple):
    """A generated reply split into what the user reads and what the agent runs.

    Attributes:
        content: The text without the tool calls (segments around calls joined by a newline).
        tool_calls: Well-formed calls, in the order the model wrote them.
        invalid_tool_calls: Calls the model attempted but botched, with the reason.
    """

    content: str
    tool_calls: list[ToolCall]
    invalid_tool_calls: list[InvalidToolCall]


def new_tool_call_id() -> str:
    """A fresh id in the style OpenAI-compatible servers use (``call_`` + 24 hex digits)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_tool_calls(text: str, *,
                     make_id: Callable[[], str] = new_tool_call_id) -> ParsedReply:
    """Splits generated text into content and tool calls.

    Args:
        text: The decoded reply (special tokens such as ``<|python_tag|>`` kept; end-of-turn
            tokens removed).
        make_id: Makes the id of each call (and each invalid call).

    Returns:
        The content without the calls, the well-formed calls and the botched ones.
    """
    if HERMES_OPEN in text or HERMES_CLOSE in text:
        return _parse_hermes(text, make_id)
    if PYTHON_TAG in text:
        before, _, after = text.partition(PYTHON_TAG)
        calls, invalid, rest = _parse_json_calls(after, make_id, strict=True)
        return ParsedReply(_join([before, rest]), calls, invalid)
    if FUNCTION_OPEN in text:
        return _parse_function_tags(text, make_id)
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        calls, invalid, rest = _parse_json_calls(stripped, make_id, strict=False)
        if calls or invalid:
            return ParsedReply(_join([rest]), calls, invalid)
    return ParsedReply(stripped, [], [])


def _parse_hermes(text: str, make_id: Callable[[], str]) -> ParsedReply:
    segments: list[str] = []
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    pos = 0
    while (start := text.find(HERMES_OPEN, pos)) >= 0:
        segments.append(text[pos:start])
        pos = _parse_hermes_block(text, start + len(HERMES_OPEN), calls, invalid, make_id)
    segments.append(text[pos:])
    # A stray closing tag (the model forgot the opening one, or repeated it) is not content.
    return ParsedReply(_join(s.replace(HERMES_CLOSE, "") for s in segments), calls, invalid)


def _parse_hermes_block(text: str, body: int, calls: list[ToolCall],
                        invalid: list[InvalidToolCall], make_id: Callable[[], str]) -> int:
    """Parses one ``<tool_call>`` body starting at ``body``; returns where parsing resumes.

    The JSON is decoded before looking for the closing tag, so braces or even
    ``</tool_call>`` inside argument strings cannot cut a call short.
    """
    pos = _skip(text, body, " \t\r\n")
    if text.startswith("```", pos):  # some fine-tunes fence the JSON
        newline = text.find("\n", pos)
        pos = _skip(text, newline + 1 if newline >= 0 else len(text), " \t\r\n")
    found_any = False
    while True:
        pos = _skip(text, pos, _SEPARATORS + "`")
        if pos >= len(text):
            if not found_any:
                invalid.append(invalid_tool_call(args="", id=make_id(),
                                                 error="empty <tool_call> block"))
            return pos
        if text.startswith(HERMES_CLOSE, pos):
            if not found_any:
                invalid.append(invalid_tool_call(args="", id=make_id(),
                                                 error="empty <tool_call> block"))
            return pos + len(HERMES_CLOSE)
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            close = text.find(HERMES_CLOSE, pos)
            stop = close if close >= 0 else len(text)
            raw = text[pos:stop].strip()
            invalid.append(invalid_tool_call(name=_guess_name(raw), args=raw, id=make_id(),
                                             error=f"malformed JSON in <tool_call>: {exc}"))
            return stop + len(HERMES_CLOSE) if close >= 0 else stop
        _collect(value, text[pos:end], calls, invalid, make_id)
        found_any = True
        pos = end


def _parse_json_calls(text: str, make_id: Callable[[], str], *, strict: bool
                      ) -> tuple[list[ToolCall], list[InvalidToolCall], str]:
    """Llama 3.1 style: JSON calls separated by ``;``; returns calls, invalid calls, the rest.

    With ``strict`` (after ``<|python_tag|>``) everything must be a call. Otherwise the text
    counts as calls only while each JSON value has the shape of a call, so a reply that merely
    contains JSON stays content.
    """
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    pos = 0
    while True:
        pos = _skip(text, pos, _SEPARATORS)
        if pos >= len(text):
            return calls, invalid, ""
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            rest = text[pos:].strip()
            if strict or _LOOKS_LIKE_CALL.match(rest):
                invalid.append(invalid_tool_call(name=_guess_name(rest), args=rest,
                                                 id=make_id(),
                                                 error=f"malformed JSON tool call: {exc}"))
                return calls, invalid, ""
            return calls, invalid, rest
        if not strict and not _call_shaped(value):
            return calls, invalid, text[pos:]
        _collect(value, text[pos:end], calls, invalid, make_id)
        pos = end


def _parse_function_tags(text: str, make_id: Callable[[], str]) -> ParsedReply:
    """Llama 3.1's ``<function=NAME>{"arg": ...}</function>`` syntax."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    segments: list[str] = []
    pos = 0
    for match in _FUNCTION_TAG.finditer(text):
        segments.append(text[pos:match.start()])
        pos = match.end()
        name, raw = match.group(1), match.group(2).strip()
        try:
            args = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            invalid.append(invalid_tool_call(name=name, args=raw, id=make_id(),
                                             error=f"malformed JSON arguments: {exc}"))
            continue
        _collect({"name": name, "arguments": args}, raw, calls, invalid, make_id)
    segments.append(text[pos:])
    return ParsedReply(_join(segments), calls, invalid)


def _collect(value: Any, raw: str, calls: list[ToolCall], invalid: list[InvalidToolCall],
             make_id: Callable[[], str]) -> None:
    """Adds the call(s) in one decoded JSON value (an object, or a list of objects)."""
    for item in value if isinstance(value, list) else [value]:
        call = _to_call(item, raw, make_id)
        if call.get("type") == "invalid_tool_call":
            invalid.append(call)  # type: ignore[arg-type]
        else:
            calls.append(call)  # type: ignore[arg-type]


def _to_call(obj: Any, raw: str, make_id: Callable[[], str]) -> ToolCall | InvalidToolCall:
    if not isinstance(obj, dict):
        return invalid_tool_call(args=raw, id=make_id(),
                                 error="a tool call must be a JSON object with name and "
                                       f"arguments, got {type(obj).__name__}")
    if isinstance(obj.get("function"), dict):  # OpenAI wire shape: {"type": "function", ...}
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return invalid_tool_call(args=raw, id=make_id(),
                                 error="the tool call has no 'name' string")
    args = obj["arguments"] if "arguments" in obj else obj.get("parameters")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return invalid_tool_call(name=name, args=args, id=make_id(),
                                     error=f"the arguments string is not valid JSON: {exc}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return invalid_tool_call(name=name, args=json.dumps(args, ensure_ascii=False),
                                 id=make_id(),
                                 error="the arguments must be a JSON object, got "
                                       f"{type(args).__name__}")
    return tool_call(name=name.strip(), args=args, id=make_id())


def _call_shaped(value: Any) -> bool:
    items = value if isinstance(value, list) and value else [value]
    return all(isinstance(item, dict) and isinstance(item.get("name"), str)
               and ("parameters" in item or "arguments" in item) for item in items)


def _guess_name(raw: str) -> str | None:
    match = re.search(r'"name"\s*:\s*"([^"\\]+)"', raw)
    return match.group(1) if match else None


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _join(segments: Any) -> str:
    return "\n".join(s.strip() for s in segments if s and s.strip())


class StreamSplitter:
    """Streams a reply's content as it is generated while holding back anything that may be
    a tool call or a stop sequence, so the streamed content always equals what
    :func:`parse_tool_calls` will return for the whole text.

    Args:
        stop: Stop sequences: the reply ends before the first of them.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._stop = [s for s in stop if s]
        self._text = ""
        self._emitted = ""

    @property
    def text(self) -> str:
        """The raw text received so far, cut at the first stop sequence."""
        return cut_at_stop(self._text, self._stop)

    def feed(self, piece: str) -> str:
        """Adds generated text; returns the new content that is safe to show now."""
        self._text += piece
        safe = self._safe_content()
        if not safe.startswith(self._emitted):  # cannot happen with the rules above
            return ""
        delta = safe[len(self._emitted):]
        self._emitted = safe
        return delta

    def finish(self, make_id: Callable[[], str] = new_tool_call_id) -> tuple[str, ParsedReply]:
        """Parses the whole reply; returns the content not yet shown and the parse."""
        parsed = parse_tool_calls(self.text, make_id=make_id)
        if parsed.content.startswith(self._emitted):
            return parsed.content[len(self._emitted):], parsed
        logger.debug("streamed content %r is not a prefix of the parsed content %r",
                     self._emitted, parsed.content)
        return "", parsed

    def _safe_content(self) -> str:
        text = self._text.lstrip()
        if not text or text.startswith(("{", "[")) or any(
                text.startswith(m) or m.startswith(text) for m in (PYTHON_TAG, FUNCTION_OPEN)):
            return ""  # the whole reply may be a Llama-style JSON call: show it at the end
        limit = len(text)
        for marker in (*CALL_MARKERS, *self._stop):
            found = text.find(marker)
            if found >= 0:
                limit = min(limit, found)
            for k in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:k]):  # possibly the start of a marker: wait
                    limit = min(limit, len(text) - k)
                    break
        return text[:limit].rstrip()


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest of the ``stop`` sequences."""
    cut = len(text)
    for sequence in stop:
        if sequence and (found := text.find(sequence)) >= 0:
            cut = min(cut, found)
    return text[:cut]
