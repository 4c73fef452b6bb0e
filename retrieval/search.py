"""The search engine: open an index version, answer image / text / image+text queries.

A query is encoded into the slots it can fill, filtered (structured filters plus the
constraints read from its words), searched in the vector store, and re-scored exactly from
the per-slot vectors so every hit carries its fused score, each modality's score and the
reasons it matched. Very selective filters skip the approximate index: filtered HNSW loses
recall when few records pass, and scoring a few thousand rows exactly is cheaper anyway.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retrieval.artifacts import ProductRecords, read_fused, read_products, read_vectors
from retrieval.catalog import Product
from retrieval.config import Settings, load_settings
from retrieval.encoders import IMAGE, Encoder, create_encoder, l2_normalise
from retrieval.filters import Filters
from retrieval.fusion import WeightedConcatFusion, matvec, slot_scores, weighted_score
from retrieval.fusion_head import ArtifactError
from retrieval.images import ImageLimits, ImageSource, load_image
from retrieval.manifest import IndexLayout, IndexStateError, check_contract, read_manifest
from retrieval.preprocess import PhotoNormaliser, normalise_variants
from retrieval.profiles import LoadedProfile, Profile, SlotDef
from retrieval.publish import fusion_from_manifest
from retrieval.query import ParsedQuery, QueryParser, Vocabulary
from retrieval.ranker import Reranker, open_serving_ranker, slot_arrays
from retrieval.ranker_features import QueryFacts, interactions_history, modality
from retrieval.store import VectorStore, chroma_client

logger = logging.getLogger(__name__)

MAX_K = 200
# With at most this many products passing the filters, score them all exactly.
EXACT_MAX_ROWS = 4096
# When at least this share of the catalog passes the filters, ask the ANN index without
# them for (candidates / share) x POST_FILTER_MARGIN and filter afterwards: Chroma's
# filtered HNSW is several times slower than an unfiltered query on broad filters
# (gender=Women at 44k: 90 ms vs 13 ms), and the true top of a broad subset sits in the
# unfiltered top. Falls back to the filtered query when too few candidates pass.
POST_FILTER_SHARE = 0.2
POST_FILTER_MARGIN = 2.0
POST_FILTER_MAX = 1000
# When too few pass, the allowed products are scored exactly if that reads at most this
# many vector cells (allowed products x dimensions scored): words under gender=Women at
# 44k (18k products x 384) take 16 ms exactly against 100 ms in filtered HNSW; a photo's
# 1,790 dimensions would take over 100 ms, so those still go to the filtered HNSW.
EXACT_FALLBACK_CELLS = 8_000_000
# Parsed (not explicit) filters are relaxed in this order when nothing passes them.
RELAX_ORDER = ("size", "material", "colour", "price", "in_stock", "subcategory", "category",
               "gender")
AGREEMENT = 0.7  # see SearchEngine._drop_contradicted
BOOST = 0.05  # added to the fused score per matched soft preference (usage, season)
# The end of a logged model_version of a result list shown in a random order (exploration):
# training reads position bias off such lists (training.datasets, training.ranker_data).
SHUFFLED = "+shuffle"
SLOT_LABELS = {"image": "looks like the photo", "colour": "colours match",
               "clip_image": "looks like the photo", "clip_text": "matches the description",
               "text": "matches the words"}


def check_k(k: int) -> None:
    """Refuses a result count outside 1..``MAX_K`` (search and recommendations alike).

    Raises:
        ValueError: ``k`` is out of range.
    """
    if not 1 <= int(k) <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K} (got {k}).")


@dataclass(frozen=True)
class PreparedPhoto:
    """A query photo after the checks, in each preparation the image slots need."""

    variants: Mapping[PhotoNormaliser, Image.Image]


@dataclass(frozen=True)
class SearchHit:
    """One ranked product and why it is there."""

    product: Product
    rank: int
    score: float
    scores: Mapping[str, float]
    why: tuple[str, ...] = ()
    ranking: Mapping[str, float] = field(default_factory=dict)  # the ranker's, if it ran

    def to_dict(self) -> dict[str, Any]:
        p = self.product
        out = {"rank": self.rank, "product_id": p.product_id, "title": p.title,
               "score": round(self.score, 4),
               "scores": {k: round(v, 4) for k, v in self.scores.items()},
               "category": p.category, "price": p.price, "currency": p.currency,
               "in_stock": p.in_stock, "attributes": dict(p.attributes), "image": p.image,
               "why": list(self.why)}
        if self.ranking:
            out["ranking"] = {k: round(v, 4) for k, v in self.ranking.items()}
        return out


@dataclass(frozen=True)
class QueryPlan:
    """A query as search understood it, before ranking (:meth:`SearchEngine.understand`)."""

    query: dict[str, np.ndarray]  # slot -> unit query vector
    filters: Filters
    boosts: Mapping[str, tuple[str, ...]]
    parsed: ParsedQuery | None = None
    relaxed: tuple[str, ...] = ()
    has_image: bool = False
    has_text: bool = False

    def facts(self) -> QueryFacts:
        """What the ranking head knows of this query."""
        return QueryFacts(modality(self.has_image, self.has_text), self.filters, self.boosts)


@dataclass(frozen=True)
class SearchResult:
    """Ranked hits plus what was applied to get them."""

    hits: list[SearchHit]
    filters: Filters
    parsed: ParsedQuery | None = None
    relaxed: tuple[str, ...] = ()
    index_version: str = ""
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    exact: bool = False
    model_version: str = ""  # what ordered the hits (SearchEngine.model_version)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [hit.to_dict() for hit in self.hits]


class SearchEngine:
    """Read-only, thread-safe queries over one index version.

    Use :meth:`open`; the version is fixed for the engine's life (a new build switched in
    meanwhile is picked up by opening a new engine).
    """

    def __init__(self, *, folder: Path, manifest: dict[str, Any], loaded: LoadedProfile,
                 records: ProductRecords, vectors: dict[str, np.ndarray], store: VectorStore,
                 settings: Settings, ranker: Reranker | None = None) -> None:
        self.folder = folder
        self.ranker = ranker
        self.manifest = manifest
        self.version = str(manifest["version"])
        self.profile = loaded
        self.records = records
        self.products = records.products
        self.vectors = vectors
        self.store = store
        self.settings = settings
        self.table = records.table()
        self.row_of = {p.product_id: i for i, p in enumerate(self.products)}
        self.exact_only = False  # a variant (:meth:`variant`) never asks the ANN index
        self._float32: dict[str, np.ndarray] = {}  # variants' whole-catalog slot vectors
        try:
            fusion = fusion_from_manifest(manifest, folder)
        except ArtifactError as exc:
            root = folder.parent.parent
            raise IndexStateError(
                f"The fusion head of index version {self.version} cannot be used: {exc} Serve "
                f"the previous one with `shopassist models rollback fusion --index {root}` (or "
                "promote another with `shopassist models promote fusion VERSION`).") from None
        self._use_fusion(fusion)
        self.vocabulary = Vocabulary(manifest.get("vocabulary", {}))
        self.parser = QueryParser(self.vocabulary)
        self.limits = ImageLimits(max_pixels=settings.max_image_pixels,
                                  max_bytes=settings.max_image_bytes,
                                  timeout_s=settings.url_timeout_s, retries=settings.url_retries)

    def _use_fusion(self, fusion: Any) -> None:
        self.fusion = fusion
        if isinstance(fusion, WeightedConcatFusion):
            self.weights = fusion.weights()
            self.fused: np.ndarray | None = None
        else:
            # A learned head scores in its own space: keep the products' fused vectors for
            # exact re-scoring — the version's stored ones when this is the fusion it was
            # published with, else one pass of the head over the stored slots.
            self.weights = {s["slot"]: 1.0 for s in self.manifest["slots"]}
            stored = None
            if fusion.version == self.manifest.get("fusion", {}).get("version"):
                stored = read_fused(self.folder, fusion.version, len(self.products),
                                    fusion.dim)
            self.fused = stored if stored is not None else fusion.fuse(
                {k: v.astype(np.float32) for k, v in self.vectors.items()}, len(self.products))

    def variant(self, *, fusion: Any = None, ranker: Reranker | None = None) -> SearchEngine:
        """This engine with another fusion and/or ranker, sharing its products, vectors,
        encoders and store: what evaluations compare. The ANN index holds this version's
        fused vectors, so a variant scores every allowed product exactly.

        Args:
            fusion: A fusion (``fuse(slots, n)``: a :class:`~retrieval.fusion_head.
                LearnedFusion` or the training-free :class:`WeightedConcatFusion`); ``None``
                keeps this engine's.
            ranker: The variant's ranker (``None``: similarity order).
        """
        other = copy.copy(self)  # shares products, vectors, encoders, store, caches
        other.ranker = ranker
        if fusion is not None:
            other._use_fusion(fusion)
        other.exact_only = True
        return other

    @classmethod
    def open(cls, index_dir: str | Path | None = None, *, settings: Settings | None = None,
             profile: LoadedProfile | None = None, version: str | None = None) -> SearchEngine:
        """Opens the serving version of an index (or ``version``).

        Args:
            index_dir: Index root; defaults to ``settings.index_dir``.
            settings: Resolved settings (default: :func:`load_settings`).
            profile: Already loaded encoders; they must match the index's contract.
            version: A specific version instead of the serving one.

        Raises:
            IndexNotFoundError: No index there.
            IndexStateError: The index is incomplete, or ``profile`` differs from the
                encoders it was built with.
            ModelUnavailableError: Its encoders cannot be loaded here.
        """
        settings = settings or load_settings()
        root = Path(index_dir) if index_dir is not None else Path(settings.index_dir)
        layout = IndexLayout(root)
        folder = layout.version_dir(version)
        manifest = read_manifest(folder)
        if profile is None:
            profile = _profile_from_manifest(manifest, settings)
        check_contract(manifest, profile.contract())
        records = read_products(folder)
        vectors = read_vectors(folder, [s["slot"] for s in manifest["slots"]],
                               len(records.products))
        store_info = manifest["store"]
        if store_info["kind"] == "server":
            if not settings.chroma_host:
                settings = settings.replace(chroma_host=store_info["host"],
                                            chroma_port=store_info["port"])
            client = chroma_client(settings, None)
        else:
            client = chroma_client(settings.replace(chroma_host=""), folder / "chroma")
        store = VectorStore.open(client, store_info["collection"])
        if store.count() != len(records.products):
            raise IndexStateError(
                f"The vector store holds {store.count()} records but the index lists "
                f"{len(records.products)} products; rebuild with `shopassist ingest`.")
        try:
            ranker = open_serving_ranker(root)
        except ArtifactError as exc:
            # Search stays up in similarity order; the cause is in the log.
            logger.error("Not re-ranking %s: %s Promote another ranker or run `shopassist "
                         "models rollback ranker`.", root, exc)
            ranker = None
        return cls(folder=folder, manifest=manifest, loaded=profile, records=records,
                   vectors=vectors, store=store, settings=settings, ranker=ranker)

    # -- lookups --------------------------------------------------------------------------

    def product(self, product_id: str) -> Product:
        """The product with this id.

        Raises:
            KeyError: No such product (the message says so plainly).
        """
        row = self.row_of.get(str(product_id))
        if row is None:
            raise KeyError(f"No product with id {product_id!r} in index {self.version}.")
        return self.products[row]

    def __len__(self) -> int:
        return len(self.products)

    # -- encoding -------------------------------------------------------------------------

    def prepare_image(self, image: ImageSource) -> PreparedPhoto:
        """Loads an untrusted query photo with the same checks and preparations as ingest."""
        variants = self.profile.profile.photo_variants()
        photo = load_image(image, self.limits)
        return PreparedPhoto(dict(zip(variants, normalise_variants(photo, variants),
                                      strict=True)))

    def warm_up(self) -> None:
        """Builds now what the first photo query would otherwise wait for: the encoder a
        learned head tunes for query photos (an ONNX export, seconds on a few cores)."""
        if hasattr(self.fusion, "query_encoder"):
            for slot in self.profile.profile.slots:
                if slot.source == IMAGE:
                    self.fusion.query_encoder(slot.name, self.profile.encoder(slot))

    def encode_query(self, image: PreparedPhoto | None, text: str | None
                     ) -> dict[str, np.ndarray]:
        """Slot name -> unit query vector for every slot this query can fill."""
        out: dict[str, np.ndarray] = {}
        memo: dict[tuple[int, str, PhotoNormaliser | None], np.ndarray] = {}
        for slot, part in self.profile.slots_for_query(image is not None, bool(text)):
            variant = self.profile.profile.normaliser_of(slot) if part == IMAGE else None
            encoder = self.profile.encoder(slot)
            if part == IMAGE and hasattr(self.fusion, "query_encoder"):
                # a learned head may encode query photos with its own fine-tuned tail
                encoder = self.fusion.query_encoder(slot.name, encoder)
            key = (id(encoder), part, variant)
            if key not in memo:
                memo[key] = (encoder.encode_images([image.variants[variant]])[0]  # type: ignore[union-attr,index]
                             if part == IMAGE else encoder.encode_texts([text or ""])[0])
            if np.any(memo[key]):
                out[slot.name] = memo[key]
        return out

    @cached_property
    def _prototypes(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per slot that measures one attribute: each value's mean vector ("what Red
        looks like" in the colour slot), from the catalog itself."""
        out = {}
        for slot in self.profile.profile.slots:
            if slot.describes is None or slot.name not in self.vectors:
                continue
            column = self.table.column(slot.describes)
            values = [v for v in self.vocabulary.values.get(slot.describes, [])
                      if (column == v).sum() >= 3]
            if not values:
                continue
            vectors = self.vectors[slot.name]
            means = np.stack([vectors[column == v].astype(np.float32).mean(axis=0)
                              for v in values])
            out[slot.name] = (values, l2_normalise(means))
        return out

    def _drop_contradicted(self, query: dict[str, np.ndarray], filters: Filters
                           ) -> dict[str, np.ndarray]:
        """Leaves out slots whose photo measurement contradicts the words.

        "This dress, but in black": the photo's colour slot would pull results back to red.
        A slot that measures an attribute the words constrain is kept only when the photo
        itself looks like one of the asked values: its similarity to the asked value's
        prototype is at least ``AGREEMENT`` times that of its best-matching value. (On
        300 shoppers' photos at 44k this keeps the slot for 95% of photos whose words
        name their own catalog colour, where labels like "Navy Blue" vs "Blue" are noisy.)
        """
        out = dict(query)
        for slot in self.profile.profile.slots:
            attr = slot.describes
            if attr is None or slot.name not in out:
                continue
            if attr in filters.exclude:
                out.pop(slot.name)
                continue
            wanted = filters.include.get(attr)
            if not wanted:
                continue
            protos = self._prototypes.get(slot.name)
            if protos is None:
                out.pop(slot.name)
                continue
            values, means = protos
            sims = means @ out[slot.name]
            asked = max((float(sims[values.index(v)]) for v in wanted if v in values),
                        default=-1.0)
            if asked < AGREEMENT * float(sims.max()):
                out.pop(slot.name)
        return out

    # -- search ---------------------------------------------------------------------------

    def search(self, image: ImageSource | None = None, text: str | None = None,
               filters: Filters | None = None, k: int = 10, *, parse_text: bool = True,
               relax: bool = True, exclude_ids: Sequence[str] = (),
               session: Sequence[Mapping[str, Any]] = (), rerank: bool = True
               ) -> SearchResult:
        """Finds products by photo, words, or both, under structured filters.

        Args:
            image: A query photo (path, URL, bytes or PIL image); checked like any upload.
            text: Words; constraints in them ("in red", "under 80") become filters.
            filters: Explicit filters; they win over constraints read from ``text`` and are
                never relaxed.
            k: Number of results, 1..200.
            parse_text: Read constraints from ``text`` (off: the words only embed).
            relax: When the constraints read from the words leave nothing, drop them one at
                a time (reported in ``relaxed``).
            exclude_ids: Products never to return.
            session: The shopper's earlier impressions — this conversation's, and their
                earlier conversations' where the shop knows them — as mappings with
                ``product_id`` and ``clicked`` / ``added_to_cart`` / ``purchased``: the
                ranker's history features.
            rerank: Let a promoted ranker re-order the candidates (off: similarity order).

        Returns:
            The ranked hits with per-modality scores and reasons.

        Raises:
            ValueError: ``k`` out of range, or neither image, text nor filters given.
            ImageError: The photo is unreadable or refused.
            FilterError: An explicit filter names a key the catalog does not have.
        """
        check_k(k)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        plan = self.understand(image, text, filters, parse_text=parse_text, relax=relax,
                               timings=timings)
        hits, exact = self.serve(plan, k, exclude_ids=exclude_ids, session=session,
                                 rerank=rerank, timings=timings)
        timings["total"] = _ms(t0)
        return SearchResult(hits=hits, filters=plan.filters, parsed=plan.parsed,
                            relaxed=plan.relaxed, index_version=self.version,
                            timings_ms=timings, exact=exact,
                            model_version=self.model_version(any(h.ranking for h in hits)))

    def model_version(self, reranked: bool = False) -> str:
        """What ordered a result list, as the event log records it: the fusion's version,
        then ``+ranker-<version>`` when the promoted ranker re-ordered the list (a caller
        that shows it in a random order appends :data:`SHUFFLED`)."""
        ranker = f"+ranker-{self.ranker.version}" if reranked and self.ranker else ""
        return f"{self.fusion.version or 'engine'}{ranker}"

    def serve(self, plan: QueryPlan, k: int, *, exclude_ids: Sequence[str] = (),
              session: Sequence[Mapping[str, Any]] = (), rerank: bool = True,
              timings: dict[str, float] | None = None) -> tuple[list[SearchHit], bool]:
        """The top ``k`` for an understood query: ranked by similarity, then re-ordered
        by the promoted ranker (its candidates, with the shopper's ``session``) unless
        ``rerank`` is off. Returns the hits and whether they were scored exactly."""
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        reranking = rerank and self.ranker is not None and bool(plan.query)
        wanted = max(k, self.ranker.candidates) if reranking and self.ranker else k
        hits, exact = self.rank(plan.query, plan.filters, plan.boosts, wanted,
                                set(exclude_ids))
        timings["search"] = _ms(t0)
        if reranking:
            t1 = time.perf_counter()
            hits = self.rerank(hits, plan.facts(), session)[:k]
            timings["rerank"] = _ms(t1)
        return hits, exact

    def understand(self, image: ImageSource | None = None, text: str | None = None,
                   filters: Filters | None = None, *, parse_text: bool = True,
                   relax: bool = True, timings: dict[str, float] | None = None
                   ) -> QueryPlan:
        """What :meth:`search` makes of a query before ranking: its filters (explicit and
        read from the words, relaxed if they leave nothing), soft boosts, and the encoded
        slot vectors. Raises like :meth:`search`."""
        text = (text or "").strip() or None
        if image is None and text is None and (filters is None or filters.is_empty()):
            raise ValueError("Give a photo, some words, or filters to search by.")
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        parsed = self.parser.parse(text) if (text and parse_text) else None
        explicit = filters or Filters()
        explicit.check_keys(self.table)
        read = parsed.filters if parsed else Filters()
        query_image = self.prepare_image(image) if image is not None else None
        timings["decode"] = _ms(t0)
        t1 = time.perf_counter()
        # With a photo, the words refine: only what they say beyond the constraints is
        # embedded ("but in black" adds a filter, not a text query that matches "black").
        semantic = (parsed.free_text if query_image is not None else parsed.text) \
            if parsed else text
        combined, relaxed = self._applicable(read, explicit, relax)
        query = self._drop_contradicted(self.encode_query(query_image, semantic), combined)
        timings["encode"] = _ms(t1)
        return QueryPlan(query=query, filters=combined, boosts=parsed.boosts if parsed else {},
                         parsed=parsed, relaxed=relaxed, has_image=query_image is not None,
                         has_text=bool(text))

    def _applicable(self, read: Filters, explicit: Filters, relax: bool
                    ) -> tuple[Filters, tuple[str, ...]]:
        combined = read.merged(explicit)
        if not relax or read.is_empty() or combined.mask(self.table).any():
            return combined, ()
        relaxed: list[str] = []
        explicit_keys = set(explicit.constrained())
        for key in RELAX_ORDER:
            if key in read.constrained() and key not in explicit_keys:
                read = read.without(key)
                relaxed.append(key)
                combined = read.merged(explicit)
                if combined.mask(self.table).any():
                    break
        return combined, tuple(relaxed)

    def rank(self, query: Mapping[str, np.ndarray], filters: Filters,
             boosts: Mapping[str, tuple[str, ...]], k: int, exclude: set[str], *,
             exact: bool = False) -> tuple[list[SearchHit], bool]:
        """Ranks products for already encoded query slots (the core of every search).

        Args:
            exact: Score every product the filters allow, never the ANN index (what
                evaluations compare fusions by).

        Returns:
            The top ``k`` hits, and whether they were scored exactly (no ANN).
        """
        mask = filters.mask(self.table) if not filters.is_empty() else None
        for pid in exclude:
            if pid in self.row_of:
                if mask is None:
                    mask = np.ones(len(self.products), dtype=bool)
                mask[self.row_of[pid]] = False
        allowed = len(self.products) if mask is None else int(mask.sum())
        if allowed == 0:
            return [], True
        exact = exact or self.exact_only or not query or (
            mask is not None and allowed <= EXACT_MAX_ROWS)
        fused_query = (self.fusion.fuse({s: v[None, :] for s, v in query.items()}, 1,
                                        query=True)[0] if query else None)
        rows = None
        if not exact:
            want = min(allowed, max(4 * k, 64) + len(exclude))
            rows = self._ann_rows(fused_query, want, filters, mask, allowed,
                                  self._cells(query, allowed))
        if rows is None:  # every allowed product, scored exactly
            exact = True
            rows = np.flatnonzero(mask) if mask is not None else np.arange(len(self.products))
        if not query:  # filters only: catalog order
            rows = rows[:k]
            return [SearchHit(self.products[r], i + 1, 0.0, {}, tuple(filters.describe()))
                    for i, r in enumerate(rows)], True
        per_slot, total = self.score_rows(query, boosts, rows, fused_query)
        # Equal scores (one photo on several products) go in catalog order, not in the
        # order the ANN index happened to return them: the same query, the same list.
        order = np.lexsort((rows, -total))[:k]
        chips = filters.describe()
        out = []
        for rank, j in enumerate(order, start=1):
            row = int(rows[j])
            scores = {s: float(v[j]) for s, v in per_slot.items()}
            why = [f"{SLOT_LABELS.get(s, s)} ({v:.2f})"
                   for s, v in sorted(scores.items(), key=lambda kv: -kv[1])]
            why += chips
            for key, values in boosts.items():
                value = self.table.column(key)[row]
                if value in values:
                    why.append(f"{key}: {value}")
            out.append(SearchHit(self.products[row], rank, float(total[j]), scores, tuple(why)))
        return out, exact

    def score_rows(self, query: Mapping[str, np.ndarray], boosts: Mapping[str, tuple[str, ...]],
                   rows: np.ndarray, fused_query: np.ndarray | None = None
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per-slot cosines and the score search ranks by (fused similarity plus the soft
        boosts) of products ``rows`` for an encoded, non-empty query."""
        if fused_query is None:
            fused_query = self.fusion.fuse({s: v[None, :] for s, v in query.items()}, 1,
                                           query=True)[0]
        if self.exact_only:
            # A variant scores (nearly) the whole catalog per query: from float32 copies of
            # the vectors, all rows at once, rather than converting the rows every time.
            if not self._float32:
                self._float32.update({s: v.astype(np.float32) for s, v in self.vectors.items()})
            per_slot = {s: matvec(self._float32[s], v)[rows] for s, v in query.items()}
        else:
            per_slot = slot_scores(query, self.vectors, rows)
        fused_scores = None if self.fused is None else matvec(self.fused, fused_query, rows)
        if fused_scores is None:
            fused_scores = weighted_score(per_slot, self.weights)
        bonus = np.zeros(len(rows), dtype=np.float32)
        for key, values in boosts.items():
            bonus += BOOST * np.isin(self.table.column(key)[rows], list(values))
        return per_slot, fused_scores + bonus

    def _cells(self, query: Mapping[str, np.ndarray], rows: int) -> int:
        """Vector cells exact scoring of ``rows`` products reads for ``query``."""
        if self.fused is not None:
            return rows * int(self.fused.shape[1])
        return rows * sum(int(v.shape[-1]) for v in query.values())

    def _ann_rows(self, fused_query: np.ndarray, want: int, filters: Filters,
                  mask: np.ndarray | None, allowed: int, cells: int) -> np.ndarray | None:
        """Candidate rows from the ANN index: filtered by Chroma, or post-filtered here
        when the filters are broad (see ``POST_FILTER_SHARE``); ``None`` when scoring the
        allowed products exactly (``cells`` to read) is the cheaper way to their top."""
        share = allowed / max(1, len(self.products))
        if mask is not None and share >= POST_FILTER_SHARE:
            first = int(np.ceil(want / share * POST_FILTER_MARGIN))
            # A query far from the filtered subset (a men's title under gender=Women) finds
            # few of it near the top: exact scoring when cheap, else one wider try before
            # the filtered query.
            cheap = cells <= EXACT_FALLBACK_CELLS
            tries = [min(first, POST_FILTER_MAX)] if cheap else \
                sorted({min(first, POST_FILTER_MAX), POST_FILTER_MAX})
            for n in tries:
                n = min(n, len(self.products))
                hits = self.store.query(fused_query, n)
                rows = np.array([self.row_of[i] for i in hits.ids if i in self.row_of],
                                dtype=int)
                rows = rows[mask[rows]] if rows.size else rows
                if len(rows) >= want:
                    return rows[:want]
            if cheap:
                return None
        hits = self.store.query(fused_query, want, filters.to_where())
        rows = np.array([self.row_of[i] for i in hits.ids if i in self.row_of], dtype=int)
        return rows[mask[rows]] if mask is not None and rows.size else rows

    def rerank(self, hits: Sequence[SearchHit], query: QueryFacts,
               session: Sequence[Mapping[str, Any]] = ()) -> list[SearchHit]:
        """Re-orders candidates by the promoted ranker's expected utility (unchanged, with
        ranks renumbered, when no ranker is promoted). Scores stay the similarity scores;
        the ranker's predictions go in ``SearchHit.ranking``."""
        if self.ranker is None or not hits:
            return [replace(h, rank=i) for i, h in enumerate(hits, start=1)]
        facts = self.ranker.facts(self.table)
        rows = np.array([self.row_of[h.product.product_id] for h in hits], dtype=np.int64)
        history = interactions_history(facts, self.row_of, session) if session else None
        found = self.ranker.score(facts, rows, np.array([h.score for h in hits]),
                                  slot_arrays([h.scores for h in hits], self.ranker.arch.slots),
                                  query, history)
        order = np.argsort(-found.utility, kind="stable")
        return [replace(hits[j], rank=rank, ranking={
                    "utility": float(found.utility[j]), "p_click": float(found.p_click[j]),
                    "p_purchase": float(found.p_click_convert[j])})
                for rank, j in enumerate(order, start=1)]

    def vectors_of(self, product_id: str) -> dict[str, np.ndarray]:
        """The stored per-slot vectors of a product, as float32."""
        row = self.row_of[self.product(product_id).product_id]
        return {s: v[row].astype(np.float32) for s, v in self.vectors.items()}


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def _profile_from_manifest(manifest: Mapping[str, Any], settings: Settings) -> LoadedProfile:
    """Loads exactly the encoders an index was built with (from their specs)."""
    legacy = manifest.get("normaliser")  # indexes with one preparation for all image slots
    slots = tuple(
        SlotDef(c["slot"], c["spec"], c["source"], float(c["weight"]), c.get("describes"),
                PhotoNormaliser.from_dict(c.get("normaliser") or legacy)
                if c["source"] == IMAGE and (c.get("normaliser") or legacy) else None)
        for c in manifest["slots"])
    encoders: dict[str, Encoder] = {}
    for slot in slots:
        if slot.encoder not in encoders:
            encoders[slot.encoder] = create_encoder(slot.encoder, device=settings.device,
                                                    precision=settings.precision,
                                                    batch_size=settings.batch_size)
    return LoadedProfile(Profile(str(manifest["profile"]), slots), encoders)
