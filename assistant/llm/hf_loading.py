"""Loading a local causal LM and its tokenizer: where the weights are, which device, 4-bit."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from assistant.llm.errors import LLMUnavailableError
from retrieval.encoders.base import ModelUnavailableError, resolve_device, resolve_dtype
from retrieval.encoders.hub import resolve_model_path

logger = logging.getLogger(__name__)

DEFAULT_HF_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready to generate.

    Attributes:
        model: The ``transformers`` model, in eval mode.
        tokenizer: Its tokenizer, with a chat template.
        path: The local folder the weights came from.
        input_device: Where input ids must be placed (the embedding's device).
        quantized_4bit: Whether the weights were loaded in 4-bit through bitsandbytes.
    """

    model: Any
    tokenizer: Any
    path: Path
    input_device: torch.device
    quantized_4bit: bool


def resolve_llm_path(model_id: str) -> Path:
    """The local folder of ``model_id``, downloading only when the hub answers quickly.

    Raises:
        LLMUnavailableError: Not local and the hub is offline or unreachable; the message
            says which setting to point at a local folder instead.
    """
    try:
        return resolve_model_path(model_id)
    except ModelUnavailableError as exc:
        reason = str(exc).split(". ")[0].rstrip(".")
        raise LLMUnavailableError(
            f"Chat model {model_id!r} cannot be loaded: {reason}. Download it where the hub is "
            f"reachable (`hf download {model_id} --local-dir DIR`) and set llm = \"hf:DIR\" "
            "(SHOPASSIST_LLM=hf:DIR); or use an OpenAI-compatible server (llm = "
            "\"openai:MODEL\" with llm_base_url); or llm = \"rules\" (no LLM)."
        ) from exc


def use_4bit(requested: bool | None, device: torch.device, *, force: bool = False) -> bool:
    """Decides whether to load in 4-bit.

    ``None`` means "when it pays": on a CUDA GPU with bitsandbytes installed. ``True`` on a
    CPU is refused unless ``force`` (bitsandbytes' CPU path is slow and not what a user means).

    Raises:
        ValueError: 4-bit was asked for on a non-CUDA device without ``force``.
        LLMUnavailableError: 4-bit was asked for and bitsandbytes is not installed.
    """
    have_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if requested is None:
        return device.type == "cuda" and have_bnb
    if not requested:
        return False
    if device.type != "cuda" and not force:
        raise ValueError(
            f"4-bit loading (bitsandbytes) is meant for a CUDA GPU, and this model would run on "
            f"{device.type}. Set llm_load_in_4bit = false (SHOPASSIST_LLM_LOAD_IN_4BIT=0) or "
            "leave it unset (auto), or pass force_4bit=True to use bitsandbytes' CPU backend.")
    if not have_bnb:
        raise LLMUnavailableError(
            "4-bit loading needs bitsandbytes: `pip install 'shop-assistant[gpu]'`, or set "
            "llm_load_in_4bit = false.")
    return True


def quantization_config(compute_dtype: torch.dtype) -> Any:
    """NF4 weights with double quantisation, computing in ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)


def llm_dtype(precision: str, device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it (LLMs are trained in bf16; fp16 can overflow), else as
    :func:`retrieval.encoders.base.resolve_dtype` chooses."""
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return resolve_dtype(precision, device)


def load_causal_lm(model_id: str, *, device: str = "auto", precision: str = "auto",
                   load_in_4bit: bool | None = None, force_4bit: bool = False,
                   trust_remote_code: bool = False,
                   model_kwargs: dict[str, Any] | None = None) -> LoadedModel:
    """Loads a chat model and its tokenizer from a hub id or a local folder.

    Args:
        model_id: A Hugging Face id (``Qwen/Qwen2.5-1.5B-Instruct``) or a local folder.
        device: ``auto`` (CUDA with ``device_map="auto"`` when accelerate is installed, then
            MPS, then CPU), or a torch device string.
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16``.
        load_in_4bit: See :func:`use_4bit`.
        force_4bit: Allow 4-bit on a CPU.
        trust_remote_code: Passed to ``from_pretrained`` (off unless you trust the repo).
        model_kwargs: Extra ``from_pretrained`` arguments for the model.

    Returns:
        The loaded model and tokenizer.

    Raises:
        LLMUnavailableError: The weights are not here and cannot be downloaded, or the
            device or bitsandbytes is missing.
        ValueError: The model has no chat template, or 4-bit was asked for on a CPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import is_accelerate_available

    path = resolve_llm_path(model_id)
    try:
        target = resolve_device(device)
    except ModelUnavailableError as exc:
        raise LLMUnavailableError(str(exc)) from exc
    dtype = llm_dtype(precision, target)
    quantize = use_4bit(load_in_4bit, target, force=force_4bit)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if quantize:
        kwargs["quantization_config"] = quantization_config(dtype)
    spread = device == "auto" and target.type == "cuda" and is_accelerate_available()
    if spread:
        kwargs["device_map"] = "auto"
    elif quantize:
        kwargs["device_map"] = {"": str(target)}  # bitsandbytes places weights while loading
    kwargs.update(model_kwargs or {})

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{model_id} has no chat template, so it is not a chat model. Use an "
                         f"instruct model, e.g. hf:{DEFAULT_HF_MODEL}.")
    logger.info("loading %s from %s on %s (%s%s)", model_id, path, target, dtype,
                ", 4-bit" if quantize else "")
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if "device_map" not in kwargs:
        model.to(target)
    model.eval()
    input_device = model.get_input_embeddings().weight.device
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, input_device=input_device,
                       quantized_4bit=quantize)
