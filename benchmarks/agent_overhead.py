"""Agent overhead per turn beyond model time: graph, tools, policy, guard rails, logging.

Each turn runs the real agent graph, tools, engine and event log (SQLite) over the index;
the chat model is a zero-latency script (one tool call, then an answer), so the turn's
time is everything *except* the model: the issue's "tool overhead beyond model time".
It is split into the time inside the tool (the search itself and its logging) and the
rest (graph, guard rails, message logging). Also timed: the same turns with the built-in
rule-based planner as the model (its planning included).

    python -m benchmarks.agent_overhead --index /work/cache/idx44k --turns 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from assistant.agent import ShopAssistant
from assistant.eventlog.store import EventLog
from benchmarks.search_quality import machine_line, photo_queries
from retrieval.config import load_settings
from retrieval.search import SearchEngine

QUERIES = ["red dress for women under 1500", "black sports shoes for men", "blue jeans",
           "white tshirt for women", "watch for men under 3000", "green kurta",
           "formal shirts for men", "navy blue track pants", "handbag for women",
           "brown belt for men"]


class _Script(GenericFakeChatModel):
    def bind_tools(self, tools, **kwargs):  # type: ignore[no-untyped-def]
        return self


def _script(calls: list[dict]) -> _Script:
    replies = []
    for i, c in enumerate(calls):
        replies += [AIMessage(content="", tool_calls=[{**c, "id": f"c{i}"}]),
                    AIMessage(content="Here you are.")]
    return _Script(messages=iter(replies))


def _p(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default="data/bench/index44k")
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    engine = SearchEngine.open(settings=load_settings(index_dir=Path(args.index),
                                                      device=args.device))
    _, photos = photo_queries(engine, min(args.turns, 200), seed=0)
    texts = [QUERIES[i % len(QUERIES)] for i in range(args.turns)]
    with tempfile.TemporaryDirectory() as tmp:
        log = EventLog.open(f"sqlite:///{tmp}/events.sqlite")
        rows = []
        for kind in ("text", "photo"):
            if kind == "text":
                calls = [{"name": "text_search", "args": {"query": t}} for t in texts]
            else:
                calls = [{"name": "visual_search", "args": {"upload_id": "upload-1"}}
                         for _ in texts]
            bot = ShopAssistant(engine, llm=_script(calls), llm_name="script", log=log)
            rules = ShopAssistant(engine, log=log)
            scripted, inside, planned = [], [], []
            for i, text in enumerate(texts):
                photo = [photos[i % len(photos)]] if kind == "photo" else []
                chat = bot.conversation()
                started = time.perf_counter()
                result = chat.turn(text if kind == "text" else "", photos=photo)
                scripted.append((time.perf_counter() - started) * 1000)
                inside.append(sum(tc.duration_ms for tc in result.tool_calls))
                chat = rules.conversation()
                started = time.perf_counter()
                chat.turn(text if kind == "text" else "", photos=photo)
                planned.append((time.perf_counter() - started) * 1000)
            rows.append((kind, scripted, inside, planned))
        log.close()
    print(f"Agent overhead per turn · {len(engine):,} products · {machine_line()}\n")
    print("| turn | beyond model time p50 / p99 (target p50 ≤ 50 ms) | in the tool p50 | "
          "graph, guards, logging p50 | with the rules planner p50 |")
    print("|---|---:|---:|---:|---:|")
    for kind, scripted, inside, planned in rows:
        rest = [a - b for a, b in zip(scripted, inside, strict=True)]
        print(f"| {kind} | {_p(scripted, 50):.1f} / {_p(scripted, 99):.1f} ms | "
              f"{_p(inside, 50):.1f} ms | {_p(rest, 50):.1f} ms | {_p(planned, 50):.1f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
