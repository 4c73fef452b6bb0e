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
Photo queries may take their own share ``p`` (``photo_share``), applied to the query's two
parts alone: against the same product vectors they score ``(1 - p) * learned cosine +
p * training-free cosine``.

A head may also read products' **tags** (attribute values: colour, category, gender...)
from their slots: a small classifier per group of slots (the photo's, the words') gives,
per tag, value logits and how surely that group speaks to the tag at all. Groups combine
as a product of experts (``L = sum_g named_g * logits_g``), and the output gains a tag
block, blended like the training-free part with a share ``t`` (``tag_share``) chosen on the
validation split: the output's cosine is ``(1 - t) * [the blend above] + t * tag score``.
Queries and products differ here (``fuse(..., query=True)``): a query's block carries only
what its words name (``query_tag_groups``), so photo search is never swayed by a misread
colour, and with ``tag_scoring = "log"`` a query-product pair scores the product's
log-probability of the values the words ask for (naive-Bayes style; a filler column keeps
every product's block at the same norm, so the cosine ranks by it fairly). A tag the words
leave open adds nothing. This is what lets attribute words reach a product that has only a
photo: a classifier trained with cross-entropy reads colour, category and gender from
EfficientNet features better than a contrastive space of the same features ranks them,
and it lets words match products' own words attribute by attribute.

Artifacts are a folder with ``head.safetensors`` and ``head.json`` (architecture, slot
names and dims, the weights' sha256, training config and metrics), and, when the head
was trained with one, ``photo_tail.safetensors``: the image encoder's tail fine-tuned for
query photos (:mod:`retrieval.photo_tail`). Loading checks the hashes and the shapes: a
corrupted or mismatched artifact is refused with a clear error.
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
from retrieval.photo_tail import PhotoTail, TailError

WEIGHTS = "head.safetensors"
CONFIG = "head.json"
TAG_SCORINGS = ("sqrt", "log")
TAG_EPS = 1e-4  # the least probability a "log" tag block tells apart
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
        photo_share: A photo query's own share of the training-free cosine (``None``:
            ``base_share``), set on the query side alone: products keep ``base_share``,
            and a query whose slots are all ``photo_slots`` scores
            ``(1 - p) * learned cosine + p * training-free cosine``; 1 ranks photos as
            the training-free fusion does.
        photo_slots: The slots a photo fills (which queries ``photo_share`` is for).
    """

    slots: tuple[tuple[str, int], ...]
    dim: int = 256
    hidden: int = 512
    dropout: float = 0.1
    base_weights: tuple[float, ...] = ()
    base_share: float = 0.0
    tags: tuple[tuple[str, int], ...] = ()
    tag_groups: tuple[tuple[str, ...], ...] = ()
    tag_hidden: int = 512
    tag_share: float = 0.0
    query_tag_groups: tuple[tuple[str, ...], ...] = ()
    tag_scoring: str = "log"
    memory: int = 0
    memory_slots: tuple[str, ...] = ()
    memory_k: int = 50
    memory_tau: float = 0.05
    memory_eps: float = 0.01
    memory_weight: float = 0.0
    photo_share: float | None = None
    photo_slots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.base_share < 1.0:
            raise ValueError(f"base_share is in [0, 1) (got {self.base_share}).")
        if self.photo_share is not None and (
                not 0.0 <= self.photo_share <= 1.0 or not self.base_share
                or not self.photo_slots
                or not set(self.photo_slots) <= {n for n, _ in self.slots}):
            raise ValueError(f"photo_share is in [0, 1] and needs a base_share above 0 and "
                             f"photo_slots among the head's slots (got {self.photo_share}, "
                             f"{self.base_share}, {self.photo_slots}).")
        if self.base_share and len(self.base_weights) != len(self.slots):
            raise ValueError(f"base_weights needs one weight per slot ({len(self.slots)}), "
                             f"got {len(self.base_weights)}.")
        if not 0.0 <= self.tag_share < 1.0:
            raise ValueError(f"tag_share is in [0, 1) (got {self.tag_share}).")
        if bool(self.tags) != bool(self.tag_groups) or (self.tag_share and not self.tags):
            raise ValueError("tags and tag_groups go together (both empty: no tag block), "
                             "and tag_share needs tags.")
        names = {n for n, _ in self.slots}
        unknown = sorted({s for g in self.tag_groups for s in g} - names)
        if unknown:
            raise ValueError(f"tag_groups name slots the head does not take: {unknown}.")
        if any(g not in self.tag_groups for g in self.query_tag_groups):
            raise ValueError(f"query_tag_groups {self.query_tag_groups} must be among "
                             f"tag_groups {self.tag_groups}.")
        if self.tag_scoring not in TAG_SCORINGS:
            raise ValueError(f"tag_scoring is one of {TAG_SCORINGS} (got {self.tag_scoring!r}).")
        if self.memory and (not self.tags or not self.memory_slots
                            or not set(self.memory_slots) <= names):
            raise ValueError("A tag memory needs tags and memory_slots among the head's slots.")
        if self.memory_weight < 0 or self.memory_k < 1 or self.memory_tau <= 0:
            raise ValueError("memory_weight must be at least 0, memory_k at least 1 and "
                             "memory_tau positive.")
        if any(k < 2 for _, k in self.tags):
            raise ValueError(f"every tag needs at least two values (got {self.tags}).")

    @property
    def tag_width(self) -> int:
        """Width of the tag block: one column per value of every tag (and one more per
        tag that keeps a product's block at a fixed norm when scoring by log-probability)."""
        return sum(k + (self.tag_scoring == "log") for _, k in self.tags)

    @property
    def out_dim(self) -> int:
        """Width of the fused vectors: the shared space, plus the slots when blended,
        plus the tag block when blended."""
        return (self.dim + (sum(d for _, d in self.slots) if self.base_share else 0)
                + (self.tag_width if self.tag_share else 0))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["slots"] = [list(s) for s in self.slots]
        out["base_weights"] = list(self.base_weights)
        out["tags"] = [list(t) for t in self.tags]
        out["tag_groups"] = [list(g) for g in self.tag_groups]
        out["query_tag_groups"] = [list(g) for g in self.query_tag_groups]
        out["memory_slots"] = list(self.memory_slots)
        out["photo_slots"] = list(self.photo_slots)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadConfig:
        return cls(slots=tuple((str(n), int(d)) for n, d in data["slots"]),
                   dim=int(data["dim"]), hidden=int(data["hidden"]),
                   dropout=float(data.get("dropout", 0.0)),
                   base_weights=tuple(float(w) for w in data.get("base_weights", ())),
                   base_share=float(data.get("base_share", 0.0)),
                   tags=tuple((str(n), int(k)) for n, k in data.get("tags", ())),
                   tag_groups=tuple(tuple(str(s) for s in g)
                                    for g in data.get("tag_groups", ())),
                   tag_hidden=int(data.get("tag_hidden", 512)),
                   tag_share=float(data.get("tag_share", 0.0)),
                   query_tag_groups=tuple(tuple(str(s) for s in g)
                                          for g in data.get("query_tag_groups", ())),
                   tag_scoring=str(data.get("tag_scoring", "log")),
                   memory=int(data.get("memory", 0)),
                   memory_slots=tuple(str(s) for s in data.get("memory_slots", ())),
                   memory_k=int(data.get("memory_k", 50)),
                   memory_tau=float(data.get("memory_tau", 0.05)),
                   memory_eps=float(data.get("memory_eps", 0.01)),
                   memory_weight=float(data.get("memory_weight", 0.0)),
                   photo_share=None if data.get("photo_share") is None
                   else float(data["photo_share"]),
                   photo_slots=tuple(str(s) for s in data.get("photo_slots", ())))


@dataclass
class TagOutputs:
    """What a head reads about the tags of a batch of inputs.

    Attributes:
        logits: Per tag, the groups' combined value logits ``(n, k)``.
        named: ``(n, n_tags)``: how surely any present group speaks to each tag.
        groups: Per present group: its value logits ``(n, sum k)``, its "names the tag"
            logits ``(n, n_tags)`` and which rows have it ``(n,)`` (for training).
    """

    logits: list[torch.Tensor]
    named: torch.Tensor
    groups: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

    def block(self, scoring: str = "sqrt", query: bool = False) -> torch.Tensor:
        """The rows' tag block, over ``sqrt(n_tags)``.

        ``sqrt``: ``named * sqrt(p)`` per tag for queries and products alike (a pair scores
        the Bhattacharyya agreement of their distributions). ``log``: a product holds
        ``named * log(max(p, eps)) / (sqrt(k) |log eps|)`` and a filler column that brings
        each tag to norm ``named``; a query holds ``named * p * sqrt(k)`` and a zero filler,
        so a pair scores ``sum_v p_query(v) log p_product(v) / |log eps|`` per tag: the
        product's log-probability of what the words ask, as in a naive-Bayes match.
        """
        parts = []
        for i, logit in enumerate(self.logits):
            named = self.named[:, i:i + 1]
            p = torch.softmax(logit.float(), dim=1)
            if scoring == "sqrt":
                parts.append(named * p.sqrt())
                continue
            scale = math.sqrt(p.shape[1])
            if query:
                parts += [named * p * scale, named.new_zeros((len(p), 1))]
            else:
                u = torch.log(p.clamp_min(TAG_EPS)) / (scale * -math.log(TAG_EPS))
                filler = (1.0 - (u * u).sum(dim=1, keepdim=True)).clamp_min(0.0).sqrt()
                parts += [named * u, named * filler]
        return torch.cat(parts, dim=1) / math.sqrt(len(self.logits))


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
        dims = dict(config.slots)
        self.taggers = nn.ModuleDict({
            group_key(group): nn.Sequential(
                nn.Linear(sum(dims[s] for s in group), config.tag_hidden), nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(config.tag_hidden, sum(k for _, k in config.tags) + len(config.tags)))
            for group in config.tag_groups})
        if config.memory:  # labelled products' photo embeddings and tag codes (see with_memory)
            # float16 keys and int16 codes: 0.5 KB a product (18 MB for 35k)
            self.register_buffer("memory_keys", torch.zeros(config.memory, config.dim,
                                                            dtype=torch.float16))
            self.register_buffer("memory_tags", torch.full((config.memory, len(config.tags)),
                                                           -1, dtype=torch.int16))

    def forward(self, slots: Mapping[str, torch.Tensor | None], query: bool = False
                ) -> torch.Tensor:
        """Fused ``(n, out_dim)``, unit length when every part is; a slot missing
        (``None`` or all-zero rows) does not contribute. ``query``: the rows are queries,
        whose tag block holds only what ``query_tag_groups`` (their words) name, scaled by
        ``1 / (1 - tag_share)`` so that a query . product is the untagged blend's cosine
        plus ``tag_share / (1 - tag_share)`` times the (non-positive) tag score."""
        learned = self.learned(slots)
        share = self.config.base_share
        out = learned
        if share:
            parts = []
            for (name, dim), weight in zip(self.config.slots, self.config.base_weights,
                                           strict=True):
                x = slots.get(name)
                parts.append(learned.new_zeros((len(learned), dim)) if x is None
                             else math.sqrt(weight) * x.to(learned.dtype))
            base = nn.functional.normalize(torch.cat(parts, dim=1), dim=1)
            learned_w = learned.new_full((len(learned), 1), math.sqrt(1.0 - share))
            base_w = learned.new_full((len(learned), 1), math.sqrt(share))
            photo = self.config.photo_share
            if query and photo is not None:
                # Rows of photo queries score (1 - p) learned + p training-free cosine
                # against products blended with base_share s.
                rows = self._photo_rows(slots, len(learned)).unsqueeze(1)
                learned_w = torch.where(rows, (1.0 - photo) / math.sqrt(1.0 - share),
                                        learned_w)
                base_w = torch.where(rows, photo / math.sqrt(share), base_w)
            out = torch.cat([learned_w * learned, base_w * base], dim=1)
        tag_share = self.config.tag_share
        if tag_share:
            block = self.tag_block(slots, query).to(out.dtype)
            out = torch.cat([math.sqrt(1.0 - tag_share) * out, math.sqrt(tag_share) * block],
                            dim=1)
            if query:  # scores on the untagged scale: cosine + t / (1 - t) * tag score
                out = out / (1.0 - tag_share)
        return out

    def _photo_rows(self, slots: Mapping[str, torch.Tensor | None], n: int) -> torch.Tensor:
        """``(n,)`` bool: the rows that fill only ``photo_slots`` (photo queries)."""
        photo = other = None
        for name, x in slots.items():
            if x is None:
                continue
            present = x.abs().sum(dim=1) > 0
            if name in self.config.photo_slots:
                photo = present if photo is None else photo | present
            else:
                other = present if other is None else other | present
        if photo is None:
            return torch.zeros(n, dtype=torch.bool, device=self.gate.device)
        return photo if other is None else photo & ~other

    def learned(self, slots: Mapping[str, torch.Tensor | None]) -> torch.Tensor:
        """The shared space alone: the normalised, gated sum of the slots' projections."""
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
        return nn.functional.normalize(total, dim=1)

    def with_memory(self, keys: torch.Tensor, tags: torch.Tensor, weight: float, *,
                    slots: Sequence[str], k: int = 50, tau: float = 0.05) -> FusionHead:
        """This head with a tag memory: labelled products' embeddings (``keys``, the shared
        space from ``slots`` alone) and their tag codes (``-1`` unknown). A product's tags
        are then also voted by its ``k`` nearest neighbours in the memory (softmax of
        cosine / ``tau``), blended into the classifier's as a product of experts with
        ``weight`` (0: the memory is carried but unused)."""
        config = replace(self.config, memory=len(keys), memory_slots=tuple(slots),
                         memory_k=int(k), memory_tau=float(tau), memory_weight=float(weight))
        head = FusionHead(config)
        state = {k_: v for k_, v in self.state_dict().items() if not k_.startswith("memory_")}
        head.load_state_dict({**state, "memory_keys": keys.half(),
                              "memory_tags": tags.short()})
        return head.train(self.training)

    def memory_votes(self, slots: Mapping[str, torch.Tensor | None], chunk: int = 1024
                     ) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """Per tag, the neighbours' vote ``(n, k)`` (weights summing to at most 1), and
        which rows have the memory slots; ``None`` when there is no memory to ask."""
        c = self.config
        if not c.memory or not any(slots.get(s) is not None for s in c.memory_slots):
            return None
        ref = next(slots[s] for s in c.memory_slots if slots.get(s) is not None)
        present = torch.stack([(slots[s].abs().sum(dim=1) > 0) for s in c.memory_slots
                               if slots.get(s) is not None]).any(dim=0)
        keys = self.memory_keys.to(ref.dtype)
        sizes = [k for _, k in c.tags]
        votes = [ref.new_zeros((len(ref), k)) for k in sizes]
        k = min(c.memory_k, c.memory)
        for start in range(0, len(ref), chunk):
            part = {s: slots[s][start:start + chunk] for s in c.memory_slots
                    if slots.get(s) is not None}
            sims, idx = (self.learned(part) @ keys.T).topk(k, dim=1)
            w = torch.softmax(sims / c.memory_tau, dim=1)
            labels = self.memory_tags[idx].long()  # (rows, k, n_tags)
            for t in range(len(sizes)):
                lab = labels[:, :, t]
                ok = lab >= 0
                votes[t][start:start + chunk].scatter_add_(
                    1, lab.clamp_min(0), w * ok.to(w.dtype))
        return votes, present

    def tag_block(self, slots: Mapping[str, torch.Tensor | None], query: bool = False
                  ) -> torch.Tensor:
        """The tag block of products (every group) or of queries (``query_tag_groups``
        only: a shopper's photo brings no tags of its own, so photo search is not swayed by
        a misread colour, while the words' "red" meets the products' photos)."""
        groups = self.config.query_tag_groups if query and self.config.query_tag_groups \
            else None
        if groups is not None and not any(slots.get(s) is not None
                                          for g in groups for s in g):
            ref = next(x for x in slots.values() if x is not None)
            return ref.new_zeros((len(ref), self.config.tag_width))
        read = self.read_tags(slots, groups) if query else self.product_tags(slots)
        return read.block(self.config.tag_scoring, query)

    def product_tags(self, slots: Mapping[str, torch.Tensor | None]) -> TagOutputs:
        """A product's tags: every group's reading, and the memory's neighbours' vote as
        one more expert (weighted by ``memory_weight``) where the product has a photo."""
        read = self.read_tags(slots)
        found = self.memory_votes(slots) if self.config.memory_weight else None
        if found is not None:
            votes, present = found
            weight = self.config.memory_weight * present[:, None].to(votes[0].dtype)
            read.logits = [logit + weight * torch.log(vote + self.config.memory_eps)
                           for logit, vote in zip(read.logits, votes, strict=True)]
        return read

    def read_tags(self, slots: Mapping[str, torch.Tensor | None],
                  groups: Sequence[Sequence[str]] | None = None) -> TagOutputs:
        """The tags' value logits and "named" confidences from the groups present.

        A group is present in a row when any of its slots is (missing slots read as zeros).
        Groups combine as experts: their value logits, each weighted by how surely that
        group names the tag, are summed; a tag is named when any group names it.

        Raises:
            ValueError: The head reads no tags, or no group has a slot in ``slots``.
        """
        if not self.config.tags:
            raise ValueError("This head reads no tags (trained without them).")
        dims = dict(self.config.slots)
        sizes = [k for _, k in self.config.tags]
        n_tags = len(sizes)
        combined: torch.Tensor | None = None
        unnamed: torch.Tensor | None = None
        read = {}
        for group in (self.config.tag_groups if groups is None else groups):
            group = tuple(group)
            given = [slots.get(s) for s in group]
            if all(x is None for x in given):
                continue
            rows = next(len(x) for x in given if x is not None)
            ref = next(x for x in given if x is not None)
            xs = [ref.new_zeros((rows, dims[s])) if x is None else x
                  for s, x in zip(group, given, strict=True)]
            present = torch.stack([(x.abs().sum(dim=1) > 0) for x in xs]).any(dim=0)
            out = self.taggers[group_key(group)](torch.cat(xs, dim=1))
            values, named_logit = out[:, :-n_tags], out[:, -n_tags:]
            named = torch.sigmoid(named_logit) * present[:, None].to(out.dtype)
            weights = torch.repeat_interleave(named, torch.tensor(sizes, device=out.device),
                                              dim=1)
            part = weights * values
            combined = part if combined is None else combined + part
            unnamed = 1.0 - named if unnamed is None else unnamed * (1.0 - named)
            read[group_key(group)] = (values, named_logit, present)
        if combined is None or unnamed is None:
            raise ValueError(f"No slot of the tag groups {self.config.tag_groups} given.")
        return TagOutputs(list(torch.split(combined, sizes, dim=1)), 1.0 - unnamed, read)

    def with_base_share(self, share: float, weights: Sequence[float] | None = None, *,
                        tag_share: float | None = None, memory_weight: float | None = None,
                        photo_share: float | None = None,
                        photo_slots: Sequence[str] | None = None) -> FusionHead:
        """The same trained weights with another share of the training-free fusion (and,
        when given, of the tag block, another weight of the tag memory's vote, and photo
        queries' own share of the training-free cosine)."""
        config = replace(self.config, base_share=float(share),
                         photo_share=self.config.photo_share if photo_share is None
                         else float(photo_share),
                         photo_slots=self.config.photo_slots if photo_slots is None
                         else tuple(photo_slots),
                         base_weights=tuple(weights) if weights is not None
                         else self.config.base_weights,
                         tag_share=self.config.tag_share if tag_share is None
                         else float(tag_share),
                         memory_weight=self.config.memory_weight if memory_weight is None
                         else float(memory_weight))
        head = FusionHead(config)
        head.load_state_dict(self.state_dict())
        return head.train(self.training)


def group_key(group: Sequence[str]) -> str:
    """The module name of a tag group's classifier ("image+colour")."""
    return "+".join(group)


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


def check_finite(tensors: Mapping[str, torch.Tensor], folder: str | Path, command: str
                 ) -> None:
    """Raises ArtifactError when a weight of the artifact in ``folder`` is NaN or infinite
    (a run that diverged): serving it would score every product NaN."""
    bad = sorted(k for k, v in tensors.items()
                 if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ArtifactError(f"The artifact {folder} has non-finite weights ({', '.join(bad[:3])}"
                            f"{', ...' if len(bad) > 3 else ''}): its training diverged. Do "
                            f"not serve it; retrain with a lower lr (`{command}`).")


def load_head(folder: str | Path) -> tuple[FusionHead, dict[str, Any]]:
    """Loads and verifies a fusion head artifact (its photo tail included).

    Raises:
        ArtifactError: Missing files, a hash mismatch (corruption), unreadable weights or
            shapes that do not fit the recorded architecture.
    """
    head, meta, _tail = _load_artifact(folder)
    return head, meta


def _load_artifact(folder: str | Path) -> tuple[FusionHead, dict[str, Any], PhotoTail | None]:
    meta, path = read_verified(folder, CONFIG, WEIGHTS, kind="fusion-head", fmt=FORMAT,
                               what="a fusion head", command="shopassist train fusion")
    config = HeadConfig.from_dict(meta["architecture"])
    head = FusionHead(config)
    try:
        tensors = load_file(str(path))
        head.load_state_dict(tensors)
    except (SafetensorError, RuntimeError) as exc:
        raise ArtifactError(f"{path} does not fit its recorded architecture ({exc}).") from None
    check_finite(tensors, folder, "shopassist train fusion")
    tail = load_tail(folder, meta)  # a damaged tail is refused with the rest
    head.eval()
    return head, meta, tail


def load_tail(folder: str | Path, meta: Mapping[str, Any]) -> PhotoTail | None:
    """The photo tail a head artifact carries (``None`` when it has none).

    Raises:
        ArtifactError: The tail is missing, corrupted or diverged.
    """
    if not meta.get("photo_tail"):
        return None
    try:
        return PhotoTail.load(folder, meta["photo_tail"])
    except (TailError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"The photo tail of {folder} cannot be used: {exc}") from None


class LearnedFusion:
    """The :class:`retrieval.fusion.Fusion` protocol over a trained :class:`FusionHead`."""

    def __init__(self, head: FusionHead, meta: Mapping[str, Any], folder: Path,
                 tail: PhotoTail | None = None) -> None:
        self.head = head.eval()
        self.tail = tail
        self.meta = dict(meta)
        self.folder = folder
        self.dim = head.config.out_dim
        self.version = f"head-{str(meta['sha256'])[:12]}"
        self.slot_names = list(head.names)

    @classmethod
    def load(cls, folder: str | Path) -> LearnedFusion:
        head, meta, tail = _load_artifact(folder)
        return cls(head, meta, Path(folder), tail)

    def query_encoder(self, slot: str, base: Any) -> Any:
        """The encoder for query photos of ``slot``: ``base`` with the head's fine-tuned
        tail when it has one for that slot, else ``base``."""
        if self.tail is None or self.tail.slot != slot:
            return base
        return self.tail.tuned_encoder(base)

    def check_slots(self, slots: Sequence[tuple[str, int]]) -> None:
        """Refuses an index whose slots (names, dims) differ from the head's inputs."""
        have = [tuple(s) for s in self.head.config.slots]
        if list(slots) != have:
            raise ArtifactError(f"The fusion head was trained on slots {have}, but the index "
                                f"has {list(slots)}; train a head for this index's profile.")

    @torch.inference_mode()
    def fuse(self, slots: Mapping[str, np.ndarray | None], n: int, *, query: bool = False,
             batch: int = 8192) -> np.ndarray:
        out = []
        for start in range(0, n, batch):
            part = {name: torch.from_numpy(np.ascontiguousarray(
                        v[start:start + batch], dtype=np.float32))
                    for name, v in slots.items() if v is not None}
            out.append(self.head(part, query=query).numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        fused = np.concatenate(out)
        # Products are unit length. A query with a tag block is left as the head scales it,
        # so its dot product with a product is the untagged blend's cosine plus the tag
        # score's penalty (a photo query's is exactly the cosine): scores keep the scale a
        # ranker and a shopper's screen expect, whatever the words name.
        return fused.astype(np.float32) if query and self.head.config.tag_share \
            else l2_normalise(fused)

    def to_dict(self) -> dict[str, object]:
        return {"kind": "learned-head", "version": self.version,
                "sha256": self.meta["sha256"], "architecture": self.meta["architecture"],
                "slots": [{"name": n, "dim": d} for n, d in self.head.config.slots],
                "trained": {k: v for k, v in self.meta.items()
                            if k in ("data_snapshot", "metrics", "created")}}
