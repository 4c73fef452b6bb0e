"""The learned ranking head: inference side (training lives in ``training/``).

A small multi-task MLP over the features of :mod:`retrieval.ranker_features` predicts, for a
candidate product, the chance of a click (pCTR), of a conversion given a click (pCVR; their
product pCTCVR is what ESMM trains over every impression) and the log dwell time of a click.
The engine re-ranks its candidates by an expected utility,
``purchase_value * pCTCVR + click_value * pCTR + similarity_weight * fused score``.

Artifacts are a folder with ``ranker.safetensors`` and ``ranker.json`` (architecture,
feature names, blend, the weights' sha256, training config, data snapshot and metrics);
loading checks the hash and the shapes, and refuses a corrupted or mismatched artifact with
:class:`ArtifactError`. Promotion copies an artifact into the index root
(``rankers/<version>/``) and names it in ``RANKER`` (replaced atomically, like ``CURRENT``),
so an index carries the ranker that serves it; without ``RANKER`` nothing is re-ranked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from retrieval.cointeraction import CoInteraction
from retrieval.fusion_head import ArtifactError, check_finite, read_verified
from retrieval.ranker_features import (
    ATTRIBUTES,
    History,
    ProductFacts,
    QueryFacts,
    candidate_features,
    dense_names,
)

logger = logging.getLogger(__name__)

WEIGHTS = "ranker.safetensors"
CONFIG = "ranker.json"
KIND = "ranker"
FORMAT = 1
RANKER_FILE = "RANKER"  # in an index root: the version of the ranker serving it
RANKERS_DIR = "rankers"  # in an index root: promoted artifacts, by version


@dataclass(frozen=True)
class RankerArchitecture:
    """Shape of a ranking head and the features it reads.

    Attributes:
        slots: The index's slots whose scores are features, in order.
        dense: Names of the dense features (must equal ``dense_names(slots)``).
        buckets: Hash buckets per attribute embedding.
        embed_dim: Width of each attribute embedding.
        hidden: Width of the shared layer.
        tower: Width of each task's tower.
        dropout: Dropout after the shared layer (training only).
        list_size: Candidates counted as "the result list" for list-relative features.
    """

    slots: tuple[str, ...]
    dense: tuple[str, ...]
    buckets: int = 256
    embed_dim: int = 8
    hidden: int = 64
    tower: int = 32
    dropout: float = 0.1
    list_size: int = 10

    def __post_init__(self) -> None:
        if tuple(self.dense) != dense_names(self.slots):
            raise ArtifactError("The ranker's feature names do not match this version's "
                                "features; retrain it with `shopassist train ranker`.")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["slots"], out["dense"] = list(self.slots), list(self.dense)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankerArchitecture:
        return cls(slots=tuple(data["slots"]), dense=tuple(data["dense"]),
                   buckets=int(data["buckets"]), embed_dim=int(data["embed_dim"]),
                   hidden=int(data["hidden"]), tower=int(data["tower"]),
                   dropout=float(data.get("dropout", 0.0)),
                   list_size=int(data.get("list_size", 10)))


class RankingHead(nn.Module):
    """Shared bottom over standardised dense features and attribute embeddings, then one
    tower per task: click logit, conversion-given-click logit, log dwell (ms)."""

    def __init__(self, arch: RankerArchitecture) -> None:
        super().__init__()
        self.arch = arch
        d = len(arch.dense)
        # standardisation of the dense inputs (set from the training rows, saved with it)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.embed = nn.ModuleList(nn.Embedding(arch.buckets, arch.embed_dim)
                                   for _ in ATTRIBUTES)
        width = d + len(ATTRIBUTES) * arch.embed_dim
        self.bottom = nn.Sequential(nn.Linear(width, arch.hidden), nn.ReLU(),
                                    nn.Dropout(arch.dropout))
        self.towers = nn.ModuleDict({
            task: nn.Sequential(nn.Linear(arch.hidden, arch.tower), nn.ReLU(),
                                nn.Linear(arch.tower, 1))
            for task in ("click", "convert", "dwell")})

    def forward(self, dense: torch.Tensor, cats: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"click", "convert", "dwell"}`` -> ``(n,)``: two logits and a log-ms value."""
        x = (dense - self.mean) / self.std
        parts = [x, *(emb(cats[:, j]) for j, emb in enumerate(self.embed))]
        h = self.bottom(torch.cat(parts, dim=1))
        return {task: tower(h).squeeze(1) for task, tower in self.towers.items()}


