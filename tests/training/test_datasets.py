"""Dataset builders: impressions with labels and propensities, session splits, snapshot ids,
catalog pairs, and the ``simulate`` / ``dataset`` commands."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from assistant.eventlog import EventLog
from tests.training.conftest import SEED
from training import cli
from training.datasets import (
    build_dataset,
    catalog_pairs,
    impressions_table,
    read_snapshot_id,
    snapshot_id,
    split_of,
    write_dataset,
)
from training.propensity import click_ratio, inverse_propensity_weights, regression_em

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def dataset(simulated):
    url, _ = simulated
    with EventLog.open(url, create=False) as log:
        return build_dataset(log, max_weight=8.0)


def test_impressions_carry_the_logged_facts(dataset, simulated):
    _, truth = simulated
    frame = dataset.impressions
    summary = truth.summary
    assert len(frame) == summary["impressions"]
    assert frame["clicked"].sum() == summary["clicks"]
    assert frame["added_to_cart"].sum() == summary["carts"]
    assert frame["purchased"].sum() == summary["purchases"]
    assert frame["query_id"].nunique() == summary["queries"] - summary["empty_results"]
    assert {"score_clip_image", "score_clip_text", "score_colour", "score_text"} & \
        set(frame.columns)
    assert (frame.loc[frame["clicked"], "dwell_ms"] > 0).all()
    assert (frame.loc[~frame["clicked"], "dwell_ms"] == 0).all()
    # ESMM's chain, as the table sees it
    assert not (frame["purchased"] & ~frame["added_to_cart"]).any()
    assert not (frame["added_to_cart"] & ~frame["clicked"]).any()
    assert frame["user_id"].notna().all() and (frame["channel"] == "simulator").all()
    assert frame["has_image"].any() and (~frame["has_image"]).any()


def test_propensities_recover_the_simulated_position_bias(dataset, simulated):
    _, truth = simulated
    table = dataset.propensities
    true = np.array(truth.config.examination())
    est = table["propensity"].to_numpy()
    rho = spearman(est, true)
    error = float(np.abs(est - true).mean())
    print(f"seed={SEED} eta={truth.config.eta} regression-EM={np.round(est, 3).tolist()} "
          f"click-ratio={np.round(table['click_ratio'], 3).tolist()} spearman={rho:.3f} "
          f"mean abs error={error:.3f}")
    assert len(table) == truth.config.k
    assert est[0] == pytest.approx(1.0)
    assert rho > 0.9
    assert error < 0.15
    assert dataset.info["propensity"]["converged"]


def test_weights_are_clipped_inverse_propensities(dataset):
    frame = dataset.impressions
    assert frame["ipw"].between(1.0, 8.0).all()
    expected = np.clip(1.0 / frame["propensity"], 1.0, 8.0)
    assert np.allclose(frame["ipw"], expected)
    assert (frame.loc[frame["rank"] == 1, "ipw"] == 1.0).all()


def test_splits_never_share_a_session(dataset):
    frame = dataset.impressions
    per_session = frame.groupby("conversation_id")["split"].nunique()
    assert (per_session == 1).all()
    assert set(frame["split"]) == {"train", "valid", "test"}
    share = frame.groupby("conversation_id")["split"].first().value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.8, abs=0.1)
    assert split_of("sim1s000001") == split_of("sim1s000001")
    assert split_of("sim1s000001", salt="other") in ("train", "valid", "test")


def test_snapshot_id_changes_with_the_log_and_only_then(simulated, tmp_path):
    url, _ = simulated
    copy = tmp_path / "events.sqlite"
    with EventLog.open(url, create=False) as log:
        log.checkpoint()
        shutil.copy(url.removeprefix("sqlite:///"), copy)
    with EventLog.open(f"sqlite:///{copy}", create=False) as log:
        before = snapshot_id(impressions_table(log))
        assert snapshot_id(impressions_table(log)) == before
        row = next(log.iter_impressions())
        log.log_feedback("thumbs_up", impression_id=row.impression_id)
        after = snapshot_id(impressions_table(log))
    assert after != before


def test_regression_em_recovers_a_known_curve():
    """Clicks drawn from the position-based model with a feature-driven relevance, and the
    engine's ranking favouring relevant items: the naive ratio overstates the bias, EM not."""
    rng = np.random.default_rng(7)
    print("seed=7")
    n_queries, k = 3000, 10
    x = rng.normal(size=(n_queries, k))
    order = np.argsort(-(x + rng.normal(scale=0.5, size=x.shape)), axis=1)
    x = np.take_along_axis(x, order, axis=1).ravel()
    rank = np.tile(np.arange(1, k + 1), n_queries)
    theta = 1.0 / np.arange(1, k + 1) ** 0.8
    gamma = 1.0 / (1.0 + np.exp(-(1.5 * x - 0.5)))
    clicked = rng.random(len(rank)) < theta[rank - 1] * gamma
    est = regression_em(rank, clicked, x[:, None])
    naive = click_ratio(rank, clicked)
    assert np.abs(est.propensity - theta).max() < 0.08
    assert np.abs(naive.propensity - theta).mean() > np.abs(est.propensity - theta).mean()
    with pytest.raises(ValueError, match="No impressions"):
        regression_em(np.array([], dtype=int), np.array([], dtype=bool), np.zeros((0, 1)))
    with pytest.raises(ValueError, match="max_weight"):
        inverse_propensity_weights(est.propensity, max_weight=0.5)


def test_catalog_pairs_reference_every_product(sim_engine):
    pairs = catalog_pairs(sim_engine.products)
    assert len(pairs) == len(sim_engine.products)
    assert pairs["product_id"].is_unique
    first = pairs.iloc[0]
    product = sim_engine.product(first["product_id"])
    assert first["title"] == product.title and first["image"] == product.image
    assert product.category in first["attribute_text"]
    assert set(pairs["split"]) <= {"train", "valid", "test"}


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_simulate_and_dataset_commands(sim_engine, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'sim.sqlite'}"
    index = str(Path(sim_engine.folder).parents[1])
    assert run_cli(["simulate", "--sessions", "6", "--index", index, "--db", db, "--seed", "4",
                    "--device", "cpu", "--explore", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "sessions 6" in out and "CTR by rank" in out
    assert (tmp_path / "sim.truth.json").is_file()
    assert run_cli(["dataset", "--db", db, "--out", str(tmp_path / "ds"), "--index",
                    index]) == 0
    out = capsys.readouterr().out
    assert "snapshot" in out and "rank   1: 1.000" in out
    for name in ("impressions", "propensities", "catalog_pairs"):
        path = tmp_path / "ds" / f"{name}.parquet"
        assert read_snapshot_id(path) == out.split()[1].rstrip(":")
    frame = pd.read_parquet(tmp_path / "ds" / "impressions.parquet")
    assert {"split", "ipw", "propensity", "clicked"} <= set(frame.columns)
    with EventLog.open(db, create=False) as log:
        files = write_dataset(build_dataset(log), tmp_path / "again")
    assert read_snapshot_id(files["impressions"]) == read_snapshot_id(
        tmp_path / "ds" / "impressions.parquet")


def test_randomised_lists_give_unbiased_propensities(simulated_shuffled):
    url, truth = simulated_shuffled
    with EventLog.open(url, create=False) as log:
        found = build_dataset(log)
    true = np.array(truth.config.examination())
    est = found.propensities["propensity"].to_numpy()
    error = float(np.abs(est - true).mean())
    print(f"seed={SEED + 1} randomised={np.round(est, 3).tolist()} mean abs error={error:.3f}")
    assert found.info["propensity"]["method"] == "randomised"
    assert error < 0.08
