"""The ranking head on simulated shoppers over the real catalog: NDCG@10 of purchased items
on held-out sessions, similarity order against the ranker, what it recovered of the
simulator's hidden preferences, and how long training takes.

Two simulated logs over a copy of the index (the source index is only read): a training
log of ordinary traffic (engine order, ``--explore`` of the lists shuffled, as a shop's
exploration traffic) and a held-out log of *new* shoppers whose every list was shown in a
random order, so its logged purchases do not favour the engine's order. Logs are kept in
``--work`` and reused by later runs with the same settings. Orderings are compared

- on the held-out lists as shown, by the purchases logged (position noise included: a
  shopper mostly buys what they happened to see first), and by purchases drawn as if the
  shopper had examined every product (the hidden chance of buying each);
- on the top ``--candidates`` of each held-out query replayed through the engine (what
  search re-ranks when serving), with the hidden chance of a purchase as the gain, and with
  purchases drawn from it;

each beside the *oracle*, the simulator's own hidden utility: the ceiling of any ranker.
The co-interaction table is also checked on real purchase sessions
(:mod:`benchmarks.cointeraction`) when ``../shared/data/diginetica`` is there.

    python -m benchmarks.ranker --index /work/cache/idx44k --work /work/cache/ranker_bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assistant.eventlog import EventLog
from benchmarks.cointeraction import DATA as DIGINETICA
from benchmarks.cointeraction import evaluate as co_purchases
from benchmarks.search_quality import machine_line
from retrieval.config import load_settings
from retrieval.manifest import IndexLayout
from retrieval.ranker import Blend, load_ranker
from retrieval.search import SearchEngine
from training.datasets import impressions_table
from training.fusion_encode import IndexView
from training.ranker import train_ranker
from training.ranker_config import load_ranker_config
from training.ranker_data import build_ranker_data, load_impressions
from training.ranker_eval import grouped_ndcg, predict, utility
from training.ranker_recovery import (
    TERMS,
    hidden_utility,
    pearson,
    preference_terms,
    recovery_report,
    within_list,
)
from training.ranker_replay import replay, sampled_ndcg
from training.shoppers import CatalogStats
from training.simulate import simulate
from training.truth import ATTRIBUTES, SimConfig, SimulationTruth


class Report:
    """Prints lines and appends them to the log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        with self.path.open("a") as fh:
            fh.write(line + "\n")


def work_index(source: Path, work: Path) -> Path:
    """A copy of ``source``'s serving version under ``work`` (made once)."""
    target = work / "index"
    if not (target / "CURRENT").is_file():
        version = IndexLayout(source).version_dir()
        staging = work / ".index-copy"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(version, staging / "versions" / version.name)
        (staging / "CURRENT").write_text(version.name + "\n")
        staging.rename(target)
    return target


