"""``shopassist eval``: untrained vs trained fusion on held-out catalog queries, as a report.

Writes ``report.md`` with PNG plots (loss curves, Recall@K and NDCG@10 before/after, the
per-category breakdown) and ``results.json``. Systems are compared on the artifact's own
held-out split (the same product hash split it was trained with), so no product in the
report was trained on. The ranking head adds its columns through ``extra_systems``: a name
mapped to a fusion and an optional re-ranker of the fused top 100 (see
:data:`training.fusion_eval.Reranker`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import Settings
from retrieval.fusion_head import LearnedFusion
from retrieval.refuse import training_free_fusion
from training.fusion_config import FusionConfig
from training.fusion_data import SPLIT_NAMES, FusionData, build_fusion_data
from training.fusion_encode import IndexView, QueryEncoder
from training.fusion_eval import NEAR_IDENTICAL, FuseFn, Reranker, RidgeMap, evaluate
from training.photo_tail import use_photo_tail
from training.registry import HISTORY

logger = logging.getLogger(__name__)

KINDS = {"text_photo": "Text → photo (titles ignored)", "text_product": "Text → product",
         "photo": "Photo → same product", "photo_larger": "Photo → same product (larger "
         "photos only)"}
METRICS = ("R@1", "R@5", "R@10", "MRR", "NDCG@10")


@dataclass
class EvalResults:
    """Per system, per query kind, the metrics; plus what was evaluated."""

    systems: dict[str, dict[str, Any]]
    history: dict[str, Any]
    meta: dict[str, Any]
    data: dict[str, Any]
    split: str
    sessions: dict[str, Any] | None = None  # :func:`evaluate_session_log`'s result


def evaluate_artifact(index_dir: str | Path, artifact: str | Path | None, settings: Settings,
                      *, cache_dir: Path | None, split: str = "test",
                      extra_systems: Mapping[str, tuple[FuseFn, Reranker | None]] = (),  # type: ignore[assignment]
                      ranker: str | Path | None = None,
                      show: bool | None = None,
                      config: FusionConfig | None = None) -> EvalResults:
    """Scores the training-free fusion, a ridge baseline and the trained head.

    Args:
        index_dir: The index (its stored vectors; nothing is written to it).
        artifact: A fusion head folder (``models/fusion/vNNNN``), or ``None``: the
            training-free fusion only (a shop that trained a ranker and no head); the
            held-out products and queries are then ``config``'s.
        settings: Loads the index's encoders when a query is not cached yet.
        cache_dir: Query encoding cache (shared with training).
        split: ``test`` (default) or ``valid``.
        extra_systems: More columns: name -> (fusion, optional re-ranker).
        ranker: A ranking head folder (``models/ranker/vNNNN``): adds "trained fusion +
            ranker", the trained head's top 100 re-ordered by it (:func:`ranker_hook`).
        config: The held-out split and queries without an artifact (default: the
            defaults of :class:`FusionConfig`); an artifact brings its own.

    Raises:
        ArtifactError: The artifact is corrupted or does not fit the index's slots.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be valid or test (got {split!r}).")
    part = SPLIT_NAMES.index(split)
    view = IndexView.open(index_dir)
    free = training_free_fusion(view.manifest)
    if artifact is not None:
        learned = LearnedFusion.load(artifact)
        learned.check_slots([(s.name, s.dim) for s in view.slots])
        config = FusionConfig.from_dict(learned.meta.get("config", {}),
                                        f"{artifact}/head.json")
    data = build_fusion_data(view, config or FusionConfig(), cache_dir,
                             lambda: QueryEncoder.for_index(view, settings), show)
    systems: dict[str, tuple[FuseFn, Reranker | None]] = {"untrained fusion": (free, None)}
    ridge = ridge_baseline(data)
    if ridge is not None:
        systems["ridge map (image → text)"] = (ridge, None)
    base_name, base = "untrained fusion", free
    if artifact is not None:
        base_name, base = f"trained fusion {Path(artifact).name}", learned
        systems[base_name] = (learned, None)
    if ranker is not None:
        from retrieval.ranker import Reranker as RankingModel
        from retrieval.search import SearchEngine

        model = RankingModel.load(ranker)
        engine = SearchEngine.open(index_dir, settings=settings)
        systems[f"{base_name} + ranker {Path(ranker).name}"] = (
            base, ranker_hook(model, engine, view, data))
    systems.update(dict(extra_systems))
    tuned = None
    if artifact is not None and learned.tail is not None:
        # the head encodes shoppers' photos through its own fine-tuned tail
        tuned = use_photo_tail(view, data, config or FusionConfig(), learned.tail, cache_dir,
                               lambda: QueryEncoder.for_index(view, settings), splits=(part,),
                               show=show)
    results = {}
    for name, (system, rerank) in systems.items():
        kinds = ("text_photo",) if isinstance(system, RidgeMap) else \
            ("text_photo", "text_product", "photo")
        started = time.perf_counter()
        results[name] = evaluate(system, data, part, kinds=kinds, rerank=rerank,
                                 breakdown=True,
                                 photos=tuned if artifact is not None and system is learned
                                 else None)
        logger.info("evaluated %s in %.1f s", name, time.perf_counter() - started)
    try:
        history = json.loads((Path(artifact) / HISTORY).read_text()) if artifact else \
            {"steps": [], "epochs": []}
    except (OSError, json.JSONDecodeError):
        history = {"steps": [], "epochs": []}
    return EvalResults(results, history, learned.meta if artifact else {}, data.info, split)


