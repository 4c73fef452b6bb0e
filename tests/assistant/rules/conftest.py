"""Fixtures for the rules planner: a parser over a fashion-like vocabulary, a real search
engine over a small synthetic catalog, and a driver that plays the agent's part (runs each
planned call through the real tools and feeds the results back)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from assistant.rules.planner import RulesChatModel
from assistant.session import Session
from assistant.tools import ShopTools, ToolInputError
from retrieval.query import QueryParser, Vocabulary
from tests.conftest import write_catalog

FASHION = {
    "colour": ["Red", "Navy Blue", "Blue", "Black", "White", "Grey", "Brown", "Maroon"],
    "gender": ["Men", "Women", "Boys", "Girls", "Unisex"],
    "category": ["Tshirts", "Shirts", "Dresses", "Jeans", "Casual Shoes", "Sports Shoes",
                 "Formal Shoes", "Heels", "Watches", "Handbags", "Track Pants", "Trousers",
                 "Kurtas", "Belts"],
    "subcategory": ["Shoes", "Topwear", "Bottomwear"],
    "usage": ["Casual", "Formal", "Sports", "Party", "Ethnic"],
    "season": ["Summer", "Winter", "Fall"],
}


@pytest.fixture(scope="session")
def parser() -> QueryParser:
    return QueryParser(Vocabulary(FASHION))


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory, base_settings, clip_profile):
    """A real engine (tiny random CLIP + BERT) over 90 synthetic products: every colour,
    category and gender of ``tests.conftest.write_catalog``; no material, no size."""
    from retrieval.ingest import ingest
    from retrieval.search import SearchEngine

    folder = tmp_path_factory.mktemp("rules-catalog")
    catalog = write_catalog(folder / "catalog", n=90)
    settings = base_settings.replace(index_dir=folder / "index")
    report = ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    assert report.products == 90
    return SearchEngine.open(settings=settings, profile=clip_profile)


@dataclass
class Turn:
    """One shopper turn as the driver ran it."""

    answer: str
    calls: list[tuple[str, dict[str, Any]]]
    results: list[dict[str, Any] | None]


@dataclass
class Driver:
    """Plays the agent: asks the planner, runs its calls with the real tools, feeds back."""

    model: RulesChatModel
    tools: ShopTools
    messages: list[BaseMessage] = field(default_factory=list)

    def say(self, text: str, photos: tuple[Any, ...] = (), max_steps: int = 6) -> Turn:
        uploads = [self.tools.session.add_upload(p) for p in photos]
        self.tools.session.note_user_text(text, set(self.model.engine.row_of))
        content = "\n".join([text, *(f"[photo: {u}]" for u in uploads)])
        self.messages.append(HumanMessage(content))
        calls: list[tuple[str, dict[str, Any]]] = []
        results: list[dict[str, Any] | None] = []
        for _ in range(max_steps):
            reply = self.model.invoke(self.messages)
            assert isinstance(reply, AIMessage)
            self.messages.append(reply)
            if not reply.tool_calls:
                assert isinstance(reply.content, str)
                return Turn(reply.content, calls, results)
            for call in reply.tool_calls:
                calls.append((call["name"], dict(call["args"])))
                try:
                    result = self.tools.run(call["name"], call["args"])
                    message = ToolMessage(content="(catalog data)", artifact=result,
                                          tool_call_id=call["id"], name=call["name"])
                except ToolInputError as exc:
                    result = None
                    message = ToolMessage(content=str(exc), tool_call_id=call["id"],
                                          name=call["name"], status="error")
                results.append(result)
                self.messages.append(message)
        raise AssertionError(f"no answer after {max_steps} steps: {calls}")


@pytest.fixture
def driver(engine) -> Driver:
    return Driver(RulesChatModel(engine=engine), ShopTools(engine, Session()))


@pytest.fixture
def tmp_prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of ``prompts/`` that a test may reword (as a shop would)."""
    import shutil

    from assistant.prompts import DEFAULT_DIR

    folder = tmp_path / "prompts"
    shutil.copytree(DEFAULT_DIR, folder)
    monkeypatch.setenv("SHOPASSIST_PROMPTS_DIR", str(folder))
    return folder
