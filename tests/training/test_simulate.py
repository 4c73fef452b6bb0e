"""The shopper simulator: reproducible, written through the event log, causal, position-biased
as its ground truth says."""

from __future__ import annotations

import ast
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from assistant.eventlog import EventLog
from assistant.eventlog.schema import TABLES, feedback, impressions, queries
from tests.training.conftest import SEED, run_simulation
from training.batched_search import BatchedSearch
from training.photos import PhotoSource
from training.simulate import simulate
from training.truth import SimConfig, SimulationTruth

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAINING = Path(__file__).resolve().parents[2] / "training"


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with EventLog.open(url, create=False) as log, log.reading() as conn:
        return {name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key))]
                for name, t in TABLES.items()}


def test_same_seed_writes_the_same_log(sim_engine, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    url_a, truth_a = run_simulation(sim_engine, tmp_path / "a", 12, seed=5)
    url_b, truth_b = run_simulation(sim_engine, tmp_path / "b", 12, seed=5)
    url_c, _ = run_simulation(sim_engine, tmp_path / "c", 12, seed=6)
    first = dump(url_a)
    assert first["impressions"] and first["feedback"]
    assert first == dump(url_b)
    assert truth_a.to_dict() | {"summary": {}} == truth_b.to_dict() | {"summary": {}}
    assert dump(url_c)["queries"] != first["queries"]


def test_a_seed_cannot_be_simulated_twice_into_one_log(sim_engine, tmp_path):
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    with EventLog.open(url) as log:
        simulate(sim_engine, log, 2, seed=3, show_progress=False)
        with pytest.raises(ValueError, match="pass --append"):
            simulate(sim_engine, log, 2, seed=4, show_progress=False)
        with pytest.raises(ValueError, match="another --seed"):
            simulate(sim_engine, log, 2, seed=3, append=True, show_progress=False)


class CountingLog(EventLog):
    """The event log, counting calls to its writer methods."""

    calls: dict[str, int]
    shown: int

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def start_conversation(self, **kw: Any) -> str:
        self._count("conversations")
        return super().start_conversation(**kw)

    def log_message(self, *args: Any, **kw: Any) -> int:
        self._count("messages")
        return super().log_message(*args, **kw)

    def log_query(self, **kw: Any) -> str:
        self._count("queries")
        self.shown += len(kw.get("hits") or ())
        return super().log_query(**kw)

    def log_feedback(self, *args: Any, **kw: Any) -> int:
        self._count("feedback")
        return super().log_feedback(*args, **kw)


def test_every_row_comes_through_the_event_log_writer(sim_engine, tmp_path):
    log = CountingLog.open(f"sqlite:///{tmp_path / 'events.sqlite'}")
    log.calls, log.shown = {}, 0
    with log:
        simulate(sim_engine, log, 10, seed=11, show_progress=False)
        counts = log.counts()
    assert counts == {**log.calls, "tool_calls": 0, "impressions": log.shown}


def test_training_imports_only_retrieval_and_the_event_log():
    for path in sorted(TRAINING.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in ("ui", "benchmarks", "tests"), f"{path.name} imports {name}"
                if top == "assistant":
                    assert name.startswith("assistant.eventlog"), f"{path.name}: {name}"


def test_the_funnel_is_causal(simulated):
    """click -> (add_to_cart -> purchase), dwell after a click; nothing before its query."""
    url, _ = simulated
    with EventLog.open(url, create=False) as log, log.reading() as conn:
        rows = conn.execute(
            select(feedback.c.impression_id, feedback.c.kind, feedback.c.created_at,
                   feedback.c.dwell_ms, queries.c.created_at.label("asked_at"))
            .join(impressions, impressions.c.id == feedback.c.impression_id)
            .join(queries, queries.c.id == impressions.c.query_id)).all()
        n_feedback = len(conn.execute(select(feedback.c.id)).all())
    assert len(rows) == n_feedback, "every reaction refers to an impression"
    events: dict[int, dict[str, Any]] = {}
    for r in rows:
        assert r.created_at > r.asked_at
        assert r.kind not in events.setdefault(r.impression_id, {}), "one event per kind"
        events[r.impression_id][r.kind] = r
    kinds = [set(e) for e in events.values()]
    assert any("purchase" in k for k in kinds), "the fixture's log should hold purchases"
    for e in events.values():
        assert "click" in e and "dwell" in e
        assert e["dwell"].created_at > e["click"].created_at and e["dwell"].dwell_ms > 0
        if "add_to_cart" in e:
            assert e["add_to_cart"].created_at > e["click"].created_at
        if "purchase" in e:
            assert "add_to_cart" in e
            assert e["purchase"].created_at > e["add_to_cart"].created_at


def fit_eta(shown: np.ndarray, clicks: np.ndarray) -> float:
    """Maximum likelihood eta of clicks ~ Binomial(shown, a * rank^-eta), profiling a."""
    ranks = np.arange(1, len(shown) + 1, dtype=float)
    best, best_ll = 0.0, -math.inf
    for eta in np.linspace(0.0, 3.0, 601):
        e = ranks ** -eta
        a = min(clicks.sum() / (shown * e).sum(), 0.999)
        p = np.clip(a * e, 1e-9, 1 - 1e-9)
        ll = float((clicks * np.log(p) + (shown - clicks) * np.log(1 - p)).sum())
        if ll > best_ll:
            best, best_ll = float(eta), ll
    return best


def test_ctr_falls_with_rank_as_eta_says(simulated_shuffled):
    """With every list shuffled, attractiveness does not depend on rank, so CTR by rank is
    the examination curve 1 / rank^eta up to a constant."""
    _, truth = simulated_shuffled
    summary = truth.summary
    shown = np.array(summary["impressions_by_rank"], dtype=float)
    clicks = np.array(summary["clicks_by_rank"], dtype=float)
    eta = fit_eta(shown, clicks)
    print(f"seed={SEED + 1} true eta={truth.config.eta} fitted eta={eta:.3f} "
          f"ctr={summary['ctr_by_rank']}")
    assert summary["shuffled"] > summary["queries"] / 2  # lists of one product stay as they are
    assert abs(eta - truth.config.eta) < 0.2
    assert clicks[0] / shown[0] > 2 * clicks[-1] / shown[-1]


def test_the_ground_truth_round_trips(simulated, tmp_path):
    url, truth = simulated
    saved = Path(url.removeprefix("sqlite:///")).with_name("events.truth.json")
    loaded = SimulationTruth.load(saved)
    assert loaded == truth
    assert loaded.to_dict() == truth.to_dict()
    again = SimulationTruth.load(loaded.save(tmp_path / "again.json"))
    assert again == truth
    d = loaded.to_dict()
    assert d["examination"] == pytest.approx([r ** -truth.config.eta for r in range(1, 11)])
    for shopper in loaded.shoppers:
        assert sum(shopper.importance.values()) == pytest.approx(1.0, abs=1e-3)
        assert set(shopper.affinity) == {"colour", "category", "usage", "season"}
    with EventLog.open(url, create=False) as log:
        record = log.conversation(next(iter(loaded.queries)).rsplit("q", 1)[0])
        assert record.conversation["user_id"] in {s.shopper_id for s in loaded.shoppers}
        assert {q["id"] for q in record.queries} <= set(loaded.queries)


def test_config_is_validated_and_round_trips():
    config = SimConfig(eta=0.7, explore=0.2)
    assert SimConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="explore"):
        SimConfig(explore=1.5)
    with pytest.raises(ValueError, match="Unknown simulator settings"):
        SimConfig.from_dict({"etaa": 1.0})
    with pytest.raises(ValueError, match="explore_depth"):
        SimConfig(explore_depth=5)  # fewer than the k = 10 products a list shows


def test_deep_exploration_shows_products_from_beyond_the_top_k(sim_engine, tmp_path):
    """An explored list is k products drawn from the engine's top explore_depth: some from
    below rank k, none repeated, never more than k; ordinary lists stay the top k."""
    config = SimConfig(explore=1.0, explore_depth=40, colour_rate=0.0, photo_rate=0.0)
    url, truth = run_simulation(sim_engine, tmp_path, 30, seed=9, config=config)
    with EventLog.open(url, create=False) as log, log.reading() as conn:
        rows = conn.execute(select(queries.c.id, queries.c.text, impressions.c.product_id)
                            .join(impressions, impressions.c.query_id == queries.c.id)).all()
    lists: dict[str, tuple[str, list[str]]] = {}
    for query_id, text, product_id in rows:
        lists.setdefault(query_id, (text, []))[1].append(product_id)
    deeper = 0
    for query_id, (text, ids) in lists.items():
        assert len(ids) == len(set(ids)) <= config.k
        top = {h.product.product_id for h in sim_engine.search(text=text, k=40).hits}
        top_k = {h.product.product_id for h in sim_engine.search(text=text, k=10).hits}
        assert set(ids) <= top, query_id
        deeper += len(set(ids) - top_k)
    assert truth.summary["shuffled"] > 0 and deeper > len(lists)


def test_primed_searches_match_the_engine(sim_engine):
    photos = PhotoSource(sim_engine.products, seed=1)
    queries = [(None, "red tshirt for men"), (photos.photo(3), None),
               (photos.photo(7), "this but in blue"), (None, "casual jeans under 100")]
    searcher = BatchedSearch(sim_engine)
    searcher.prime(queries)
    primed = [searcher.search(image=p, text=t, k=5) for p, t in queries]
    assert all(s["misses"] > 0 and s["hits"] > 0 for s in searcher.stats().values())
    for (photo, text), got in zip(queries, primed, strict=True):
        want = sim_engine.search(image=photo, text=text, k=5)
        assert [h.product.product_id for h in got.hits] == \
            [h.product.product_id for h in want.hits]
        assert [h.score for h in got.hits] == pytest.approx([h.score for h in want.hits],
                                                            abs=1e-5)
        assert got.filters == want.filters


def test_equal_scores_come_in_catalog_order(sim_engine):
    """Products sharing a photo tie on a photo query: they are listed in catalog order
    whatever order the ANN index returns them in, so a query always gives the same list."""
    result = sim_engine.search(image=PhotoSource(sim_engine.products, seed=1).photo(3), k=10)
    assert not result.exact
    listed = [(-h.score, sim_engine.row_of[h.product.product_id]) for h in result.hits]
    assert listed == sorted(listed)  # by score, then catalog row
    assert len({score for score, _ in listed}) < len(listed)  # it has ties to order


def test_query_words_say_what_the_shopper_means(sim_engine):
    """The engine's parser reads back the attributes and price cap each phrasing carries."""
    from training.queries import TEXT, new_intent, nice_cap
    from training.shoppers import CatalogStats, draw_shopper

    stats = CatalogStats(sim_engine.table)
    config = SimConfig(photo_rate=0.0, price_cap_rate=0.5)
    rng = np.random.default_rng(SEED)
    print(f"seed={SEED}")
    for i in range(60):
        shopper = replace(draw_shopper(rng, stats, config, f"s{i}"), photo_rate=0.0)
        intent = new_intent(rng, shopper, stats, config)
        assert intent is not None and intent.kind == TEXT
        parsed = sim_engine.parser.parse(intent.text)
        include = parsed.filters.include
        for attr in ("category", "colour"):
            if intent.attrs.get(attr):
                assert intent.attrs[attr] in include.get(attr, ()), (intent.text, include)
        # Some phrasings leave the shopper's gender unsaid; it stays part of what they want.
        assert include.get("gender", (shopper.gender,)) == (shopper.gender,), intent.text
        for attr in ("usage", "season"):
            if intent.attrs.get(attr):
                assert intent.attrs[attr] in parsed.boosts.get(attr, ()), intent.text
        assert parsed.filters.price_max == intent.price_cap, intent.text
    assert nice_cap(1234) == 1500 and nice_cap(1234, up=False) == 1000
    assert nice_cap(87) == 90 and nice_cap(87, up=False) == 85