def simulated_log(engine: SearchEngine, work: Path, name: str, sessions: int, seed: int,
                  config: SimConfig, say: Report) -> tuple[str, SimulationTruth]:
    stem = f"{name}-s{seed}-n{sessions}-e{config.explore:g}"
    if config.explore_depth != config.k:
        stem += f"-d{config.explore_depth}"
    db, truth_path = work / f"{stem}.sqlite", work / f"{stem}.truth.json"
    url = f"sqlite:///{db}"
    if truth_path.is_file() and db.is_file():
        truth = SimulationTruth.load(truth_path)
        say(f"{name} log: {db} (cached; simulated in {truth.summary['seconds']:.0f} s)")
        return url, truth
    db.unlink(missing_ok=True)
    with EventLog.open(url) as log:
        truth = simulate(engine, log, sessions, seed=seed, config=config, truth_path=truth_path)
    say(f"{name} log: {db} ({truth.summary['seconds']:.0f} s to simulate)")
    return url, truth


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b > 0 else "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, default=Path("data/bench/index44k"),
                        help="index to copy (read only)")
    parser.add_argument("--work", type=Path, default=Path("data/bench/ranker"))
    parser.add_argument("--sessions", type=int, default=4800, help="training sessions")
    parser.add_argument("--heldout-sessions", type=int, default=1500)
    parser.add_argument("--explore", type=float, default=0.1,
                        help="share of training lists shown shuffled")
    parser.add_argument("--explore-depth", type=int, default=10,
                        help="explored training lists draw from the engine's top N")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--config", help="TOML with [train.ranker] settings")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log", type=Path, default=Path("data/bench/ranker.log"))
    args = parser.parse_args(argv)
    say = Report(args.log)
    torch.set_num_threads(args.threads)
    say(f"# benchmarks.ranker · {machine_line()} · torch threads {args.threads}")
    say("$ python -m benchmarks.ranker " + " ".join(sys.argv[1:] if argv is None else argv))
    args.work.mkdir(parents=True, exist_ok=True)
    index = work_index(args.index, args.work)
    engine = SearchEngine.open(settings=load_settings(index_dir=index, device=args.device))
    if engine.ranker is not None:
        raise SystemExit(f"{index} has a ranker promoted; the benchmark needs the similarity "
                         "order (remove its RANKER file).")
    say(f"index: copy of {args.index} at {index}: {len(engine):,} products, "
        f"{engine.manifest['profile']} profile")
    train_url, _ = simulated_log(engine, args.work, "train", args.sessions, args.seed,
                                 SimConfig(explore=args.explore,
                                           explore_depth=args.explore_depth), say)
    held_url, held_truth = simulated_log(engine, args.work, "heldout", args.heldout_sessions,
                                         args.seed + 1, SimConfig(explore=1.0), say)

    config = load_ranker_config(args.config, threads=args.threads)
    view = IndexView.open(index)
    started = time.perf_counter()
    frame, snapshot = load_impressions(train_url, config)
    data = build_ranker_data(frame, view, config, snapshot)
    data_s = time.perf_counter() - started
    models = args.work / "models"
    shutil.rmtree(models, ignore_errors=True)
    result = train_ranker(index, config, models, data=data, device=args.device, show=False)
    total_s = time.perf_counter() - started
    say(f"training: {len(data):,} impressions ({data.info['splits']['train']:,} train), "
        f"{data.info['labels']}, {len(data.names)} features; {result.epochs} epochs, "
        f"{result.steps} steps, {result.stopped} (best epoch "
        f"{result.metrics['best_epoch']})")
    train_s = float(json.loads((result.artifact / "ranker.json").read_text())
                    ["training"]["seconds"])
    model, meta, co = load_ranker(result.artifact)
    blend = Blend.from_dict(meta["blend"])

    with EventLog.open(held_url, create=False) as log:
        held_frame = impressions_table(log)
    held = build_ranker_data(held_frame, view, config, "heldout")
    stats = CatalogStats(engine.table)
    hidden = hidden_utility(held.frame.assign(score=held.fused), held.rows, held_truth, stats,
                            engine.row_of)
    out = predict(model, held, np.arange(len(held)))
    orderings = {"similarity": held.fused, "ranker": utility(out, held.fused, blend),
                 "oracle": hidden["u"].to_numpy()}
    m = held.shuffled
    rows_table: list[tuple[str, dict[str, float], int]] = []
    logged = {k: grouped_ndcg(v[m], held.purchased[m], held.group[m], tiebreak=held.rank[m])
              for k, v in orderings.items()}
    rows_table.append(("held-out lists as shown, logged purchases",
                       {k: v[0] for k, v in logged.items()}, logged["similarity"][1]))
    chance = _expected(hidden, held_truth)
    rows_table.append(("held-out lists as shown, full examination (drawn)",
                       sampled_ndcg(orderings, chance, held.group),
                       len(np.unique(held.group))))

    t = time.perf_counter()
    replayed = replay(engine, held_frame, held_truth, slots=held.slots, buckets=config.buckets,
                      list_size=config.list_size, k=args.candidates, history=config.history)
    replay_s = time.perf_counter() - t
    out_r = {k: _predict_arrays(model, replayed.dense, replayed.cats)[k]
             for k in ("click", "convert")}
    top = {"similarity": replayed.fused, "ranker": utility(out_r, replayed.fused, blend),
           "oracle": replayed.hidden["u"].to_numpy()}
    rows_table.append((f"top {args.candidates} replayed, hidden P(purchase) as gain",
                       {k: grouped_ndcg(v, replayed.gains["purchased"], replayed.group)[0]
                        for k, v in top.items()}, replayed.queries))
    rows_table.append((f"top {args.candidates} replayed, full examination (drawn)",
                       sampled_ndcg(top, replayed.gains["purchased"], replayed.group),
                       replayed.queries))
    ceilings = _ceilings(replayed.hidden, held_truth)

    say()
    say("NDCG@10 of purchased items on held-out simulated sessions "
        f"({args.heldout_sessions:,} sessions of new shoppers)")
    say(f"{'evaluation':<52} {'similarity':>10} {'ranker':>8} {'ratio':>6} {'oracle':>7} "
        f"{'oracle ratio':>12} {'queries':>8}")
    for name, values, n in rows_table:
        say(f"{name:<52} {values['similarity']:>10.4f} {values['ranker']:>8.4f} "
            f"{ratio(values['ranker'], values['similarity']):>6} {values['oracle']:>7.4f} "
            f"{ratio(values['oracle'], values['similarity']):>12} {n:>8,}")
    say(f"(replayed top-{args.candidates}: {replayed.matched:,} of {replayed.queries:,} "
        f"queries give back their logged top 10; replay took {replay_s:.0f} s)")
    say()
    say(f"what the oracle's gain is made of (top {args.candidates} replayed, hidden "
        "P(purchase) as gain; ratio to similarity)")
    sim_top = grouped_ndcg(top["similarity"], replayed.gains["purchased"], replayed.group)[0]
    for name, order in ceilings.items():
        value = grouped_ndcg(order, replayed.gains["purchased"], replayed.group)[0]
        say(f"  {name:<62} {ratio(value, sim_top):>6}")

    _recovery(say, model, held, hidden, out["click"], held_truth, stats)
    say()
    say(f"training time ({args.threads} torch thread(s), {args.device}): "
        f"{train_s:.1f} s training loop, {data_s:.1f} s reading the log and building "
        f"features, {total_s:.1f} s in all for {len(data):,} impressions")
    if co is not None:
        say(f"co-interaction table: {len(co):,} product pairs from the training log")
    say(f"artifact: {result.artifact}")
    if (DIGINETICA / "train-purchases.csv").is_file():
        say()
        for line in co_purchases(DIGINETICA):
            say(line)
    return 0


