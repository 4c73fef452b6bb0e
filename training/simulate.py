"""The shopper simulator: a catalog index in, realistic event-log traffic out, with the
hidden ground truth beside it.

Shoppers with hidden tastes (:mod:`training.shoppers`) run sessions of a few queries — by
text, by photo, or a photo with words — through the real :class:`SearchEngine`; they
examine, click, add to cart and buy by the models of :mod:`training.behaviour`, and every
message, search, impression and reaction is written through :class:`EventLog`, the app's own
writer. Sessions advance in waves so each wave's query encodings are computed in one batch
(:class:`training.batched_search.BatchedSearch`).

Reproducible: a session's shopper, words, photo and reactions come from generators seeded by
``(seed, session)``, and ids and timestamps from the seed and a simulated clock, so the same
seed, index and settings write the same rows. Search latency is left out of the log (it is
wall-clock time); the summary reports it.

The truth file is written before the first event and again when the run ends or stops, so a
log never holds a session its truth does not know; a later run into the same log is added to
that truth (:func:`simulate`'s ``append``), never written over it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from assistant.eventlog import EventLog
from retrieval.images import ImageError
from retrieval.progress import progress
from retrieval.search import SHUFFLED, SearchEngine, SearchHit
from training.batched_search import BatchedSearch
from training.behaviour import Parts, Reactions, Timeline, react, timeline, utilities
from training.photos import PhotoSource
from training.queries import Intent, new_intent, refine
from training.shoppers import (
    CatalogStats,
    draw_shopper,
    intent_match,
    preference_match,
    price_fit,
)
from training.truth import Shopper, SimConfig, SimulationTruth

logger = logging.getLogger(__name__)

CHANNEL = "simulator"
WAVE = 64  # sessions advanced together (one encoding batch per wave)
SAVE_EVERY_S = 30.0  # a run killed outright (no Ctrl-C) loses at most this much of its truth


@dataclass
class SimulationSummary:
    """Counts of what a simulation wrote, and how fast."""

    sessions: int = 0
    shoppers: int = 0
    queries: int = 0
    impressions: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    refinements: int = 0
    shuffled: int = 0
    empty_results: int = 0
    skipped_photos: int = 0
    impressions_by_rank: list[int] = field(default_factory=list)
    clicks_by_rank: list[int] = field(default_factory=list)
    seconds: float = 0.0
    encodings: dict[str, dict[str, int]] = field(default_factory=dict)

    def ctr_by_rank(self) -> list[float]:
        """Clicks per impression at each rank (1-based positions, in order)."""
        return [c / n if n else 0.0
                for c, n in zip(self.clicks_by_rank, self.impressions_by_rank, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ctr_by_rank": [round(x, 4) for x in self.ctr_by_rank()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulationSummary:
        """The counts of a truth's ``summary`` (derived and unknown keys are left out)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def __add__(self, other: SimulationSummary) -> SimulationSummary:
        """The counts of two runs into one log, together."""
        return SimulationSummary(**{f.name: _add(getattr(self, f.name), getattr(other, f.name))
                                    for f in fields(self)})

    def format(self) -> str:
        """A few lines for people: counts, rates and click-through by rank."""
        rate = self.sessions / self.seconds if self.seconds else 0.0
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(self.kinds.items()))
        lines = [
            f"sessions {self.sessions:,} ({self.shoppers:,} shoppers) in {self.seconds:.1f} s "
            f"({rate:.1f} sessions/s)",
            f"queries {self.queries:,} ({kinds}; {self.refinements:,} refinements, "
            f"{self.shuffled:,} shown shuffled, {self.empty_results:,} without results)",
            f"impressions {self.impressions:,}  clicks {self.clicks:,}  carts {self.carts:,}  "
            f"purchases {self.purchases:,}",
            f"CTR {self.clicks / max(self.impressions, 1):.3f}  cart/click "
            f"{self.carts / max(self.clicks, 1):.3f}  purchase/cart "
            f"{self.purchases / max(self.carts, 1):.3f}",
            "CTR by rank: " + "  ".join(f"{r}:{c:.3f}"
                                        for r, c in enumerate(self.ctr_by_rank(), start=1)),
        ]
        return "\n".join(lines)


