"""``create_chat_model``: spec parsing, errors, and the ``llm*`` settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.config import AssistantSettings, load_assistant_settings
from assistant.llm import (
    DEFAULT_HF_MODEL,
    ChatTransformers,
    LLMUnavailableError,
    chat_model_from_settings,
    create_chat_model,
    parse_spec,
)


@pytest.mark.parametrize("spec, expected", [
    ("rules", ("rules", "")),
    ("  RULES ", ("rules", "")),
    ("hf:Qwen/Qwen2.5-1.5B-Instruct", ("hf", "Qwen/Qwen2.5-1.5B-Instruct")),
    ("HF: /models/qwen ", ("hf", "/models/qwen")),
    ("hf:C:\\models\\qwen", ("hf", "C:\\models\\qwen")),
    ("hf:", ("hf", DEFAULT_HF_MODEL)),
    ("hf", ("hf", DEFAULT_HF_MODEL)),
    ("openai:gpt-4o-mini", ("openai", "gpt-4o-mini")),
    ("openai:qwen2.5:7b", ("openai", "qwen2.5:7b")),  # Ollama tags keep their colon
])
def test_parse_spec(spec: str, expected: tuple[str, str]) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("", "Unknown LLM spec ''"),
    ("gpt-4o", "Unknown LLM spec 'gpt-4o'"),
    ("rules:strict", "Unknown LLM spec"),
    ("openai", "Unknown LLM spec"),
    ("openai:", "names no model"),
    ("ollama:qwen2.5", "Unknown LLM spec"),
    (None, "must be a string"),
])
def test_bad_specs(spec, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        create_chat_model(spec)
    if "Unknown" in message:
        assert "'rules'" in str(info.value) and "hf:<model id or folder>" in str(info.value)


def test_rules_means_no_model() -> None:
    assert create_chat_model("rules") is None


def test_hf_spec_builds_and_loads(tiny_qwen_dir: Path) -> None:
    chat = create_chat_model(f"hf:{tiny_qwen_dir}", device="cpu", timeout=9,
                             max_new_tokens=33, temperature=0.1)
    assert isinstance(chat, ChatTransformers)
    assert chat._loaded is not None  # loaded now, so a bad setting fails here
    assert (chat.model, chat.device, chat.timeout, chat.max_new_tokens, chat.temperature) == (
        str(tiny_qwen_dir), "cpu", 9, 33, 0.1)
    lazy = create_chat_model(f"hf:{tiny_qwen_dir}", check=False, load_in_4bit=False)
    assert lazy._loaded is None and lazy.load_in_4bit is False


def test_hf_spec_offline_fails_fast() -> None:
    with pytest.raises(LLMUnavailableError, match="HF_HUB_OFFLINE"):
        create_chat_model("hf:someone/not-cached-model")


def test_settings_fields_from_file_and_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    defaults = load_assistant_settings(environ={})
    assert (defaults.llm, defaults.llm_base_url, defaults.llm_api_key, defaults.llm_timeout_s,
            defaults.llm_max_new_tokens, defaults.llm_load_in_4bit) == (
        "rules", None, None, 60.0, 512, None)
    config = tmp_path / "shopassist.toml"
    config.write_text('[assistant]\nllm = "openai:qwen2.5:7b"\n'
                      'llm_base_url = "http://127.0.0.1:11434/v1"\nllm_timeout_s = 20\n'
                      "llm_load_in_4bit = true\n")
    from_file = load_assistant_settings(config, environ={})
    assert from_file.llm == "openai:qwen2.5:7b" and from_file.llm_timeout_s == 20.0
    assert from_file.llm_base_url == "http://127.0.0.1:11434/v1"
    assert from_file.llm_load_in_4bit is True
    env = {"SHOPASSIST_LLM": "hf:/models/qwen", "SHOPASSIST_LLM_API_KEY": "sk-secret",
           "SHOPASSIST_LLM_MAX_NEW_TOKENS": "128", "SHOPASSIST_LLM_LOAD_IN_4BIT": "auto"}
    from_env = load_assistant_settings(config, environ=env)
    assert from_env.llm == "hf:/models/qwen" and from_env.llm_max_new_tokens == 128
    assert from_env.llm_load_in_4bit is None  # "auto" unsets the file's true
    assert from_env.llm_api_key == "sk-secret" and "sk-secret" not in repr(from_env)
    assert load_assistant_settings(environ={"SHOPASSIST_LLM_LOAD_IN_4BIT": "0"}
                                   ).llm_load_in_4bit is False


@pytest.mark.parametrize("env, message", [
    ({"SHOPASSIST_LLM_TIMEOUT_S": "soon"}, "not a valid float"),
    ({"SHOPASSIST_LLM_LOAD_IN_4BIT": "maybe"}, "not a valid bool"),
])
def test_bad_settings_values(env: dict[str, str], message: str, tmp_path: Path,
                             monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_assistant_settings(environ=env)


def test_chat_model_from_settings(tiny_qwen_dir: Path) -> None:
    assert chat_model_from_settings(AssistantSettings()) is None
    settings = AssistantSettings(llm=f"hf:{tiny_qwen_dir}", llm_timeout_s=5,
                                 llm_max_new_tokens=40, llm_load_in_4bit=False)
    chat = chat_model_from_settings(settings, device="cpu", check=False)
    assert (chat.timeout, chat.max_new_tokens, chat.load_in_4bit) == (5, 40, False)
    remote = chat_model_from_settings(
        AssistantSettings(llm="openai:m", llm_base_url="http://127.0.0.1:9/v1",
                          llm_api_key="k", llm_max_new_tokens=40), check=False)
    assert (remote.model_name, remote.openai_api_base, remote.max_tokens,
            remote.request_timeout) == ("m", "http://127.0.0.1:9/v1", 40, 60.0)
    assert remote.openai_api_key.get_secret_value() == "k"
