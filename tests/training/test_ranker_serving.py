"""The ranking head in front of search: promotion, re-ranking, refusal, the commands, and
co-interaction in complementary recommendations. Every test that promotes works on its own
copy of the simulated index (a real Chroma store) and opens a real engine over it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.cli import main
from retrieval.cointeraction import CoInteraction
from retrieval.fusion_head import ArtifactError
from retrieval.ranker import RANKER_FILE, Reranker, load_ranker, serving_ranker_dir
from retrieval.recommend import complementary, similar
from retrieval.search import SearchEngine
from tests.training import ranker_fixtures
from tests.training.ranker_fixtures import tiny_ranker_config
from training.registry import MIN_JUDGED_LISTS, ModelRegistry, ranker_cautions

pytestmark = pytest.mark.usefixtures("one_torch_thread")
trained_ranker = ranker_fixtures.trained_ranker
index_copy = ranker_fixtures.index_copy

ROOT = Path(__file__).resolve().parents[2]
QUERIES = ("red tshirts for men", "blue dresses for women", "casual shoes", "green jeans")


def open_engine(settings, clip_profile) -> SearchEngine:
    return SearchEngine.open(settings=settings, profile=clip_profile)


def corrupt(path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def test_search_reranks_only_when_a_ranker_is_promoted(trained_ranker, index_copy,
                                                       clip_profile):
    result, models = trained_ranker
    plain = open_engine(index_copy, clip_profile)
    assert plain.ranker is None
    before = {q: plain.search(text=q, k=5) for q in QUERIES}
    for q, found in before.items():  # nothing promoted: the similarity order, untouched
        again = plain.search(text=q, k=5, rerank=False)
        assert [h.product.product_id for h in found.hits] == \
            [h.product.product_id for h in again.hits]
        assert all(not h.ranking for h in found.hits) and "rerank" not in found.timings_ms
        assert found.model_version == plain.fusion.version  # what the log will record

    registry = ModelRegistry(models)
    serving = registry.promote("ranker", result.version, index_copy)
    assert serving == plain.version  # no re-fusion: the same index version serves
    assert registry.promoted("ranker", index_copy) == result.version
    assert (index_copy.index_dir / RANKER_FILE).read_text().strip() == result.version
    engine = open_engine(index_copy, clip_profile)
    assert isinstance(engine.ranker, Reranker) and engine.ranker.version == result.version
    changed = 0
    for q in QUERIES:
        ranked = engine.search(text=q, k=5)
        similarity = engine.search(text=q, k=engine.ranker.candidates, rerank=False)
        utilities = [h.ranking["utility"] for h in ranked.hits]
        assert utilities == sorted(utilities, reverse=True)
        assert [h.rank for h in ranked.hits] == list(range(1, len(ranked.hits) + 1))
        candidates = [h.product.product_id for h in similarity.hits]
        assert {h.product.product_id for h in ranked.hits} <= set(candidates)
        # scores stay the engine's similarity (what the event log records)
        by_id = {h.product.product_id: h.score for h in similarity.hits}
        assert all(h.score == pytest.approx(by_id[h.product.product_id]) for h in ranked.hits)
        changed += [h.product.product_id for h in ranked.hits] != candidates[:5]
        assert "ranking" in ranked.hits[0].to_dict()
        assert ranked.model_version == f"{engine.fusion.version}+ranker-{result.version}"
        assert similarity.model_version == engine.fusion.version
    assert changed > 0, "the ranker re-orders some list"

    target, _ = registry.rollback("ranker", index_copy)
    assert target is None and not (index_copy.index_dir / RANKER_FILE).exists()
    assert open_engine(index_copy, clip_profile).ranker is None
    with pytest.raises(ValueError, match="Nothing to roll back"):
        registry.rollback("ranker", index_copy)


def test_session_history_and_similar_use_the_ranker(trained_ranker, index_copy, clip_profile):
    result, models = trained_ranker
    ModelRegistry(models).promote("ranker", result.version, index_copy)
    engine = open_engine(index_copy, clip_profile)
    plain = engine.search(text="shoes", k=10)
    clicked = [{"product_id": h.product.product_id, "clicked": True, "added_to_cart": True}
               for h in plain.hits[-3:]]
    with_session = engine.search(text="shoes", k=10, session=clicked)
    a = {h.product.product_id: h.ranking["utility"] for h in plain.hits}
    b = {h.product.product_id: h.ranking["utility"] for h in with_session.hits}
    assert a != b  # the shopper's session enters the features
    pid = plain.hits[0].product.product_id
    ranked = similar(engine, pid, k=5)
    unranked = similar(engine, pid, k=5, rerank=False)
    assert all(h.ranking for h in ranked.hits) and not any(h.ranking for h in unranked.hits)
    assert ranked.model_version.endswith(f"+ranker-{result.version}")
    assert unranked.model_version == engine.fusion.version
    assert pid not in {h.product.product_id for h in ranked.hits}
    assert all(h.why[0].startswith("similar to") for h in ranked.hits)


def test_a_corrupted_ranker_is_refused(trained_ranker, index_copy, clip_profile, tmp_path,
                                       caplog):
    result, models = trained_ranker
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    weights = copy / "ranker" / result.version / "ranker.safetensors"
    corrupt(weights)
    with pytest.raises(ArtifactError, match="sha256"):
        load_ranker(weights.parent)
    registry = ModelRegistry(copy)
    [entry] = registry.entries("ranker")
    assert "sha256" in entry.error
    with pytest.raises(ArtifactError, match="corrupted"):
        registry.promote("ranker", result.version, index_copy)
    assert serving_ranker_dir(index_copy.index_dir) is None  # nothing switched

    # A served copy corrupted later: search stays up in similarity order, and says why.
    ModelRegistry(models).promote("ranker", result.version, index_copy)
    corrupt(serving_ranker_dir(index_copy.index_dir) / "ranker.safetensors")
    with caplog.at_level(logging.ERROR, logger="retrieval.search"):
        engine = open_engine(index_copy, clip_profile)
    assert engine.ranker is None
    assert any("Not re-ranking" in r.getMessage() and "rollback ranker" in r.getMessage()
               for r in caplog.records)
    assert len(engine.search(text="red tshirts", k=3).hits) == 3


def test_complementary_blends_co_interaction(trained_ranker, index_copy, clip_profile):
    result, models = trained_ranker
    ModelRegistry(models).promote("ranker", result.version, index_copy)
    engine = open_engine(index_copy, clip_profile)
    assert engine.ranker is not None
    assert engine.ranker.cointeraction is not None  # the one built from the log
    engine.ranker.cointeraction = None
    product = next(p for p in engine.products if p.category == "Tshirts")
    rules = complementary(engine, product.product_id, k=6)
    assert rules.hits
    # a partner outside the category rules (another T-shirt), and one inside them
    outside = next(p for p in engine.products if p.category == "Tshirts" and p.in_stock
                   and p.product_id != product.product_id)
    inside = rules.hits[-1]
    engine.ranker.cointeraction = CoInteraction.from_pairs(
        {(product.product_id, outside.product_id): 3.0,
         (inside.product.product_id, product.product_id): 1.0})
    blended = complementary(engine, product.product_id, k=7)
    ids = [h.product.product_id for h in blended.hits]
    assert ids[0] == outside.product_id  # the "bought together" group leads
    assert any("bought together" in w for w in blended.hits[0].why)
    assert blended.hits[0].scores["together"] == pytest.approx(1.0)
    again = blended.hits[ids.index(inside.product.product_id)]
    assert again.score == pytest.approx(inside.score + 0.5 / 3.0, abs=1e-5)
    assert again.scores["together"] == pytest.approx(1.0 / 3.0)
    engine.ranker.cointeraction = None
    assert [h.product.product_id for h in complementary(engine, product.product_id,
                                                        k=6).hits] == \
        [h.product.product_id for h in rules.hits]


def write_config(path, settings, log_url: str, **changes):
    lines = ["[retrieval]", "profile = 'clip'", f"clip_model = '{settings.clip_model}'",
             f"text_model = '{settings.text_model}'", "device = 'cpu'", "precision = 'fp32'",
             "", "[train.ranker]"]
    for key, value in tiny_ranker_config(**changes).to_dict().items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_train_list_promote_rollback(simulated, index_copy, tmp_path, capsys):
    url, _ = simulated
    config = write_config(tmp_path / "shopassist.toml", index_copy, url, epochs=2)
    out = tmp_path / "models"
    where = ["--index", str(index_copy.index_dir)]
    capsys.readouterr()
    assert main(["train", "ranker", "--config", str(config), *where, "--log", url, "--out",
                 str(out), "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["version"] == "v0001" and summary["epochs"] == 2
    assert {"ranker purchased", "similarity purchased"} <= set(summary["metrics"]["test"])

    assert main(["models", "list", "--models", str(out), *where, "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["kind"] == "ranker" and not entry["error"] and not entry["promoted_for"]
    assert main(["models", "list", "--models", str(out), *where]) == 0
    listed = capsys.readouterr().out
    # the test figure on lists as shown (which favour the engine's order), and none on
    # explored lists: this log has none
    test = summary["metrics"]["test"]
    [row] = [line for line in listed.splitlines() if line.startswith("ranker")]
    assert row.split()[3] == "-" and "test_shuffled" not in summary["metrics"]
    assert f"{test['ranker purchased']:.3f} / {test['similarity purchased']:.3f} " \
           f"({int(test['queries purchased'])})" in row

    # a mistyped index is refused before anything is written there
    typo = tmp_path / "no-index"
    assert main(["models", "promote", "ranker", "latest", "--models", str(out), "--index",
                 str(typo)]) != 0
    assert "No index at" in capsys.readouterr().err and not typo.exists()
    assert main(["--config", str(config), "models", "promote", "ranker", "latest",
                 "--models", str(out), *where]) == 0
    promoted = capsys.readouterr()
    assert "v0001 now serves" in promoted.out
    # no list of this log was shown shuffled: the shop is told its figures prove nothing
    assert promoted.err.startswith("warning: ranker v0001 was judged on 0 held-out list(s)")
    assert main(["models", "list", "--models", str(out), *where, "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["promoted_for"] == [str(index_copy.index_dir.resolve())]
    assert main(["--config", str(config), "models", "rollback", "ranker", "--models", str(out),
                 *where]) == 0
    assert "similarity order" in capsys.readouterr().out
    assert serving_ranker_dir(index_copy.index_dir) is None

    code = main(["train", "ranker", "--config", str(config), *where, "--out", str(out),
                 "--device", "cpu"])
    assert code != 0 and "--log LOG" in capsys.readouterr().err
    # A log that is not there is an error message, not a traceback.
    code = main(["train", "ranker", "--config", str(config), *where, "--out", str(out),
                 "--log", f"sqlite:///{tmp_path / 'typo.sqlite'}", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: No event log at") and "typo.sqlite" in err


def test_cautions_name_thin_evidence_and_a_ranker_worse_than_similarity():
    def shuffled(n: int, ours: float, base: float) -> dict:
        return {"test_shuffled": {"queries purchased": n, "ranker purchased": ours,
                                  "similarity purchased": base}}

    [thin] = ranker_cautions("v0003", shuffled(MIN_JUDGED_LISTS - 1, 0.9, 0.5))
    assert f"judged on {MIN_JUDGED_LISTS - 1} held-out list(s)" in thin
    assert "shopassist eval --ranker v0003 --sessions LOG" in thin
    [worse] = ranker_cautions("v0003", shuffled(MIN_JUDGED_LISTS, 0.61, 0.64))
    assert "below similarity order on 30 lists shown shuffled (NDCG@10 0.610 vs 0.640)" \
        in worse
    assert ranker_cautions("v0003", shuffled(MIN_JUDGED_LISTS, 0.70, 0.64)) == []
    assert "judged on 0" in ranker_cautions("v0003", {"test": {"queries purchased": 500}})[0]


def test_scores_are_finite_for_every_candidate(trained_ranker, sim_engine):
    result, _ = trained_ranker
    reranker = Reranker.load(result.artifact)
    facts = reranker.facts(sim_engine.table)
    rows = np.arange(len(sim_engine))
    from retrieval.ranker_features import QueryFacts

    found = reranker.score(facts, rows, np.linspace(0, 1, len(rows)), {}, QueryFacts("text"))
    assert np.isfinite(found.utility).all()
    assert ((found.p_click > 0) & (found.p_click < 1)).all()


def test_torchrun_two_processes_train_one_ranker(simulated, sim_engine, tmp_path):
    url, _ = simulated
    config = write_config(tmp_path / "shopassist.toml", sim_engine.settings, url, epochs=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "retrieval.cli", "train", "ranker", "--config", str(config), "--index",
           str(sim_engine.settings.index_dir), "--db", url, "--out", str(tmp_path / "models"),
           "--device", "cpu", "--json"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])  # only the main process prints
    assert summary["version"] == "v0001" and summary["epochs"] == 2
    meta = json.loads((tmp_path / "models" / "ranker" / "v0001" / "ranker.json").read_text())
    assert meta["training"]["processes"] == 2 and meta["training"]["steps"] > 0


def test_models_list_shows_a_rankers_figures_on_explored_lists_first(capsys, tmp_path):
    from training.commands import _print_rankers
    from training.registry import ModelEntry

    shown = {"ranker purchased": 0.743, "similarity purchased": 0.775, "queries purchased": 243}
    explored = {"ranker purchased": 0.546, "similarity purchased": 0.483,
                "queries purchased": 16}
    _print_rankers([ModelEntry("ranker", "v0001", tmp_path, "2026-11-28T06:13:04Z",
                               metrics={"test": shown, "test_shuffled": explored},
                               promoted_for=("data/index",))])
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.index("0.546 / 0.483 (16)") < row.index("0.743 / 0.775 (243)")
    assert row.endswith("promoted: data/index")