def _add(a: Any, b: Any) -> Any:
    """Counts added: numbers, lists position by position, dicts key by key."""
    if isinstance(a, dict):
        return {k: _add(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k))
                for k in {**a, **b}}
    if isinstance(a, list):
        return [x + y for x, y in zip_longest(a, b, fillvalue=0)]
    return round(a + b, 2) if isinstance(a, float) else a + b


@dataclass
class _Session:
    index: int
    conversation_id: str
    shopper: Shopper
    rng: np.random.Generator
    clock: datetime
    queries: int = 0
    previous: Intent | None = None
    shown_prices: list[float] = field(default_factory=list)
    done: bool = False


def conversation_id(seed: int, session: int) -> str:
    """The log's conversation id of a simulated session (letters keep the digit runs short,
    so the event log's masking leaves them as they are)."""
    return f"sim{seed}s{session:06d}"


class Simulator:
    """Runs simulated sessions against one engine into one event log.

    Args:
        engine: The index to search.
        log: Where every event is written (through its writer methods only).
        seed: Seeds everything (a non-negative integer).
        config: Behaviour settings.
        photos_dir: Larger product photos (``<id>.jpg``); ``None``: catalog photos only.
        stats: Catalog statistics, when already computed for this engine.
    """

    def __init__(self, engine: SearchEngine, log: EventLog, *, seed: int = 0,
                 config: SimConfig | None = None, photos_dir: Path | None = None,
                 stats: CatalogStats | None = None) -> None:
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer (got {seed}).")
        self.engine = engine
        self.log = log
        self.seed = seed
        self.config = config or SimConfig()
        self.stats = stats or CatalogStats(engine.table)
        self.photos = PhotoSource(engine.products, seed, photos_dir)
        self.searcher = BatchedSearch(engine)
        self.fusion = str(engine.manifest.get("fusion", {}).get("version", "")) or None
        self.start = datetime.fromisoformat(self.config.start)
        if self.start.tzinfo is None:
            raise ValueError(f"config.start must carry a time zone (got {self.config.start!r}).")

    def shoppers(self, n: int) -> list[Shopper]:
        """The run's shopper population (drawn from ``(seed, 0)``)."""
        rng = np.random.default_rng([self.seed, 0])
        return [draw_shopper(rng, self.stats, self.config, f"shopper{self.seed}x{i:05d}")
                for i in range(n)]

    def run(self, sessions: int, *, shoppers: int | None = None,
            show_progress: bool | None = None,
            on_session: Callable[[int], None] | None = None,
            save: Callable[[SimulationTruth], None] | None = None) -> SimulationTruth:
        """Simulates ``sessions`` sessions and writes them to the log.

        Args:
            sessions: How many sessions.
            shoppers: Size of the shopper population (default: one per three sessions).
            show_progress: A progress bar (default: when stderr is a terminal).
            on_session: Called with each finished session's index.
            save: Called with the truth before the first event (its queries still empty,
                its summary ``interrupted``), every ``SAVE_EVERY_S`` seconds, when the run is
                done, and when it stops on an exception (Ctrl-C included: the truth of the
                sessions written so far).

        Returns:
            The ground truth of the run (with its summary).

        Raises:
            ValueError: ``sessions`` or ``shoppers`` < 1, or the log already holds this
                seed's sessions.
        """
        if sessions < 1:
            raise ValueError(f"sessions must be at least 1 (got {sessions}).")
        if shoppers is not None and shoppers < 1:
            raise ValueError(f"shoppers must be at least 1 (got {shoppers}).")
        first = conversation_id(self.seed, 0)
        try:
            self.log.conversation(first)
        except KeyError:
            pass
        else:
            raise ValueError(f"The event log at {self.log.url} already holds the sessions of "
                             f"seed {self.seed} ({first}); use another --seed or a new --db.")
        population = self.shoppers(shoppers if shoppers is not None
                                   else max(1, -(-sessions // 3)))
        truth = SimulationTruth(
            seed=self.seed, sessions=sessions, config=self.config, shoppers=population,
            index={"version": self.engine.version, "folder": str(self.engine.folder),
                   "products": len(self.engine), "profile": self.engine.manifest.get("profile"),
                   "fusion": self.fusion}, summary={"interrupted": True})
        if save is not None:
            save(truth)
        summary = SimulationSummary(sessions=sessions, shoppers=len(population),
                                    impressions_by_rank=[0] * self.config.k,
                                    clicks_by_rank=[0] * self.config.k)
        kinds: Counter[str] = Counter()
        t0 = time.perf_counter()
        started = 0
        saved = t0

        def finish() -> None:
            summary.kinds = dict(kinds)
            summary.seconds = round(time.perf_counter() - t0, 2)
            summary.encodings = self.searcher.stats()

        def so_far() -> SimulationTruth:
            finish()  # the running summary keeps counting toward ``sessions``
            return replace(truth, sessions=started, summary={
                **summary.to_dict(), "sessions": started, "interrupted": True})

        try:
            with progress(sessions, "simulate", "session", show_progress) as bar:
                for start in range(0, sessions, WAVE):
                    wave: list[_Session] = []
                    for i in range(start, min(sessions, start + WAVE)):
                        wave.append(self._begin(i, population))
                        started += 1
                    while active := [s for s in wave if not s.done]:
                        planned = [p for s in active
                                   if (p := self._plan(s, summary)) is not None]
                        self.searcher.prime([(photo, intent.text)
                                             for _, intent, photo in planned])
                        for session, intent, photo in planned:
                            kinds[intent.kind] += 1
                            self._query(session, intent, photo, truth, summary)
                        for s in active:
                            if s.done:
                                bar.update(1)
                                if on_session is not None:
                                    on_session(s.index)
                    if save is not None and time.perf_counter() - saved > SAVE_EVERY_S:
                        save(so_far())
                        saved = time.perf_counter()
        except BaseException:
            # The log keeps every event written so far; the truth must know their queries.
            truth = so_far()
            logger.warning("simulation stopped after %d of %d sessions (%d queries logged)",
                           started, sessions, summary.queries)
            if save is not None:
                save(truth)
                logger.warning("the truth of the sessions logged is saved")
            raise
        finish()
        truth = replace(truth, summary=summary.to_dict())
        if save is not None:
            save(truth)
        logger.info("simulated %d sessions, %d queries, %d impressions in %.1f s", sessions,
                    summary.queries, summary.impressions, summary.seconds)
        return truth

    # -- one session ------------------------------------------------------------------------

    def _begin(self, index: int, population: list[Shopper]) -> _Session:
        rng = np.random.default_rng([self.seed, 1, index])
        shopper = population[int(rng.integers(len(population)))]
        clock = self.start + timedelta(seconds=index * self.config.session_gap_s
                                       + float(rng.uniform(0, self.config.session_gap_s)))
        conv = conversation_id(self.seed, index)
        self.log.start_conversation(channel=CHANNEL, user_id=shopper.shopper_id,
                                    session_id=conv, conversation_id=conv, at=clock,
                                    meta={"simulator": {"seed": self.seed, "session": index}})
        return _Session(index, conv, shopper, rng, clock)

    def _plan(self, s: _Session, summary: SimulationSummary
              ) -> tuple[_Session, Intent, Image.Image | None] | None:
        """The session's next query (and its photo), or ``None`` when the session ends."""
        if s.queries >= self.config.max_queries:
            s.done = True
            return None
        intent = None
        if s.previous is not None and s.rng.random() < self.config.refine_rate:
            intent = refine(s.rng, s.shopper, self.stats, self.config, s.previous,
                            s.shown_prices)
        if intent is None:
            intent = new_intent(s.rng, s.shopper, self.stats, self.config)
        if intent is None:
            s.done = True
            return None
        photo = None
        if intent.target is not None:
            try:
                photo = self.photos.photo(intent.target)
            except (ImageError, OSError, ValueError) as exc:
                logger.debug("no photo of row %d (%s); session %d ends", intent.target, exc,
                             s.index)
                summary.skipped_photos += 1
                s.done = True
                return None
        return s, intent, photo

    def _query(self, s: _Session, intent: Intent, photo: Image.Image | None,
               truth: SimulationTruth, summary: SimulationSummary) -> None:
        cfg, rng = self.config, s.rng
        query_id = f"{s.conversation_id}q{s.queries:02d}"
        s.queries += 1
        ref = f"{query_id}photo" if photo is not None else None
        explore = bool(rng.random() < cfg.explore)
        result = self.searcher.search(image=photo, text=intent.text,
                                      k=cfg.explore_depth if explore else cfg.k)
        hits: list[SearchHit] = list(result.hits)
        shuffled = explore and len(hits) > 1
        if shuffled:
            hits = [hits[int(j)] for j in rng.permutation(len(hits))[:cfg.k]]
        # Recorded before the query's first event: an interrupted run's truth knows every
        # query its log holds.
        truth.queries[query_id] = {
            "shopper": s.shopper.shopper_id, "kind": intent.kind, "intent": dict(intent.attrs),
            "price_cap": intent.price_cap, "refinement": intent.refinement,
            "target": (self.engine.products[intent.target].product_id
                       if intent.target is not None else None),
            "shuffled": shuffled}
        if ref is not None and intent.target is not None:
            truth.photos[ref] = {
                "product_id": self.engine.products[intent.target].product_id,
                "source": self.photos.source(intent.target),
                "seed": self.photos.photo_seed(intent.target)}
        message_id = self.log.log_message(s.conversation_id, "user", intent.message,
                                          has_image=photo is not None, upload_ref=ref,
                                          at=s.clock)
        shown_at = s.clock + timedelta(seconds=1)
        model = result.model_version + (SHUFFLED if shuffled else "")
        self.log.log_query(
            conversation_id=s.conversation_id, message_id=message_id, text=intent.text,
            has_image=photo is not None, image_ref=ref, filters=result.filters,
            hits=[{"product_id": h.product.product_id, "rank": i, "score": h.score,
                   "scores": dict(h.scores)} for i, h in enumerate(hits, start=1)],
            index_version=result.index_version, model_version=model, query_id=query_id,
            at=shown_at)
        rows = [self.engine.row_of[h.product.product_id] for h in hits]
        parts = Parts(
            intent=intent_match(self.stats, rows, intent.attrs, intent.price_cap),
            target=np.array([r == intent.target for r in rows], dtype=np.float64),
            preference=preference_match(s.shopper, self.stats, rows),
            price=price_fit(s.shopper, self.stats, rows),
            score=np.array([h.score for h in hits], dtype=np.float64))
        reactions = react(rng, utilities(cfg, parts), cfg)
        times = timeline(shown_at, reactions)
        self._log_reactions(query_id, hits, reactions, times)
        for i in range(len(hits)):
            summary.impressions_by_rank[i] += 1
            summary.clicks_by_rank[i] += int(reactions.clicked[i])
        summary.queries += 1
        summary.impressions += len(hits)
        summary.clicks += int(reactions.clicked.sum())
        summary.carts += int(reactions.carted.sum())
        summary.purchases += int(reactions.purchased.sum())
        summary.refinements += intent.refinement is not None
        summary.shuffled += shuffled
        summary.empty_results += not hits
        s.previous = intent
        s.shown_prices = [float(h.product.price) for h in hits if h.product.price is not None]
        s.clock = times.end + timedelta(seconds=float(rng.exponential(20.0)) + 3.0)
        bought = bool(reactions.purchased.any())
        if (bought and rng.random() < cfg.purchase_ends_session) \
                or rng.random() >= s.shopper.patience:
            s.done = True


    def _log_reactions(self, query_id: str, hits: list[SearchHit], reactions: Reactions,
                       times: Timeline) -> None:
        """Writes the feedback of one list, in the order it happened per product."""
        for i, hit in enumerate(hits):
            if not reactions.clicked[i]:
                continue
            pid = hit.product.product_id
            self.log.log_feedback("click", query_id=query_id, product_id=pid, at=times.click[i])
            if reactions.carted[i]:
                self.log.log_feedback("add_to_cart", query_id=query_id, product_id=pid,
                                      at=times.cart[i])
            self.log.log_feedback("dwell", query_id=query_id, product_id=pid,
                                  dwell_ms=float(reactions.dwell_ms[i]), at=times.dwell[i])
        for i in np.flatnonzero(reactions.purchased):
            hit = hits[int(i)]
            self.log.log_feedback("purchase", query_id=query_id,
                                  product_id=hit.product.product_id, value=hit.product.price,
                                  at=times.purchase[int(i)])


def simulate(engine: SearchEngine, log: EventLog, sessions: int, *, seed: int = 0,
             config: SimConfig | None = None, shoppers: int | None = None,
             photos_dir: Path | None = None, truth_path: str | Path | None = None,
             append: bool = False, show_progress: bool | None = None) -> SimulationTruth:
    """Simulates shopper sessions into an event log and returns (and saves) the truth.

    A log's truth is one file. Into a log that already holds simulated sessions, or with a
    truth file that already exists, only ``append`` simulates, and then this run is added
    to that file (every run's shoppers and queries, see :attr:`SimulationTruth.runs`): it
    must use a new seed and the earlier runs' settings and index. The file is saved before
    the first event and again when the run ends or stops (Ctrl-C included).

    Args:
        engine: The index to search.
        log: The event log to write (only through its writer methods).
        sessions: Number of sessions.
        seed: Seeds shoppers, queries, photos and reactions.
        config: Behaviour settings (default :class:`SimConfig`).
        shoppers: Shopper population size (default: one per three sessions).
        photos_dir: Larger product photos named ``<product_id>.jpg`` (default: none).
        truth_path: Where to save the ground truth JSON (default: not saved).
        append: Add this run to a log (and truth file) that already holds simulated sessions.
        show_progress: A progress bar (default: when stderr is a terminal).

    Returns:
        The ground truth of this run, with its summary in ``truth.summary`` (the file holds
        the earlier runs' too).

    Raises:
        ValueError: Bad counts or seed; the log or truth file already holds a simulation
            and ``append`` is not set; or this run cannot be appended to it (its seed, its
            settings or index). Nothing is written then.
    """
    path = Path(truth_path) if truth_path is not None else None
    if not append:
        earlier_sessions = log.list_conversations(channel=CHANNEL, limit=1)
        if earlier_sessions:
            raise ValueError(
                f"The event log at {log.url} already holds simulated sessions (e.g. "
                f"{earlier_sessions[0]['id']}): pass --append to add this run to them and to "
                "their truth file (another --seed, the same settings), or a new --db.")
        if path is not None and path.exists():
            raise ValueError(
                f"{path} already holds the ground truth of another simulation: pass --append "
                "to add this run to it, another --truth, or move the file away.")
    earlier = SimulationTruth.load(path) if path is not None and path.exists() else None
    if append and path is not None and earlier is None \
            and log.list_conversations(channel=CHANNEL, limit=1):
        logger.warning("the simulated sessions already in %s have no truth at %s: it will "
                       "hold this run's only (pass --truth with theirs to add to it)", log.url,
                       path)
    simulator = Simulator(engine, log, seed=seed, config=config, photos_dir=photos_dir)

    def save(truth: SimulationTruth) -> None:
        if path is None:
            return
        (truth if earlier is None else appended(earlier, truth, where=path)).save(path)

    return simulator.run(sessions, shoppers=shoppers, show_progress=show_progress,
                         save=save if path is not None else None)


def appended(earlier: SimulationTruth, run: SimulationTruth, *,
             where: str | Path = "the earlier truth") -> SimulationTruth:
    """The truth of a log after ``run`` was simulated into it, following ``earlier``'s runs.

    Raises:
        ValueError: ``run`` conflicts with ``earlier`` (:meth:`SimulationTruth.conflicts`);
            the message names ``where`` (the truth file).
    """
    conflicts = earlier.conflicts(run)
    if conflicts:
        raise ValueError(f"Cannot append this run to {where}: {'; '.join(conflicts)}. An "
                         "appended run takes a new --seed and the earlier runs' settings and "
                         "index; else simulate into a new --db.")
    runs = earlier.runs or [_run_entry(earlier)]
    total = SimulationSummary.from_dict(earlier.summary) + \
        SimulationSummary.from_dict(run.summary)
    summary = total.to_dict()
    if any(r["summary"].get("interrupted") for r in [*runs, _run_entry(run)]):
        summary["interrupted"] = True
    return replace(earlier, sessions=earlier.sessions + run.sessions,
                   shoppers=[*earlier.shoppers, *run.shoppers],
                   queries={**earlier.queries, **run.queries},
                   photos={**earlier.photos, **run.photos}, summary=summary,
                   runs=[*runs, _run_entry(run)])


def _run_entry(truth: SimulationTruth) -> dict[str, Any]:
    return {"seed": truth.seed, "sessions": truth.sessions, "summary": truth.summary}