def evaluate_session_log(index_dir: str | Path, artifact: str | Path | None, settings: Settings,
                         log_url: str, truth_path: str | Path, *, ranker: str | Path | None
                         = None, max_queries: int | None = None, history: str | None = None,
                         show: bool | None = None) -> dict[str, Any]:
    """The same systems on the held-out simulated sessions of an event log
    (:mod:`training.session_eval`).

    Args:
        index_dir: The index the log was simulated against.
        artifact: The trained fusion head (``None``: none); ``ranker``: optionally a
            ranking head.
        log_url: Event-log URL of a simulation the models were not trained on.
        truth_path: That simulation's ground truth (``shopassist simulate`` saves it).
        max_queries: Judge only the first this many queries.
        history: Whose earlier lists the ranker sees (default: as it was trained).

    Raises:
        ValueError: The log holds no search sessions, was simulated against another
            fusion than this index's, or holds none of the truth's queries; the truth file
            is not one.
    """
    from assistant.eventlog import EventLog
    from retrieval.progress import progress
    from retrieval.ranker import Reranker as RankingModel
    from retrieval.search import SearchEngine
    from training.datasets import impressions_table
    from training.session_eval import NO_SESSIONS, evaluate_sessions
    from training.truth import SimulationTruth

    truth = SimulationTruth.load(truth_path)
    with EventLog.open(log_url, create=False) as log:
        frame = impressions_table(log)
    if frame.empty:  # before the index is opened
        raise ValueError(NO_SESSIONS.format(log=f"The event log {log_url}"))
    engine = SearchEngine.open(index_dir, settings=settings)
    simulated_with = truth.index.get("fusion")
    free = training_free_fusion(engine.manifest)
    if simulated_with == engine.fusion.version:
        reference = engine.variant(fusion=engine.fusion)
    elif simulated_with == free.version:
        reference = engine.variant(fusion=free)
    else:
        raise ValueError(f"{truth_path} was simulated against fusion {simulated_with!r}; "
                         f"{index_dir} serves {engine.fusion.version!r}. Evaluate on a log "
                         "simulated against this index (`shopassist simulate`).")
    if truth.index.get("version") not in (None, engine.version):
        logger.warning("%s was simulated against index version %s; %s serves %s: products "
                       "added or changed since are judged by today's catalog.", truth_path,
                       truth.index.get("version"), index_dir, engine.version)
    untrained = engine.variant(fusion=free)
    systems = {"untrained fusion": untrained}
    base_name, base = "untrained fusion", untrained
    if artifact is not None:
        base_name = f"trained fusion {Path(artifact).name}"
        base = systems[base_name] = engine.variant(fusion=LearnedFusion.load(artifact))
    if ranker is not None:
        model = RankingModel.load(ranker)
        systems[f"{base_name} + ranker {Path(ranker).name}"] = base.variant(ranker=model)
        history = history or str(model.meta.get("config", {}).get("history", "user"))
    total = frame["query_id"].nunique()
    total = total if max_queries is None else min(total, max_queries)
    with progress(total=total, desc="held-out sessions", unit="query", show=show) as bar:
        seen = [0]

        def advance(done: int) -> None:
            bar.update(done - seen[0])
            seen[0] = done

        report = evaluate_sessions(reference, systems, frame, truth,
                                   history=history or "user", max_queries=max_queries,
                                   progress=advance)
    return {"systems": report.systems, "queries": report.queries, "kinds": report.kinds,
            "log": log_url, "truth": str(truth_path), "simulated_with": simulated_with,
            "history": history or "user"}


