"""Held-out simulated sessions in ``shopassist eval``: engine variants, the judging, the CLI.

A tiny fusion head and a ranker are trained on the session's engine-ordered simulated log's
index and log; the held-out log is the shuffled simulation (other seed, other shoppers).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from assistant.eventlog import EventLog
from retrieval.cli import main
from retrieval.filters import Filters
from retrieval.refuse import training_free_fusion
from tests.training import ranker_fixtures
from tests.training.conftest import one_thread
from tests.training.fusion_fixtures import tiny_config
from training.datasets import impressions_table
from training.fusion import train_fusion
from training.session_eval import evaluate_sessions, figures
from training.truth import SimConfig, SimulationTruth

pytestmark = pytest.mark.usefixtures("one_torch_thread")

trained_ranker = ranker_fixtures.trained_ranker  # a ranker trained on the simulated log


@pytest.fixture(scope="module")
def fusion_head(sim_engine, tmp_path_factory):
    """A tiny fusion head trained on the simulation index's stored vectors."""
    out = tmp_path_factory.mktemp("session-fusion")
    with one_thread():
        result = train_fusion(sim_engine.settings.index_dir,
                              tiny_config(epochs=4, eval_queries=20), out / "models",
                              device="cpu", cache_dir=out / "cache",
                              settings=sim_engine.settings, show=False)
    return result.artifact, out


def test_figures_by_hand():
    # Two queries; pools of 3 and 2 candidates (gains in pool order).
    gains = np.array([0.1, 0.4, 0.2, 0.0, 0.3])
    offsets = np.array([0, 3, 5])
    served = [np.array([0, 1]), np.array([4, 3])]  # query 1: 0.1 then 0.4; query 2: 0.3, 0.0
    truth = SimulationTruth(seed=0, sessions=0, config=SimConfig(k=2, eta=1.0), shoppers=[],
                            index={})
    out = figures(served, gains, offsets, ["photo", "words"], truth, k=2)
    d = 1 / np.log2(3)
    first = (0.1 + 0.4 * d) / (0.4 + 0.2 * d)  # the pool's ideal: 0.4, then 0.2
    assert out["NDCG@10 photo"] == pytest.approx(first)
    assert out["NDCG@10 words"] == pytest.approx(1.0)  # 0.3 first is the best it could do
    assert out["NDCG@10"] == pytest.approx((first + 1.0) / 2)
    # expected purchases: examination 1 / rank ** eta
    assert out["purchases/100"] == pytest.approx(100 * ((0.1 + 0.4 / 2) + (0.3 + 0.0)) / 2)


def test_a_variant_scores_exactly_with_its_own_fusion(sim_engine, fusion_head, monkeypatch):
    from retrieval.fusion_head import LearnedFusion

    free = sim_engine.variant(fusion=training_free_fusion(sim_engine.manifest))
    learned = sim_engine.variant(fusion=LearnedFusion.load(fusion_head[0]))
    plan = sim_engine.understand(text="red dress")
    # The serving engine (training-free fusion) and its variant agree, product for product.
    want, _ = sim_engine.rank(plan.query, plan.filters, plan.boosts, 10, set(), exact=True)
    got, exact = free.rank(plan.query, plan.filters, plan.boosts, 10, set())
    assert exact
    assert [(h.product.product_id, round(h.score, 5)) for h in got] == \
        [(h.product.product_id, round(h.score, 5)) for h in want]
    # A variant never asks the ANN index (it holds the serving fusion's vectors).
    monkeypatch.setattr(sim_engine.store, "query", lambda *a, **k: pytest.fail("ANN used"))
    other, _ = learned.rank(plan.query, Filters(), plan.boosts, 10, set())
    assert learned.fusion.version.startswith("head-")
    assert [h.score for h in other] != [h.score for h in got]
    assert sim_engine.fusion.version == free.fusion.version  # the engine itself unchanged


def test_held_out_sessions_judge_every_system(sim_engine, simulated_shuffled, fusion_head,
                                              trained_ranker):
    from retrieval.fusion_head import LearnedFusion
    from retrieval.ranker import Reranker

    url, truth = simulated_shuffled
    with EventLog.open(url, create=False) as log:
        frame = impressions_table(log)
    free = sim_engine.variant(fusion=training_free_fusion(sim_engine.manifest))
    trained = sim_engine.variant(fusion=LearnedFusion.load(fusion_head[0]))
    ranked = trained.variant(ranker=Reranker.load(trained_ranker[0].artifact))
    assert ranked.fusion is trained.fusion  # a ranker variant keeps its fusion
    systems = {"free": free, "trained": trained, "ranked": ranked}
    report = evaluate_sessions(free, systems, frame, truth, max_queries=60)
    assert report.queries == 60 and sum(report.kinds.values()) == 60
    for name, r in report.systems.items():
        assert 0.0 <= r["NDCG@10"] <= 1.0 + 1e-9, name
        assert r["purchases/100"] > 0.0, name
    assert report.systems["ranked"] != report.systems["trained"]
    # Expected purchases do not depend on which other systems share the pool.
    alone = evaluate_sessions(free, {"trained": trained}, frame, truth, max_queries=60)
    assert alone.systems["trained"]["purchases/100"] == \
        pytest.approx(report.systems["trained"]["purchases/100"])
    with pytest.raises(ValueError, match="truth file"):
        evaluate_sessions(free, systems, frame.assign(query_id="elsewhere"), truth)
    # A query with neither words nor a photo (filters only) is not judged.
    blank = frame.copy()
    first = blank["query_id"] == blank["query_id"].iat[0]
    blank.loc[first, "query_text"] = None
    blank.loc[first, "has_image"] = False
    assert evaluate_sessions(free, {"free": free}, blank, truth, max_queries=5).queries == 4


