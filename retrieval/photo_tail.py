"""A fusion head's fine-tuned image tail for shoppers' photos (the serving side).

A shopper's photo of a product is on a table or a coloured wall, rotated and cropped; the
catalog photo is a clean shot on white. An image encoder's pooled features mix the two
differences into one vector, and no fusion of pooled vectors can take them out again. The
encoder's last blocks still see the spatial map: fine-tuned on shoppers' photos
(:mod:`training.photo_tail`) they learn to land a photo on its product's stored vector.

Only the query side changes. Products keep the vectors the untouched encoder made, so the
index is never re-encoded; the tail travels in the head's artifact folder
(``photo_tail.safetensors``, its sha256 in ``head.json``) and an engine serving that head
encodes query photos with it (:meth:`PhotoTail.tuned_encoder`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

TAIL_FILE = "photo_tail.safetensors"


class TailError(ValueError):
    """A tail file that is missing, corrupted or not for this index's encoder."""


@dataclass
class PhotoTail:
    """Fine-tuned tail weights for one image slot's encoder.

    Attributes:
        slot: The image slot whose query photos it encodes.
        encoder: The encoder's name and revision it was tuned from (``name@revision``).
        first: First block of the tail.
        state: The tail's weights.
    """

    slot: str
    encoder: str
    first: int
    state: dict[str, torch.Tensor]
    # base encoder's id -> (a weak reference to it, its tuned copy); see tuned_encoder
    _tuned: dict[int, tuple[Any, Any]] = field(default_factory=dict, repr=False,
                                               compare=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    def meta(self, sha256: str, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {"file": TAIL_FILE, "slot": self.slot, "encoder": self.encoder,
                "first_block": self.first, "sha256": sha256, "metrics": dict(metrics or {})}

    def save(self, folder: str | Path, metrics: Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
        """Writes the weights into ``folder``; returns what ``head.json`` records of them."""
        path = Path(folder) / TAIL_FILE
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state.items()}, str(path))
        return self.meta(hashlib.sha256(path.read_bytes()).hexdigest(), metrics)

    @classmethod
    def load(cls, folder: str | Path, meta: Mapping[str, Any]) -> PhotoTail:
        """The tail ``head.json`` describes, checked against its recorded sha256.

        Raises:
            TailError: The file is missing, does not match its hash, cannot be read or holds
                non-finite weights.
        """
        path = Path(folder) / str(meta.get("file", TAIL_FILE))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TailError(f"{path} is missing; the fusion head's artifact is incomplete "
                            "(retrain with `shopassist train fusion`).") from None
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise TailError(f"{path} does not match the sha256 recorded in head.json: the "
                            "file is corrupted or was replaced. Restore it or retrain.")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise TailError(f"{path} cannot be read ({exc}).") from None
        bad = [k for k, v in state.items()
               if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise TailError(f"{path} has non-finite weights ({bad[0]}): its training "
                            "diverged; retrain with `shopassist train fusion`.")
        return cls(str(meta["slot"]), str(meta["encoder"]), int(meta["first_block"]), state)

    def tuned_encoder(self, base: Any) -> Any:
        """``base`` with this tail, for query photos of :attr:`slot`.

        The tuned encoder is built once per base encoder (for EfficientNet: an ONNX export,
        about a second), by one thread while any others asking wait, and kept while the base
        lives. ``base`` itself is returned, with a warning, when it is not the encoder the
        tail was tuned from or cannot take a tail: the photo is then encoded as the catalog
        was, which is what the head saw before its tail existed.
        """
        key = id(base)
        with self._lock:
            entry = self._tuned.get(key)
            if entry is not None and entry[0]() is base:
                return entry[1]
            tuned = self._tune(base)
            try:  # forget the tuned copy with its base (an id can be reused after that)
                ref: Any = weakref.ref(base, lambda _dead: self._tuned.pop(key, None))
            except TypeError:  # cannot be weakly referenced: keep it alive with its copy
                ref = lambda base=base: base  # noqa: E731
            self._tuned[key] = (ref, tuned)
            return tuned

    def _tune(self, base: Any) -> Any:
        name = f"{getattr(base, 'name', '?')}@{getattr(base, 'revision', '?')}"
        if name != self.encoder or not hasattr(base, "with_tail"):
            logger.warning("the fusion head's photo tail was tuned from %s, but slot %r is "
                           "encoded by %s: query photos use the untuned encoder", self.encoder,
                           self.slot, name)
            return base
        try:
            return base.with_tail(self.state, self.first)
        except ValueError as exc:
            logger.warning("the fusion head's photo tail cannot be used (%s): query "
                           "photos use the untuned encoder", exc)
            return base
