"""Generation plumbing for :class:`assistant.llm.hf.ChatTransformers`: a deadline, a streamer,
and where a reply ends."""

from __future__ import annotations

import threading
import time
from typing import Any

import torch
from transformers import StoppingCriteria, TextIteratorStreamer


class Deadline(StoppingCriteria):
    """Stops generation at a wall-clock deadline or on cancellation, and remembers which."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds
        self.expired = False
        self.cancelled = threading.Event()

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any
                 ) -> torch.BoolTensor:
        if self.end is not None and time.monotonic() >= self.end:
            self.expired = True
        stop = self.expired or self.cancelled.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool,
                          device=input_ids.device)  # type: ignore[return-value]


class ReplyStreamer(TextIteratorStreamer):
    """Streams decoded text without end-of-turn tokens, counting what was generated."""

    def __init__(self, tokenizer: Any, end_ids: set[int], timeout: float | None) -> None:
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout,
                         skip_special_tokens=False)
        self.end_ids = end_ids
        self.generated: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if self.next_tokens_are_prompt:
            super().put(value)
            return
        ids = value.reshape(-1).tolist()
        self.generated.extend(ids)
        kept = [i for i in ids if i not in self.end_ids]
        if kept:
            super().put(torch.tensor(kept))


def end_token_ids(config: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a turn: the generation config's EOS ids, the tokenizer's, padding."""
    ids: set[int] = set()
    for value in (config.eos_token_id, tokenizer.eos_token_id, config.pad_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def until_end(ids: list[int], end_ids: set[int]) -> list[int]:
    """``ids`` up to (not including) the first end-of-turn id."""
    for i, token in enumerate(ids):
        if token in end_ids:
            return ids[:i]
    return ids
