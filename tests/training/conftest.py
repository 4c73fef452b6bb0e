"""Fixtures of the learning loop: a small synthetic index and simulated event logs.

The index (150 products with colour, category, gender, usage and season over the tiny CLIP
profile) and the simulated logs are built once per session and only read afterwards; a test
that changes a log works on a copy. Genders are spread independently of colours, and the
simulated shoppers name a colour less often than by default, so that most result lists are
full and every rank up to 10 gets enough impressions for the statistical checks.

The simulator's fixtures and tests run torch on one thread: the tiny models gain nothing
from two, and on a shared 2-core machine a second thread waits on busy cores (ingest and
simulation take 3-4 times as long). The previous setting is restored after each use.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from assistant.eventlog import EventLog
from retrieval.ingest import ingest
from retrieval.search import SearchEngine
from tests.conftest import write_catalog
from tests.training.fusion_fixtures import small_index  # noqa: F401  (a fixture)
from training.simulate import simulate
from training.truth import SimConfig, SimulationTruth

# Fixed, so the statistical checks are deterministic; TRAINING_TEST_SEED tries another.
SEED = int(os.environ.get("TRAINING_TEST_SEED", "20260105"))
USAGES = ("Casual", "Sports", "Formal")
SEASONS = ("Summer", "Winter")
SESSIONS = 500  # of the engine-ordered log; the shuffled one needs fewer
TEST_CONFIG = SimConfig(colour_rate=0.4)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Runs a test with one torch thread (``pytestmark = usefixtures("one_torch_thread")``)."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def sim_engine(tmp_path_factory, clip_profile, base_settings) -> SearchEngine:
    with one_thread():
        return _build_engine(tmp_path_factory, clip_profile, base_settings)


def _build_engine(tmp_path_factory, clip_profile, base_settings) -> SearchEngine:
    folder = tmp_path_factory.mktemp("training-index")
    catalog = write_catalog(folder / "cat", n=150)
    rows = list(csv.DictReader(catalog.open()))
    for i, row in enumerate(rows):
        row["gender"] = "Women" if (i // 3) % 2 else "Men"
        row["title"] = f"{row['colour']} {row['category']} for {row['gender']} {i}"
        row["usage"] = USAGES[i % len(USAGES)]
        row["season"] = SEASONS[(i // 3) % len(SEASONS)]
    with catalog.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = base_settings.replace(index_dir=folder / "index")
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    return SearchEngine.open(settings=settings, profile=clip_profile)


def run_simulation(engine: SearchEngine, folder: Path, sessions: int, seed: int,
                   config: SimConfig | None = None) -> tuple[str, SimulationTruth]:
    """Simulates into a fresh SQLite log in ``folder``; returns its URL and the truth."""
    url = f"sqlite:///{folder / 'events.sqlite'}"
    print(f"\nsimulating {sessions} sessions with seed={seed} into {url}")
    with one_thread(), EventLog.open(url) as log:
        truth = simulate(engine, log, sessions, seed=seed, config=config,
                         truth_path=folder / "events.truth.json", show_progress=False)
    return url, truth


@pytest.fixture(scope="session")
def simulated(sim_engine, tmp_path_factory) -> tuple[str, SimulationTruth]:
    """A log of ordinary traffic: results in the engine's order (no exploration)."""
    return run_simulation(sim_engine, tmp_path_factory.mktemp("sim-ordered"), SESSIONS, SEED,
                          TEST_CONFIG)


@pytest.fixture(scope="session")
def simulated_shuffled(sim_engine, tmp_path_factory) -> tuple[str, SimulationTruth]:
    """A log where every result list was shown in a random order (pure position effect)."""
    return run_simulation(sim_engine, tmp_path_factory.mktemp("sim-shuffled"), 300, SEED + 1,
                          SimConfig(colour_rate=0.4, explore=1.0))
