"""CLIP / SigLIP image and text towers through ``transformers`` (one shared space)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from retrieval.encoders.base import IMAGE, TEXT, l2_normalise, resolve_device, resolve_dtype
from retrieval.encoders.hub import resolve_model_path, revision_of

logger = logging.getLogger(__name__)


class ClipEncoder:
    """A dual-tower image–text model (CLIP, SigLIP, ...) loaded with ``from_pretrained``.

    The processor is loaded from the same folder as the model, so preprocessing cannot
    drift from the weights.
    """

    modalities = frozenset({IMAGE, TEXT})

    def __init__(self, model_id: str, *, device: str = "auto", precision: str = "auto",
                 batch_size: int = 64) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        path = resolve_model_path(model_id)
        self.name = f"clip:{model_id}"
        self.revision = revision_of(path)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        self.batch_size = batch_size
        self.model = AutoModel.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.image_processor = AutoImageProcessor.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        config = self.model.config
        self.dim = int(getattr(config, "projection_dim", None)
                       or config.text_config.hidden_size)
        max_len = getattr(config.text_config, "max_position_embeddings", 77)
        self.max_length = min(int(max_len), 77 if "clip" in config.model_type else int(max_len))
        # SigLIP was trained on max-length padding; CLIP on longest-in-batch.
        self.padding = "max_length" if "siglip" in config.model_type else True

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = self.image_processor(images=list(images[start:start + self.batch_size]),
                                         return_tensors="pt")
            pixels = batch["pixel_values"].to(self.device, self.dtype)
            feats = self.model.get_image_features(pixel_values=pixels)
            feats = getattr(feats, "pooler_output", feats)
            out.append(feats.float().cpu().numpy())
        return l2_normalise(np.concatenate(out) if out else np.zeros((0, self.dim)))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]),
                                    padding=self.padding, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            feats = self.model.get_text_features(**tokens)
            feats = getattr(feats, "pooler_output", feats)
            out.append(feats.float().cpu().numpy())
        return l2_normalise(np.concatenate(out) if out else np.zeros((0, self.dim)))