def test_eval_cli_adds_the_sessions_table(sim_engine, simulated, simulated_shuffled,
                                          fusion_head, trained_ranker, capsys, tmp_path):
    import shutil

    artifact, folder = fusion_head
    models = tmp_path / "models"
    shutil.copytree(Path(artifact).parent.parent, models)
    shutil.copytree(trained_ranker[0].artifact, models / "ranker" / "v0001")
    url, _ = simulated_shuffled
    db = url.removeprefix("sqlite:///")
    argv = ["eval", "--models", str(models), "--index", str(sim_engine.settings.index_dir),
            "--cache", str(folder / "cache"), "--report", str(tmp_path / "report"),
            "--version", Path(artifact).name, "--ranker", "v0001", "--sessions", db,
            "--max-queries", "40"]
    with one_thread():
        assert main(argv) == 0
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    sessions = results["sessions"]
    assert sessions["queries"] == 40 and sessions["history"] == "user"
    assert set(sessions["systems"]) == set(results["systems"]) - {"ridge map (image → text)"}
    report = (tmp_path / "report" / "report.md").read_text()
    assert "### Held-out simulated sessions (40 queries" in report
    for name in sessions["systems"]:
        assert f"| {name} | " in report
    # The truth of another run is refused with what to do.
    other = simulated[1].save(tmp_path / "ordered.truth.json")
    capsys.readouterr()
    code = main([*argv[:-2], "--truth", str(other)])
    assert code != 0 and "truth file" in capsys.readouterr().err
    missing = main([*argv, "--truth", str(tmp_path / "nowhere.json")])
    assert missing != 0 and "No ground truth" in capsys.readouterr().err
    argv[argv.index(db)] = str(tmp_path / "nowhere.sqlite")
    assert main(argv) != 0 and "No event log" in capsys.readouterr().err
    assert all(not math.isnan(r["NDCG@10"]) for r in sessions["systems"].values())


def test_eval_without_a_fusion_head_compares_the_ranker_alone(sim_engine, simulated_shuffled,
                                                              trained_ranker, tmp_path):
    """--version none: a shop that trained only a ranker compares it with the training-free
    fusion, on catalog queries (the config's held-out split) and held-out sessions."""
    import shutil

    from tests.training.test_fusion_commands import write_config

    models = tmp_path / "models"
    shutil.copytree(trained_ranker[0].artifact, models / "ranker" / "v0001")
    config = write_config(tmp_path / "shopassist.toml", sim_engine.settings, eval_queries=20)
    db = simulated_shuffled[0].removeprefix("sqlite:///")
    with one_thread():
        code = main(["--config", str(config), "eval", "--models", str(models), "--index",
                     str(sim_engine.settings.index_dir), "--cache", str(tmp_path / "cache"),
                     "--report", str(tmp_path / "report"), "--version", "none", "--ranker",
                     "v0001", "--sessions", db, "--max-queries", "30"])
    assert code == 0
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    ranked = "untrained fusion + ranker v0001"
    assert set(results["sessions"]["systems"]) == {"untrained fusion", ranked}
    assert ranked in results["systems"] and not any(
        n.startswith("trained fusion") for n in results["systems"])
    assert results["systems"][ranked]["text_product"]["n"] == \
        results["systems"]["untrained fusion"]["text_product"]["n"] > 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "no fusion head" in report and "- training:" not in report


def test_replay_gives_back_the_logged_lists(sim_engine, simulated_shuffled):
    """The benchmark's replay (and the sessions evaluation) search again with each logged
    query's words and its photo regenerated from the truth: the engine must give back the
    very products it showed, so the candidates judged are the ones the shopper saw."""
    from training.ranker_replay import replay

    url, truth = simulated_shuffled
    with EventLog.open(url, create=False) as log:
        frame = impressions_table(log)
    slots = tuple(c["slot"] for c in sim_engine.manifest["slots"])
    replayed = replay(sim_engine, frame, truth, slots=slots, buckets=64, k=20)
    assert replayed.queries == len(set(frame["query_id"]) & set(truth.queries))
    assert replayed.matched >= 0.95 * replayed.queries, (replayed.matched, replayed.queries)
    assert len(replayed.rows) == len(replayed.dense) == len(replayed.group)
    assert np.isfinite(replayed.hidden["u"].to_numpy()).all()
    assert ((replayed.gains["purchased"] >= 0) & (replayed.gains["purchased"] <= 1)).all()