def ranker_hook(reranker: Any, engine: Any, view: IndexView, data: FusionData) -> Reranker:
    """The ranking head as :func:`training.fusion_eval.evaluate`'s re-ranking stage.

    Each query's fused top 100 is re-ordered by the ranker's expected utility, from the
    same features search gives it: the candidates' per-slot cosines (of the slots the query
    kind may see), their fused score, the products' facts (``engine``'s table) and the
    query's modality (no filters, no shopper history: catalog queries have neither).

    Args:
        reranker: A loaded :class:`retrieval.ranker.Reranker`.
        engine: A :class:`retrieval.search.SearchEngine` over the same index.
        view: The index's stored vectors (``data``'s rows are its products).
        data: The evaluation data.
    """
    from retrieval.ranker_features import QueryFacts, modality

    facts = reranker.facts(engine.table)
    engine_rows = np.array([engine.row_of[p.product_id] for p in view.products],
                           dtype=np.int64)
    image_slots = set(data.image_slots)

    def rerank(query: Mapping[str, np.ndarray], candidates: np.ndarray, top: np.ndarray,
               scores: np.ndarray, visible: Sequence[str]) -> np.ndarray:
        kind = QueryFacts(modality(bool(image_slots & set(query)),
                                   bool(set(query) - image_slots)))
        out = np.empty_like(top)
        for i in range(len(top)):
            rows = candidates[top[i]]
            # Only the slots this query kind may see: text -> photo hides the products'
            # own words from the ranker as from the fusion.
            cosines = {s: data.products[s][rows].astype(np.float32) @ q[i].astype(np.float32)
                       for s, q in query.items() if s in data.products and s in visible}
            fused = scores[i]  # the system's fused score, as search gives the ranker
            slots = {s: cosines.get(s, np.full(len(rows), np.nan)).astype(np.float64)
                     for s in reranker.arch.slots}
            found = reranker.score(facts, engine_rows[rows], fused, slots, kind)
            out[i] = top[i][np.argsort(-found.utility, kind="stable")]
        return out

    return rerank


def ridge_baseline(data: FusionData, alpha: float = 10.0) -> RidgeMap | None:
    """The closed-form ridge map from the image slots into the (first) text slot's space."""
    text = [s for s in data.text_slots if s in data.text_vectors]
    if not text or not data.image_slots:
        return None
    return RidgeMap(data.image_slots, text[-1], alpha).fit(
        data.products, np.flatnonzero(data.split == 0))


