"""The ``rules`` backend: a planner that needs no LLM, used like any tool-calling chat model.

``RulesChatModel(engine=...)`` goes where an LLM goes in ``create_agent``; it reads each
message into an :class:`Intent` (:mod:`.intent`), plans the shop tools' calls
(:mod:`.calls`) and answers from templates in ``prompts/rules`` (:mod:`.answers`), with the
conversation rebuilt from the message history (:mod:`.state`).
"""

from __future__ import annotations

from assistant.rules.intent import INTENTS, Intent, parse_intent
from assistant.rules.planner import RulesChatModel
from assistant.rules.state import Context, context_from_messages, split_photos

__all__ = ["INTENTS", "Context", "Intent", "RulesChatModel", "context_from_messages",
           "parse_intent", "split_photos"]
