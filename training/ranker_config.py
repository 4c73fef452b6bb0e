"""Configuration of ranking-head training: one frozen dataclass, from ``[train.ranker]``.

Resolved like the fusion head's (:mod:`training.config_tables`): defaults, the
``[train.ranker]`` table of the TOML config, ``SHOPASSIST_RANKER_<FIELD>`` environment
variables, then explicit overrides. The defaults train on 100k logged impressions in well
under 5 minutes on 2 CPU cores (see ``benchmarks/ranker.py``).
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

ENV_PREFIX = "SHOPASSIST_RANKER_"
MONITORS = ("graded", "purchased", "clicked", "loss")
CONVERSIONS = ("purchased", "added_to_cart")
HISTORIES = ("session", "user", "none")


@dataclass(frozen=True, kw_only=True)
class RankerConfig:
    """How a ranking head is trained, and how the engine blends its predictions.

    Attributes:
        seed: Seeds the initialisation and the order of the rows.
        hidden: Width of the shared layer.
        tower: Width of each task's tower.
        embed_dim: Width of each attribute's hashed embedding.
        buckets: Hash buckets per attribute.
        dropout: Dropout after the shared layer.
        epochs: Most passes over the training impressions.
        batch_size: Impressions per optimiser step, over all processes.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up before the cosine decay.
        lambda_click: λ1, weight of the click loss (pCTR).
        lambda_convert: λ2, weight of the conversion loss (pCTCVR over every impression).
        lambda_stay: λ3, weight of the dwell loss (log dwell of clicked impressions).
        lambda_list: λ4, weight of a listwise click term (which product of a list was
            clicked; :func:`training.ranker_losses.list_loss`); 0 leaves it out.
        conversion: The label a conversion is: ``purchased`` or ``added_to_cart``.
        history: Whose earlier lists feed the history features: the same shopper across
            their conversations (``user``; the conversation when the log has no user id),
            the same conversation only (``session``), or ``none``. On the 44k benchmark
            ``user`` re-ranks better (a shopper's tastes carry over between visits).
        list_size: Candidates counted as "the result list" (the logged lists' length).
        max_weight: Inverse-propensity weights are clipped to this (when the dataset is
            built from an event log here).
        patience: Epochs without improvement before stopping.
        min_delta: The least change that counts as an improvement.
        monitor: Validation figure for early stopping: ``loss`` (the joint loss with its
            inverse-propensity weights, lower is better), or NDCG@10 of the logged lists
            re-ranked with ``graded`` gains (click + cart + purchase), of ``purchased`` or of
            ``clicked`` items — which, on lists the engine ordered, favours copying the
            engine's order (shoppers look at its top more), hence not the default.
        max_minutes: Training stops (keeping the best epoch) after this many minutes.
        fractions: Shares of sessions in train, valid and test (when the dataset is built
            from an event log here; a dataset folder brings its own split).
        dataset: A ``shopassist dataset`` folder or an event log (SQLite path or URL).
        purchase_value: Serving blend: weight of pCTCVR.
        click_value: Serving blend: weight of pCTR.
        similarity_weight: Serving blend: weight of the engine's fused score (see
            :class:`retrieval.ranker.Blend`).
        candidates: Candidates by similarity the engine lets the ranker re-order.
        mixed_precision: ``auto``, ``no``, ``fp16`` or ``bf16``.
        threads: torch CPU threads while training (0: torch's default). The head is small:
            on a busy machine one thread is often the fastest.
    """

    seed: int = 0
    hidden: int = 64
    tower: int = 32
    embed_dim: int = 2
    buckets: int = 256
    dropout: float = 0.1
    epochs: int = 30
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    lambda_click: float = 1.0
    lambda_convert: float = 1.0
    lambda_stay: float = 0.1
    lambda_list: float = 0.0
    conversion: str = "purchased"
    history: str = "user"
    list_size: int = 10
    max_weight: float = 10.0
    patience: int = 6
    min_delta: float = 0.001
    monitor: str = "loss"
    max_minutes: float = 4.5
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    dataset: str = ""
    purchase_value: float = 1.0
    click_value: float = 0.05
    similarity_weight: float = 0.1
    candidates: int = 50
    mixed_precision: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        check_numbers(self, at_least_one=("hidden", "tower", "embed_dim", "epochs",
                                          "patience", "candidates", "list_size"))
        for name, value, known in (("monitor", self.monitor, MONITORS),
                                   ("conversion", self.conversion, CONVERSIONS),
                                   ("history", self.history, HISTORIES)):
            if value not in known:
                raise ValueError(f"{name} must be one of {', '.join(known)} (got {value!r}).")
        if min(self.lambda_click, self.lambda_convert, self.lambda_stay,
               self.lambda_list) < 0:
            raise ValueError("The loss weights lambda_click, lambda_convert, lambda_stay and "
                             "lambda_list must be >= 0.")
        if self.batch_size < 2 or self.epochs < 1 or self.buckets < 2:
            raise ValueError("batch_size must be at least 2, epochs at least 1 and buckets "
                             "at least 2.")
        if self.lr <= 0 or self.max_weight < 1 or self.max_minutes <= 0:
            raise ValueError(f"lr and max_minutes must be positive and max_weight at least 1 "
                             f"(got lr = {self.lr}, max_minutes = {self.max_minutes}, "
                             f"max_weight = {self.max_weight}).")
        if not 0.0 <= self.dropout < 1.0 or self.warmup_steps < 0 or self.threads < 0:
            raise ValueError(f"dropout is in [0, 1), warmup_steps and threads at least 0 "
                             f"(got {self.dropout}, {self.warmup_steps}, {self.threads}).")
        check_precision(self.mixed_precision)
        check_fractions(self.fractions)

    def replace(self, **changes: Any) -> RankerConfig:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fractions"] = list(self.fractions)
        return out

    def blend(self) -> dict[str, Any]:
        """The serving blend recorded in the artifact (:class:`retrieval.ranker.Blend`)."""
        return {"purchase_value": self.purchase_value, "click_value": self.click_value,
                "similarity_weight": self.similarity_weight, "candidates": self.candidates}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "config") -> RankerConfig:
        return apply_values(cls(), data, where)


def load_ranker_config(config_file: str | os.PathLike[str] | None = None,
                       environ: Mapping[str, str] | None = None, **overrides: Any
                       ) -> RankerConfig:
    """Resolves the ranker's training configuration (see the module docstring).

    Raises:
        FileNotFoundError: ``config_file`` (or ``$SHOPASSIST_CONFIG``) does not exist.
        ValueError: Unknown keys, wrong types or invalid values.
    """
    return load_section(RankerConfig, "ranker", ENV_PREFIX, config_file, environ, **overrides)
