"""The encoder protocol, the shared output check, and device / precision selection."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE = "image"
TEXT = "text"


class ModelUnavailableError(RuntimeError):
    """A model cannot be loaded here; the message says which local path or package to use."""


@runtime_checkable
class Encoder(Protocol):
    """Turns images and/or texts into L2-normalised float32 arrays of shape ``(n, dim)``.

    ``modalities`` says which of ``encode_images`` / ``encode_texts`` the encoder supports;
    the other raises :class:`NotImplementedError`. ``name`` and ``revision`` identify the
    weights (they go into the index manifest, so an index is never queried with a different
    encoder than it was built with).
    """

    name: str
    revision: str
    dim: int
    modalities: frozenset[str]

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def check_embeddings(array: np.ndarray, n: int, dim: int, who: str = "encoder") -> np.ndarray:
    """Asserts the encoder contract: float32, ``(n, dim)``, finite, unit norm (or zero).

    Zero rows are allowed: they mean "no signal" (e.g. an all-background image) and score 0.

    Raises:
        ValueError: The array breaks the contract; the message says how.
    """
    if array.dtype != np.float32:
        raise ValueError(f"{who} returned {array.dtype}, expected float32.")
    if array.shape != (n, dim):
        raise ValueError(f"{who} returned shape {array.shape}, expected {(n, dim)}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{who} returned non-finite values.")
    norms = np.linalg.norm(array, axis=1)
    bad = ~(np.isclose(norms, 1.0, atol=1e-3) | (norms == 0))
    if bad.any():
        raise ValueError(f"{who} returned {int(bad.sum())} rows that are not L2-normalised.")
    return array


def l2_normalise(array: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; zero rows stay zero."""
    array = np.asarray(array, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; anything else is passed to torch.

    Raises:
        ModelUnavailableError: A CUDA / MPS device was asked for but is not available.
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ModelUnavailableError(
            f"Unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError(
            f"Device {spec!r} was asked for but torch {torch.__version__} sees no CUDA GPU. "
            "Use --device cpu (or auto)."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelUnavailableError(f"Device {spec!r} is not available here; use --device cpu.")
    return device


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Chooses the compute dtype: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32.

    ``precision`` is ``auto``, ``fp32``, ``fp16`` or ``bf16``.
    """
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision in table:
        dtype = table[precision]
        if dtype is torch.float16 and device.type == "cpu":
            raise ValueError("fp16 is not supported on CPU; use bf16 or fp32.")
        return dtype
    if precision != "auto":
        raise ValueError(f"Unknown precision {precision!r}; use auto, fp32, fp16 or bf16.")
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and _cpu_has_bf16() and os.environ.get("SHOPASSIST_CPU_BF16") == "1":
        return torch.bfloat16
    return torch.float32


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
