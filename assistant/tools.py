"""The agent's tools over the search engine: validated arguments, compact results.

Five tools: ``visual_search``, ``text_search``, ``recommend``, ``product_details`` and
``compare``. Arguments are pydantic models (``k`` and filters bounded, filter values
canonicalised in the catalog's vocabulary); product ids must exist *and* have been shown
to or typed by the shopper in this conversation, so text planted in a product description
cannot steer the agent to an arbitrary product. Results are compact dicts (id, title,
price, key attributes, why matched); the model sees them wrapped as untrusted catalog data,
the app gets them as the tool message's artifact. Every search is logged with its
impressions (rank, score, index and model version) when an event log is attached.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assistant.eventlog.store import best_effort
from assistant.prompts import load_prompt
from assistant.session import Session
from retrieval.catalog import Product
from retrieval.filters import FilterError, Filters
from retrieval.images import ImageError
from retrieval.recommend import complementary, similar
from retrieval.search import SHUFFLED, SearchEngine, SearchResult

logger = logging.getLogger(__name__)

MAX_K = 20
DEFAULT_K = 6
KEY_ATTRIBUTES = ("colour", "gender", "material", "season", "usage", "size")
TOOL_NAMES = ("visual_search", "text_search", "recommend", "product_details", "compare")


class ToolInputError(ValueError):
    """Arguments a tool refuses; the message tells the model what to pass instead."""


class FilterArgs(BaseModel):
    """Structured filters; values are matched to the catalog's spelling."""

    model_config = ConfigDict(extra="forbid")
    colour: list[str] | None = Field(None, max_length=8, description="e.g. ['Red']")
    category: list[str] | None = Field(None, max_length=8, description="e.g. ['Dresses']")
    gender: list[str] | None = Field(None, max_length=5, description="e.g. ['Women']")
    price_min: float | None = Field(None, ge=0)
    price_max: float | None = Field(None, ge=0)
    in_stock: bool | None = None
    attributes: dict[str, list[str]] | None = Field(
        None, max_length=8, description="other attributes, e.g. {'season': ['Summer']}")


class VisualSearchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upload_id: str = Field(..., max_length=40, description="the photo's upload id, e.g. upload-1")
    refine: str = Field("", max_length=300, description="words refining the photo")
    filters: FilterArgs | None = None
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K)


class TextSearchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(..., min_length=1, max_length=300)
    filters: FilterArgs | None = None
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K)


class RecommendArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_id: str = Field(..., max_length=64)
    mode: Literal["similar", "complementary"] = "similar"
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K)


class ProductDetailsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_id: str = Field(..., max_length=64)


class CompareArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_ids: list[str] = Field(..., min_length=2, max_length=4)


ARGS: dict[str, type[BaseModel]] = {
    "visual_search": VisualSearchArgs, "text_search": TextSearchArgs,
    "recommend": RecommendArgs, "product_details": ProductDetailsArgs, "compare": CompareArgs,
}


