"""Encoders behind one protocol, created by :func:`create_encoder` from a spec string.

Specs: ``clip:<hub id or folder>`` (CLIP / SigLIP), ``sbert:<hub id or folder>``
(sentence-transformers), ``efficientnet-lite0`` and ``colour``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from retrieval.encoders.base import (
    IMAGE,
    TEXT,
    Encoder,
    ModelUnavailableError,
    check_embeddings,
    l2_normalise,
    resolve_device,
    resolve_dtype,
)

__all__ = ["IMAGE", "TEXT", "Encoder", "ModelUnavailableError", "check_embeddings",
           "create_encoder", "l2_normalise", "register_encoder", "resolve_device",
           "resolve_dtype"]

_REGISTRY: dict[str, Callable[..., Encoder]] = {}


def register_encoder(kind: str, factory: Callable[..., Encoder]) -> None:
    """Adds an encoder kind: ``factory(argument, **options)`` builds it from ``kind:argument``."""
    _REGISTRY[kind] = factory


def _clip(arg: str, **kw: Any) -> Encoder:
    from retrieval.encoders.clip import ClipEncoder

    return ClipEncoder(arg, **kw)


def _sbert(arg: str, **kw: Any) -> Encoder:
    from retrieval.encoders.sbert import SentenceTransformerEncoder

    return SentenceTransformerEncoder(arg, **kw)


def _efficientnet(arg: str, **kw: Any) -> Encoder:
    from retrieval.encoders.efficientnet import EfficientNetEncoder

    return EfficientNetEncoder(**kw)


def _colour(arg: str, **kw: Any) -> Encoder:
    from retrieval.encoders.colour import ColourEncoder

    return ColourEncoder()


register_encoder("clip", _clip)
register_encoder("sbert", _sbert)
register_encoder("efficientnet-lite0", _efficientnet)
register_encoder("colour", _colour)


def create_encoder(spec: str, *, device: str = "auto", precision: str = "auto",
                   batch_size: int = 64) -> Encoder:
    """Builds an encoder from ``kind[:argument]``.

    Raises:
        ValueError: Unknown kind.
        ModelUnavailableError: The weights cannot be found or loaded here.
    """
    kind, _, arg = spec.partition(":")
    if kind not in _REGISTRY:
        raise ValueError(f"Unknown encoder {spec!r}; kinds are {sorted(_REGISTRY)}.")
    if kind in ("clip", "sbert") and not arg:
        raise ValueError(f"Encoder {spec!r} needs a model id or folder: {kind}:<id or path>.")
    return _REGISTRY[kind](arg, device=device, precision=precision, batch_size=batch_size)