def _ceilings(hidden: Any, truth: SimulationTruth) -> dict[str, np.ndarray]:
    """Orderings by parts of the hidden utility: how much of the oracle's gain needs
    knowing each shopper's tastes (preference) and budget (price) rather than the query's
    full intent."""
    c = truth.config.utility
    term = {t: hidden[t].to_numpy() for t in ("intent", "target", "preference", "price",
                                               "score")}
    known = c.intent * term["intent"] + c.target * term["target"] + c.score * term["score"]
    return {"oracle (every term)": hidden["u"].to_numpy(),
            "without the shopper's tastes (preference term)": known + c.price * term["price"],
            "without tastes or budget (intent, target, score only)": known,
            "score and full intent only": c.intent * term["intent"] + c.score * term["score"]}


def _expected(hidden: Any, truth: SimulationTruth) -> np.ndarray:
    from training.ranker_recovery import expected_gains

    return expected_gains(hidden["u"].to_numpy(), truth)["purchased"]


def _predict_arrays(model: Any, dense: np.ndarray, cats: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = model.eval()(torch.from_numpy(dense), torch.from_numpy(cats))
    return {k: v.numpy() for k, v in out.items()}


def _recovery(say: Report, model: Any, held: Any, hidden: Any, logit: np.ndarray,
              truth: SimulationTruth, stats: CatalogStats) -> None:
    """What the ranker learned against the simulator's hidden utility."""
    blank = held.dense.copy()
    cols = [i for i, n in enumerate(held.names) if n.startswith("hist_")]
    blank[:, cols] = 0.0  # what the features are without any history
    without = _predict_arrays(model, blank, held.cats)["click"]
    effect = logit - without
    report = recovery_report(hidden, held.group, logit, held.fused, effect, truth)
    say()
    say(f"hidden preferences recovered (held-out lists, within each list; "
        f"{report['rows']:,} impressions)")
    cu = report["corr_u"]
    say(f"  correlation with the hidden utility u: ranker logit pearson "
        f"{cu['ranker']['pearson']:.3f} (spearman {cu['ranker']['spearman']:.3f}); "
        f"similarity {cu['similarity']['pearson']:.3f} ({cu['similarity']['spearman']:.3f})")
    coef = report["coefficients"]
    scale = coef["intent"]["learned"] / coef["intent"]["hidden"] if \
        coef["intent"]["learned"] else 1.0
    say("  utility term      hidden weight   learned (least squares on the logit, scaled "
        "to intent)")
    for term in TERMS:
        say(f"  {term:<16} {coef[term]['hidden']:>14.2f}   {coef[term]['learned'] / scale:>8.2f}")
    pref = report.get("corr_preference", {})
    say(f"  history effect (logit with minus without the shopper's history) vs the hidden "
        f"preference term: pearson {pref.get('pearson', float('nan')):.3f} over "
        f"{pref.get('rows', 0):,} impressions with history")
    terms = preference_terms(held.frame, held.rows, truth, stats)
    ok = hidden["u"].notna().to_numpy() & (np.abs(effect) > 1e-9)
    g = np.unique(held.group[ok], return_inverse=True)[1]
    parts = ", ".join(
        f"{a} {pearson(within_list(effect[ok], g), within_list(terms[a].to_numpy()[ok], g)):.3f}"
        for a in ATTRIBUTES)
    say(f"  per attribute (history effect vs importance x affinity of the value): {parts}")


if __name__ == "__main__":
    raise SystemExit(main())
