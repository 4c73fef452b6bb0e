"""Accuracy of the ``rules`` planner on 100 labelled shopper messages.

Each message in ``benchmarks/data/shopper_messages.jsonl`` carries the intent it should be
read as and, for searches and refinements, the constraints the planned search should apply,
in the shared fashion catalog's vocabulary (``articleType`` -> category, ``baseColour`` ->
colour, ``gender``): colour, category (or the coarser ``subCategory`` where the shopper
names only a kind, "shoes"), gender, price_min, price_max and exclusions. A message that
follows an earlier search names it (``previous``); that search's results are simulated
from the catalog itself (the first five products passing its constraints), so references
("the second one", "cheaper") resolve against real products and prices. Relative price
labels read ``below:2`` (below the second product shown), ``below:min`` (below the
cheapest shown) and ``above:max``.

The parser and vocabulary are built from the catalog CSV directly; no index is needed.
The predicted constraints are the planned tool call's: the filters the engine reads from its
query words merged with its explicit filters (before any relaxation).

    python -m benchmarks.planner_accuracy [--catalog CSV] [--data JSONL] [--errors]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from assistant.rules.calls import first_calls
from assistant.rules.intent import SEARCH_INTENTS, Intent, parse_intent
from assistant.rules.state import Context, context_from_messages
from assistant.tools import summarise
from retrieval.artifacts import ProductRecords
from retrieval.catalog import Product, load_catalog
from retrieval.filters import Filters
from retrieval.query import QueryParser, Vocabulary

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
CATALOG = (ROOT / ".." / "shared" / "data" / "fashion" / "catalog.csv").resolve()
DATA = ROOT / "benchmarks" / "data" / "shopper_messages.jsonl"
FIELDS = ("colour", "category", "gender", "price_min", "price_max", "exclusions")
SHOWN = 5


class CatalogSnapshot:
    """Parser, vocabulary and product lookup over a catalog file (what the planner reads
    from a search engine), without an index."""

    def __init__(self, products: list[Product]) -> None:
        self.products = products
        self.table = ProductRecords(products, [""] * len(products),
                                    [""] * len(products)).table()
        self.vocabulary = Vocabulary.from_table(self.table)
        self.parser = QueryParser(self.vocabulary)
        self._by_id = {p.product_id: p for p in products}

    def product(self, product_id: str) -> Product:
        try:
            return self._by_id[str(product_id)]
        except KeyError:
            raise KeyError(f"No product with id {product_id!r}.") from None

    def lookup(self, token: str) -> str | None:
        return token if token in self._by_id else None


def history(record: Mapping[str, Any], catalog: CatalogSnapshot) -> list[BaseMessage]:
    """The messages of the simulated earlier search a record follows (empty: none)."""
    if "previous" not in record:
        return []
    words = str(record["previous"])
    tool = record.get("previous_tool", "text_search")
    filters = catalog.parser.parse(words).filters if words else Filters()
    rows = filters.mask(catalog.table).nonzero()[0][:SHOWN]
    results = [summarise(catalog.products[int(r)]) for r in rows]
    args: dict[str, Any] = ({"query": words, "k": SHOWN} if tool == "text_search"
                            else {"upload_id": "upload-1", "refine": words, "k": SHOWN})
    photo = "\n[photo: upload-1]" if tool == "visual_search" else ""
    return [HumanMessage(words + photo),
            AIMessage(content="", tool_calls=[{"name": tool, "args": args, "id": "prev-1",
                                               "type": "tool_call"}]),
            ToolMessage(content="(results)", tool_call_id="prev-1",
                        artifact={"results": results, "count": len(results),
                                  "filters": filters.describe()}),
            AIMessage(content="(answer)")]


def planned_constraints(intent: Intent, context: Context, catalog: CatalogSnapshot
                        ) -> dict[str, Any]:
    """The constraints the planned search would apply (empty when it plans no search)."""
    calls = [c for c in first_calls(intent, context, catalog)
             if c.name in ("text_search", "visual_search")]
    if not calls or intent.kind not in SEARCH_INTENTS:
        return normalise({})
    args = calls[0].args
    words = str(args.get("query") or args.get("refine") or "")
    read = catalog.parser.parse(words).filters if words else Filters()
    explicit = dict(args.get("filters") or {})
    include = {k: tuple(explicit[k]) for k in ("colour", "category", "gender") if explicit.get(k)}
    filters = read.merged(Filters(include=include, price_min=explicit.get("price_min"),
                                  price_max=explicit.get("price_max")))
    return normalise({
        "colour": filters.include.get("colour"), "category": filters.include.get("category"),
        "subcategory": filters.include.get("subcategory"),
        "gender": filters.include.get("gender"), "price_min": filters.price_min,
        "price_max": filters.price_max, "exclude": dict(filters.exclude)})


def expected_constraints(record: Mapping[str, Any], context: Context) -> dict[str, Any]:
    """The labelled constraints, relative prices resolved against the products shown."""
    labels = dict(record.get("expected") or {})
    for key in ("price_min", "price_max"):
        value = labels.get(key)
        if isinstance(value, str):
            labels[key] = _relative_price(value, context)
    return normalise(labels)


def normalise(c: Mapping[str, Any]) -> dict[str, Any]:
    def values(key: str) -> tuple[str, ...]:
        return tuple(sorted(c.get(key) or ()))

    def price(key: str) -> float | None:
        value = c.get(key)
        return None if value is None else round(float(value), 2)

    return {"colour": values("colour"),
            "category": (values("category"), values("subcategory")),
            "gender": values("gender"), "price_min": price("price_min"),
            "price_max": price("price_max"),
            "exclusions": tuple(sorted((k, tuple(sorted(v)))
                                       for k, v in (c.get("exclude") or {}).items()))}


def _relative_price(label: str, context: Context) -> float:
    direction, _, what = label.partition(":")
    prices = context.shown_prices()
    if what == "min":
        base = min(prices)
    elif what == "max":
        base = max(prices)
    else:
        base = context.price(context.at(int(what)) or "") or float("nan")
    return round(base - 0.01 if direction == "below" else base + 0.01, 2)


def expected_refs(record: Mapping[str, Any], context: Context) -> tuple[str, ...]:
    return tuple(str(context.at(r)) if isinstance(r, int) else str(r)
                 for r in record["refs"])


def evaluate(records: Sequence[Mapping[str, Any]], catalog: CatalogSnapshot
             ) -> dict[str, Any]:
    """Per-field, whole-message, intent and reference accuracy, with the misses."""
    field_ok: Counter[str] = Counter()
    searches = whole = intents = refs_ok = refs_n = 0
    per_intent: dict[str, list[int]] = {}
    misses: list[str] = []
    for record in records:
        context = context_from_messages(history(record, catalog))
        text = str(record["text"]) + ("\n[photo: upload-2]" if record.get("photo") else "")
        intent = parse_intent(text, parser=catalog.parser, context=context,
                              product_id=catalog.lookup)
        good_intent = intent.kind == record["intent"]
        intents += good_intent
        per_intent.setdefault(record["intent"], [0, 0])
        per_intent[record["intent"]][0] += 1
        per_intent[record["intent"]][1] += good_intent
        problems = [] if good_intent else [f"intent {intent.kind} != {record['intent']}"]
        if record["intent"] in SEARCH_INTENTS:
            searches += 1
            got = planned_constraints(intent, context, catalog)
            want = expected_constraints(record, context)
            wrong = [f for f in FIELDS if got[f] != want[f]]
            field_ok.update(f for f in FIELDS if f not in wrong)
            whole += not wrong
            problems += [f"{f}: got {got[f]} want {want[f]}" for f in wrong]
        if "refs" in record:
            refs_n += 1
            want_refs = expected_refs(record, context)
            if tuple(intent.product_ids) == want_refs:
                refs_ok += 1
            else:
                problems.append(f"refs {intent.product_ids} != {want_refs}")
        if problems:
            misses.append(f"{record['text']!r}: " + "; ".join(problems))
    return {"messages": len(records), "searches": searches, "fields": dict(field_ok),
            "whole": whole, "intents": intents, "refs": (refs_ok, refs_n),
            "per_intent": per_intent, "misses": misses}


def report(result: Mapping[str, Any]) -> str:
    n, searches = result["messages"], result["searches"]
    rows = [(f"{f}", result["fields"].get(f, 0), searches) for f in FIELDS]
    rows.append(("whole message (all six)", result["whole"], searches))
    rows.append(("intent", result["intents"], n))
    rows.append(("references resolved", *result["refs"]))
    lines = ["| measure | correct | of | accuracy |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {ok} | {of} | {ok / of if of else 0:.3f} |" for name, ok, of in rows]
    lines += ["", "| intent | messages | read right |", "|---|---:|---:|"]
    lines += [f"| {k} | {v[0]} | {v[1]} |" for k, v in sorted(result["per_intent"].items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", default=str(CATALOG), help="catalog CSV (fashion)")
    parser.add_argument("--data", default=str(DATA), help="labelled messages (JSONL)")
    parser.add_argument("--errors", action="store_true", help="list every miss")
    args = parser.parse_args(argv)
    records = [json.loads(line) for line in Path(args.data).read_text().splitlines()
               if line.strip()]
    catalog = CatalogSnapshot(load_catalog(args.catalog).products)
    result = evaluate(records, catalog)
    print(f"Rules planner · {len(records)} messages ({result['searches']} searches and "
          f"refinements) · catalog {args.catalog} ({len(catalog.products):,} products)\n")
    print(report(result))
    if args.errors and result["misses"]:
        print("\nMisses:\n" + "\n".join(f"- {m}" for m in result["misses"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
