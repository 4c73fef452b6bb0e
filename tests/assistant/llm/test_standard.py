"""LangChain's own standard unit suite for chat models, run on ChatTransformers.

Configured from the installed ``langchain_tests`` source (1.1.9):

* ``has_tool_calling``, ``has_tool_choice``, ``has_structured_output`` and
  ``returns_usage_metadata`` keep their defaults (all true): ``bind_tools`` is implemented,
  ``tool_choice`` is honoured by prefilling the call, structured output goes through it, and
  every reply carries token counts.
* ``supports_model_override`` is false: one instance serves one set of loaded weights, and a
  per-call ``model=`` is refused (``_get_ls_params`` still reports it, as the suite checks).
* Skipped by the suite itself: ``test_init_from_env`` (the class reads no environment
  variables; the ``SHOPASSIST_LLM*`` settings live in ``assistant.config``) and
  ``test_serdes`` (not LangChain-serialisable: it wraps a local folder and in-process
  weights, and the folder differs per run, so a snapshot could not be stable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from assistant.llm.hf import ChatTransformers


class TestChatTransformersStandard(ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _tiny_model(self, tiny_qwen_dir: Path) -> None:
        self.model_dir = tiny_qwen_dir

    @property
    def chat_model_class(self) -> type[ChatTransformers]:
        return ChatTransformers

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": str(self.model_dir), "device": "cpu"}

    @property
    def supports_model_override(self) -> bool:
        return False
