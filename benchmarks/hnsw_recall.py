"""Recall of Chroma's HNSW against exact search, on the real fused vectors of an index.

Queries are real: shoppers' photos of indexed products (``fashion_300px`` perturbed by
``shopper_photos.py``) and attribute phrases ("red tshirts for men"), encoded with the
index's own encoders and fusion. Each is asked of

- the index's own store, as the engine asks it (``VectorStore.query(vector, n, where)``);
- fresh Chroma collections built from the same stored vectors with other HNSW settings
  (``--settings M/ef_construction/ef_search,...``), with their build time;

unfiltered and under filters of three selectivities (colour + category of the product,
category alone, gender=Women), against exact cosine over the rows that pass the same filter
(``Filters.mask``), computed on the vectors the store holds (the index's own store keeps the
float32 fused vectors of its build; the fresh ones hold the fusion of the stored float16
per-slot vectors). Two recalls are reported: the raw HNSW top 10, and the engine's, which
asks for ``max(4k, 64)`` candidates and re-scores them exactly. Recall counts a returned
product as correct when its exact score reaches the 10th best exact score (ties between
duplicate products are not misses).

The engine skips HNSW when at most ``EXACT_MAX_ROWS`` products pass the filters; the last
table times both paths of ``SearchEngine.rank`` by how many products pass, to check that
threshold. ``python -m benchmarks.hnsw_recall --help`` lists the options.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DEVICES,
    fused_matrix,
    header_line,
    machine_info,
    markdown_table,
    percentile,
    resolve_device,
    shopper_queries,
    write_json,
)
from retrieval import search as search_module
from retrieval.config import HnswParams, load_settings
from retrieval.filters import Filters
from retrieval.search import SearchEngine
from retrieval.store import VectorStore, chroma_client, chunks

logger = logging.getLogger("benchmarks.hnsw_recall")

K = 10
CHROMA_DEFAULT = "16/100/100"  # Chroma 1.5's own defaults (max_neighbors/ef_construction/ef_search)
DEFAULT_SETTINGS = "16/100/10,16/100/64,16/100/100,32/200/128,32/200/256,48/300/128,48/300/256"
BUCKETS = ((1, 100), (101, 1000), (1001, 4096), (4097, 10**9))


def parse_settings(spec: str) -> list[HnswParams]:
    out = []
    for part in spec.split(","):
        try:
            m, efc, efs = (int(x) for x in part.strip().split("/"))
        except ValueError:
            raise SystemExit(f"--settings takes M/ef_construction/ef_search,... (got {part!r})."
                             ) from None
        out.append(HnswParams(max_neighbors=m, ef_construction=efc, ef_search=efs))
    return out


def label(h: HnswParams) -> str:
    return f"{h.max_neighbors}/{h.ef_construction}/{h.ef_search}"


# -- queries ----------------------------------------------------------------------------------

GENDER_WORDS = {"Men": "for men", "Women": "for women", "Boys": "for boys", "Girls": "for girls"}


def build_queries(engine: SearchEngine, n: int, seed: int, limit: int
                  ) -> list[dict[str, Any]]:
    """Photo and text queries of products among the first ``limit`` rows, each with the
    filters built from its product."""
    indexed = {pid for pid, row in engine.row_of.items() if row < limit}
    photos = shopper_queries(n, seed, indexed)
    queries = []
    for pid, photo in photos:
        slots = engine.encode_query(engine.prepare_image(photo), None)
        queries.append({"kind": "photo", "id": pid, "slots": slots,
                        "vector": engine.fusion.fuse({s: v[None] for s, v in slots.items()},
                                                     1, query=True)[0]})
    rng = np.random.default_rng(seed + 1)
    rows = rng.choice(limit, size=min(n, limit), replace=False)
    for row in rows:
        p = engine.products[int(row)]
        gender = str(p.attributes.get("gender", ""))
        text = " ".join(x for x in (str(p.attributes.get("colour", "")).lower(),
                                    p.category.lower(), GENDER_WORDS.get(gender, "")) if x)
        slots = engine.encode_query(None, text)
        queries.append({"kind": "text", "id": p.product_id, "text": text, "slots": slots,
                        "vector": engine.fusion.fuse({s: v[None] for s, v in slots.items()},
                                                     1, query=True)[0]})
    for q in queries:
        p = engine.product(q["id"])
        colour = str(p.attributes.get("colour", ""))
        q["filters"] = {
            "none": Filters(),
            "colour + category": Filters(include={"category": (p.category,),
                                                  **({"colour": (colour,)} if colour else {})}),
            "category": Filters(include={"category": (p.category,)}),
            "gender=Women": Filters(include={"gender": ("Women",)}),
        }
    return queries


# -- measuring one store ----------------------------------------------------------------------

def tie_aware_recall(returned: Sequence[int], scores: np.ndarray, kth: float, want: int
                     ) -> float:
    if want == 0:
        return 1.0
    hits = sum(1 for r in returned[:want] if scores[r] >= kth - 1e-5)
    return hits / want


def store_vectors(store: VectorStore, engine: SearchEngine, n: int) -> np.ndarray:
    """The float32 vectors a store holds, in product order (read in chunks)."""
    out = np.zeros((n, engine.fusion.dim), dtype=np.float32)
    ids = [p.product_id for p in engine.products[:n]]
    for part in chunks(len(ids)):
        got = store.collection.get(ids=ids[part], include=["embeddings"])
        for pid, vector in zip(got["ids"], got["embeddings"], strict=True):
            out[engine.row_of[pid]] = vector
    return out


def evaluate(stores: Sequence[VectorStore], engine: SearchEngine,
             matrices: Sequence[np.ndarray], queries: Sequence[dict[str, Any]],
             filter_names: Sequence[str]) -> list[list[dict[str, Any]]]:
    """Recall and latency of every store, per query and filter; ``matrices[i]`` holds the
    vectors store ``i`` was built from (exact search runs over those).

    The stores take turns on each query (in rotating order), so a burst of other work on
    the machine slows them all alike and their latencies stay comparable.
    """
    row_of = engine.row_of
    masks: dict[str, np.ndarray] = {}
    records: list[list[dict[str, Any]]] = [[] for _ in stores]
    for qi, q in enumerate(queries):
        by_matrix = {id(m): m @ q["vector"] for m in matrices}
        for name in filter_names:
            filters: Filters = q["filters"][name]
            mask = None
            if not filters.is_empty():
                key = repr(filters.to_dict())
                if key not in masks:
                    masks[key] = filters.mask(engine.table)[:len(matrices[0])]
                mask = masks[key]
            allowed = len(matrices[0]) if mask is None else int(mask.sum())
            want = min(K, allowed)
            where = filters.to_where()
            ask = min(allowed, max(4 * K, 64))  # what the engine asks for, then re-scores
            for j in range(len(stores)):
                s = (j + qi) % len(stores)
                scores = by_matrix[id(matrices[s])]
                masked = scores if mask is None else np.where(mask, scores, -np.inf)
                kth = float(-np.partition(-masked, want - 1)[want - 1]) if want else 0.0
                started = time.perf_counter()
                hits = stores[s].query(q["vector"], want, where)
                ms = (time.perf_counter() - started) * 1000
                raw = [row_of[i] for i in hits.ids if i in row_of]
                more = stores[s].query(q["vector"], ask, where)
                cand = np.array([row_of[i] for i in more.ids if i in row_of], dtype=int)
                rescored = cand[np.argsort(-scores[cand], kind="stable")][:K]
                records[s].append({
                    "kind": q["kind"], "filter": name, "allowed": allowed, "ms": ms,
                    "recall": tie_aware_recall(raw, masked, kth, want),
                    "engine_recall": tie_aware_recall(list(rescored), masked, kth, want)})
    return records


def summarise(records: Sequence[dict[str, Any]], group: Callable[[dict[str, Any]], Any]
              ) -> dict[Any, dict[str, float]]:
    out: dict[Any, dict[str, float]] = {}
    keys = sorted({group(r) for r in records}, key=str)
    for key in keys:
        rs = [r for r in records if group(r) == key]
        out[key] = {"n": len(rs), "recall": float(np.mean([r["recall"] for r in rs])),
                    "min_recall": float(np.min([r["recall"] for r in rs])),
                    "engine_recall": float(np.mean([r["engine_recall"] for r in rs])),
                    "p50_ms": percentile([r["ms"] for r in rs], 50),
                    "p99_ms": percentile([r["ms"] for r in rs], 99),
                    "median_allowed": float(np.median([r["allowed"] for r in rs]))}
    return out


def bucket_of(allowed: int) -> str:
    for low, high in BUCKETS:
        if low <= allowed <= high:
            return f"{low}–{high}" if high < 10**9 else f">{low - 1}"
    return "0"


def build_store(folder: Path, params: HnswParams, engine: SearchEngine, matrix: np.ndarray
                ) -> tuple[VectorStore, float]:
    """A fresh collection of the stored vectors (``VectorStore.add`` writes in chunks of
    5,000) and its build seconds."""
    settings = engine.settings.replace(chroma_host="", hnsw=params)
    client = chroma_client(settings, folder)
    store = VectorStore.create(client, "bench", params)
    products = engine.products[:len(matrix)]
    started = time.perf_counter()
    store.add([p.product_id for p in products], matrix, [p.metadata() for p in products])
    store.query(matrix[0], K)  # the index is usable from here on
    return store, time.perf_counter() - started


# -- exact vs filtered HNSW inside the engine -------------------------------------------------

def rank_paths(engine: SearchEngine, queries: Sequence[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """``SearchEngine.rank`` forced onto each path, by how many products pass the filters."""
    timings: dict[tuple[str, str], list[float]] = {}
    allowed_of: dict[str, list[int]] = {}
    original = search_module.EXACT_MAX_ROWS
    photo = [q for q in queries if q["kind"] == "photo"]
    try:
        for q in photo:
            slots = q["slots"]
            for name in ("colour + category", "category", "gender=Women"):
                filters = q["filters"][name]
                allowed = int(filters.mask(engine.table).sum())
                bucket = bucket_of(allowed)
                allowed_of.setdefault(bucket, []).append(allowed)
                for path, threshold in (("exact", 10**9), ("hnsw", 0)):
                    search_module.EXACT_MAX_ROWS = threshold
                    started = time.perf_counter()
                    engine.rank(slots, filters, {}, K, set())
                    timings.setdefault((bucket, path), []).append(
                        (time.perf_counter() - started) * 1000)
    finally:
        search_module.EXACT_MAX_ROWS = original
    rows = []
    for bucket in sorted(allowed_of, key=lambda b: np.median(allowed_of[b])):
        exact, hnsw = timings[(bucket, "exact")], timings[(bucket, "hnsw")]
        rows.append({"passing": bucket, "n": len(exact),
                     "median_passing": float(np.median(allowed_of[bucket])),
                     "exact_p50_ms": percentile(exact, 50), "hnsw_p50_ms": percentile(hnsw, 50),
                     "exact_p99_ms": percentile(exact, 99), "hnsw_p99_ms": percentile(hnsw, 99)})
    return rows


def print_filtered(results: Sequence[dict[str, Any]]) -> None:
    print(f"\n## Filtered recall@{K} (photo + text queries; by filter)\n")
    table_rows = []
    for res in results:
        by = summarise([r for r in res["records"] if r["filter"] != "none"],
                       lambda r: r["filter"])
        res["filtered"] = by
        for name, s in by.items():
            table_rows.append([res["setting"], name, s["median_allowed"], s["recall"],
                               s["min_recall"], s["engine_recall"], s["p50_ms"], s["p99_ms"]])
    print(markdown_table(["M/efC/efS", "filter", "median passing", "recall", "min recall",
                          "engine", "p50 ms", "p99 ms"], table_rows))

    print(f"\n## Filtered recall@{K} by products passing the filter\n")
    table_rows = []
    for res in results:
        by = summarise([r for r in res["records"] if r["filter"] != "none"],
                       lambda r: bucket_of(r["allowed"]))
        res["by_passing"] = by
        for bucket, s in sorted(by.items(), key=lambda kv: kv[1]["median_allowed"]):
            table_rows.append([res["setting"], bucket, s["n"], s["recall"], s["min_recall"],
                               s["engine_recall"], s["p50_ms"]])
    print(markdown_table(["M/efC/efS", "passing", "queries", "recall", "min recall", "engine",
                          "p50 ms"], table_rows))


# -- main -------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hnsw_recall", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("data/bench/index44k"))
    parser.add_argument("--queries", type=int, default=200,
                        help="queries per kind (photo, text); 200")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS,
                        help="HNSW settings to build, M/ef_construction/ef_search,... "
                             f"(default {DEFAULT_SETTINGS}; Chroma's own is {CHROMA_DEFAULT})")
    parser.add_argument("--no-build", action="store_true",
                        help="only measure the index's own store")
    parser.add_argument("--filters", default="none,colour + category,category,gender=Women",
                        help="filters to measure, comma-separated, from: none, colour + "
                             "category, category, gender=Women (default: all)")
    parser.add_argument("--limit", type=int, default=0,
                        help="use only the first N products (quick trials; the index's own "
                             "store and the exact-vs-HNSW timing are then skipped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("chromadb", "httpx", "sentence_transformers", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    device = resolve_device(args.device)
    info = machine_info(device)
    print(header_line(info))

    engine = SearchEngine.open(args.index, settings=load_settings(device=device))
    limit = min(args.limit or len(engine), len(engine))
    matrix = fused_matrix(engine)[:limit]
    logger.info("index %s: %d products, using %d, fused dim %d", args.index, len(engine),
                limit, matrix.shape[1])
    queries = build_queries(engine, args.queries, args.seed, limit)
    filter_names = [f.strip() for f in args.filters.split(",") if f.strip()]
    unknown = set(filter_names) - set(queries[0]["filters"])
    if unknown:
        raise SystemExit(f"Unknown --filters {sorted(unknown)}; choose from "
                         f"{', '.join(queries[0]['filters'])}.")

    built = dict(engine.manifest.get("hnsw", {}))
    own = HnswParams(**{k: built[k] for k in ("max_neighbors", "ef_construction", "ef_search")
                        if k in built})
    results: list[dict[str, Any]] = []
    stores: list[VectorStore] = []
    matrices: list[np.ndarray] = []
    if limit == len(engine):
        # The index's store holds the float32 fused vectors of the build; the stored
        # per-slot vectors are float16, and their rounding would count near-ties as misses.
        stores.append(engine.store)
        matrices.append(store_vectors(engine.store, engine, limit))
        results.append({"setting": label(own) + " (the index as built)",
                        "build_s": float("nan")})
    with contextlib.ExitStack() as cleanup:
        if not args.no_build:
            for params in parse_settings(args.settings):
                tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="hnsw-recall-"))
                logger.info("building %s", label(params))
                store, build_s = build_store(Path(tmp) / "chroma", params, engine, matrix)
                logger.info("built %s in %.1f s", label(params), build_s)
                stores.append(store)
                matrices.append(matrix)
                results.append({"setting": label(params), "build_s": build_s,
                                "params": vars(params)})
        logger.info("querying %d stores", len(stores))
        for res, records in zip(results, evaluate(stores, engine, matrices, queries,
                                                  filter_names), strict=True):
            res["records"] = records
        stores.clear()

    # Unfiltered recall per setting.
    print(f"\n## HNSW recall@{K} vs exact, unfiltered ({limit:,} products, "
          f"{matrix.shape[1]}-d fused vectors; {args.queries} photo + {args.queries} text "
          "queries)\n")
    print("M/efC/efS = max_neighbors / ef_construction / ef_search. recall = raw HNSW top "
          f"{K}; engine = top {K} after asking for {max(4 * K, 64)} and re-scoring exactly.\n")
    table_rows = []
    for res in results:
        by = summarise([r for r in res["records"] if r["filter"] == "none"],
                       lambda r: r["kind"])
        res["unfiltered"] = by
        table_rows.append([res["setting"], res["build_s"],
                           by["photo"]["recall"], by["photo"]["min_recall"],
                           by["photo"]["engine_recall"], by["photo"]["p50_ms"],
                           by["text"]["recall"], by["text"]["engine_recall"],
                           by["text"]["p50_ms"]])
    print(markdown_table(["M/efC/efS", "build s", "photo recall", "photo min", "photo engine",
                          "photo p50 ms", "text recall", "text engine", "text p50 ms"],
                         table_rows))

    if set(filter_names) - {"none"}:
        print_filtered(results)
    paths = []
    if limit == len(engine) and set(filter_names) - {"none"}:
        paths = rank_paths(engine, queries)
        print(f"\n## SearchEngine.rank: exact vs filtered HNSW by products passing (photo "
              "queries, the index's own store; the engine switches at EXACT_MAX_ROWS = "
              f"{search_module.EXACT_MAX_ROWS})\n")
        print(markdown_table(["passing", "queries", "median passing", "exact p50 ms",
                              "HNSW p50 ms", "exact p99 ms", "HNSW p99 ms"],
                             [[r["passing"], r["n"], r["median_passing"], r["exact_p50_ms"],
                               r["hnsw_p50_ms"], r["exact_p99_ms"], r["hnsw_p99_ms"]]
                              for r in paths]))
    if args.json:
        for res in results:
            res.pop("records")
        write_json(args.json, {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                               "index": str(args.index), "products": limit,
                               "results": results, "rank_paths": paths})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
