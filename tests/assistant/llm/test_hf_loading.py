"""Loading a local chat model: folders, offline hub ids, devices, 4-bit decisions."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

from assistant.llm import ChatTransformers, LLMUnavailableError
from assistant.llm.hf_loading import llm_dtype, load_causal_lm, quantization_config, use_4bit


def test_loads_a_local_folder_on_cpu(loaded_tiny_qwen, tiny_qwen_dir: Path) -> None:
    assert loaded_tiny_qwen.path == tiny_qwen_dir
    assert loaded_tiny_qwen.input_device == torch.device("cpu")
    assert not loaded_tiny_qwen.quantized_4bit
    assert type(loaded_tiny_qwen.model).__name__ == "Qwen2ForCausalLM"
    assert type(loaded_tiny_qwen.tokenizer).__name__ == "Qwen2Tokenizer"
    assert not loaded_tiny_qwen.model.training


def test_hub_id_offline_fails_fast_with_a_hint() -> None:
    started = time.monotonic()
    with pytest.raises(LLMUnavailableError) as info:
        ChatTransformers(model="Qwen/Qwen2.5-1.5B-Instruct-not-cached").load()
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message
    assert "hf download Qwen/Qwen2.5-1.5B-Instruct-not-cached" in message
    assert "SHOPASSIST_LLM=hf:DIR" in message and "rules" in message
    assert "CLIP" not in message


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(LLMUnavailableError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nope"))


def test_a_model_without_chat_template_is_refused(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    base = tmp_path / "base-model"
    shutil.copytree(tiny_qwen_dir, base)
    (base / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template"):
        load_causal_lm(str(base), device="cpu")


def test_4bit_decisions() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_4bit(None, cpu) is False
    assert use_4bit(False, cuda) is False
    assert use_4bit(None, cuda) is True  # bitsandbytes is installed here
    assert use_4bit(True, cuda) is True
    with pytest.raises(ValueError, match=r"CUDA GPU.*SHOPASSIST_LLM_LOAD_IN_4BIT"):
        use_4bit(True, cpu)
    assert use_4bit(True, cpu, force=True) is True


def test_4bit_on_cpu_is_refused_before_loading(tiny_qwen_dir: Path) -> None:
    with pytest.raises(ValueError, match="force_4bit"):
        ChatTransformers(model=str(tiny_qwen_dir), device="cpu", load_in_4bit=True).load()


def test_quantization_config() -> None:
    config = quantization_config(torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_dtype_choice() -> None:
    assert llm_dtype("auto", torch.device("cpu")) == torch.float32
    assert llm_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_missing_cuda_is_a_clear_error(tiny_qwen_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(LLMUnavailableError, match="no CUDA GPU"):
        load_causal_lm(str(tiny_qwen_dir), device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_auto_device_map_and_4bit(tiny_qwen_dir: Path, tiny_tokenizer) -> None:
    from tests.assistant.llm.conftest import ScriptedReply

    script = ScriptedReply(tiny_tokenizer, ['<tool_call>{"name": "a", "arguments": {}}'
                                            "</tool_call>"])
    chat = ChatTransformers(model=str(tiny_qwen_dir), logits_processor=[script]).load()
    assert chat.loaded.quantized_4bit  # auto: 4-bit on a GPU with bitsandbytes
    assert chat.loaded.input_device.type == "cuda"
    assert hasattr(chat.loaded.model, "hf_device_map")
    reply = chat.bind_tools([{"name": "a", "description": "A.",
                              "parameters": {"type": "object"}}]).invoke("hi")
    assert [c["name"] for c in reply.tool_calls] == ["a"]
    full = ChatTransformers(model=str(tiny_qwen_dir), load_in_4bit=False).load()
    assert not full.loaded.quantized_4bit
    assert full.loaded.model.dtype in (torch.bfloat16, torch.float16)
