"""Text embeddings through ``sentence-transformers`` (MiniLM by default)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from retrieval.encoders.base import TEXT, l2_normalise, resolve_device, resolve_dtype
from retrieval.encoders.hub import resolve_model_path, revision_of


class SentenceTransformerEncoder:
    """A sentence-transformers model; text only."""

    modalities = frozenset({TEXT})

    def __init__(self, model_id: str, *, device: str = "auto", precision: str = "auto",
                 batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(model_id)
        self.name = f"sbert:{model_id}"
        self.revision = revision_of(path)
        self.device = resolve_device(device)
        dtype = resolve_dtype(precision, self.device)
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(path), device=str(self.device),
                                         model_kwargs={"dtype": dtype})
        self.dim = int(self.model.get_embedding_dimension())

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        raise NotImplementedError(f"{self.name} encodes texts only.")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=self.batch_size,
                                    convert_to_numpy=True, normalize_embeddings=True,
                                    show_progress_bar=False)
        return l2_normalise(vectors)