def summarise(product: Product, why: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """The compact form of a product in tool results."""
    out: dict[str, Any] = {"id": product.product_id, "title": product.title,
                           "category": product.category, "price": product.price,
                           "currency": product.currency, "in_stock": product.in_stock}
    for key in KEY_ATTRIBUTES:
        if product.attributes.get(key):
            out[key] = product.attributes[key]
    if why:
        out["why"] = list(why)[:4]
    return out


class ShopTools:
    """The tools of one conversation, bound to a search engine and the shopper's session.

    Args:
        engine: The opened search engine (shared, read-only).
        session: This conversation's state (uploads, shown products).
        log: Event log for queries and impressions (optional).
        explore: Share of searches (0..1) shown in a random order and logged with
            ``+shuffle`` (``AssistantSettings.explore``); recommendations never are.
        rng: Source of the exploration draws (default: a fresh unseeded one).
    """

    def __init__(self, engine: SearchEngine, session: Session, log: Any = None, *,
                 explore: float = 0.0, rng: random.Random | None = None) -> None:
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore is a share between 0 and 1 (got {explore}).")
        self.engine = engine
        self.session = session
        self.log = log
        self.explore = explore
        self.rng = rng or random.Random()
        self.handlers: dict[str, Callable[[Any], dict[str, Any]]] = {
            "visual_search": self._visual_search, "text_search": self._text_search,
            "recommend": self._recommend, "product_details": self._product_details,
            "compare": self._compare,
        }

    # -- the one entry point ------------------------------------------------------------

    def run(self, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Validates ``arguments`` and runs tool ``name``.

        Raises:
            ToolInputError: Unknown tool, invalid arguments, an id the shopper never saw,
                an unknown upload, or a filter value the catalog does not have.
        """
        if name not in self.handlers:
            raise ToolInputError(f"Unknown tool {name!r}; tools are {', '.join(TOOL_NAMES)}.")
        try:
            args = ARGS[name].model_validate(dict(arguments))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}"
                                 for e in exc.errors()[:5])
            raise ToolInputError(f"Invalid arguments for {name}: {problems}.") from None
        try:
            return self.handlers[name](args)
        except (KeyError, ImageError, FilterError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise ToolInputError(str(message)) from None

    # -- tools ------------------------------------------------------------------------------

    def _visual_search(self, args: VisualSearchArgs) -> dict[str, Any]:
        photo = self.session.upload(args.upload_id)
        result = self.engine.search(image=photo, text=args.refine or None,
                                    filters=self._filters(args.filters), k=args.k,
                                    session=self.session.history())
        return self._search_result("visual_search", args, self._maybe_shuffled(result),
                                   text=args.refine, image_ref=args.upload_id)

    def _text_search(self, args: TextSearchArgs) -> dict[str, Any]:
        result = self.engine.search(text=args.query, filters=self._filters(args.filters),
                                    k=args.k, session=self.session.history())
        return self._search_result("text_search", args, self._maybe_shuffled(result),
                                   text=args.query)

    def _maybe_shuffled(self, result: SearchResult) -> SearchResult:
        """With chance ``explore``, the same hits in a random order, marked ``+shuffle``
        for the event log: unbiased evidence of how position sways clicks."""
        if self.explore <= 0.0 or len(result.hits) < 2 or self.rng.random() >= self.explore:
            return result
        hits = list(result.hits)
        self.rng.shuffle(hits)
        return dataclasses.replace(
            result, hits=[dataclasses.replace(h, rank=i) for i, h in enumerate(hits, start=1)],
            model_version=result.model_version + SHUFFLED)

    def _recommend(self, args: RecommendArgs) -> dict[str, Any]:
        product = self._allowed(args.product_id)
        started = time.perf_counter()
        if args.mode == "similar":
            result = similar(self.engine, product.product_id, k=args.k,
                             session=self.session.history())
        else:
            result = complementary(self.engine, product.product_id, k=args.k)
        result = dataclasses.replace(
            result, timings_ms={"total": (time.perf_counter() - started) * 1000})
        out = self._search_result("recommend", args, result,
                                  text=f"{args.mode}:{product.product_id}")
        out["for"] = summarise(product)
        return out

    def _product_details(self, args: ProductDetailsArgs) -> dict[str, Any]:
        product = self._allowed(args.product_id)
        fields = {"id": product.product_id, "title": product.title,
                  "category": product.category, "price": product.price,
                  "currency": product.currency, "in_stock": product.in_stock,
                  **{k: v for k, v in sorted(product.attributes.items())}}
        if product.description:
            fields["description"] = product.description
        return {"product": fields,
                "fields": sorted(k for k, v in fields.items() if v not in (None, ""))}

    def _compare(self, args: CompareArgs) -> dict[str, Any]:
        products = [self._allowed(pid) for pid in dict.fromkeys(args.product_ids)]
        if len(products) < 2:
            raise ToolInputError("compare needs at least two different product ids.")
        rows = [self._product_details(ProductDetailsArgs(product_id=p.product_id))["product"]
                for p in products]
        keys = list(dict.fromkeys(k for row in rows for k in row if k not in ("id", "title")))
        differ = [k for k in keys if len({json.dumps(r.get(k)) for r in rows}) > 1]
        same = [k for k in keys if k not in differ]
        return {"products": [{"id": r["id"], "title": r["title"]} for r in rows],
                "differences": {k: [r.get(k) for r in rows] for k in differ},
                "in_common": {k: rows[0].get(k) for k in same}}

    # -- helpers ------------------------------------------------------------------------------

    def _allowed(self, product_id: str) -> Product:
        product = self.engine.product(product_id)  # KeyError: "No product with id ..."
        if not self.session.allowed_product(product.product_id):
            raise ToolInputError(
                f"Product {product_id} has not been shown in this conversation; use an id from "
                "the results shown to the shopper or one the shopper typed.")
        return product

    def _filters(self, args: FilterArgs | None) -> Filters | None:
        if args is None:
            return None
        include: dict[str, tuple[str, ...]] = {}
        pairs: list[tuple[str, list[str] | None]] = [
            ("colour", args.colour), ("category", args.category), ("gender", args.gender)]
        pairs += list((args.attributes or {}).items())
        for key, values in pairs:
            if values:
                include[key] = tuple(self._canonical(key, v) for v in values[:16])
        if (args.price_min is not None and args.price_max is not None
                and args.price_min > args.price_max):
            raise ToolInputError("price_min is above price_max.")
        return Filters(include=include, price_min=args.price_min, price_max=args.price_max,
                       in_stock=args.in_stock)

    def _canonical(self, key: str, value: str) -> str:
        vocabulary = self.engine.vocabulary
        known = vocabulary.values.get(key)
        if known is None:
            column = self.engine.table.column(key)
            known = sorted({str(v) for v in column if v})[:500]
        match = next((k for k in known if k.lower() == str(value).strip().lower()), None)
        if match is None:
            close = difflib.get_close_matches(str(value), known, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else \
                f" Known values: {', '.join(known[:12])}."
            raise ToolInputError(f"The catalog has no {key} {value!r}.{hint}")
        return match

    def _search_result(self, tool: str, args: BaseModel, result: SearchResult, *, text: str,
                       image_ref: str | None = None) -> dict[str, Any]:
        ids = [h.product.product_id for h in result.hits]
        self.session.remember_results(tool, args.model_dump(exclude_none=True), ids)
        out: dict[str, Any] = {
            "results": [summarise(h.product, h.why) for h in result.hits],
            "count": len(result.hits),
            "filters": result.filters.describe(),
        }
        if result.relaxed:
            out["relaxed"] = list(result.relaxed)
        if not result.hits:
            out["note"] = "No product matched; suggest relaxing one constraint."
        if self.log is not None:
            with best_effort(f"the {tool} query"):  # never breaks a shopper's search
                out["query_id"] = self.log.log_query(
                    conversation_id=self.session.conversation_id, text=text,
                    has_image=image_ref is not None, image_ref=image_ref,
                    filters=result.filters.to_dict(), result=result,
                    index_version=result.index_version, model_version=result.model_version,
                    latency_ms=result.timings_ms.get("total"))
        return out

    # -- LangChain ----------------------------------------------------------------------------

    def langchain_tools(self, names: tuple[str, ...] = TOOL_NAMES) -> list[BaseTool]:
        """The tools as LangChain ``StructuredTool``s: content for the model (wrapped as
        untrusted data), the structured result as the artifact for the app."""
        return [self._tool(name) for name in names]

    def _tool(self, name: str) -> BaseTool:
        def call(**kwargs: Any) -> tuple[str, dict[str, Any]]:
            result = self.run(name, kwargs)
            return wrap_untrusted(name, result), result

        return StructuredTool.from_function(
            func=call, name=name, description=load_prompt(f"tools/{name}"),
            args_schema=ARGS[name], response_format="content_and_artifact")


def wrap_untrusted(tool: str, payload: Mapping[str, Any]) -> str:
    """Tool output as the model sees it: catalog data inside a marked, untrusted block."""
    body = json.dumps(payload, ensure_ascii=False, default=str)
    # Close-tag look-alikes inside catalog text must not end the block early.
    body = body.replace("</catalog_data", "<\\/catalog_data")
    return load_prompt("untrusted_wrapper", tool=tool, payload=body)
