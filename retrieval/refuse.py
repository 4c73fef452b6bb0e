"""Re-fusing an index with another fusion, without re-encoding anything.

The serving version's per-slot vectors are fused again — by a trained fusion head, or by
the profile's training-free weighted concatenation — and published as a new version,
switched in atomically like any build. Search picks up the new fusion from the manifest
(the head is copied into the version), with no code change.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from retrieval.artifacts import read_products, read_vectors
from retrieval.config import Settings
from retrieval.fusion import Fusion, SlotSpec, WeightedConcatFusion
from retrieval.fusion_head import LearnedFusion
from retrieval.manifest import IndexLayout, read_manifest
from retrieval.publish import VersionContent, content_fingerprint, publish, read_issues

logger = logging.getLogger(__name__)


def training_free_fusion(manifest: dict) -> WeightedConcatFusion:
    """The profile's weighted concatenation, from the weights in the manifest's contract."""
    return WeightedConcatFusion([SlotSpec(c["slot"], int(c["dim"]), float(c["weight"]))
                                 for c in manifest["slots"]])


def refuse(settings: Settings, head: str | Path | None = None, *,
           show: bool | None = None, keep_versions: int = 2) -> tuple[str, float]:
    """Publishes the serving index re-fused by ``head`` (a fusion head folder), or by the
    training-free fusion when ``head`` is ``None``.

    Returns:
        The new version's name and the seconds it took.

    Raises:
        IndexNotFoundError: No index to re-fuse.
        ArtifactError: The head is corrupted or was trained for other slots.
    """
    started = time.perf_counter()
    layout = IndexLayout(Path(settings.index_dir))
    folder = layout.version_dir()
    manifest = read_manifest(folder)
    slots = [(c["slot"], int(c["dim"])) for c in manifest["slots"]]
    fusion: Fusion
    if head is None:
        fusion = training_free_fusion(manifest)
    else:
        learned = LearnedFusion.load(head)
        learned.check_slots(slots)
        fusion = learned
    records = read_products(folder)
    vectors = {k: v.astype(np.float32)
               for k, v in read_vectors(folder, [n for n, _ in slots],
                                        len(records.products)).items()}
    content = VersionContent(
        records=records, slot_vectors=vectors, fusion=fusion, profile=manifest["profile"],
        contract=manifest["slots"], catalog=manifest.get("catalog", {}),
        fingerprint=content_fingerprint(manifest["slots"], fusion.to_dict(), records),
        issues=read_issues(folder))
    version = publish(layout, settings, content, show=show, keep_versions=keep_versions)
    logger.info("re-fused %s into %s with %s", manifest["version"], version, fusion.version)
    return version, time.perf_counter() - started
