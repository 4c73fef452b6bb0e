"""Fixtures of the ranking-head tests: a tiny config, one trained artifact, an index copy.

Imported explicitly by the ``test_ranker_*`` modules. Training reads the session's simulated
log (``simulated``: 500 engine-ordered sessions over the 150-product index); a test that
promotes a ranker works on its own copy of the index, so the shared one never re-ranks.
"""

from __future__ import annotations

import shutil

import pytest

from tests.training.conftest import SEED, one_thread
from training.ranker import train_ranker
from training.ranker_config import RankerConfig


def tiny_ranker_config(**changes) -> RankerConfig:
    """Seconds-long runs: a small head, few epochs, one thread."""
    base = RankerConfig(seed=SEED, hidden=32, tower=16, embed_dim=4, buckets=64, epochs=6,
                        batch_size=256, lr=3e-3, warmup_steps=5, patience=100, threads=1,
                        max_minutes=2.0)
    return base.replace(**changes)


@pytest.fixture(scope="module")
def trained_ranker(sim_engine, simulated, tmp_path_factory):
    """One run on the simulated log (module-scoped); returns (result, models folder)."""
    url, _ = simulated
    out = tmp_path_factory.mktemp("ranker-models")
    print(f"\ntraining a ranker with seed={SEED}")
    with one_thread():
        result = train_ranker(sim_engine.settings.index_dir, tiny_ranker_config(), out,
                              source=url, device="cpu", show=False)
    return result, out


@pytest.fixture
def index_copy(sim_engine, tmp_path):
    """Settings of a private copy of the simulated index (promotions write into it)."""
    target = tmp_path / "index"
    shutil.copytree(sim_engine.settings.index_dir, target)
    return sim_engine.settings.replace(index_dir=target)