@dataclass(frozen=True)
class Blend:
    """How the engine orders candidates by the ranker's predictions.

    Attributes:
        purchase_value: Weight of pCTCVR (the chance of a purchase from this impression).
        click_value: Weight of pCTR.
        similarity_weight: Weight of the engine's fused score. 0.1 keeps catalog relevance
            where a purchase-trained ranker alone trades it away (44k, held-out catalog
            queries: text -> product NDCG@10 0.748 at 0, 0.907 at 0.1, 0.908 without a
            ranker) at no cost in held-out simulated purchases (see README, "Learning
            loop").
        candidates: How many candidates by similarity the ranker re-orders.
    """

    purchase_value: float = 1.0
    click_value: float = 0.05
    similarity_weight: float = 0.1
    candidates: int = 50

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Blend:
        return cls(**dict(data or {}))


def save_ranker(model: RankingHead, folder: str | Path, extra: Mapping[str, Any] | None = None,
                cointeraction: CoInteraction | None = None) -> Path:
    """Writes ``ranker.safetensors`` (weights and any co-interaction table) and
    ``ranker.json`` (with the tensors' sha256)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"format": FORMAT, "kind": KIND,
                            "architecture": model.arch.to_dict()}
    if cointeraction is not None:
        tensors |= cointeraction.tensors()
        meta["cointeraction"] = cointeraction.describe()
    save_file(tensors, str(folder / WEIGHTS))
    meta["sha256"] = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    meta.update(dict(extra or {}))
    (folder / CONFIG).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return folder


def load_ranker(folder: str | Path) -> tuple[RankingHead, dict[str, Any], CoInteraction | None]:
    """Loads and verifies a ranker artifact.

    Returns:
        The head (in eval mode), its metadata, and its co-interaction table if it has one.

    Raises:
        ArtifactError: Missing files, a hash mismatch (corruption), unreadable weights or
            shapes that do not fit the recorded architecture.
    """
    meta, path = read_verified(folder, CONFIG, WEIGHTS, kind=KIND, fmt=FORMAT,
                               what="a ranker", command="shopassist train ranker")
    try:
        tensors = load_file(str(path))
        model = RankingHead(RankerArchitecture.from_dict(meta["architecture"]))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        co = CoInteraction.from_tensors(tensors, meta["cointeraction"]) \
            if "cointeraction" in meta else None
    except (SafetensorError, RuntimeError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{path} does not fit its recorded architecture ({exc}).") from None
    check_finite({k: v for k, v in tensors.items() if k.startswith("model.")}, folder,
                 "shopassist train ranker")
    model.eval()
    return model, meta, co


@dataclass(frozen=True)
class RankerScores:
    """The ranker's predictions for a list of candidates (one value each)."""

    p_click: np.ndarray
    p_convert: np.ndarray  # pCVR: conversion given a click
    dwell_ms: np.ndarray
    utility: np.ndarray

    @property
    def p_click_convert(self) -> np.ndarray:
        return self.p_click * self.p_convert


