"""The ``rules`` backend: a deterministic planner that behaves like a tool-calling chat model.

:class:`RulesChatModel` plugs into LangChain's ``create_agent`` exactly where an LLM would,
so the same agent graph, tools, policy layer and event logging run for every backend.
Each call reads the conversation from the messages themselves (no state of its own, so
LangGraph checkpointing just works):

- the last message is the shopper's: read the intent and answer with an ``AIMessage``
  carrying the tool calls that start the turn (or the answer, when no tool is needed);
- the last messages are this turn's tool results (their ``artifact`` is the structured
  result): either plan a follow-up call (act on a search's top hit) or answer from the
  results with the templates of :mod:`assistant.rules.answers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolCall
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from assistant.rules.answers import compose
from assistant.rules.calls import DEFAULT_K, CatalogView, PlannedCall, first_calls, next_calls
from assistant.rules.intent import Intent, parse_intent
from assistant.rules.state import (
    Context,
    ToolOutcome,
    context_from_messages,
    message_text,
    tool_outcomes,
)

CALL_PREFIX = "call_rules_"
MAX_STAGES = 3  # tool-call rounds per turn; the agent's policy layer bounds calls too


class RulesChatModel(BaseChatModel):
    """A chat model that plans tool calls by rules and answers from templates.

    Args:
        engine: The opened search engine (its ``parser`` reads constraints in the
            catalog's vocabulary; ``product(id)`` gives prices and attributes).
        k: Results per search (what the answer lists).

    Example::

        model = RulesChatModel(engine=engine)
        agent = create_agent(model, tools=ShopTools(engine, session).langchain_tools())
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any = Field(exclude=True)
    k: int = Field(DEFAULT_K, ge=1, le=20)
    _lookup: dict[str, str] | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "shop-rules"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"k": self.k, "index_version": str(getattr(self.engine, "version", ""))}

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None,
                   **kwargs: Any) -> RulesChatModel:
        """Returns the model itself: it always plans with the five shop tools by name."""
        return self

    # -- the two moves ---------------------------------------------------------------------

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.respond(messages))])

    def respond(self, messages: Sequence[BaseMessage]) -> AIMessage:
        """The next AI message for ``messages``: tool calls to make, or the final answer.

        Args:
            messages: The conversation, oldest first, ending with the shopper's message or
                with this turn's tool results.
        """
        start = _last_human(messages)
        if start is None:
            return AIMessage(content=compose(Intent(kind="help", text=""), Context(), [],
                                             self.engine.parser))
        history, turn = messages[:start], messages[start + 1:]
        context = context_from_messages(history)
        intent = self.intent(message_text(messages[start]), context)
        mine = [b for b in tool_outcomes(turn)
                if b.call_ids and all(i.startswith(CALL_PREFIX) for i in b.call_ids)]
        done: list[list[ToolOutcome]] = [list(b.outcomes) for b in mine]
        failed = any(not o.ok for batch in done for o in batch)
        calls: list[PlannedCall] = []
        if not failed and len(done) < MAX_STAGES:
            calls = (first_calls(intent, context, self._catalog(), self.k) if not done
                     else next_calls(intent, done, self._catalog(), self.k))
        if calls:
            return AIMessage(content="", tool_calls=[
                ToolCall(name=c.name, args=c.args, id=f"{CALL_PREFIX}{len(messages)}_{i}",
                         type="tool_call") for i, c in enumerate(calls)])
        return AIMessage(content=compose(intent, context, done, self.engine.parser))

    def intent(self, text: str, context: Context) -> Intent:
        """The intent of one shopper message in ``context`` (ids typed are recognised)."""
        return parse_intent(text, parser=self.engine.parser, context=context,
                            product_id=self._product_id())

    # -- catalog access --------------------------------------------------------------------

    def _catalog(self) -> CatalogView:
        return self.engine  # type: ignore[no-any-return]

    def _product_id(self) -> Callable[[str], str | None]:
        if self._lookup is None:
            self._lookup = {str(p.product_id).lower(): str(p.product_id)
                            for p in self.engine.products}
        lookup = self._lookup
        return lambda token: lookup.get(token.lower())


def _last_human(messages: Sequence[BaseMessage]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], HumanMessage):
            return index
    return None
