"""The learned fusion head: inference side (training lives in ``training/``).

Each slot's vector is projected by a small MLP into one shared space; a product's fused
vector is the normalised, gated sum of its slots' projections, and so is a query's over
the slots it fills. Trained with InfoNCE + match BCE on query-product pairs, the shared
space is what lets words reach photos on the offline profile (MiniLM text has no image
counterpart), and it re-weights slots per query instead of fixed weights.

A 256-wide shared space is coarser than the raw features for telling near-identical
products apart, so the head's output keeps the training-free weighted concatenation beside
the learned space: ``[sqrt(1 - s) * learned, sqrt(s) * weighted]``, whose cosine is
``(1 - s) * learned cosine + s * training-free cosine``. The share ``s`` (``base_share``)
is chosen on the validation split after training; a text query against a product without
text still ranks by the learned space alone (the training-free part of that pair is zero).

Artifacts are a folder with ``head.safetensors`` and ``head.json`` (architecture, slot
names and dims, the weights' sha256, training config and metrics). Loading checks the
hash and the shapes: a corrupted or mismatched artifact is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from retrieval.encoders.base import l2_normalise

WEIGHTS = "head.safetensors"
CONFIG = "head.json"
FORMAT = 1


class ArtifactError(ValueError):
    """A model artifact that is missing, corrupted or does not fit; says what to do."""


@dataclass(frozen=True)
class HeadConfig:
    """Architecture of a fusion head.

    Attributes:
        slots: ``(name, dim)`` of each input slot, in order.
        dim: Width of the shared space.
        hidden: Width of each slot's MLP.
        dropout: Dropout inside the MLPs (training only).
        base_weights: The training-free fusion's weight of each slot (same order).
        base_share: Share ``s`` of the training-free cosine in the output's cosine
            (0: the learned space alone, and then ``base_weights`` are unused).
    """

    slots: tuple[tuple[str, int], ...]
    dim: int = 256
    hidden: int = 512
    dropout: float = 0.1
    base_weights: tuple[float, ...] = ()
    base_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.base_share < 1.0:
            raise ValueError(f"base_share is in [0, 1) (got {self.base_share}).")
        if self.base_share and len(self.base_weights) != len(self.slots):
            raise ValueError(f"base_weights needs one weight per slot ({len(self.slots)}), "
                             f"got {len(self.base_weights)}.")

    @property
    def out_dim(self) -> int:
        """Width of the fused vectors: the shared space, plus the slots when blended."""
        return self.dim + (sum(d for _, d in self.slots) if self.base_share else 0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["slots"] = [list(s) for s in self.slots]
        out["base_weights"] = list(self.base_weights)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadConfig:
        return cls(slots=tuple((str(n), int(d)) for n, d in data["slots"]),
                   dim=int(data["dim"]), hidden=int(data["hidden"]),
                   dropout=float(data.get("dropout", 0.0)),
                   base_weights=tuple(float(w) for w in data.get("base_weights", ())),
                   base_share=float(data.get("base_share", 0.0)))


class FusionHead(nn.Module):
    """Per-slot MLP projections into a shared space, gated and summed."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(dim, config.hidden), nn.GELU(),
                                nn.Dropout(config.dropout), nn.Linear(config.hidden, config.dim))
            for name, dim in config.slots})
        # log-gates: how much each slot counts in the sum (learned, start equal)
        self.gate = nn.Parameter(torch.zeros(len(config.slots)))
        self.names = [name for name, _ in config.slots]

    def forward(self, slots: Mapping[str, torch.Tensor | None]) -> torch.Tensor:
        """Fused, L2-normalised ``(n, dim)``; a slot missing (``None`` or all-zero rows)
        does not contribute."""
        total: torch.Tensor | None = None
        gates = torch.exp(self.gate)
        for i, name in enumerate(self.names):
            x = slots.get(name)
            if x is None:
                continue
            present = (x.abs().sum(dim=1, keepdim=True) > 0).to(x.dtype)
            part = gates[i] * self.proj[name](x) * present
            total = part if total is None else total + part
        if total is None:
            raise ValueError(f"No input slot given; the head takes {self.names}.")
        learned = nn.functional.normalize(total, dim=1)
        share = self.config.base_share
        if not share:
            return learned
        parts = []
        for (name, dim), weight in zip(self.config.slots, self.config.base_weights,
                                       strict=True):
            x = slots.get(name)
            parts.append(learned.new_zeros((len(learned), dim)) if x is None
                         else math.sqrt(weight) * x.to(learned.dtype))
        base = nn.functional.normalize(torch.cat(parts, dim=1), dim=1)
        return torch.cat([math.sqrt(1.0 - share) * learned, math.sqrt(share) * base], dim=1)

    def with_base_share(self, share: float, weights: Sequence[float] | None = None
                        ) -> FusionHead:
        """The same trained weights with another share of the training-free fusion."""
        config = replace(self.config, base_share=float(share),
                         base_weights=tuple(weights) if weights is not None
                         else self.config.base_weights)
        head = FusionHead(config)
        head.load_state_dict(self.state_dict())
        return head.train(self.training)


