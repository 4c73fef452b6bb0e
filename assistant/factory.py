"""Building the assistant from settings: engine, event log and chat model, with fallback.

A configured LLM that cannot be loaded or reached at start-up does not stop the shop: the
assistant answers with the rule-based planner and says so (``ShopAssistant.notice``, shown
by the UI as a banner and by the CLI on stderr).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from assistant.agent import ShopAssistant
from assistant.config import AssistantSettings, load_assistant_settings
from retrieval.config import Settings, load_settings
from retrieval.encoders import ModelUnavailableError
from retrieval.search import SearchEngine

logger = logging.getLogger(__name__)


def build_assistant(*, config: str | None = None, index_dir: str | Path | None = None,
                    llm: str | None = None, log_db: str | None = None,
                    device: str | None = None, with_log: bool = True,
                    engine: SearchEngine | None = None,
                    retrieval_settings: Settings | None = None,
                    settings: AssistantSettings | None = None) -> ShopAssistant:
    """Opens the index, the event log and the chat model named by the settings.

    Args:
        config: TOML config file (default: ``$SHOPASSIST_CONFIG`` or ``./shopassist.toml``).
        index_dir: Index folder (overrides the settings).
        llm: Backend spec: ``rules``, ``hf:<id or folder>``, ``openai:<model>``.
        log_db: Event log URL (overrides the settings).
        device: Device for encoders and a local LLM.
        with_log: Open the event log (off: nothing is recorded).
        engine: An already opened engine (shared by several assistants in one process).
        retrieval_settings: Resolved engine settings (default: from ``config``).
        settings: Resolved assistant settings (default: from ``config``).

    Returns:
        The assistant; ``notice`` says when the configured LLM was replaced by the rules.

    Raises:
        IndexNotFoundError: No index (with the command that builds one).
        ValueError: A malformed backend spec.
    """
    r_settings = retrieval_settings or load_settings(config, index_dir=index_dir,
                                                     device=device)
    a_settings = (settings or load_assistant_settings(config)).replace(llm=llm, log_db=log_db)
    engine = engine or SearchEngine.open(settings=r_settings)
    log = None
    if with_log:
        from assistant.eventlog.store import EventLog

        if a_settings.log_db.startswith("sqlite:///"):
            Path(a_settings.log_db.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True)
        log = EventLog.open(a_settings.log_db)
    model: Any = None
    notice = None
    if a_settings.llm != "rules":
        from assistant.llm import chat_model_from_settings

        try:
            model = chat_model_from_settings(a_settings, device=r_settings.device)
        except (ModelUnavailableError, TimeoutError, OSError, RuntimeError) as exc:
            notice = (f"The language model {a_settings.llm!r} is not available ({exc}). "
                      "Answering with the built-in rule-based assistant instead.")
            logger.warning("%s", notice)
    else:
        notice = ("No language model is configured: answers come from the built-in "
                  "rule-based assistant (set SHOPASSIST_LLM, e.g. hf:Qwen/Qwen2.5-1.5B-"
                  "Instruct or openai:<model> with SHOPASSIST_LLM_BASE_URL).")
    return ShopAssistant(engine, llm=model, llm_name=a_settings.llm if model else "rules",
                         log=log, settings=a_settings, notice=notice)