def _table(results: Mapping[str, Mapping[str, Any]], kind: str) -> list[str]:
    rows = [(name, r[kind]) for name, r in results.items() if kind in r]
    if not rows:
        return []
    n = rows[0][1].get("n", "")
    lines = [f"### {KINDS[kind]} ({n} queries)", "", "| system | " + " | ".join(METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r[m]:.3f}" for m in METRICS) + " |")
    return [*lines, ""]


def _misses_table(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = [(name, r["photo_misses"]) for name, r in results.items()
            if r.get("photo_misses", {}).get("misses")]
    if not rows:
        return []
    columns = ("in top 10", "same category", "near-identical photo")
    lines = ["### Photo → same product: the misses", "",
             "Queries whose first result is another product, and what that product is: "
             "a sibling of the same category, or one whose catalog photo the raw image "
             f"features cannot tell from the right one (cosine ≥ {NEAR_IDENTICAL:g}).", "",
             "| system | misses | " + " | ".join(columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for name, m in rows:
        cells = [f"{m[c]:.0%}" if c in m else "-" for c in columns]
        lines.append(f"| {name} | {int(m['misses'])} of {int(m['n'])} | "
                     + " | ".join(cells) + " |")
    return [*lines, ""]


def write_report(results: EvalResults, out: str | Path) -> Path:
    """Writes ``report.md``, ``results.json`` and the PNG plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(results, out)
    meta = results.meta
    training = meta.get("training", {})
    head = (f"- artifact: `{meta.get('sha256', '')[:12]}` created {meta.get('created', '')}, "
            f"data snapshot `{meta.get('data_snapshot', '')}`") if meta else \
        "- no fusion head: the training-free fusion (`--version none`)"
    lines = [f"# Fusion head evaluation — {results.split} split", "", head,
             f"- index: `{results.data['index']['folder']}` "
             f"({results.data['index']['products']:,} products)",
             f"- held-out products: {results.data['products']}"]
    if meta:
        lines.append(f"- training: {training.get('seconds', '?')} s, "
                     f"{training.get('epochs', '?')} epochs ({training.get('stopped', '?')}), "
                     f"device {training.get('device', '?')} × {training.get('processes', 1)}")
    lines += [f"- written {time.strftime('%Y-%m-%d %H:%M')}", ""]
    for kind in KINDS:
        lines += _table(results.systems, kind)
    lines += _misses_table(results.systems)
    lines += _tail_lines(meta)
    lines += _tags_table(meta)
    if results.sessions:
        lines += _session_table(results.sessions)
    for name, path in plots.items():
        lines += [f"![{name}]({path.name})", ""]
    by_cat = {name: r.get("by_category", {}) for name, r in results.systems.items()}
    categories = sorted({c for v in by_cat.values() for c in v},
                        key=lambda c: -max(v.get(c, {}).get("n", 0) for v in by_cat.values()))
    if categories:
        names = list(by_cat)
        lines += ["### Text → photo NDCG@10 by category", "",
                  "| category | queries | " + " | ".join(names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        for c in categories:
            n = max(v.get(c, {}).get("n", 0) for v in by_cat.values())
            cells = [f"{by_cat[s][c]['NDCG@10']:.3f}" if c in by_cat[s] else "-" for s in names]
            lines.append(f"| {c} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    if not any("ranker" in name for name in results.systems):
        lines += ["Add the ranking head's column with `shopassist eval --ranker VERSION`.", ""]
    if not results.sessions:
        lines += ["Add held-out simulated sessions with `shopassist eval --sessions LOG` (a "
                  "`shopassist simulate` log the models were not trained on).", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps({
        "split": results.split, "systems": results.systems, "data": results.data,
        "sessions": results.sessions,
        "artifact": {k: meta.get(k) for k in ("sha256", "created", "data_snapshot",
                                             "metrics", "training")}},
        indent=2, default=str) + "\n")
    return report


def _tail_lines(meta: Mapping[str, Any]) -> list[str]:
    """What the photo tail did in training (validation photo R@1 per epoch)."""
    info = meta.get("metrics", {}).get("photo_tail") or {}
    history = info.get("history") or []
    if not history:
        return []
    kept = "kept" if meta.get("photo_tail") else "not kept: no epoch beat the untuned encoder"
    curve = ", ".join(f"{h['epoch']}: {h['valid_R@1']:.3f}" for h in history)
    photos = info.get("photos", {})
    return ["### Photo tail (query photos' encoder, fine-tuned)", "",
            f"- validation photo R@1 by epoch (0 = untuned): {curve}; best epoch "
            f"{info.get('best_epoch', 0)}, {kept}",
            f"- {photos.get('train', 0):,} training photos, {photos.get('valid', 0):,} "
            f"validation photos, {info.get('seconds', '?')} s ({info.get('stopped', '?')})",
            "- the trained head's photo rows above encode query photos through it", ""]


def _tags_table(meta: Mapping[str, Any]) -> list[str]:
    """The head's tag reading (top-1 accuracy on the test split) and the blend chosen."""
    metrics = meta.get("metrics", {})
    tags = metrics.get("tags") or {}
    if not tags:
        return []
    arch = meta.get("architecture", {})
    lines = ["### What the head reads from a product's photo or words", "",
             f"Blend chosen on the validation split: {arch.get('base_share', 0):g} of the "
             f"training-free cosine, {arch.get('tag_share', 0):g} of the tag agreement.", "",
             "| tag | values | from the photo | from the words |", "|---|---:|---:|---:|"]
    sizes = dict((str(n), int(k)) for n, k in arch.get("tags", []))
    for name, read in tags.items():
        cells = [f"{read[k]:.3f}" if isinstance(read.get(k), float) else "–"
                 for k in ("photo", "words")]
        lines.append(f"| {name} | {sizes.get(name, '?')} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _session_table(sessions: Mapping[str, Any]) -> list[str]:
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in sessions["kinds"].items())
    columns = ["NDCG@10", "NDCG@10 photo", "NDCG@10 words", "purchases/100"]
    lines = [f"### Held-out simulated sessions ({sessions['queries']:,} queries: {kinds})", "",
             f"Log `{sessions['log']}`, judged by its hidden truth (simulated against "
             f"`{sessions['simulated_with']}`; ranker history: {sessions['history']}). "
             "NDCG@10 of the hidden chance of a purchase, with every system's top 10 as "
             "the pool; purchases/100: expected purchases per 100 queries under the "
             "truth's position bias.", "",
             "| system | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, r in sessions["systems"].items():
        cells = [f"{r[c]:.3f}" if c in r else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _plots(results: EvalResults, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    steps = results.history.get("steps", [])
    epochs = results.history.get("epochs", [])
    if steps:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        x = [s["step"] for s in steps]
        for key in [k for k in steps[0] if k not in ("step", "epoch", "lr")]:
            y = np.array([s.get(key, np.nan) for s in steps], dtype=float)
            window = max(1, len(y) // 50)
            smooth = np.convolve(y, np.ones(window) / window, mode="valid")
            ax1.plot(x[window - 1:], smooth, label=key, lw=2 if key == "loss" else 1)
        ax1.set(xlabel="step", ylabel="loss", title="Training loss (smoothed)")
        ax1.legend(fontsize=8)
        if epochs:
            ex = [e["epoch"] for e in epochs]
            for key, label in (("text_photo", "text → photo NDCG@10"),
                               ("photo", "photo → product R@1")):
                metric = "NDCG@10" if key == "text_photo" else "R@1"
                ax2.plot(ex, [e["valid"].get(key, {}).get(metric, np.nan) for e in epochs],
                         marker="o", label=label)
            ax2.set(xlabel="epoch", ylabel="validation", title="Validation")
            ax2.legend(fontsize=8)
        fig.tight_layout()
        paths["loss curves"] = out / "loss_curves.png"
        fig.savefig(paths["loss curves"], dpi=110)
        plt.close(fig)
    kinds = [k for k in ("text_photo", "text_product", "photo")
             if any(k in r for r in results.systems.values())]
    if kinds:
        fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
        names = list(results.systems)
        width = 0.8 / len(names)
        shown = ("R@1", "R@5", "R@10", "NDCG@10")
        for ax, kind in zip(axes[0], kinds, strict=True):
            for i, name in enumerate(names):
                r = results.systems[name].get(kind)
                if r is None:
                    continue
                ax.bar(np.arange(len(shown)) + i * width, [r[m] for m in shown], width,
                       label=name)
            ax.set_xticks(np.arange(len(shown)) + width * (len(names) - 1) / 2, shown)
            ax.set(ylim=(0, 1), title=KINDS[kind])
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        paths["before and after"] = out / "before_after.png"
        fig.savefig(paths["before and after"], dpi=110)
        plt.close(fig)
    by_cat = {n: r.get("by_category", {}) for n, r in results.systems.items()}
    cats = sorted({c for v in by_cat.values() for c in v},
                  key=lambda c: -max(v.get(c, {}).get("n", 0) for v in by_cat.values()))[:20]
    if cats:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(cats) + 1.5))
        height = 0.8 / len(by_cat)
        for i, (name, values) in enumerate(by_cat.items()):
            ax.barh(np.arange(len(cats)) + i * height,
                    [values.get(c, {}).get("NDCG@10", 0.0) for c in cats], height, label=name)
        ax.set_yticks(np.arange(len(cats)) + height * (len(by_cat) - 1) / 2, cats)
        ax.invert_yaxis()
        ax.set(xlim=(0, 1), xlabel="NDCG@10", title="Text → photo by category")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths["by category"] = out / "by_category.png"
        fig.savefig(paths["by category"], dpi=110)
        plt.close(fig)
    return paths
