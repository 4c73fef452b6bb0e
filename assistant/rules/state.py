"""The conversation so far, read back from the message history itself.

The rules planner keeps no state of its own: what "the second one", "it" and "cheaper"
refer to is rebuilt on every call from the AI messages' tool calls and the tool messages'
artifacts (the structured results the tools return), so it works unchanged under LangGraph
checkpointing and after a turn handled by another backend.

A photo reaches the planner by reference: the agent appends one line ``[photo: upload-1]``
per attached photo to the shopper's message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

SEARCH_TOOLS = ("visual_search", "text_search")
LISTING_TOOLS = ("visual_search", "text_search", "recommend")
_PHOTO_LINE = re.compile(r"^[ \t]*\[photo:\s*([A-Za-z0-9_-]{1,40})\s*\][ \t]*$", re.MULTILINE)


def split_photos(text: str) -> tuple[str, tuple[str, ...]]:
    """Separates the shopper's words from the ``[photo: upload-1]`` lines.

    Args:
        text: A human message's text.

    Returns:
        The words without the photo lines, and the upload ids in the order given.
    """
    uploads = tuple(dict.fromkeys(_PHOTO_LINE.findall(text)))
    words = _PHOTO_LINE.sub("", text).strip()
    return words, uploads


def message_text(message: BaseMessage) -> str:
    """The plain text of a message (text blocks of a multi-part content joined)."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = [block if isinstance(block, str) else str(block.get("text", ""))
             for block in content if isinstance(block, str | dict)]
    return "\n".join(p for p in parts if p)


@dataclass(frozen=True)
class ToolOutcome:
    """One tool call and what came back: the artifact, or the error text."""

    call_id: str
    name: str
    arguments: Mapping[str, Any]
    artifact: Mapping[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.artifact is not None

    def result_ids(self) -> list[str]:
        """Ids of the listed products (search and recommend results), in order."""
        if not self.ok or self.name not in LISTING_TOOLS:
            return []
        return [str(r["id"]) for r in (self.artifact or {}).get("results", []) if "id" in r]


@dataclass(frozen=True)
class Batch:
    """The tool calls of one AI message and their outcomes, in call order."""

    call_ids: tuple[str, ...]
    outcomes: tuple[ToolOutcome, ...]


@dataclass(frozen=True)
class Context:
    """What the conversation has shown so far, for resolving references.

    Attributes:
        shown: Ids of the last product list shown, in order ("the second one").
        products: Id -> the compact product facts seen in any tool result (title,
            price, currency, category, attributes).
        focus: The product "it" refers to: the one asked about or recommended from last,
            else the top of the last list.
        last_search: The last ``text_search`` / ``visual_search`` / ``recommend`` call
            with a result (refinements start from it).
        uploads: Upload ids of every photo sent in the conversation, oldest first.
    """

    shown: tuple[str, ...] = ()
    products: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    focus: str | None = None
    last_search: ToolOutcome | None = None
    uploads: tuple[str, ...] = ()

    def at(self, position: int) -> str | None:
        """The id at a 1-based position of the last list (negative: from the end)."""
        if position < 0:
            position = len(self.shown) + 1 + position
        return self.shown[position - 1] if 1 <= position <= len(self.shown) else None

    def price(self, product_id: str) -> float | None:
        value = self.products.get(product_id, {}).get("price")
        return float(value) if isinstance(value, int | float) else None

    def shown_prices(self) -> list[float]:
        return [p for p in (self.price(i) for i in self.shown) if p is not None]


def tool_outcomes(messages: Sequence[BaseMessage]) -> list[Batch]:
    """The tool-call batches in ``messages``, each with its outcomes (missing ones left out).

    An outcome is an error when the tool message says so (``status="error"``) or carries no
    dict artifact (a policy layer refusing the call, a failed tool).
    """
    results: dict[str, ToolMessage] = {m.tool_call_id: m for m in messages
                                       if isinstance(m, ToolMessage)}
    batches = []
    for message in messages:
        if not isinstance(message, AIMessage) or not message.tool_calls:
            continue
        outcomes = []
        for call in message.tool_calls:
            reply = results.get(call.get("id") or "")
            if reply is None:
                continue
            artifact = reply.artifact if isinstance(reply.artifact, Mapping) else None
            error = None
            if reply.status == "error" or artifact is None:
                error = str(reply.content) if reply.content else "the tool gave no result"
                artifact = None
            outcomes.append(ToolOutcome(call.get("id") or "", call["name"],
                                        dict(call.get("args") or {}), artifact, error))
        batches.append(Batch(tuple(c.get("id") or "" for c in message.tool_calls),
                             tuple(outcomes)))
    return batches


def context_from_messages(messages: Sequence[BaseMessage]) -> Context:
    """Rebuilds the conversation state from a message history.

    Args:
        messages: The history (system, human, AI and tool messages), oldest first.

    Returns:
        The last list shown, the products seen, the focus and the last search.
    """
    uploads: list[str] = []
    for message in messages:
        if isinstance(message, HumanMessage):
            uploads.extend(split_photos(message_text(message))[1])
    return apply_batches(Context(uploads=tuple(dict.fromkeys(uploads))),
                         tool_outcomes(messages))


def apply_batches(context: Context, batches: Iterable[Batch]) -> Context:
    """``context`` after the successful outcomes of ``batches``, in order."""
    shown = list(context.shown)
    products = dict(context.products)
    focus = context.focus
    last_search = context.last_search
    for batch in batches:
        listed: list[str] = []
        listing = False
        for outcome in batch.outcomes:
            if not outcome.ok:
                continue
            artifact = outcome.artifact or {}
            _remember_products(products, artifact)
            if outcome.name in LISTING_TOOLS:
                listing = True
                listed.extend(i for i in outcome.result_ids() if i not in listed)
                last_search = outcome
                if outcome.name == "recommend":
                    focus = str(outcome.arguments.get("product_id") or focus or "") or None
                else:
                    focus = listed[0] if listed else focus
            elif outcome.name == "product_details":
                focus = str(outcome.arguments.get("product_id") or focus or "") or None
        if listing:
            shown = listed
    return Context(shown=tuple(shown), products=products, focus=focus,
                   last_search=last_search, uploads=context.uploads)


def _remember_products(products: dict[str, Mapping[str, Any]],
                       artifact: Mapping[str, Any]) -> None:
    rows: list[Any] = list(artifact.get("results", []))
    for key in ("for", "product"):
        if isinstance(artifact.get(key), Mapping):
            rows.append(artifact[key])
    for row in rows:
        if isinstance(row, Mapping) and row.get("id") is not None:
            pid = str(row["id"])
            products[pid] = {**products.get(pid, {}), **row}