class Reranker:
    """A loaded ranker, ready to re-order an engine's candidates.

    Args:
        model: The head.
        meta: Its ``ranker.json``.
        folder: Where it was loaded from.
        cointeraction: Its co-interaction table, if any.
    """

    def __init__(self, model: RankingHead, meta: Mapping[str, Any], folder: Path,
                 cointeraction: CoInteraction | None = None) -> None:
        self.model = model.eval()
        self.meta = dict(meta)
        self.folder = folder
        self.arch = model.arch
        self.blend = Blend.from_dict(meta.get("blend"))
        self.cointeraction = cointeraction
        self.version = str(meta.get("version") or folder.name)
        self._facts: tuple[int, ProductFacts] | None = None

    @classmethod
    def load(cls, folder: str | Path) -> Reranker:
        model, meta, co = load_ranker(folder)
        return cls(model, meta, Path(folder), co)

    @property
    def candidates(self) -> int:
        return self.blend.candidates

    def facts(self, table: Any) -> ProductFacts:
        """The product columns of ``table`` (computed once per table)."""
        if self._facts is None or self._facts[0] != id(table):
            self._facts = (id(table), ProductFacts(table))
        return self._facts[1]

    @torch.inference_mode()
    def score(self, facts: ProductFacts, rows: np.ndarray, fused: np.ndarray,
              slot_scores: Mapping[str, np.ndarray], query: QueryFacts,
              history: History | None = None) -> RankerScores:
        """Predictions and blended utility of candidates (see the module docstring)."""
        dense = candidate_features(facts, query, rows, fused, slot_scores, self.arch.slots,
                                   history, self.arch.list_size)
        cats = facts.buckets(np.asarray(rows, dtype=np.int64), self.arch.buckets)
        out = self.model(torch.from_numpy(dense), torch.from_numpy(cats))
        p_click = torch.sigmoid(out["click"]).numpy().astype(np.float64)
        p_convert = torch.sigmoid(out["convert"]).numpy().astype(np.float64)
        dwell = np.exp(out["dwell"].numpy().astype(np.float64))
        b = self.blend
        utility = (b.purchase_value * p_click * p_convert + b.click_value * p_click
                   + b.similarity_weight * np.asarray(fused, dtype=np.float64))
        return RankerScores(p_click, p_convert, dwell, utility)


def serving_ranker_dir(index_root: str | Path) -> Path | None:
    """The promoted ranker's folder inside an index root (``None``: none promoted)."""
    root = Path(index_root)
    try:
        version = (root / RANKER_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return root / RANKERS_DIR / version if version else None


def open_serving_ranker(index_root: str | Path) -> Reranker | None:
    """The ranker promoted for an index, or ``None``.

    Raises:
        ArtifactError: One is promoted but its copy is missing or corrupted.
    """
    folder = serving_ranker_dir(index_root)
    return Reranker.load(folder) if folder is not None else None


def serve_ranker(index_root: str | Path, artifact: str | Path, version: str) -> Path:
    """Copies a (verified) artifact into the index root and switches ``RANKER`` to it.

    Raises:
        ArtifactError: The artifact does not load (nothing is switched).
    """
    load_ranker(artifact)
    root = Path(index_root)
    target = root / RANKERS_DIR / version
    if not target.is_dir() or _digest(target) != _digest(Path(artifact)):
        staging = root / RANKERS_DIR / f".{version}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(artifact, staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    _write_pointer(root, version)
    return target


def stop_serving_ranker(index_root: str | Path) -> None:
    """Removes ``RANKER``: the index serves similarity order again (copies are kept)."""
    (Path(index_root) / RANKER_FILE).unlink(missing_ok=True)


def _digest(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / CONFIG).read_text()).get("sha256"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_pointer(root: Path, version: str) -> None:
    tmp = root / f".{RANKER_FILE}.{os.getpid()}.tmp"
    tmp.write_text(version + "\n", encoding="utf-8")
    os.replace(tmp, root / RANKER_FILE)


def slot_arrays(scores: Sequence[Mapping[str, float]], slots: Sequence[str]
                ) -> dict[str, np.ndarray]:
    """Slot -> per-candidate score array (NaN where a candidate has no such score)."""
    return {s: np.array([sc.get(s, np.nan) for sc in scores], dtype=np.float64)
            for s in slots}