def save_head(head: FusionHead, folder: str | Path, extra: Mapping[str, Any] | None = None
              ) -> Path:
    """Writes ``head.safetensors`` and ``head.json`` (with the weights' sha256)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS))
    digest = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    meta = {"format": FORMAT, "kind": "fusion-head", "architecture": head.config.to_dict(),
            "sha256": digest, **dict(extra or {})}
    (folder / CONFIG).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return folder


def read_verified(folder: str | Path, config: str, weights: str, *, kind: str, fmt: int,
                  what: str, command: str) -> tuple[dict[str, Any], Path]:
    """An artifact's metadata, after checking its weights file against the recorded sha256.

    Args:
        folder: The artifact folder.
        config: Metadata file name (JSON with ``format``, ``kind`` and ``sha256``).
        weights: Weights file name.
        kind, fmt: What the metadata must declare.
        what, command: For messages ("a fusion head", "shopassist train fusion").

    Returns:
        The metadata and the weights file's path.

    Raises:
        ArtifactError: Missing files, unreadable metadata, another kind or format, or a
            hash mismatch (corruption).
    """
    folder = Path(folder)
    try:
        meta = json.loads((folder / config).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{folder / config} is missing: {folder} is not {what} "
                            f"artifact (train one with `{command}`).") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{folder / config} is corrupt ({exc}).") from None
    if meta.get("format") != fmt or meta.get("kind") != kind:
        raise ArtifactError(f"{folder} holds a {meta.get('kind')!r} artifact of format "
                            f"{meta.get('format')!r}, not {what} of format {fmt}.")
    path = folder / weights
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing; the artifact is incomplete.") from None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise ArtifactError(f"{path} does not match the sha256 recorded in {config}: the "
                            "file is corrupted or was replaced. Restore it or retrain.")
    return meta, path


def load_head(folder: str | Path) -> tuple[FusionHead, dict[str, Any]]:
    """Loads and verifies a fusion head artifact.

    Raises:
        ArtifactError: Missing files, a hash mismatch (corruption), unreadable weights or
            shapes that do not fit the recorded architecture.
    """
    meta, path = read_verified(folder, CONFIG, WEIGHTS, kind="fusion-head", fmt=FORMAT,
                               what="a fusion head", command="shopassist train fusion")
    config = HeadConfig.from_dict(meta["architecture"])
    head = FusionHead(config)
    try:
        head.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError) as exc:
        raise ArtifactError(f"{path} does not fit its recorded architecture ({exc}).") from None
    head.eval()
    return head, meta


class LearnedFusion:
    """The :class:`retrieval.fusion.Fusion` protocol over a trained :class:`FusionHead`."""

    def __init__(self, head: FusionHead, meta: Mapping[str, Any], folder: Path) -> None:
        self.head = head.eval()
        self.meta = dict(meta)
        self.folder = folder
        self.dim = head.config.out_dim
        self.version = f"head-{str(meta['sha256'])[:12]}"
        self.slot_names = list(head.names)

    @classmethod
    def load(cls, folder: str | Path) -> LearnedFusion:
        head, meta = load_head(folder)
        return cls(head, meta, Path(folder))

    def check_slots(self, slots: Sequence[tuple[str, int]]) -> None:
        """Refuses an index whose slots (names, dims) differ from the head's inputs."""
        have = [tuple(s) for s in self.head.config.slots]
        if list(slots) != have:
            raise ArtifactError(f"The fusion head was trained on slots {have}, but the index "
                                f"has {list(slots)}; train a head for this index's profile.")

    @torch.inference_mode()
    def fuse(self, slots: Mapping[str, np.ndarray | None], n: int, batch: int = 8192
             ) -> np.ndarray:
        out = []
        for start in range(0, n, batch):
            part = {name: torch.from_numpy(np.ascontiguousarray(
                        v[start:start + batch], dtype=np.float32))
                    for name, v in slots.items() if v is not None}
            out.append(self.head(part).numpy())
        return l2_normalise(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def to_dict(self) -> dict[str, object]:
        return {"kind": "learned-head", "version": self.version,
                "sha256": self.meta["sha256"], "architecture": self.meta["architecture"],
                "slots": [{"name": n, "dim": d} for n, d in self.head.config.slots],
                "trained": {k: v for k, v in self.meta.items()
                            if k in ("data_snapshot", "metrics", "created")}}
