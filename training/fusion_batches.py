"""Mini-batches of fusion training, drawn reproducibly from (seed, epoch, step, process).

No sampler state exists: each epoch's order is a permutation seeded by ``(seed, epoch)`` and
each step's random choices (which phrasing, which products lose their text, which sibling
is the hard negative) by ``(seed, epoch, step, rank)``, so a run resumed from a checkpoint
draws exactly the batches an uninterrupted run would have drawn. In a distributed run,
every process takes its own slice of the same global batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from training.fusion_config import FusionConfig
from training.fusion_data import TRAIN, FusionData
from training.fusion_queries import matches


class FusionBatches:
    """The batches of one training run, for one process.

    Args:
        data: The pairs.
        config: Batch sizes, text-drop probabilities, seed.
        rank: This process's rank.
        world: Number of processes (global batch sizes are split between them).

    Raises:
        ValueError: Fewer training products than one global batch.
    """

    def __init__(self, data: FusionData, config: FusionConfig, rank: int = 0,
                 world: int = 1) -> None:
        self.data, self.config, self.rank, self.world = data, config, rank, world
        counts = np.diff(data.train_offsets)
        self.rows = np.flatnonzero((data.split == TRAIN) & (counts > 0))
        self.tags = data.tag_columns(config.tags) if config.w_tags > 0 else []
        self.local = max(2, config.batch_size // world)
        self.photo_local = config.photo_batch // world
        self.photos = np.flatnonzero(data.photo_split == TRAIN)
        if len(self.photos) == 0:
            self.photo_local = 0
        logged = data.logged
        self.logged = (np.flatnonzero(logged.split == TRAIN) if logged is not None
                       else np.zeros(0, dtype=np.int64))
        self.logged_local = config.logged_batch // world if len(self.logged) else 0
        if len(self.rows) < self.local * world:
            raise ValueError(f"{len(self.rows)} training products with attribute queries are "
                             f"fewer than one batch of {self.local * world}; lower "
                             "batch_size.")
        train = data.split == TRAIN
        self.siblings: dict[int, np.ndarray] = {}
        order = np.argsort(data.sibling_group, kind="stable")
        groups, starts = np.unique(data.sibling_group[order], return_index=True)
        for g, members in zip(groups, np.split(order, starts[1:]), strict=True):
            members = members[train[members]]
            if len(members) > 1:
                self.siblings[int(g)] = members

    @property
    def steps_per_epoch(self) -> int:
        return len(self.rows) // (self.local * self.world)

    def _cycle(self, pool: np.ndarray, epoch: int, step: int, size: int, salt: int
               ) -> np.ndarray:
        """This process's ``size`` items of a pool that is smaller or larger than an epoch."""
        if size == 0 or len(pool) == 0:
            return np.zeros(0, dtype=np.int64)
        total = size * self.world
        start = (step * total + self.rank * size)
        laps = (start + size) // len(pool) + 1
        order = np.concatenate([np.random.default_rng([self.config.seed, salt, epoch, lap])
                                .permutation(pool) for lap in range(start // len(pool), laps)])
        offset = start - (start // len(pool)) * len(pool)
        return order[offset:offset + size]

    def _slots(self, rows: np.ndarray, drop: np.ndarray | None = None) -> dict[str, np.ndarray]:
        out = {}
        for name, vectors in self.data.products.items():
            x = vectors[rows].astype(np.float32)
            if drop is not None and name in self.data.text_slots:
                x[drop] = 0.0
            out[name] = x
        return out

    def get(self, epoch: int, step: int) -> dict[str, Any]:
        """This process's part of global batch ``step`` of ``epoch`` (numpy arrays)."""
        d, c = self.data, self.config
        perm = np.random.default_rng([c.seed, 1, epoch]).permutation(self.rows)
        start = step * self.local * self.world + self.rank * self.local
        rows = perm[start:start + self.local]
        rng = np.random.default_rng([c.seed, 3, epoch, step, self.rank])
        pick = d.train_offsets[rows] + (rng.random(len(rows)) *
                                        np.diff(d.train_offsets)[rows]).astype(np.int64)
        qids = d.train_ids[pick]
        drop = rng.random(len(rows)) < c.text_drop
        docs = d.document_queries()
        batch: dict[str, Any] = {
            "prod": self._slots(rows, drop),
            "attr_q": {s: v[qids].astype(np.float32) for s, v in d.text_vectors.items()},
            "attr_pos": matches(d.text_codes[qids], d.codes.codes[rows]),
            "doc_q": {q: d.products[p][rows].astype(np.float32) for q, p in docs.items()},
            "doc_pos": (d.doc_group[rows][:, None] == d.doc_group[rows][None, :])
            & drop[None, :],
        }
        if self.tags:  # attribute codes of every input (-1: unknown / not named)
            batch |= {"prod_tags": d.codes.codes[rows][:, self.tags].astype(np.int64),
                      "attr_tags": d.text_codes[qids][:, self.tags].astype(np.int64)}
        photos = self._cycle(self.photos, epoch, step, self.photo_local, 2)
        if len(photos):
            prow = d.photo_rows[photos]
            neg = np.full(len(prow), -1, dtype=np.int64)
            for i, r in enumerate(prow):
                members = self.siblings.get(int(d.sibling_group[r]))
                if members is not None:
                    j = members[int(rng.integers(len(members)))]
                    if j == r:
                        j = members[(int(np.searchsorted(members, r)) + 1) % len(members)]
                    neg[i] = j
            pdrop = rng.random(len(prow)) < c.photo_text_drop
            batch |= {
                "photo_q": {s: v[photos].astype(np.float32) for s, v in
                            d.photo_vectors.items()},
                "photo_prod": self._slots(prow, pdrop),
                "photo_pos": prow[:, None] == prow[None, :],
                "photo_neg": self._slots(np.maximum(neg, 0), pdrop),
                "photo_neg_ok": neg >= 0,
            }

        logged = self._cycle(self.logged, epoch, step, self.logged_local, 4)
        if len(logged) and d.logged is not None:
            lrows = d.logged.rows[logged]
            lq = d.logged.query[logged]
            batch |= {
                "log_q": {s: v[lq].astype(np.float32) for s, v in d.text_vectors.items()},
                "log_prod": self._slots(lrows),
                "log_label": d.logged.labels[logged],
                "log_weight": d.logged.weights[logged],
                "log_pos": (lrows[:, None] == lrows[None, :])
                & (d.logged.labels[logged] > 0)[None, :] & (d.logged.labels[logged] > 0)[:, None],
            }
        return batch


def to_torch(batch: Any, device: torch.device) -> Any:
    """The batch's arrays as tensors on ``device`` (nested dicts kept)."""
    if isinstance(batch, dict):
        return {k: to_torch(v, device) for k, v in batch.items()}
    return torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True)
