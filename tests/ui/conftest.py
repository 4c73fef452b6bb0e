"""Fixtures for the app tests: one small index per module, a real SQLite event log per test,
and AppTest instances wired to them through the app's factory hook."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_catalog
from tests.ui import harness

APP = Path(__file__).resolve().parents[2] / "ui" / "app.py"
TIMEOUT = 60


@pytest.fixture(scope="module")
def ui_engine(tmp_path_factory, clip_profile, base_settings):
    """A 36-product index (tiny CLIP profile) shared by a module's tests."""
    from retrieval.ingest import ingest
    from retrieval.search import SearchEngine

    folder = tmp_path_factory.mktemp("ui-index")
    catalog = write_catalog(folder / "cat", n=36)
    settings = base_settings.replace(index_dir=folder / "index")
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    return SearchEngine.open(settings=settings, profile=clip_profile)


@pytest.fixture
def event_log(tmp_path: Path) -> Iterator[Any]:
    from assistant.eventlog.store import EventLog

    log = EventLog.open(f"sqlite:///{tmp_path / 'events.sqlite'}")
    yield log
    log.close()


@pytest.fixture
def use_assistant(monkeypatch) -> Iterator[Callable[[Any], Any]]:
    """Installs an assistant for the app under test (and forgets it afterwards)."""
    import streamlit as st

    monkeypatch.setenv("SHOPASSIST_UI_FACTORY", harness.FACTORY)
    monkeypatch.setenv("SHOPASSIST_DISPLAY_IMAGES_DIR", "")
    monkeypatch.delenv("SHOPASSIST_USERS", raising=False)

    def install(assistant: Any) -> Any:
        st.cache_resource.clear()
        harness.CURRENT["assistant"] = assistant
        return assistant

    yield install
    harness.CURRENT.clear()
    st.cache_resource.clear()


@pytest.fixture
def rules_assistant(ui_engine, event_log, use_assistant):
    """The default backend: the rule-based planner, logging to a real SQLite file."""
    from assistant.agent import ShopAssistant

    return use_assistant(ShopAssistant(ui_engine, log=event_log,
                                       notice="No language model is configured."))


@pytest.fixture
def new_app() -> Callable[[], Any]:
    """A fresh browser session of the app (AppTest over ui/app.py)."""
    from streamlit.testing.v1 import AppTest

    def make() -> Any:
        return AppTest.from_file(str(APP), default_timeout=TIMEOUT)

    return make


def photo_bytes(engine: Any, row: int = 0) -> bytes:
    """A catalog product's photo, as a shopper would upload it."""
    return Path(engine.products[row].image).read_bytes()


def png_bytes(size: tuple[int, int] = (40, 40)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def card_keys(at: Any, prefix: str = "cart-") -> list[str]:
    """Keys of the card buttons rendered (one ``cart-`` button per card)."""
    return [b.key for b in at.button if b.key and b.key.startswith(prefix)]
