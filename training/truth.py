"""The shopper simulator's settings and hidden ground truth, saved as JSON beside the log.

Everything that decides what a simulated shopper does lives here as plain, frozen data: the
examination curve (``P(examine | rank) = 1 / rank ** eta``), the coefficients of the hidden
utility, the click → add-to-cart → purchase links, the dwell model, and every shopper's
preferences. Training reads the event log only; tests and evaluation read this file to check
what training recovered.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

TRUTH_FORMAT = 1
# The attributes a shopper has tastes over (each a column of the index's ColumnTable).
ATTRIBUTES = ("colour", "category", "usage", "season")


@dataclass(frozen=True, kw_only=True)
class Utility:
    """Coefficients of the hidden utility of a product shown to a shopper.

    ``u = bias + intent * intent_match + target * is_target + preference * preference_match
    + price * price_fit + score * engine_score``, where ``intent_match`` is the share of the
    query's intended attributes the product has (0..1), ``is_target`` marks the very product
    photographed, ``preference_match`` is the shopper's importance-weighted affinity to the
    product's attribute values, ``price_fit`` is ``-sensitivity * max(0, ln(price / budget))``
    and ``engine_score`` the fused score the engine logged. ``sigmoid(u)`` is the chance that
    an examined product is clicked.
    """

    bias: float = -3.0
    intent: float = 2.0
    target: float = 1.0
    preference: float = 1.0
    price: float = 1.0
    score: float = 1.5


@dataclass(frozen=True, kw_only=True)
class Link:
    """A logistic link ``P = sigmoid(bias + utility * u)`` for one step of the funnel."""

    bias: float
    utility: float


@dataclass(frozen=True, kw_only=True)
class Dwell:
    """Dwell time on a clicked product: ``ln(ms) ~ Normal(log_ms + utility * u, sd)``."""

    log_ms: float = 9.0  # about 8 s
    utility: float = 0.5
    sd: float = 0.6


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """How the simulated shoppers behave (all of it is ground truth).

    Attributes:
        k: Results shown per query.
        eta: Position bias: ``P(examine | rank) = 1 / rank ** eta``.
        explore: Share of result lists shown in a random order (logged with the model
            version ``...+shuffle``), as a shop would for unbiased position estimates.
        explore_depth: An explored list shows ``k`` products drawn at random from the
            engine's top ``explore_depth`` (at least ``k``; ``k``: the top ``k`` shuffled).
            Deeper exploration shows a ranker the candidates it re-orders when serving
            (search re-ranks the top 50), which ordinary traffic never displays.
        photo_rate: Mean share of a shopper's new queries made by photo (per shopper
            ``Beta`` around it).
        refine_rate: Chance that a follow-up query refines the previous one ("cheaper",
            "in another colour") rather than starting afresh.
        price_cap_rate: Mean chance that a text query names a price cap (scaled by the
            shopper's price sensitivity).
        colour_rate: Chance that a query names a colour.
        style_rate: Chance that a query names a usage ("casual") and, separately, a season.
        patience: Mean chance of asking another query after one without a purchase (per
            shopper ``Beta`` around it).
        max_queries: Most queries in one session.
        purchase_ends_session: Chance that a session ends after a purchase.
        importance_alpha: Dirichlet concentration of the per-attribute importances.
        affinity_sd: Standard deviation of the Gaussian affinity to each attribute value.
        taste_temperature: Softness of query choices: a value is asked for with weight
            ``popularity ** 0.5 * exp(affinity / taste_temperature)``.
        utility: The hidden utility's coefficients.
        cart: Add-to-cart given a click.
        purchase: Purchase given add-to-cart.
        dwell: Dwell time on a clicked product.
        start: ISO timestamp of the first session (the simulated clock; fixed for
            reproducibility).
        session_gap_s: Mean seconds between session starts.
    """

    k: int = 10
    eta: float = 1.0
    explore: float = 0.0
    explore_depth: int = 10
    photo_rate: float = 0.3
    refine_rate: float = 0.3
    price_cap_rate: float = 0.25
    colour_rate: float = 0.75
    style_rate: float = 0.15
    patience: float = 0.65
    max_queries: int = 6
    purchase_ends_session: float = 0.7
    importance_alpha: float = 2.0
    affinity_sd: float = 1.0
    taste_temperature: float = 1.0
    utility: Utility = field(default_factory=Utility)
    cart: Link = field(default_factory=lambda: Link(bias=-1.0, utility=0.8))
    purchase: Link = field(default_factory=lambda: Link(bias=-0.5, utility=0.8))
    dwell: Dwell = field(default_factory=Dwell)
    start: str = "2026-01-05T09:00:00+00:00"
    session_gap_s: float = 90.0

    def __post_init__(self) -> None:
        if not 1 <= self.k <= 200:
            raise ValueError(f"k must be between 1 and 200 (got {self.k}).")
        if not 0 <= self.eta < math.inf:  # NaN too
            raise ValueError(f"eta must be >= 0 (got {self.eta}); 0 means no position bias.")
        for name in ("explore", "photo_rate", "refine_rate", "price_cap_rate", "colour_rate",
                     "style_rate", "patience", "purchase_ends_session"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability, between 0 and 1 (got {value}).")
        if self.explore_depth < self.k or self.explore_depth > 1000:
            raise ValueError(f"explore_depth must be between k ({self.k}) and 1000 (got "
                             f"{self.explore_depth}).")
        if self.max_queries < 1:
            raise ValueError(f"max_queries must be at least 1 (got {self.max_queries}).")

    def examination(self, k: int | None = None) -> list[float]:
        """``P(examine | rank)`` for ranks 1..k (default ``self.k``)."""
        return [examination_probability(r, self.eta) for r in range(1, (k or self.k) + 1)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown simulator settings {sorted(unknown)}; known: "
                             f"{sorted(known)}.")
        nested = {"utility": Utility, "cart": Link, "purchase": Link, "dwell": Dwell}
        values = {k: (nested[k](**v) if k in nested and isinstance(v, dict) else v)
                  for k, v in data.items()}
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class Shopper:
    """One simulated shopper's hidden traits.

    Attributes:
        shopper_id: Pseudonymous id (logged as the conversation's ``user_id``).
        gender: Whose products they shop for (catalog value; "" when the catalog has none).
        importance: Attribute -> how much it weighs (Dirichlet draw; sums to 1).
        affinity: Attribute -> value -> Gaussian affinity (unlisted values: 0).
        budget_ratio: Their budget as a multiple of a category's median price.
        price_sensitivity: How steeply utility falls above the budget.
        patience: Chance of another query after one without a purchase.
        photo_rate: Chance that a new query is a photo.
    """

    shopper_id: str
    gender: str
    importance: dict[str, float]
    affinity: dict[str, dict[str, float]]
    budget_ratio: float
    price_sensitivity: float
    patience: float
    photo_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shopper:
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class SimulationTruth:
    """What a simulation run did and why: its settings, shoppers, queries and counts.

    A log may hold several runs (``shopassist simulate --append``, each with its own seed,
    the same settings and index): their truth is one file, every run's shoppers, queries and
    photos together, and ``runs`` lists them.

    Attributes:
        seed: The (first) run's seed (with the same index and settings, the same log).
        sessions: Sessions simulated (by every run).
        config: The behaviour settings.
        shoppers: Every shopper, by position (``Shopper.shopper_id`` is the log's user id).
        index: The index searched: ``version``, ``folder``, ``products``, ``fusion``.
        queries: Query id -> what the shopper meant: ``shopper``, ``kind`` (text, photo,
            photo+text), ``intent`` (attribute -> value), ``price_cap``, ``target`` (the
            product photographed), ``refinement`` and ``shuffled``.
        photos: Upload ref -> ``product_id``, ``source`` (the file perturbed) and ``seed``
            (of :func:`training.photos.shopper_photo`), to regenerate each query photo.
        summary: The counts of :class:`training.simulate.SimulationSummary` (of every
            run); ``interrupted`` when a run stopped before its last session.
        runs: Each run's ``seed``, ``sessions`` and ``summary``, in order, when more than
            one wrote the log (empty: the one run above).
    """

    seed: int
    sessions: int
    config: SimConfig
    shoppers: list[Shopper]
    index: dict[str, Any]
    queries: dict[str, dict[str, Any]] = field(default_factory=dict)
    photos: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    format: int = TRUTH_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "seed": self.seed, "sessions": self.sessions,
                "eta": self.config.eta, "examination": self.config.examination(),
                "config": self.config.to_dict(),
                "shoppers": [s.to_dict() for s in self.shoppers], "index": self.index,
                "queries": self.queries, "photos": self.photos, "summary": self.summary,
                "runs": self.runs}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulationTruth:
        if data.get("format") != TRUTH_FORMAT:
            raise ValueError(f"Simulation truth format {data.get('format')!r} is not "
                             f"{TRUTH_FORMAT}; re-run `shopassist simulate` with this version.")
        return cls(seed=int(data["seed"]), sessions=int(data["sessions"]),
                   config=SimConfig.from_dict(data["config"]),
                   shoppers=[Shopper.from_dict(s) for s in data["shoppers"]],
                   index=dict(data["index"]), queries=dict(data["queries"]),
                   photos=dict(data["photos"]), summary=dict(data["summary"]),
                   runs=list(data.get("runs", [])))

    def save(self, path: str | Path) -> Path:
        """Writes the truth as JSON (the folder is created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")),
                       encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SimulationTruth:
        """Reads a truth file written by :meth:`save`.

        Raises:
            FileNotFoundError: No file there.
            ValueError: Not a simulation truth of this format (not JSON, not an object with
                the fields :meth:`to_dict` writes), or a folder.
        """
        path = Path(path)
        what = "the ground truth JSON `shopassist simulate` saved beside its log"
        if path.is_dir():
            raise ValueError(f"{path} is a folder: pass {what} (<log name>.truth.json).")
        if not path.is_file():
            raise FileNotFoundError(f"No ground truth at {path}: pass {what}.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno} column "
                             f"{exc.colno}): pass {what}.") from exc
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path} is not UTF-8 text: pass {what}.") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a simulation's "
                             f"truth (an object with seed, config, shoppers, queries...): "
                             f"pass {what}.")
        try:
            return cls.from_dict(data)
        except KeyError as exc:
            raise ValueError(f"{path} is not a complete simulation truth (it has no "
                             f"{exc.args[0]!r}): pass {what}.") from exc
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is not a simulation truth ({exc}): pass {what}.") from exc
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    @property
    def seeds(self) -> list[int]:
        """The seed of every run in the log."""
        return [int(r["seed"]) for r in self.runs] or [self.seed]

    def conflicts(self, run: SimulationTruth) -> list[str]:
        """Why ``run`` cannot be appended to this truth (empty: it can).

        One file holds one behaviour and one index, and ids are made from the seed, so a
        later run into the same log must use the same settings and index and a new seed.
        """
        out = []
        if run.seed in self.seeds:
            out.append(f"seed {run.seed} was simulated already (seeds {self.seeds})")
        mine, theirs = self.config.to_dict(), run.config.to_dict()
        out += [f"{name}: {mine[name]!r} in the earlier runs, {theirs[name]!r} now"
                for name in mine if mine[name] != theirs[name]]
        out += [f"index {name}: {self.index.get(name)!r} in the earlier runs, "
                f"{run.index.get(name)!r} now" for name in ("version", "fusion", "products")
                if self.index.get(name) != run.index.get(name)]
        return out

    def shopper(self, shopper_id: str) -> Shopper:
        """The shopper with this id.

        Raises:
            KeyError: No such shopper in this run.
        """
        for s in self.shoppers:
            if s.shopper_id == shopper_id:
                return s
        raise KeyError(f"No shopper {shopper_id!r} in this simulation.")


def examination_probability(rank: int, eta: float) -> float:
    """``1 / rank ** eta``: the chance that a shopper looks at position ``rank`` (1-based)."""
    if rank < 1:
        raise ValueError(f"Ranks start at 1 (got {rank}).")
    return float(rank) ** -eta
