"""The shopping agent: LangChain ``create_agent`` over the shop's tools, with guard rails.

One :class:`ShopAssistant` per process holds the read-only parts (search engine, event
log, chat model); each shopper gets a :class:`Conversation` with its own session (uploads,
shown products) and history. A turn runs the agent graph with the configured model; if the
model fails mid-turn (timeout, malformed tool-call JSON, an unknown tool, a crash) the turn
is re-run with the rule-based planner and the event log records why. The rule-based
planner is itself a chat model, so every backend goes through the same graph, tools,
budget, policy and logging.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain.agents.middleware.types import hook_config
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from assistant.config import AssistantSettings
from assistant.eventlog.store import best_effort
from assistant.guards import safe_answer
from assistant.prompts import load_prompt, system_prompt
from assistant.session import Session
from assistant.tools import TOOL_NAMES, ShopTools, ToolInputError
from retrieval.images import ImageSource
from retrieval.search import SearchEngine

logger = logging.getLogger(__name__)

PHOTO_LINE = "[photo: {upload_id}]"
MAX_HISTORY_TURNS = 12


class BackendError(RuntimeError):
    """The chat model failed in a way the turn cannot recover from with it."""


@dataclass(frozen=True)
class ToolCallRecord:
    name: str
    arguments: dict[str, Any]
    duration_ms: float
    error: str | None = None


@dataclass(frozen=True)
class TurnResult:
    """What one turn produced, for the UI and the CLI.

    Attributes:
        answer: The answer text, made safe (no HTML, no foreign links, no prompt leak).
        products: Products of the turn's last result list, in the order shown.
        tool_calls: Every tool call of the turn with its arguments, timing and error.
        backend: The backend that produced the answer (``rules`` or the model spec).
        fallback_reason: Why the configured model was replaced by the rules this turn.
        guards: Guard rails that fired on the answer.
        query_ids: Event-log ids of the searches (link feedback to impressions with them).
        filters: Filter chips of the last search; ``relaxed``: constraints it dropped.
    """

    answer: str
    products: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    backend: str = "rules"
    fallback_reason: str | None = None
    guards: list[str] = field(default_factory=list)
    query_ids: list[str] = field(default_factory=list)
    filters: list[str] = field(default_factory=list)
    relaxed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "products": self.products,
                "tool_calls": [tc.__dict__ for tc in self.tool_calls], "backend": self.backend,
                "fallback_reason": self.fallback_reason, "guards": self.guards,
                "query_ids": self.query_ids, "filters": self.filters,
                "relaxed": self.relaxed, "seconds": round(self.seconds, 3)}


class TurnGuard(AgentMiddleware):
    """Per-turn budget, tool-call policy and logging, and model-output checks.

    - At most ``max_tool_calls`` tool calls and ``max_seconds`` per turn; past either, the
      turn ends with a polite answer.
    - A tool's refusal (invalid arguments, a product the shopper never saw) becomes an
      error result the model can read; it never crashes the turn.
    - Malformed tool calls or unknown tools from the model raise :class:`BackendError`
      (the turn then falls back to the rules).
    """

    def __init__(self, *, max_tool_calls: int, max_seconds: float,
                 on_tool: Callable[[ToolCallRecord], None]) -> None:
        super().__init__()
        self.max_tool_calls = max_tool_calls
        self.max_seconds = max_seconds
        self.on_tool = on_tool
        self.start()

    def start(self) -> None:
        self.calls = 0
        self.deadline = time.monotonic() + self.max_seconds
        self.exhausted: str | None = None

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        if self.exhausted is None and time.monotonic() > self.deadline:
            self.exhausted = "time"
        if self.exhausted is None:
            return None
        return {"jump_to": "end",
                "messages": [AIMessage(content=load_prompt(f"budget_{self.exhausted}"))]}

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            response = handler(request)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc
        for message in getattr(response, "result", []):
            if not isinstance(message, AIMessage):
                continue
            if message.invalid_tool_calls:
                bad = message.invalid_tool_calls[0]
                raise BackendError(f"malformed tool call {bad.get('name')!r}: "
                                   f"{bad.get('error') or 'invalid JSON'}")
            unknown = [c["name"] for c in message.tool_calls if c["name"] not in TOOL_NAMES]
            if unknown:
                raise BackendError(f"unknown tool {unknown[0]!r}")
        return response

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        call = request.tool_call
        if self.calls >= self.max_tool_calls or time.monotonic() > self.deadline:
            self.exhausted = self.exhausted or (
                "calls" if self.calls >= self.max_tool_calls else "time")
            return ToolMessage(content="Error: the budget for this message is used up; "
                               "answer with what you have.", tool_call_id=call["id"],
                               name=call["name"], status="error")
        self.calls += 1
        started = time.perf_counter()
        error = None
        try:
            result = handler(request)
            if isinstance(result, ToolMessage) and result.status == "error":
                error = str(result.content)  # e.g. arguments the tool's schema rejected
        except ToolInputError as exc:
            error = str(exc)
            result = ToolMessage(content=f"Error: {error}", tool_call_id=call["id"],
                                 name=call["name"], status="error")
        except Exception as exc:  # a tool bug must not end the shopper's turn
            logger.exception("tool %s failed", call["name"])
            error = f"{type(exc).__name__}: {exc}"
            result = ToolMessage(content="Error: the tool failed; try something else.",
                                 tool_call_id=call["id"], name=call["name"], status="error")
        self.on_tool(ToolCallRecord(call["name"], dict(call.get("args") or {}),
                                    (time.perf_counter() - started) * 1000, error))
        return result


class ShopAssistant:
    """The process-wide assistant: engine, chat model and event log, shared by sessions.

    Args:
        engine: Opened search engine.
        llm: A chat model, or ``None`` to answer with the rule-based planner.
        llm_name: How to call the model in logs and the UI (e.g. ``hf:Qwen/...``).
        log: Event log (optional).
        settings: Budgets and backend settings.
        notice: What the UI should tell users about the backend (e.g. "no LLM: rules").
    """

    def __init__(self, engine: SearchEngine, *, llm: BaseChatModel | None = None,
                 llm_name: str = "rules", log: Any = None,
                 settings: AssistantSettings | None = None, notice: str | None = None) -> None:
        self.engine = engine
        self.notice = notice
        self.llm = llm
        self.llm_name = llm_name if llm is not None else "rules"
        self.log = log
        self.settings = settings or AssistantSettings()
        self._rules: BaseChatModel | None = None

    @property
    def uses_llm(self) -> bool:
        return self.llm is not None

    def rules_model(self) -> BaseChatModel:
        if self._rules is None:
            from assistant.rules.planner import RulesChatModel

            self._rules = RulesChatModel(engine=self.engine)
        return self._rules

    def conversation(self, persona: str = "shopper", **meta: Any) -> Conversation:
        return Conversation(self, persona=persona, meta=meta)


class Conversation:
    """One shopper's (or staff member's) conversation; turns run one at a time."""

    def __init__(self, assistant: ShopAssistant, *, persona: str = "shopper",
                 meta: dict[str, Any] | None = None) -> None:
        self.assistant = assistant
        self.persona = persona
        self.session = Session(channel="support" if persona == "support" else "shop")
        # Only shoppers' searches are explored; staff answering a question see the ranking.
        self.tools = ShopTools(assistant.engine, self.session, log=assistant.log,
                               explore=0.0 if persona == "support" else
                               assistant.settings.explore)
        self.history: list[BaseMessage] = []
        self.system_prompt = system_prompt(persona)
        self._lock = threading.Lock()
        self._records: list[ToolCallRecord] = []
        self.guard = TurnGuard(max_tool_calls=assistant.settings.max_tool_calls,
                               max_seconds=assistant.settings.turn_seconds,
                               on_tool=self._on_tool)
        self._graphs: dict[int, Any] = {}
        self._meta = meta or {}
        self._logged_start = False

    def add_photo(self, source: ImageSource) -> str:
        """Checks and stores a photo; returns its upload id (raises ImageError)."""
        return self.session.add_upload(source, self.assistant.engine.limits)

    def turn(self, text: str, photos: Sequence[ImageSource] = (),
             on_event: Callable[[dict[str, Any]], None] | None = None) -> TurnResult:
        """Answers one message (words and/or photos).

        Args:
            text: The message.
            photos: Photos sent with it (paths, bytes, PIL images); checked first.
            on_event: Called while the turn runs, for live display: ``{"type": "tool",
                "name", "args"}`` when a tool is called, ``{"type": "token", "text"}`` as a
                streaming model writes its answer, ``{"type": "fallback", "reason"}`` when
                the rules take over (discard the tokens shown so far).

        Raises:
            ImageError: A photo is unreadable or refused (nothing else is done then).
        """
        with self._lock:
            started = time.perf_counter()
            uploads = [self.add_photo(p) for p in photos]
            content = "\n".join([text.strip(), *(PHOTO_LINE.format(upload_id=u)
                                                 for u in uploads)]).strip()
            self.session.note_user_text(text, set(self.assistant.engine.row_of))
            self._log_start()
            self._log_message("user", text, uploads)
            human = HumanMessage(content=content)
            primary = self.assistant.llm or self.assistant.rules_model()
            backend = self.assistant.llm_name
            fallback = None
            try:
                new = self._run(primary, human, on_event)
            except BackendError as exc:
                if self.assistant.llm is None:
                    raise
                fallback = str(exc)
                logger.warning("chat model failed (%s); answering with the rules", fallback)
                self._log_fallback(fallback)
                if on_event is not None:
                    on_event({"type": "fallback", "reason": fallback})
                backend = "rules"
                new = self._run(self.assistant.rules_model(), human, on_event)
            result = self._result(new, backend, fallback, time.perf_counter() - started)
            self.history = _trim([*self.history, human, *new])
            self._log_message("assistant", result.answer, [], backend=backend,
                              fallback=fallback, guards=result.guards)
            return result

    def act(self, tool: str, arguments: dict[str, Any]) -> TurnResult:
        """Runs one tool directly for a UI action ("similar", "goes with", removing a
        filter chip): no model involved, but the same validation, policy and logging.

        Raises:
            ToolInputError: The arguments or the product id are refused.
        """
        with self._lock:
            started = time.perf_counter()
            self._log_start()
            error = None
            try:
                result = self.tools.run(tool, arguments)
            except ToolInputError as exc:
                error = str(exc)
                raise
            finally:
                self._on_tool(ToolCallRecord(tool, dict(arguments),
                                             (time.perf_counter() - started) * 1000, error))
            return TurnResult(
                answer="", products=list(result.get("results", [])),
                tool_calls=[ToolCallRecord(tool, dict(arguments),
                                           (time.perf_counter() - started) * 1000)],
                backend="ui", query_ids=[str(result["query_id"])] if "query_id" in result
                else [], filters=list(result.get("filters", [])),
                relaxed=list(result.get("relaxed", [])),
                seconds=time.perf_counter() - started)

    def feedback(self, kind: str, *, product_id: str, query_id: str | None = None,
                 dwell_ms: float | None = None, value: float | None = None) -> None:
        """Records a shopper's reaction to a shown product (click, add_to_cart, purchase
        with its ``value``, dwell, thumbs_up, thumbs_down)."""
        self.session.note_reaction(kind, product_id)
        if self.assistant.log is None:
            return
        self.assistant.log.log_feedback(kind, query_id=query_id, product_id=product_id,
                                        dwell_ms=dwell_ms, value=value)

    # -- internals ------------------------------------------------------------------------

    def _graph(self, model: BaseChatModel) -> Any:
        key = id(model)
        if key not in self._graphs:
            self._graphs[key] = create_agent(
                model, tools=self.tools.langchain_tools(), system_prompt=self.system_prompt,
                middleware=[self.guard])
        return self._graphs[key]

    def _run(self, model: BaseChatModel, human: HumanMessage,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> list[BaseMessage]:
        self.guard.start()
        self._records = []
        messages = [*self.history, human]
        config = {"recursion_limit": 4 * self.assistant.settings.max_tool_calls + 8}
        graph = self._graph(model)
        if on_event is None:
            state = graph.invoke({"messages": messages}, config=config)
            return list(state["messages"][len(messages):])
        new: list[BaseMessage] = []
        for mode, payload in graph.stream({"messages": messages}, config=config,
                                          stream_mode=["updates", "messages"]):
            if mode == "messages":
                chunk, _ = payload
                # Chunks of a streaming model, or the whole reply of one that does not stream.
                if isinstance(chunk, AIMessage) and chunk.content and not chunk.tool_calls:
                    on_event({"type": "token", "text": str(chunk.content)})
                continue
            for update in (payload or {}).values():
                for message in (update or {}).get("messages", []):
                    new.append(message)
                    if isinstance(message, AIMessage):
                        for tool_call in message.tool_calls:
                            on_event({"type": "tool", "name": tool_call["name"],
                                      "args": tool_call.get("args", {})})
        return new

    def _on_tool(self, record: ToolCallRecord) -> None:
        self._records.append(record)
        if self.assistant.log is not None:
            with best_effort("a tool call"):
                self.assistant.log.log_tool_call(
                    self.session.conversation_id, record.name, record.arguments,
                    duration_ms=record.duration_ms, error=record.error)

    def _result(self, new: list[BaseMessage], backend: str, fallback: str | None,
                seconds: float) -> TurnResult:
        answer = next((str(m.content) for m in reversed(new)
                       if isinstance(m, AIMessage) and not m.tool_calls and m.content), "")
        products: list[dict[str, Any]] = []
        query_ids: list[str] = []
        filters: list[str] = []
        relaxed: list[str] = []
        for message in new:
            artifact = getattr(message, "artifact", None)
            if isinstance(message, ToolMessage) and isinstance(artifact, dict):
                if "query_id" in artifact:
                    query_ids.append(str(artifact["query_id"]))
                if "results" in artifact:
                    products = list(artifact["results"])
                    filters = list(artifact.get("filters", []))
                    relaxed = list(artifact.get("relaxed", []))
        engine = self.assistant.engine
        images = [engine.products[engine.row_of[r["id"]]].image for r in products
                  if r.get("id") in engine.row_of]
        text, guards = safe_answer(answer or load_prompt("empty_answer"),
                                   prompts=[self.system_prompt], allowed_links=images)
        return TurnResult(answer=text, products=products, tool_calls=list(self._records),
                          backend=backend, fallback_reason=fallback, guards=guards,
                          query_ids=query_ids, filters=filters, relaxed=relaxed,
                          seconds=seconds)

    def _log_start(self) -> None:
        if self._logged_start or self.assistant.log is None:
            return
        with best_effort("the conversation start"):
            self.assistant.log.start_conversation(
                conversation_id=self.session.conversation_id, channel=self.session.channel,
                llm_backend=self.assistant.llm_name, meta=self._meta or None)
            self._logged_start = True  # else the next turn tries again: its rows need it

    def _log_message(self, role: str, text: str, uploads: list[str], **meta: Any) -> None:
        if self.assistant.log is None:
            return
        with best_effort("a message"):
            self.assistant.log.log_message(
                self.session.conversation_id, role, text, has_image=bool(uploads),
                upload_ref=",".join(uploads) or None,
                meta={k: v for k, v in meta.items() if v} or None)

    def _log_fallback(self, reason: str) -> None:
        if self.assistant.log is None:
            return
        with best_effort("a fallback"):
            self.assistant.log.log_tool_call(self.session.conversation_id, "llm_backend",
                                             {"backend": self.assistant.llm_name},
                                             error=f"fell back to rules: {reason}")


def _trim(history: list[BaseMessage]) -> list[BaseMessage]:
    """Keeps the last turns whole (never splits a tool call from its result)."""
    starts = [i for i, m in enumerate(history) if isinstance(m, HumanMessage)]
    if len(starts) <= MAX_HISTORY_TURNS:
        return history
    return history[starts[-MAX_HISTORY_TURNS]:]
