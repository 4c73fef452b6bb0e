"""A tiny random Qwen2 chat model with a real tokenizer and Qwen2.5's real chat template.

Random weights generate noise, so tests script the reply with :class:`ScriptedReply`, a
logits processor that forces the tokens of a given text: the chat template, tokenizer,
generation loop, streaming, decoding and parsing all run for real.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).resolve().parent
QWEN_TEMPLATE = HERE / "qwen2_5_chat_template.jinja"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Added but not special, as in Qwen2.5's tokenizer: they survive skip_special_tokens.
TOOL_TAGS = ["<tool_call>", "</tool_call>"]
CORPUS = [
    '<tool_call>\n{"name": "text_search", "arguments": {"query": "red dress", "k": 5}}\n'
    "</tool_call>",
    "Here are three red dresses under 80 for women. The first one is cotton.",
    "<tool_response>\nproduct title price colour category\n</tool_response>",
    "You are a helpful shopping assistant. Find products in the catalog.",
]


def build_tiny_qwen(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen2 (32 wide, 4 heads, 2 kv heads) with a byte-level BPE tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 4, trainer)
    bpe.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TOOL_TAGS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = QWEN_TEMPLATE.read_text()
    tokenizer.save_pretrained(folder)
    im_end, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, eos_token_id=im_end, pad_token_id=pad,
                         bos_token_id=None, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    # Qwen2.5-Instruct's own sampling defaults: the chat model must override them for greedy.
    GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20,
                     repetition_penalty=1.05, eos_token_id=[im_end, pad],
                     pad_token_id=pad).save_pretrained(folder)
    return folder


class ScriptedReply:
    """A logits processor that makes the model write the given replies, one per generation.

    A new generation is recognised by the sequence length not growing by exactly one. After
    the scripted text it forces the end-of-turn token; ``end=False`` keeps forcing the
    last token instead (to test ``max_new_tokens``).
    """

    def __init__(self, tokenizer: Any, replies: Sequence[str], *, end: bool = True,
                 delay_s: float = 0.0) -> None:
        self.scripts = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies]
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.end = end
        self.delay_s = delay_s
        self.generations = 0
        self.prompts: list[list[int]] = []  # the ids each generation started from
        self._last_len: int | None = None
        self._origin = 0
        self._script: list[int] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                 ) -> torch.FloatTensor:
        length = input_ids.shape[1]
        if self._last_len is None or length != self._last_len + 1:
            self._script = self.scripts[min(self.generations, len(self.scripts) - 1)]
            self.generations += 1
            self.prompts.append(input_ids[0].tolist())
            self._origin = length
        self._last_len = length
        step = length - self._origin
        if step < len(self._script):
            token = self._script[step]
        else:
            token = self.eos if self.end else self._script[-1]
        if self.delay_s:
            import time

            time.sleep(self.delay_s)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        return forced


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_qwen_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen_dir)


@pytest.fixture(scope="session")
def loaded_tiny_qwen(tiny_qwen_dir: Path) -> Any:
    """The tiny model loaded once through the production loader."""
    from assistant.llm.hf_loading import load_causal_lm

    return load_causal_lm(str(tiny_qwen_dir), device="cpu")


@pytest.fixture
def make_chat(tiny_qwen_dir: Path, tiny_tokenizer: Any, loaded_tiny_qwen: Any):
    """``make_chat(*replies, **fields)``: a ChatTransformers over the tiny model whose
    generations write ``replies`` in order (the weights are shared, not reloaded)."""
    from assistant.llm.hf import ChatTransformers

    def make(*replies: str, end: bool = True, delay_s: float = 0.0,
             **fields: Any) -> tuple[ChatTransformers, ScriptedReply]:
        script = ScriptedReply(tiny_tokenizer, replies or [""], end=end, delay_s=delay_s)
        chat = ChatTransformers(model=str(tiny_qwen_dir), device="cpu",
                                logits_processor=[script], **fields)
        chat._loaded = loaded_tiny_qwen
        return chat, script

    return make


@pytest.fixture
def shop_tools() -> list[Any]:
    """Two tools with the shapes of the agent's (the real ones live in assistant.tools)."""
    from langchain_core.tools import tool

    @tool
    def text_search(query: str, k: int = 5) -> str:
        """Search the catalog by words.

        Args:
            query: What the shopper asked for.
            k: How many products to return.
        """
        return f"{k} results for {query}"

    @tool
    def product_details(product_id: str) -> str:
        """The catalog fields of one product.

        Args:
            product_id: A product id shown earlier.
        """
        return product_id

    return [text_search, product_details]
