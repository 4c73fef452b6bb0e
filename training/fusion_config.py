"""The fusion-head training configuration: a frozen dataclass read from ``[train.fusion]``.

Precedence, lowest to highest: the defaults below, the ``[train.fusion]`` table of the TOML
file (``--config``, ``$SHOPASSIST_CONFIG`` or ``./shopassist.toml``: the same file as the
engine's ``[retrieval]`` settings), ``SHOPASSIST_FUSION_<FIELD>`` environment variables, then
explicit overrides. The defaults train a head on the 44k catalog's stored vectors in well
under 10 minutes on 2 CPU cores (see the README's learning-loop figures). The loading
machinery is :mod:`training.config_tables`, shared with the ranker's ``[train.ranker]``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training.config_tables import (
    apply_values,
    check_fractions,
    check_numbers,
    check_precision,
    load_section,
)
from training.fusion_queries import QUERY_ATTRIBUTES

ENV_PREFIX = "SHOPASSIST_FUSION_"
MONITORS = ("mean", "text_photo_ndcg", "photo_r1")


@dataclass(frozen=True, kw_only=True)
class FusionConfig:
    """How a fusion head is trained (architecture, optimisation, data).

    Attributes:
        seed: Seeds the data order, sampling, photos and initialisation.
        dim: Width of the head's shared space.
        hidden: Width of each slot's MLP.
        dropout: Dropout inside the MLPs.
        epochs: Most passes over the training products.
        batch_size: Products (and their text queries) per optimiser step, over all processes.
        photo_batch: Photo queries per step, over all processes.
        logged_batch: Logged query-product pairs per step (when a dataset is given).
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up before the cosine decay.
        temperature: InfoNCE softmax temperature.
        text_drop: Probability that a product is shown to a query with its text slots
            dropped (image slots only): what teaches words to reach photos.
        photo_text_drop: The same for the products of photo queries.
        w_attribute: Weight of attribute queries' InfoNCE.
        w_document: Weight of the product text <-> product photo InfoNCE.
        w_photo: Weight of photo queries' InfoNCE.
        w_match: Weight of the match BCE on positives and hard negatives.
        w_logged: Weight of the logged pairs' losses.
        patience: Epochs without improvement of the monitored metric before stopping.
        min_delta: The least change that counts as an improvement.
        monitor: ``text_photo_ndcg`` (default: the blend with the training-free fusion
            keeps photo precision, so the learned space is chosen for what only it does),
            ``photo_r1`` or ``mean`` (of the two).
        max_minutes: Training stops (keeping the best epoch) after this many minutes.
        texts_per_product: Attribute phrasings drawn per training product.
        price_share: Share of phrasings with price words ("under 1500").
        photos_per_larger: Shoppers' photos per training product with a larger photo.
        catalog_photos: Training products photographed from their catalog photo.
        eval_catalog_photos: Validation (and test) products photographed likewise.
        photos_dir: Folder of larger photos ``<product_id>.jpg`` ("" = the shared data's
            ``fashion_300px/images`` when present).
        eval_queries: Held-out attribute queries per validation / test split.
        eval_min_relevant: A held-out query is asked only of attributes that at least this
            many held-out products have.
        fractions: Shares of products in train, valid and test.
        dataset: Logged pairs: a ``shopassist dataset`` folder or an event log (SQLite
            path or URL; "" = catalog self-supervision only).
        mixed_precision: ``auto`` (bf16 on CUDA where supported, else fp16; none on CPU),
            ``no``, ``fp16`` or ``bf16``.
        base_shares: Shares of the training-free fusion's cosine blended into the head's
            (see :mod:`retrieval.fusion_head`) tried on the validation split after
            training; the one with the best photo R@1 + text -> product NDCG@10 is kept.
            ``[0.0]`` keeps the learned space alone.
        tags: Catalog attributes the head learns to read from products' slots (their
            photo alone, or their words) and blends in as a tag-agreement block; empty:
            none. Attributes the catalog lacks are skipped.
        tag_hidden: Width of each slot group's tag classifier.
        w_tags: Weight of the tags' cross-entropy (values) and BCE (named or not).
        tag_shares: Shares of the tag block in the output's cosine tried on the validation
            split after the base share is chosen; the best text -> photo + text -> product
            NDCG@10 is kept (photo queries carry no tags). ``[0.0]``: trained but not
            blended.
        photo_shares: Photo queries' own shares of the training-free cosine tried on the
            validation split after the tag share (the products keep the base share, so the
            index needs no re-fusing); the best photo R@1 is kept, the base share itself
            included. 1 ranks photos as the training-free fusion does. ``[]``: none.
        photo_tail: Before the head, fine-tune the image encoder's last blocks for
            shoppers' photos, query side only (:mod:`training.photo_tail`); the head trains
            on, and serves, the tuned encoder's photo vectors. Needs an encoder that can take
            a tail (EfficientNet); skipped otherwise.
        tail_photos: Extra shoppers' photos for the tail, of training products the data has
            no photo of (made once; their trunk maps are cached).
        tail_larger_photos: More shots of every training product's larger photo, for the
            tail only (the data has ``photos_per_larger``).
        tail_epochs: Passes over the tail's training photos.
        tail_lr: Peak learning rate of the tail (AdamW, one-cycle).
        tail_temperature: Softmax temperature of the tail's whole-catalog cross-entropy.
        tail_batch: Photos per step of the tail.
        tail_max_minutes: The tail stops after the epoch that passes this budget.
        memory_weights: Weights of the tag memory's vote tried with each tag share: the
            trained head embeds the training products' photos, and a product's tags are
            also voted by its ``memory_k`` nearest neighbours among them (softmax of
            cosine / ``memory_tau``). ``[0.0]``: no memory in the artifact.
        memory_k: Neighbours that vote.
        memory_tau: Softmax temperature of their votes.
    """

    seed: int = 0
    dim: int = 256
    hidden: int = 1024
    dropout: float = 0.1
    epochs: int = 40
    batch_size: int = 512
    photo_batch: int = 256
    logged_batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    temperature: float = 0.05
    text_drop: float = 0.8
    photo_text_drop: float = 0.0
    w_attribute: float = 1.0
    w_document: float = 0.5
    w_photo: float = 1.0
    w_match: float = 0.5
    w_logged: float = 1.0
    patience: int = 5
    min_delta: float = 0.002
    monitor: str = "text_photo_ndcg"
    max_minutes: float = 9.0
    texts_per_product: int = 4
    price_share: float = 0.2
    photos_per_larger: int = 3
    catalog_photos: int = 8000
    eval_catalog_photos: int = 400
    photos_dir: str = ""
    eval_queries: int = 300
    eval_min_relevant: int = 3
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    dataset: str = ""
    mixed_precision: str = "auto"
    base_shares: tuple[float, ...] = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
    tags: tuple[str, ...] = ("category", "colour", "gender", "subcategory", "usage", "season")
    tag_hidden: int = 1024
    w_tags: float = 1.0
    tag_shares: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7)
    memory_weights: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    photo_shares: tuple[float, ...] = (0.85, 0.9, 0.95, 1.0)
    memory_k: int = 50
    memory_tau: float = 0.05
    photo_tail: bool = True
    tail_photos: int = 20000
    tail_larger_photos: int = 0
    tail_epochs: int = 3
    tail_lr: float = 3e-4
    tail_temperature: float = 0.05
    tail_batch: int = 64
    tail_max_minutes: float = 6.0

    def __post_init__(self) -> None:
        check_numbers(self, at_least_one=("dim", "hidden", "epochs", "patience",
                                          "texts_per_product"))
        if self.lr <= 0 or self.temperature <= 0 or self.max_minutes <= 0:
            raise ValueError(f"lr, temperature and max_minutes must be positive (got lr = "
                             f"{self.lr}, temperature = {self.temperature}, max_minutes = "
                             f"{self.max_minutes}).")
        if not 0.0 <= self.dropout < 1.0 or self.warmup_steps < 0:
            raise ValueError(f"dropout is in [0, 1) and warmup_steps at least 0 (got "
                             f"{self.dropout}, {self.warmup_steps}).")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {', '.join(MONITORS)} "
                             f"(got {self.monitor!r}).")
        if not 0.0 <= self.text_drop <= 1.0 or not 0.0 <= self.photo_text_drop <= 1.0:
            raise ValueError("text_drop and photo_text_drop are probabilities in [0, 1].")
        if self.batch_size < 2 or self.photo_batch < 0 or self.epochs < 1:
            raise ValueError("batch_size must be at least 2, photo_batch at least 0 and "
                             "epochs at least 1.")
        check_precision(self.mixed_precision)
        if not self.base_shares or not all(0.0 <= v < 1.0 for v in self.base_shares):
            raise ValueError(f"base_shares are one or more shares in [0, 1) (got "
                             f"{self.base_shares}).")
        check_fractions(self.fractions)
        if not self.tag_shares or not all(0.0 <= v < 1.0 for v in self.tag_shares):
            raise ValueError(f"tag_shares are one or more shares in [0, 1) (got "
                             f"{self.tag_shares}).")
        if not all(0.0 <= v <= 1.0 for v in self.photo_shares):
            raise ValueError(f"photo_shares are shares in [0, 1] (got {self.photo_shares}).")
        unknown = [t for t in self.tags if t not in QUERY_ATTRIBUTES]
        if unknown:
            raise ValueError(f"Unknown tags {unknown}; a head can read "
                             f"{', '.join(QUERY_ATTRIBUTES)}.")
        if not self.memory_weights or any(w < 0 for w in self.memory_weights) \
                or self.memory_k < 1 or self.memory_tau <= 0:
            raise ValueError("memory_weights are one or more weights >= 0, memory_k at least "
                             "1 and memory_tau positive.")
        if self.tail_photos < 0 or self.tail_larger_photos < 0 or self.tail_epochs < 1 \
                or self.tail_batch < 2 or not self.tail_lr > 0 or not self.tail_temperature > 0 \
                or not self.tail_max_minutes > 0:
            raise ValueError("tail_photos and tail_larger_photos must be at least 0, "
                             "tail_epochs at least 1, "
                             "tail_batch at least 2, and tail_lr, tail_temperature and "
                             "tail_max_minutes positive.")
        if self.tag_hidden < 1 or self.w_tags < 0:
            raise ValueError("tag_hidden must be positive and w_tags at least 0.")

    def replace(self, **changes: Any) -> FusionConfig:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fractions"] = list(self.fractions)
        out["base_shares"] = list(self.base_shares)
        out["tags"] = list(self.tags)
        out["tag_shares"] = list(self.tag_shares)
        out["memory_weights"] = list(self.memory_weights)
        out["photo_shares"] = list(self.photo_shares)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "config") -> FusionConfig:
        return _apply(cls(), data, where)


def _apply(base: FusionConfig, values: Mapping[str, Any], where: str) -> FusionConfig:
    return apply_values(base, values, where)


def load_fusion_config(config_file: str | os.PathLike[str] | None = None,
                       environ: Mapping[str, str] | None = None, **overrides: Any
                       ) -> FusionConfig:
    """Resolves the training configuration (see the module docstring for precedence).

    Raises:
        FileNotFoundError: ``config_file`` (or ``$SHOPASSIST_CONFIG``) does not exist.
        ValueError: Unknown keys, wrong types or invalid values.
    """
    return load_section(FusionConfig, "fusion", ENV_PREFIX, config_file, environ, **overrides)
