"""Search quality on the real catalog: ours beside naive baselines, in one run.

Three query types, each scored against the whole index:

- photo -> same product: larger photos of products in the index (``fashion_300px``) turned
  into shoppers' photos (coloured background, rotated, cropped; see ``shopper_photos.py``).
  Baselines: raw EfficientNet-Lite0 kNN over raw photos, and the same plus a plain RGB
  histogram. Ours: each slot alone, the fused score (exact), and the engine end to end.
- text -> products: "red dresses for women" style queries built from catalog attributes
  (some with a price cap); relevant = every product with those attributes (and price).
  Baseline: MiniLM over titles (kNN). Ours: the text slot alone, and the engine (constraints
  read from the words become filters, then the fused score).
- photo + words -> same product: a shopper's photo plus words naming its colour and
  category. Photo only, words only and both, through the engine.

Run ``python -m benchmarks.search_quality --help``; the first run caches the baselines'
catalog features under ``--cache`` (minutes), later runs reuse them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from benchmarks.shopper_photos import shopper_photo
from retrieval.config import load_settings
from retrieval.encoders import l2_normalise
from retrieval.metrics import binary_report, top_k
from retrieval.search import SearchEngine

logger = logging.getLogger("benchmarks.search_quality")

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
K = 10


# -- helpers --------------------------------------------------------------------------------

def machine_line() -> str:
    import os
    import platform

    import torch

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{time.strftime('%Y-%m-%d')} · {cpu} · {os.cpu_count()} cores · "
            f"torch {torch.__version__} · {platform.python_version()}")


def rank_weighted(query: Mapping[str, np.ndarray], items: Mapping[str, np.ndarray],
                  weights: Mapping[str, float], k: int = K, chunk: int = 256,
                  allowed: np.ndarray | None = None) -> np.ndarray:
    """Exact top-k by the weighted mean cosine over the given slots, chunked over queries.

    ``allowed`` is an optional ``(n, m)`` boolean mask (per query) of eligible items.
    """
    names = list(query)
    n = len(query[names[0]])
    total = sum(weights[s] for s in names)
    items32 = {s: items[s].astype(np.float32) for s in names}
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        part = slice(start, min(n, start + chunk))
        scores = sum(weights[s] * (query[s][part] @ items32[s].T) for s in names) / total
        if allowed is not None:
            scores = np.where(allowed[part], scores, -np.inf)
        out[part] = top_k(scores, k)
    return out


def cached(path: Path, build) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    array = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return array


def rgb_histogram(image: Image.Image, bins: int = 8) -> np.ndarray:
    """A plain RGB histogram of the whole photo (background included): the naive add-on."""
    small = np.asarray(image.convert("RGB").resize((48, 64)), dtype=np.uint8).reshape(-1, 3)
    idx = (small // (256 // bins)).astype(int)
    flat = (idx[:, 0] * bins + idx[:, 1]) * bins + idx[:, 2]
    return np.sqrt(np.bincount(flat, minlength=bins**3).astype(np.float32) / len(flat))


def load_raw(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


# -- query sets -------------------------------------------------------------------------------

def photo_queries(engine: SearchEngine, n: int, seed: int) -> tuple[list[str], list[Image.Image]]:
    """Shopper photos of products that are in the index, from their larger photos."""
    folder = SHARED / "fashion_300px" / "images"
    ids = sorted(p.stem for p in folder.glob("*.jpg") if p.stem in engine.row_of)
    rng = np.random.default_rng(seed)
    chosen = [str(x) for x in rng.choice(ids, size=min(n, len(ids)), replace=False)]
    photos = [shopper_photo(load_raw(str(folder / f"{pid}.jpg")),
                            np.random.default_rng([seed, i])) for i, pid in enumerate(chosen)]
    return chosen, photos


GENDER_WORDS = {"Men": ["for men", "men's", "mens"], "Women": ["for women", "women's", "ladies"],
                "Boys": ["for boys"], "Girls": ["for girls"], "Unisex": ["unisex"]}


def text_queries(engine: SearchEngine, n: int, seed: int, min_relevant: int = K
                 ) -> list[dict[str, Any]]:
    """Attribute queries ("red dresses for women", some "under N"), with relevant sets.

    Only attribute combinations with at least ``min_relevant`` products are asked for, so
    that a perfect system can reach P@10 = 1.
    """
    rng = np.random.default_rng(seed)
    table = engine.table
    colour, category, gender = (table.column(c) for c in ("colour", "category", "gender"))
    eligible = np.flatnonzero((colour != "") & (category != "") & (gender != ""))
    queries: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(n * 200):
        if len(queries) >= n:
            break
        row = int(rng.choice(eligible))
        c, cat, g = str(colour[row]), str(category[row]), str(gender[row])
        if (c, cat, g) in seen:
            continue
        seen.add((c, cat, g))
        words = f"{c.lower()} {cat.lower()}"
        gw = str(rng.choice(GENDER_WORDS.get(g, [f"for {g.lower()}"])))
        text = f"{gw} {words}" if gw.endswith("'s") or gw in ("mens", "ladies", "unisex") \
            else f"{words} {gw}"
        relevant = (colour == c) & (category == cat) & (gender == g)
        price = engine.products[row].price
        if rng.random() < 0.3 and price is not None:
            cap = float(np.ceil(price / 500) * 500)
            text += f" under {cap:g}"
            relevant &= table.price <= cap
        if relevant.sum() < min_relevant:
            continue
        queries.append({"text": text, "relevant": np.flatnonzero(relevant), "row": row})
    return queries


# -- the three query types ----------------------------------------------------------------------

def evaluate_photos(engine: SearchEngine, args: argparse.Namespace) -> dict[str, dict]:
    ids, photos = photo_queries(engine, args.photo_queries, args.seed)
    target = np.array([engine.row_of[i] for i in ids])
    n_rel = np.ones(len(ids), dtype=int)
    results: dict[str, dict] = {}

    def score(name: str, ranking: np.ndarray) -> None:
        results[name] = binary_report(ranking == target[:, None], n_rel)

    image_slots = [s for s in engine.profile.profile.slots if s.source == "image"]
    prepared = [engine.prepare_image(p) for p in tqdm(photos, desc="normalise", disable=None)]
    query = {s.name: engine.profile.encoder(s).encode_images(
        [p.variants[engine.profile.profile.normaliser_of(s)] for p in prepared])
        for s in image_slots}
    for slot in image_slots:
        score(f"ours: {slot.name} slot only", rank_weighted(
            {slot.name: query[slot.name]}, engine.vectors, engine.weights))
    score("ours: fused (exact)", rank_weighted(query, engine.vectors, engine.weights))

    effnet = next((e for e in engine.profile.encoders.values()
                   if e.name == "efficientnet-lite0"), None)
    if effnet is not None and not args.no_baselines:
        paths = [p.image for p in engine.products]
        key = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:12]
        raw = cached(Path(args.cache) / f"naive-effnet-{key}.npy", lambda: np.concatenate([
            effnet.encode_images([load_raw(p) for p in paths[i:i + 64]])
            for i in tqdm(range(0, len(paths), 64), desc="naive catalog features",
                          disable=None)]))
        hist = cached(Path(args.cache) / f"naive-rgbhist-{key}.npy", lambda: l2_normalise(
            np.stack([rgb_histogram(load_raw(p)) for p in tqdm(paths, desc="rgb histograms",
                                                                  disable=None)])))
        q_raw = effnet.encode_images(photos)
        q_hist = l2_normalise(np.stack([rgb_histogram(p) for p in photos]))
        base = {"raw": raw, "hist": hist}
        score("baseline: EfficientNet-Lite0 kNN", rank_weighted(
            {"raw": q_raw}, base, {"raw": 1.0}))
        score("baseline: EfficientNet + RGB histogram", rank_weighted(
            {"raw": q_raw, "hist": q_hist}, base, {"raw": 1.0, "hist": 1.0}))

    started = time.perf_counter()
    ranking = np.full((len(ids), K), -1)
    for i, photo in enumerate(tqdm(photos, desc="engine photo queries", disable=None)):
        hits = engine.search(image=photo, k=K).hits
        ranking[i, :len(hits)] = [engine.row_of[h.product.product_id] for h in hits]
    score("ours: engine end to end", ranking)
    results["ours: engine end to end"]["ms_per_query"] = \
        (time.perf_counter() - started) * 1000 / len(ids)
    return results


def evaluate_texts(engine: SearchEngine, args: argparse.Namespace) -> dict[str, dict]:
    queries = text_queries(engine, args.text_queries, args.seed)
    n = len(engine.products)
    n_rel = np.array([len(q["relevant"]) for q in queries])
    relevant = np.zeros((len(queries), n), dtype=bool)
    for i, q in enumerate(queries):
        relevant[i, q["relevant"]] = True
    results: dict[str, dict] = {}

    def score(name: str, ranking: np.ndarray) -> None:
        hits = np.take_along_axis(relevant, np.maximum(ranking, 0), axis=1) & (ranking >= 0)
        results[name] = binary_report(hits, n_rel)

    texts = [q["text"] for q in queries]
    text_slots = [s for s in engine.profile.profile.slots if s.source == "text"]
    for slot in text_slots:
        encoder = engine.profile.encoder(slot)
        q = encoder.encode_texts(texts)
        score(f"ours: {slot.name} slot only (no parsing)", rank_weighted(
            {slot.name: q}, engine.vectors, engine.weights))
        if slot.name == "text" and not args.no_baselines:
            titles = [p.title for p in engine.products]
            key = hashlib.sha256("\n".join(titles).encode()).hexdigest()[:12]
            title_vecs = cached(Path(args.cache) / f"naive-minilm-titles-{key}.npy",
                                lambda enc=encoder, t=titles: enc.encode_texts(t))
            score("baseline: MiniLM title kNN", rank_weighted(
                {"t": q}, {"t": title_vecs}, {"t": 1.0}))
    ranking = np.full((len(queries), K), -1)
    for i, text in enumerate(tqdm(texts, desc="engine text queries", disable=None)):
        hits = engine.search(text=text, k=K).hits
        ranking[i, :len(hits)] = [engine.row_of[h.product.product_id] for h in hits]
    score("ours: engine end to end", ranking)
    return results


def evaluate_photo_text(engine: SearchEngine, args: argparse.Namespace) -> dict[str, dict]:
    ids, photos = photo_queries(engine, args.both_queries, args.seed + 1)
    target = np.array([engine.row_of[i] for i in ids])
    n_rel = np.ones(len(ids), dtype=int)
    words = []
    for pid in ids:
        p = engine.product(pid)
        words.append(f"{p.attributes.get('colour', '')} {p.category}".strip().lower())
    results = {}
    for name, use_photo, use_words in (("photo only", True, False),
                                       ("words only", False, True),
                                       ("photo + words (fused)", True, True)):
        ranking = np.full((len(ids), K), -1)
        for i in range(len(ids)):
            hits = engine.search(image=photos[i] if use_photo else None,
                                 text=words[i] if use_words else None, k=K).hits
            ranking[i, :len(hits)] = [engine.row_of[h.product.product_id] for h in hits]
        results[f"engine: {name}"] = binary_report(ranking == target[:, None], n_rel)
    return results


def table(title: str, results: Mapping[str, Mapping[str, float]],
          columns: Sequence[str]) -> str:
    lines = [f"### {title}", "", "| system | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default="data/bench/index44k",
                        help="index folder (built from --catalog when missing)")
    parser.add_argument("--catalog", default=str(SHARED / "fashion" / "catalog.csv"))
    parser.add_argument("--photo-queries", type=int, default=1000)
    parser.add_argument("--text-queries", type=int, default=500)
    parser.add_argument("--both-queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", default="data/bench/cache",
                        help="folder for the baselines' cached catalog features")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--only", choices=["photo", "text", "both"], action="append")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    settings = load_settings(index_dir=Path(args.index), device=args.device, profile="offline")
    if not (Path(args.index) / "CURRENT").is_file():
        from retrieval.ingest import ingest

        logger.info("building the benchmark index from %s (minutes)...", args.catalog)
        logger.info(ingest(args.catalog, settings=settings).summary())
    engine = SearchEngine.open(settings=settings)
    print(f"Search quality · index {args.index} {engine.version} · {len(engine):,} products · "
          f"profile {engine.manifest['profile']} · {machine_line()}\n")
    out: dict[str, Any] = {"machine": machine_line(), "index_size": len(engine)}
    only = set(args.only or ["photo", "text", "both"])
    if "photo" in only:
        res = evaluate_photos(engine, args)
        out["photo"] = res
        print(table(f"Photo -> same product ({args.photo_queries} shopper photos)", res,
                    ["R@1", "R@10", "MRR", "NDCG@10"]) + "\n")
    if "text" in only:
        res = evaluate_texts(engine, args)
        out["text"] = res
        print(table(f"Text -> products ({args.text_queries} attribute queries)", res,
                    ["P@10", "R@10", "MRR", "NDCG@10"]) + "\n")
    if "both" in only:
        res = evaluate_photo_text(engine, args)
        out["photo_text"] = res
        print(table(f"Photo + words -> same product ({args.both_queries} queries)", res,
                    ["R@1", "R@10", "MRR", "NDCG@10"]) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
