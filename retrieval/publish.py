"""Publishing an index version: fuse, write the store and files, switch ``CURRENT``.

Shared by a catalog build (``ingest``) and a re-fusion with a new fusion head
(``refuse``): both hand over products and per-slot vectors, and a version appears only
when complete (see :mod:`retrieval.manifest` for the layout and the atomic switch).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.artifacts import ProductRecords, write_fused, write_products, write_vectors
from retrieval.catalog import RowIssue
from retrieval.config import Settings
from retrieval.fusion import Fusion, SlotSpec, WeightedConcatFusion
from retrieval.fusion_head import LearnedFusion
from retrieval.manifest import IndexLayout, write_manifest
from retrieval.progress import progress as progress_bar
from retrieval.query import Vocabulary
from retrieval.store import VectorStore, chroma_client

logger = logging.getLogger(__name__)

HEAD_DIR = "fusion_head"


@dataclass
class VersionContent:
    """Everything a new version is made of."""

    records: ProductRecords
    slot_vectors: dict[str, np.ndarray]
    fusion: Fusion
    profile: str
    contract: list[dict[str, Any]]
    catalog: dict[str, Any]
    fingerprint: str
    issues: list[RowIssue] = field(default_factory=list)


def publish(layout: IndexLayout, settings: Settings, content: VersionContent, *,
            show: bool | None = None, keep_versions: int = 2) -> str:
    """Builds a version from ``content`` in a private folder and switches it in.

    Returns:
        The new version's name.

    Raises:
        StoreError: The Chroma server does not answer (nothing is switched).
    """
    products = content.records.products
    fused = content.fusion.fuse(content.slot_vectors, len(products))
    version, build_dir = layout.start_build()
    try:
        collection = collection_name(layout, version, settings)
        client = chroma_client(settings, None if settings.chroma_host else build_dir / "chroma")
        store = VectorStore.create(client, collection, settings.hnsw,
                                   metadata={"shopassist_version": version})
        bar = progress_bar(len(products), "store", "vec", show)
        store.add([p.product_id for p in products], fused, [p.metadata() for p in products],
                  progress=bar)
        bar.close()
        del store, client  # release the embedded store's files before the rename
        write_products(build_dir, content.records)
        write_vectors(build_dir, content.slot_vectors)
        _write_issues(build_dir, content.issues)
        if isinstance(content.fusion, LearnedFusion):
            # The index carries its head: it never depends on a models folder staying put;
            # and its fused vectors, so an engine does not run the head over the catalog.
            shutil.copytree(content.fusion.folder, build_dir / HEAD_DIR)
            write_fused(build_dir, fused, content.fusion.version)
        write_manifest(build_dir, {
            "version": version,
            "profile": content.profile,
            "slots": content.contract,
            "fusion": content.fusion.to_dict(),
            "distance": "cosine",
            "dim": content.fusion.dim,
            "count": len(products),
            "store": {"kind": "server" if settings.chroma_host else "embedded",
                      "collection": collection,
                      **({"host": settings.chroma_host, "port": settings.chroma_port}
                         if settings.chroma_host else {})},
            "hnsw": {"space": settings.hnsw.space, "max_neighbors": settings.hnsw.max_neighbors,
                     "ef_construction": settings.hnsw.ef_construction,
                     "ef_search": settings.hnsw.ef_search},
            "catalog": content.catalog,
            "vocabulary": Vocabulary.from_table(content.records.table()).to_dict(),
            "fingerprint": content.fingerprint,
            "settings": settings.to_dict(),
        })
        layout.commit(version, build_dir)
    except BaseException:
        # A failed build never becomes visible; a killed one is removed by the next build.
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    for old in layout.prune(keep_versions):
        logger.info("deleted old index version %s", old)
        if settings.chroma_host:
            _drop_collection(settings, collection_name(layout, old, settings))
    return version


def content_fingerprint(contract: list[dict[str, Any]], fusion: dict[str, Any],
                        records: ProductRecords) -> str:
    """What a version is made of, as one hash: same hash, nothing to rebuild."""
    digest = hashlib.sha256()
    digest.update(json.dumps([contract, fusion], sort_keys=True, default=str).encode())
    for product, ikey, tkey in zip(records.products, records.image_keys, records.text_keys,
                                   strict=True):
        digest.update(json.dumps(product.metadata(), sort_keys=True, default=str).encode())
        digest.update(f"{product.product_id}|{ikey}|{tkey}\n".encode())
    return digest.hexdigest()


def read_issues(folder: Path) -> list[RowIssue]:
    """The skipped rows a version recorded (kept when it is re-fused)."""
    try:
        with (folder / "issues.csv").open(newline="", encoding="utf-8") as fh:
            return [RowIssue(row=int(r["row"]), product_id=r["product_id"] or None,
                             reason=r["reason"]) for r in csv.DictReader(fh)]
    except FileNotFoundError:
        return []


def fusion_from_manifest(manifest: dict[str, Any], folder: Path) -> Fusion:
    """The fusion an index version was built with (its head is inside the version)."""
    spec = manifest["fusion"]
    if spec.get("kind") == "learned-head":
        fusion = LearnedFusion.load(folder / HEAD_DIR)
        fusion.check_slots([(s["name"], s["dim"]) for s in spec["slots"]])
        return fusion
    return WeightedConcatFusion([SlotSpec(s["name"], s["dim"], s["weight"])
                                 for s in spec["slots"]])


def collection_name(layout: IndexLayout, version: str, settings: Settings) -> str:
    if not settings.chroma_host:
        return f"products_{version}"
    # One server may hold several indexes: tell them apart by their root folder.
    root = hashlib.sha256(str(layout.root.resolve()).encode()).hexdigest()[:10]
    return f"shopassist_{root}_{version}"


def _drop_collection(settings: Settings, name: str) -> None:
    try:
        chroma_client(settings, None).delete_collection(name)
    except Exception as exc:
        logger.warning("could not delete old collection %s: %s", name, exc)


def _write_issues(folder: Path, issues: Sequence[RowIssue]) -> None:
    with (folder / "issues.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "product_id", "reason"])
        for issue in issues:
            writer.writerow([issue.row, issue.product_id or "", issue.reason])
