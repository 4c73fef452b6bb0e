"""Ranking-head training on the simulated log: learning, artifact, resume, features, config.

"Validation NDCG" is measured twice on the validation sessions: with the logged labels
(reported; on engine-ordered lists they favour the engine's own order, since shoppers look
at the top more) and with the simulator's hidden truth as relevance — the chance that the
shopper would click / buy each shown product if they looked at it — which is free of
position bias and of the draw, and is what the assertions use.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.ranker import Blend, load_ranker
from retrieval.ranker_features import ProductFacts, QueryFacts, candidate_features, modality
from tests.training import ranker_fixtures
from tests.training.conftest import SEED
from tests.training.ranker_fixtures import tiny_ranker_config
from training.fusion_checkpoint import CheckpointError
from training.fusion_encode import IndexView
from training.ranker import train_ranker
from training.ranker_config import RankerConfig, load_ranker_config
from training.ranker_data import VALID, build_ranker_data, load_impressions
from training.ranker_eval import gains_of, grouped_ndcg, predict, utility
from training.ranker_recovery import expected_gains, hidden_utility
from training.shoppers import CatalogStats

pytestmark = pytest.mark.usefixtures("one_torch_thread")
trained_ranker = ranker_fixtures.trained_ranker


@pytest.fixture(scope="module")
def data(sim_engine, simulated):
    url, _ = simulated
    config = tiny_ranker_config()
    frame, snapshot = load_impressions(url, config)
    return build_ranker_data(frame, IndexView.open(sim_engine.settings.index_dir), config,
                             snapshot)


def test_training_lowers_the_loss_and_beats_similarity_on_validation(trained_ranker, data,
                                                                     sim_engine, simulated):
    result, _ = trained_ranker
    epochs = result.history["epochs"]
    assert epochs[0]["epoch"] == 0  # the fresh head, before any step
    assert epochs[-1]["train"]["loss"] < epochs[1]["train"]["loss"]
    assert min(e["valid"]["loss"] for e in epochs[1:]) < epochs[0]["valid"]["loss"]

    _, truth = simulated
    view = IndexView.open(sim_engine.settings.index_dir)
    hidden = hidden_utility(data.frame.assign(score=data.fused), data.rows, truth,
                            CatalogStats(view.table),
                            {p.product_id: i for i, p in enumerate(view.products)})
    relevance = expected_gains(hidden["u"].to_numpy(), truth)
    model, meta, _ = load_ranker(result.artifact)
    rows = data.where(VALID)
    score = utility(predict(model, data, rows), data.fused[rows], Blend.from_dict(meta["blend"]))
    report = {}
    for label in ("purchased", "clicked"):
        ours, n = grouped_ndcg(score, relevance[label][rows], data.group[rows])
        base, _ = grouped_ndcg(data.fused[rows], relevance[label][rows], data.group[rows],
                               tiebreak=data.rank[rows])
        logged, _ = grouped_ndcg(score, gains_of(data, label)[rows], data.group[rows])
        report[label] = (round(ours, 4), round(base, 4), round(logged, 4), n)
    print(f"seed={SEED} validation NDCG@10 (truth: ranker, similarity; logged: ranker; "
          f"queries): {report}")
    assert report["purchased"][0] > report["purchased"][1] + 0.01
    assert report["clicked"][0] > report["clicked"][1]


def test_artifact_records_config_snapshot_metrics_and_cointeraction(trained_ranker, data):
    result, _ = trained_ranker
    model, meta, co = load_ranker(result.artifact)
    assert result.version == "v0001" and result.artifact.name == "v0001"
    assert meta["config"] == tiny_ranker_config().to_dict()
    assert meta["data_snapshot"] == data.snapshot == result.data["snapshot"]
    assert {"valid", "test", "best_epoch"} <= set(meta["metrics"])
    assert {"ranker purchased", "similarity purchased", "loss"} <= set(meta["metrics"]["test"])
    assert meta["blend"] == tiny_ranker_config().blend()
    assert list(model.arch.dense) == list(data.names)
    assert co is not None and len(co) > 0  # carts and purchases shared a conversation
    pid = co.products[0]
    assert co.partners(pid) and all(w > 0 for _, w in co.partners(pid))
    history = json.loads((result.artifact / "history.json").read_text())
    assert len(history["steps"]) == result.steps


def test_resume_continues_exactly(sim_engine, simulated, data, tmp_path):
    config = tiny_ranker_config(epochs=3)
    index = sim_engine.settings.index_dir
    whole = train_ranker(index, config, tmp_path / "a", data=data, device="cpu", show=False)
    paused = train_ranker(index, config, tmp_path / "b", data=data, device="cpu", show=False,
                          stop_after=1)
    assert paused.stopped == "paused" and paused.version is None
    assert (tmp_path / "b" / "ranker" / "checkpoint" / "state.safetensors").is_file()
    resumed = train_ranker(index, config, tmp_path / "b", data=data, device="cpu", show=False,
                           resume=True)
    first = len(paused.history["steps"])
    assert 0 < first < len(whole.history["steps"])
    assert resumed.history["steps"][first]["loss"] == whole.history["steps"][first]["loss"]
    assert [s["loss"] for s in resumed.history["steps"]] == \
        [s["loss"] for s in whole.history["steps"]]
    a, _, _ = load_ranker(whole.artifact)
    b, _, _ = load_ranker(resumed.artifact)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert np.array_equal(x.numpy(), y.numpy()), name
    with pytest.raises(CheckpointError, match="finished run"):
        train_ranker(index, config, tmp_path / "b", data=data, device="cpu", show=False,
                     resume=True)
    train_ranker(index, config, tmp_path / "c", data=data, device="cpu", show=False,
                 stop_after=1)
    with pytest.raises(CheckpointError, match=r"other settings.*lambda_stay"):
        train_ranker(index, tiny_ranker_config(epochs=3, lambda_stay=0.5), tmp_path / "c",
                     data=data, device="cpu", show=False, resume=True)
    with pytest.raises(CheckpointError, match="No checkpoint"):
        train_ranker(index, config, tmp_path / "none", data=data, device="cpu", show=False,
                     resume=True)


def test_training_rows_are_what_the_engine_computes(sim_engine, data):
    """Apart from the history, the features of a logged text query are those the serving
    path computes from a fresh search for the same words."""
    frame = data.frame
    text_rows = np.flatnonzero(frame["query_text"].notna().to_numpy()
                               & ~frame["has_image"].to_numpy(dtype=bool))
    qid = frame["query_id"].iloc[text_rows[0]]
    rows = np.flatnonzero(frame["query_id"].to_numpy() == qid)
    found = sim_engine.search(text=frame["query_text"].iloc[rows[0]], k=10, rerank=False)
    by_id = {h.product.product_id: h for h in found.hits}
    assert set(frame["product_id"].iloc[rows]) <= set(by_id), "the logged search replays"
    hits = [by_id[p] for p in frame["product_id"].iloc[rows]]
    query = QueryFacts(modality(False, True), found.filters,
                       found.parsed.boosts if found.parsed else {})
    served = candidate_features(
        ProductFacts(sim_engine.table), query,
        np.array([sim_engine.row_of[h.product.product_id] for h in hits]),
        np.array([h.score for h in hits]),
        {s: np.array([h.scores.get(s, np.nan) for h in hits]) for s in data.slots},
        data.slots, None, tiny_ranker_config().list_size)
    keep = [i for i, n in enumerate(data.names) if not n.startswith("hist_")]
    assert np.allclose(served[:, keep], data.dense[rows][:, keep], atol=1e-4)


def test_config_from_toml_env_and_errors(tmp_path):
    path = tmp_path / "shopassist.toml"
    path.write_text("[train.fusion]\nepochs = 99\n\n[train.ranker]\nepochs = 3\n"
                    "lambda_convert = 0.5\nfractions = [0.6, 0.2, 0.2]\nhistory = 'user'\n")
    config = load_ranker_config(path, environ={"SHOPASSIST_RANKER_LAMBDA_STAY": "0.3"})
    assert (config.epochs, config.lambda_convert, config.lambda_stay, config.fractions,
            config.history) == (3, 0.5, 0.3, (0.6, 0.2, 0.2), "user")
    assert RankerConfig.from_dict(config.to_dict()) == config
    path.write_text("[train.ranker]\nlambda = 3\n")
    with pytest.raises(ValueError, match="Unknown setting 'lambda'"):
        load_ranker_config(path, environ={})
    with pytest.raises(ValueError, match="conversion"):
        RankerConfig(conversion="thumbs_up")
    with pytest.raises(ValueError, match="lambda"):
        RankerConfig(lambda_click=-1.0)
