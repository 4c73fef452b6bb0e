"""A LangChain chat model over a local Hugging Face causal LM, with tool calling.

``ChatHuggingFace`` over a local pipeline ignores tools; this class renders the conversation
with the model's own chat template (``apply_chat_template(..., tools=...)``), generates with
``transformers``, and parses the model's tool calls (:mod:`assistant.llm.toolcalls`) into an
``AIMessage`` that ``create_agent`` can act on. The weights load on first use (or
:meth:`ChatTransformers.load`), so constructing one is cheap.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jinja2 import TemplateError
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.json import parse_partial_json
from pydantic import AliasChoices, Field, PrivateAttr

from assistant.llm.errors import LLMTimeoutError
from assistant.llm.hf_generate import Deadline, ReplyStreamer, end_token_ids, until_end
from assistant.llm.hf_loading import DEFAULT_HF_MODEL, LoadedModel, load_causal_lm
from assistant.llm.hf_prompt import (
    detect_tool_format,
    format_tools,
    resolve_tool_choice,
    to_chat_messages,
    tool_prefill,
)
from assistant.llm.toolcalls import ParsedReply, StreamSplitter, cut_at_stop, parse_tool_calls

logger = logging.getLogger(__name__)

_CALL_KWARGS = {"tools", "tool_choice", "max_new_tokens", "max_tokens", "temperature", "top_p",
                "model", "parallel_tool_calls", "stream"}


@dataclass
class _Request:
    input_ids: torch.Tensor
    prefill: str
    stop: list[str]
    config: Any
    deadline: Deadline
    processors: list[Any]
    end_ids: set[int]


class ChatTransformers(BaseChatModel):
    """A chat model over a local ``transformers`` causal LM, with tools and streaming.

    Example:
        ```python
        llm = ChatTransformers(model="Qwen/Qwen2.5-1.5B-Instruct").load()
        reply = llm.bind_tools([text_search]).invoke("a red dress under 80")
        reply.tool_calls  # [{"name": "text_search", "args": {...}, "id": "call_..."}]
        ```

    Attributes:
        model: Hugging Face id or local folder.
        device: ``auto`` or a torch device string.
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16``.
        load_in_4bit: ``None`` = 4-bit on a CUDA GPU when bitsandbytes is installed.
        force_4bit: Allow 4-bit on a CPU (bitsandbytes' CPU backend).
        max_new_tokens: Longest reply, in tokens (``max_tokens`` is accepted too).
        temperature: 0 = greedy (reproducible tool calls); above 0 samples.
        top_p: Nucleus sampling when sampling.
        repetition_penalty: Overrides the model's generation config when set.
        timeout: Seconds one reply may take; past it :class:`LLMTimeoutError` is raised.
        stop: Stop sequences.
        streaming: ``invoke`` streams internally (callbacks see tokens).
        tool_format: ``auto`` (read from the chat template), ``hermes`` or ``llama3``:
            the syntax used to force a call when ``tool_choice`` asks for one.
        trust_remote_code: Passed to ``from_pretrained``.
        logits_processor: Extra ``transformers`` logits processors (constrained decoding;
            tests use one to script the reply of a random tiny model).
        model_kwargs: Extra ``from_pretrained`` arguments for the model.
    """

    model: str = DEFAULT_HF_MODEL
    device: str = "auto"
    precision: str = "auto"
    load_in_4bit: bool | None = None
    force_4bit: bool = False
    max_new_tokens: int = Field(default=512, ge=1,
                                validation_alias=AliasChoices("max_new_tokens", "max_tokens"))
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float | None = None
    repetition_penalty: float | None = None
    timeout: float | None = Field(default=60.0, gt=0)
    stop: list[str] | None = None
    streaming: bool = False
    tool_format: Literal["auto", "hermes", "llama3"] = "auto"
    trust_remote_code: bool = False
    logits_processor: list[Any] | None = Field(default=None, exclude=True)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    _loaded: LoadedModel | None = PrivateAttr(default=None)
    _load_lock: Any = PrivateAttr(default_factory=threading.Lock)
    _generate_lock: Any = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "transformers-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "precision": self.precision,
                "load_in_4bit": self.load_in_4bit, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "top_p": self.top_p}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        model = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="huggingface", ls_model_type="chat",
            ls_model_name=model if isinstance(model, str) else self.model,
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_new_tokens", kwargs.get("max_tokens",
                                                                  self.max_new_tokens)))
        if stops := [*(self.stop or []), *(stop or [])]:
            params["ls_stop"] = stops
        return params

    @property
    def loaded(self) -> LoadedModel:
        """The model and tokenizer, loading them on first use."""
        if self._loaded is None:
            with self._load_lock:
                if self._loaded is None:
                    self._loaded = load_causal_lm(
                        self.model, device=self.device, precision=self.precision,
                        load_in_4bit=self.load_in_4bit, force_4bit=self.force_4bit,
                        trust_remote_code=self.trust_remote_code,
                        model_kwargs=self.model_kwargs)
        return self._loaded

    def load(self) -> ChatTransformers:
        """Loads the weights now (so a bad setting fails here, not mid-conversation).

        Returns:
            ``self``.

        Raises:
            LLMUnavailableError: The weights cannot be found or the device is missing.
            ValueError: The model has no chat template, or a 4-bit request is refused.
        """
        _ = self.loaded
        return self

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Binds tools; their JSON schemas go into the chat template's ``tools``.

        Args:
            tools: ``BaseTool``s, functions, pydantic classes or JSON schemas.
            tool_choice: ``auto``/``None``, ``none``, ``any``/``required``, or a tool name
                (see :func:`assistant.llm.hf_prompt.resolve_tool_choice`).
            **kwargs: Further call arguments to bind.

        Returns:
            The model with the tools bound.

        Raises:
            ValueError: ``tool_choice`` names a tool that is not in ``tools``.
        """
        formatted = format_tools(tools)
        resolve_tool_choice(tool_choice, formatted)  # validate now, not at the first call
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def render_prompt(self, messages: Sequence[BaseMessage], *, tools: Sequence[Any] = (),
                      tool_choice: Any = None) -> str:
        """The exact text the model continues: the chat template's output plus any prefill.

        Args:
            messages: The conversation.
            tools: Tools to offer (any form :meth:`bind_tools` accepts).
            tool_choice: As for :meth:`bind_tools`.

        Returns:
            The prompt text (loading the tokenizer and weights on first use).
        """
        loaded = self.loaded
        render_tools, forced = resolve_tool_choice(tool_choice, format_tools(tools))
        text = loaded.tokenizer.apply_chat_template(
            to_chat_messages(messages), tools=render_tools or None, add_generation_prompt=True,
            tokenize=False)
        return text + tool_prefill(self._tool_format(), forced)

    def _tool_format(self) -> Literal["hermes", "llama3"]:
        if self.tool_format != "auto":
            return self.tool_format
        return detect_tool_format(getattr(self.loaded.tokenizer, "chat_template", None))

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None,
                 kwargs: dict[str, Any]) -> _Request:
        if unknown := set(kwargs) - _CALL_KWARGS:
            logger.debug("ignoring call arguments %s", sorted(unknown))
        if kwargs.get("model") not in (None, self.model):
            raise ValueError(f"This chat model serves {self.model!r}; create another "
                             f"ChatTransformers for {kwargs['model']!r}.")
        loaded = self.loaded
        tokenizer = loaded.tokenizer
        tools, forced = resolve_tool_choice(kwargs.get("tool_choice"),
                                            format_tools(kwargs.get("tools") or []))
        try:
            encoded = tokenizer.apply_chat_template(
                to_chat_messages(messages), tools=tools or None, add_generation_prompt=True,
                tokenize=True, return_dict=True, sanitize_control_tokens=True)
        except TemplateError as exc:  # e.g. "roles must alternate user/assistant"
            raise ValueError(f"The chat template of {self.model} rejected the conversation: "
                             f"{exc}") from exc
        # Control tokens inside message text (a catalog description containing
        # "<|im_end|>" ...) were encoded as plain text above; only the prefill is ours.
        ids = list(encoded["input_ids"])
        prefill = tool_prefill(self._tool_format(), forced)
        if prefill:
            ids += tokenizer(prefill, add_special_tokens=False)["input_ids"]
        config = self._generation_config(loaded, kwargs)
        stops = [s for s in [*(self.stop or []), *(stop or [])] if s]
        if stops:
            config.stop_strings = stops
        return _Request(input_ids=torch.tensor([ids], device=loaded.input_device),
                        prefill=prefill, stop=stops, config=config,
                        deadline=Deadline(self.timeout),
                        processors=list(self.logits_processor or []),
                        end_ids=end_token_ids(config, tokenizer))

    def _generation_config(self, loaded: LoadedModel, kwargs: dict[str, Any]) -> Any:
        config = copy.deepcopy(loaded.model.generation_config)
        temperature = float(kwargs.get("temperature", self.temperature))
        top_p = kwargs.get("top_p", self.top_p)
        if temperature > 0:
            config.do_sample = True
            config.temperature = temperature
            if top_p is not None:
                config.top_p = top_p
        else:  # greedy; neutral sampling values, or the model's defaults fill them in (warning)
            config.do_sample = False
            config.temperature, config.top_p, config.top_k = 1.0, 1.0, 50
        if self.repetition_penalty is not None:
            config.repetition_penalty = self.repetition_penalty
        config.max_new_tokens = int(kwargs.get("max_new_tokens",
                                               kwargs.get("max_tokens", self.max_new_tokens)))
        config.max_length = None
        if config.pad_token_id is None:
            pad = loaded.tokenizer.pad_token_id
            config.pad_token_id = pad if pad is not None else loaded.tokenizer.eos_token_id
        return config

    def _run(self, request: _Request, streamer: Any = None) -> torch.Tensor:
        loaded = self.loaded
        with self._generate_lock, torch.inference_mode():
            return loaded.model.generate(
                input_ids=request.input_ids,
                attention_mask=torch.ones_like(request.input_ids),
                generation_config=request.config,
                logits_processor=request.processors or None,
                stopping_criteria=[request.deadline],
                tokenizer=loaded.tokenizer,
                streamer=streamer)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        request = self._prepare(messages, stop, kwargs)
        started = time.monotonic()
        output = self._run(request)
        self._check_deadline(request, started)
        generated = output[0, request.input_ids.shape[1]:].tolist()
        kept = until_end(generated, request.end_ids)
        text = request.prefill + self.loaded.tokenizer.decode(kept, skip_special_tokens=False)
        parsed = parse_tool_calls(cut_at_stop(text, request.stop))
        message = AIMessage(
            content=parsed.content, tool_calls=parsed.tool_calls,
            invalid_tool_calls=parsed.invalid_tool_calls,
            usage_metadata=_usage(request.input_ids.shape[1], len(kept)),
            response_metadata=self._response_metadata(request, parsed, generated))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        request = self._prepare(messages, stop, kwargs)
        # A safety net for the queue: the deadline stops generation itself, and the worker
        # always ends the stream, so this only matters if generate() wedges.
        queue_timeout = None if self.timeout is None else self.timeout + 60
        streamer = ReplyStreamer(self.loaded.tokenizer, request.end_ids, queue_timeout)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                self._run(request, streamer)
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
                streamer.end()

        started = time.monotonic()
        worker = threading.Thread(target=work, name="chat-transformers-generate", daemon=True)
        worker.start()
        splitter = StreamSplitter(request.stop)
        splitter.feed(request.prefill)
        try:
            for piece in streamer:
                if delta := splitter.feed(piece):
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                    if run_manager:
                        run_manager.on_llm_new_token(delta, chunk=chunk)
                    yield chunk
        finally:
            request.deadline.cancelled.set()  # the consumer stopped early: stop generating
            worker.join()
        if errors:
            raise errors[0]
        self._check_deadline(request, started)
        delta, parsed = splitter.finish()
        kept = until_end(streamer.generated, request.end_ids)
        chunks = [tool_call_chunk(name=call["name"], args=json.dumps(call["args"]),
                                  id=call["id"], index=i)
                  for i, call in enumerate(parsed.tool_calls)]
        chunks += [tool_call_chunk(name=bad["name"], args=_unrepairable(bad["args"]),
                                   id=bad["id"], index=len(chunks) + i)
                   for i, bad in enumerate(parsed.invalid_tool_calls)]
        for bad in parsed.invalid_tool_calls:
            logger.debug("invalid tool call %r: %s", bad["name"], bad["error"])
        last = AIMessageChunk(
            content=delta, tool_call_chunks=chunks, chunk_position="last",
            usage_metadata=_usage(request.input_ids.shape[1], len(kept)),
            response_metadata=self._response_metadata(request, parsed, streamer.generated))
        chunk = ChatGenerationChunk(message=last)
        if run_manager:
            run_manager.on_llm_new_token(delta, chunk=chunk)
        yield chunk

    def _check_deadline(self, request: _Request, started: float) -> None:
        if request.deadline.expired:
            raise LLMTimeoutError(
                f"{self.model} did not finish its reply within {self.timeout:g} s "
                f"(stopped after {time.monotonic() - started:.1f} s). Raise llm_timeout_s "
                "(SHOPASSIST_LLM_TIMEOUT_S), lower llm_max_new_tokens, or use a smaller model "
                "or a GPU.")

    def _response_metadata(self, request: _Request, parsed: ParsedReply,
                           generated: list[int]) -> dict[str, Any]:
        if parsed.tool_calls:
            finish = "tool_calls"
        elif (len(generated) >= request.config.max_new_tokens
              and not (generated and generated[-1] in request.end_ids)):
            finish = "length"
        else:
            finish = "stop"
        return {"model_name": self.model, "model_provider": "huggingface",
                "finish_reason": finish}


def _unrepairable(raw: str | None) -> str | None:
    """Raw text of a botched call, as chunk arguments that stay botched.

    Merging chunks, LangChain re-derives tool calls with a partial-JSON *repair*, which would
    turn a truncated call into a "valid" one; a JSON string literal parses to a string, which
    LangChain files under ``invalid_tool_calls``, as :meth:`ChatTransformers.invoke` does.
    """
    try:
        repaired = parse_partial_json(raw) if raw else None
    except ValueError:
        return raw
    return json.dumps(raw, ensure_ascii=False) if isinstance(repaired, dict) else raw


def _usage(input_tokens: int, output_tokens: int) -> UsageMetadata:
    return UsageMetadata(input_tokens=input_tokens, output_tokens=output_tokens,
                         total_tokens=input_tokens + output_tokens)
