"""Many searches through the real engine, with the query encodings computed in batches.

Encoding one text at a time costs about ten times as much per text as a batch of 64 on
CPU. :class:`BatchedSearch` keeps :meth:`SearchEngine.search` as the only search path, but
opens it over encoders that remember what they encoded: :meth:`BatchedSearch.prime` encodes
a whole wave of queries in one call per encoder, and each following ``search`` finds its
vectors ready. A query that was not primed (or primed with other words) is simply encoded
on the spot, so priming only changes speed, never results.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from retrieval.encoders import IMAGE, TEXT, Encoder
from retrieval.profiles import LoadedProfile
from retrieval.search import SearchEngine, SearchResult

logger = logging.getLogger(__name__)


class MemoEncoder:
    """An encoder that remembers its outputs, keyed by text or by image content.

    Args:
        inner: The encoder doing the work.
        max_items: Entries kept before the memory is cleared (bounds memory on long runs).
    """

    def __init__(self, inner: Encoder, max_items: int = 50_000) -> None:
        self.inner = inner
        self.name = inner.name
        self.revision = inner.revision
        self.dim = inner.dim
        self.modalities = inner.modalities
        self.max_items = max_items
        self._memory: dict[tuple[str, str], np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:  # anything else an encoder offers
        return getattr(self.inner, name)

    @staticmethod
    def image_key(image: Image.Image) -> tuple[str, str]:
        digest = hashlib.blake2b(image.tobytes(), digest_size=16)
        digest.update(f"{image.mode}{image.size}".encode())
        return (IMAGE, digest.hexdigest())

    def _encode(self, keys: list[tuple[str, str]], items: Sequence[Any], encode: Any
                ) -> np.ndarray:
        missing = {}
        for key, item in zip(keys, items, strict=True):
            if key not in self._memory and key not in missing:
                missing[key] = item
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            if len(self._memory) + len(missing) > self.max_items:
                self._memory.clear()
            vectors = encode(list(missing.values()))
            self._memory.update(zip(missing, vectors, strict=True))
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._memory[k] for k in keys])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self._encode([self.image_key(i) for i in images], images,
                            self.inner.encode_images)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([(TEXT, t) for t in texts], texts, self.inner.encode_texts)

    def with_tail(self, *args: Any, **kwargs: Any) -> MemoEncoder:
        """The inner encoder with a fine-tuned tail (a head's photo tail), remembering too."""
        return MemoEncoder(self.inner.with_tail(*args, **kwargs), self.max_items)


class BatchedSearch:
    """The engine's own search, over encoders primed a wave of queries at a time.

    Args:
        engine: An open engine; it is not modified (a second engine shares its data).
    """

    def __init__(self, engine: SearchEngine) -> None:
        self.engine = engine
        self.encoders = {spec: MemoEncoder(enc) for spec, enc in engine.profile.encoders.items()}
        loaded = LoadedProfile(engine.profile.profile, dict(self.encoders))  # type: ignore[arg-type]
        # the same engine (its fusion, fused vectors, store and ranker) with memo encoders
        self.shadow = copy.copy(engine)
        self.shadow.profile = loaded

    def prime(self, queries: Sequence[tuple[Image.Image | None, str | None]]) -> None:
        """Encodes, in one batch per encoder, every query slot these searches will need.

        Args:
            queries: ``(photo, words)`` pairs, as they will be passed to :meth:`search`.
        """
        profile = self.engine.profile
        texts: dict[str, list[str]] = {}
        images: dict[tuple[Any, Any], list[Image.Image]] = {}
        tuned = getattr(self.shadow.fusion, "query_encoder", None)
        for photo, words in queries:
            words = (words or "").strip() or None
            prepared = self.engine.prepare_image(photo) if photo is not None else None
            semantic = None
            if words:
                # Mirrors SearchEngine.search: with a photo only the free words embed.
                parsed = self.engine.parser.parse(words)
                semantic = parsed.free_text if prepared is not None else parsed.text
            for slot, part in profile.slots_for_query(prepared is not None, bool(semantic)):
                if part == IMAGE and prepared is not None:
                    variant = profile.profile.normaliser_of(slot)
                    # the encoder search will use: a head may tune the slot's for photos
                    encoder = self.encoders[slot.encoder]
                    if tuned is not None:
                        encoder = tuned(slot.name, encoder)
                    images.setdefault((encoder, variant), []).append(
                        prepared.variants[variant])
                elif part == TEXT and semantic:
                    texts.setdefault(slot.encoder, []).append(semantic)
        for (encoder, _), batch in images.items():
            encoder.encode_images(batch)
        for spec, batch in texts.items():
            self.encoders[spec].encode_texts(list(dict.fromkeys(batch)))

    def search(self, image: Image.Image | None = None, text: str | None = None, k: int = 10,
               *, rerank: bool = True) -> SearchResult:
        """:meth:`SearchEngine.search`, answered from the primed encodings where it can
        (re-ranked by the engine's promoted ranker, if any, unless ``rerank`` is off)."""
        return self.shadow.search(image=image, text=text, k=k, rerank=rerank)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per encoder: how many encodings were reused (``hits``) and computed (``misses``)."""
        return {spec: {"hits": e.hits, "misses": e.misses} for spec, e in self.encoders.items()}
