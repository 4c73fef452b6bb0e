"""Training data from the event log (real or simulated) and from the catalog itself.

:func:`impressions_table` reads every impression with its query, shopper session and
feedback into one row; :func:`build_dataset` adds position-bias propensities estimated from
the log (:mod:`training.propensity`), clipped inverse-propensity weights and a train /
validation / test split by session, and computes the snapshot id: a hash of the rows read
from the log, so a model trained on it names exactly the data it saw.

Propensities (``method="auto"``): when the log holds enough randomised result lists — lists
whose ``model_version`` ends in ``+shuffle``, as the simulator's ``--explore`` and a shop's
own exploration traffic write them — the click ratio by rank over those lists alone, which
is unbiased because a shuffled list puts every product at every rank alike. Otherwise
regression-EM over all impressions, with the logged scores as relevance features. On
engine-ordered lists regression-EM still overstates the bias where relevance the scores do
not show is concentrated at rank 1 (the very product a shopper photographed): on 1,000
simulated sessions over the 44k catalog it recovers rank 2 as 0.44 where the truth is 0.50
(text queries alone: 0.51).
:func:`catalog_pairs` gives the self-supervision rows (each product's photo with its title
and attributes) by product id; the vectors come from the index later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from assistant.eventlog import EventLog
from assistant.eventlog.schema import conversations
from retrieval.catalog import CORE_ATTRIBUTES, Product
from retrieval.search import SHUFFLED
from training.propensity import (
    PropensityEstimate,
    click_ratio,
    inverse_propensity_weights,
    regression_em,
)

logger = logging.getLogger(__name__)

DATASET_FORMAT = 1
SPLITS = ("train", "valid", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SALT = "shopassist-split-v1"
LABELS = ("clicked", "added_to_cart", "purchased", "thumbs_up", "thumbs_down")
METHODS = ("auto", "randomised", "regression-em", "click-ratio")
MIN_RANDOMISED = 2000  # randomised impressions needed before "auto" relies on them


def split_of(group: str, fractions: Sequence[float] = DEFAULT_FRACTIONS,
             salt: str = SPLIT_SALT) -> str:
    """The split of a session: a hash of its id, so it never changes and never straddles.

    Args:
        group: The session (conversation) id.
        fractions: Shares of train, valid and test (summing to 1).
        salt: Changes every assignment at once (a new, independent split).

    Returns:
        ``train``, ``valid`` or ``test``.
    """
    digest = hashlib.sha256(f"{salt}:{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edges = np.cumsum(fractions)
    for name, edge in zip(SPLITS, edges, strict=True):
        if u < edge:
            return name
    return SPLITS[-1]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-9:
        raise ValueError(f"Split fractions are three non-negative shares of train, valid and "
                         f"test that sum to 1 (got {values}).")
    return values


def impressions_table(log: EventLog, *, since: Any = None, until: Any = None) -> pd.DataFrame:
    """Every impression in the log with its query, session and feedback, one row each.

    Args:
        log: The event log (read only).
        since: Only impressions shown at or after this time.
        until: Only impressions shown before this time.

    Returns:
        Columns: impression_id, query_id, conversation_id, user_id, session_id, channel,
        query_text, has_image, filters (JSON), product_id, rank, score, ``score_<slot>`` per
        modality (NaN where a query had no such score), the labels (clicked,
        added_to_cart, purchased, thumbs_up, thumbs_down), purchase_value, dwell_ms,
        shown_at (UTC), index_version, model_version; in the order shown.
    """
    records = []
    slots: dict[str, None] = {}
    for row in log.iter_impressions(since=since, until=until):
        scores = dict(row.scores or {})
        slots.update(dict.fromkeys(scores))
        records.append({
            "impression_id": row.impression_id, "query_id": row.query_id,
            "conversation_id": row.conversation_id, "query_text": row.query_text,
            "has_image": row.has_image,
            "filters": json.dumps(row.filters, sort_keys=True) if row.filters else None,
            "product_id": row.product_id, "rank": row.rank, "score": row.score,
            **{f"score_{k}": v for k, v in scores.items()},
            "clicked": row.clicked, "added_to_cart": row.added_to_cart,
            "purchased": row.purchased, "thumbs_up": row.thumbs_up,
            "thumbs_down": row.thumbs_down, "purchase_value": row.purchase_value,
            "dwell_ms": row.dwell_ms, "shown_at": row.shown_at,
            "index_version": row.index_version, "model_version": row.model_version})
    with log.reading() as conn:
        sessions = {r.id: (r.user_id, r.session_id, r.channel) for r in conn.execute(
            select(conversations.c.id, conversations.c.user_id, conversations.c.session_id,
                   conversations.c.channel))}
    columns = ["impression_id", "query_id", "conversation_id", "user_id", "session_id",
               "channel", "query_text", "has_image", "filters", "product_id", "rank", "score",
               *sorted(f"score_{s}" for s in slots), *LABELS, "purchase_value", "dwell_ms",
               "shown_at", "index_version", "model_version"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    conv = frame["conversation_id"]
    for i, name in enumerate(("user_id", "session_id", "channel")):
        frame[name] = [sessions.get(c, (None, None, None))[i] if c is not None else None
                       for c in conv]
    frame = frame.astype({"impression_id": "int64", "rank": "int64", "score": "float64",
                          "has_image": "bool", **dict.fromkeys(LABELS, "bool"),
                          "purchase_value": "float64", "dwell_ms": "float64",
                          **{f"score_{s}": "float64" for s in slots}})
    frame["shown_at"] = pd.to_datetime(frame["shown_at"], utc=True)
    return frame


def snapshot_id(frame: pd.DataFrame) -> str:
    """A hash of the rows and columns: equal tables, equal ids (16 hex digits).

    Values are serialised as JSON per column, so the id does not depend on the pandas or
    Arrow version that computed it.
    """
    digest = hashlib.sha256(f"format{DATASET_FORMAT}".encode())
    for name in frame.columns:
        values = frame[name]
        if pd.api.types.is_datetime64_any_dtype(values):
            values = values.map(lambda t: t.isoformat() if pd.notna(t) else None)
        items = [None if (isinstance(v, float) and np.isnan(v)) else v
                 for v in values.tolist()]
        digest.update(name.encode())
        digest.update(json.dumps(items, default=str).encode())
    return digest.hexdigest()[:16]


def relevance_features(frame: pd.DataFrame) -> np.ndarray:
    """Position-free features for the relevance side of regression-EM: the logged scores
    (fused and per modality, with a flag where one is missing) and the query's modalities."""
    parts = [frame["score"].fillna(0.0).to_numpy(dtype=np.float64)]
    for name in (c for c in frame.columns if c.startswith("score_")):
        values = frame[name].to_numpy(dtype=np.float64)
        parts += [np.nan_to_num(values), np.isnan(values).astype(np.float64)]
    parts += [frame["has_image"].to_numpy(dtype=np.float64),
              frame["query_text"].notna().to_numpy(dtype=np.float64)]
    return np.column_stack(parts)


@dataclass(frozen=True)
class Dataset:
    """Impressions ready for training, with how they were derived.

    Attributes:
        impressions: :func:`impressions_table` plus ``split``, ``propensity`` and ``ipw``.
        propensities: Per rank: impressions, clicks, ctr, the estimate and the naive ratio.
        snapshot_id: Hash of the rows read from the log.
        info: Method, clip, fractions, counts (written as ``dataset.json``).
    """

    impressions: pd.DataFrame
    propensities: pd.DataFrame
    snapshot_id: str
    info: dict[str, Any]


def estimate_propensities(frame: pd.DataFrame, method: str = "auto") -> PropensityEstimate:
    """Position-bias propensities from an impressions table (see the module docstring).

    Args:
        frame: From :func:`impressions_table`.
        method: ``auto``, ``randomised`` (shuffled lists only), ``regression-em`` or
            ``click-ratio`` (naive, for comparison).

    Returns:
        The estimate, relative to rank 1.

    Raises:
        ValueError: Unknown method, no impressions, no click at rank 1, or ``randomised``
            asked of a log without shuffled lists.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown propensity method {method!r}; use one of "
                         f"{', '.join(METHODS)}.")
    shuffled = frame["model_version"].fillna("").str.endswith(SHUFFLED).to_numpy()
    if method == "auto":
        enough = shuffled.sum() >= MIN_RANDOMISED and \
            frame.loc[shuffled & (frame["rank"] == 1).to_numpy(), "clicked"].any()
        method = "randomised" if enough else "regression-em"
    rank = frame["rank"].to_numpy()
    clicked = frame["clicked"].to_numpy()
    if method == "randomised":
        if not shuffled.any():
            raise ValueError(f"No result lists with a model_version ending in "
                             f"{SHUFFLED!r} in the log; use regression-em.")
        found = click_ratio(rank[shuffled], clicked[shuffled])
        return PropensityEstimate(found.propensity, found.impressions, found.clicks,
                                  "randomised")
    if method == "click-ratio":
        return click_ratio(rank, clicked)
    return regression_em(rank, clicked, relevance_features(frame))


def build_dataset(log: EventLog, *, max_weight: float = 10.0, method: str = "auto",
                  fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  salt: str = SPLIT_SALT) -> Dataset:
    """Reads the log into training rows with propensities, weights and a session split.

    Args:
        log: The event log (read only).
        max_weight: Inverse-propensity weights are clipped to ``[1, max_weight]``.
        method: How to estimate propensities (:func:`estimate_propensities`).
        fractions: Shares of sessions in train, valid and test.
        salt: Split salt (a different salt is an independent split).

    Returns:
        The dataset.

    Raises:
        ValueError: The log holds no impressions, or no click at rank 1, bad fractions,
            a ``max_weight`` that is not a finite number of at least 1, or an unknown
            method.
    """
    fractions = _check_fractions(fractions)
    if not math.isfinite(max_weight) or max_weight < 1:
        # NaN passed every comparison and gave NaN weights, hence a NaN ranker.
        raise ValueError(f"--max-weight clips inverse-propensity weights and must be a "
                         f"finite number of at least 1 (got {max_weight}); the default is "
                         "10.")
    frame = impressions_table(log)
    if frame.empty:
        raise ValueError(f"The event log at {log.url} holds no impressions; log searches "
                         "first (the app, or `shopassist simulate`).")
    snapshot = snapshot_id(frame)
    rank = frame["rank"].to_numpy()
    estimate = estimate_propensities(frame, method)
    naive = click_ratio(rank, frame["clicked"].to_numpy())
    groups = frame["conversation_id"].fillna("query:" + frame["query_id"])
    split = {g: split_of(g, fractions, salt) for g in groups.unique()}
    frame["split"] = groups.map(split)
    frame["propensity"] = estimate.at(rank)
    frame["ipw"] = inverse_propensity_weights(frame["propensity"].to_numpy(), max_weight)
    table = _propensity_table(estimate, naive)
    info = {"format": DATASET_FORMAT, "snapshot_id": snapshot, "rows": len(frame),
            "queries": int(frame["query_id"].nunique()),
            "sessions": int(groups.nunique()),
            "splits": {s: int((frame["split"] == s).sum()) for s in SPLITS},
            "fractions": list(fractions), "salt": salt,
            "labels": {k: int(frame[k].sum()) for k in LABELS},
            "propensity": {"method": estimate.method, "iterations": estimate.iterations,
                           "converged": estimate.converged, "max_weight": max_weight,
                           "relative_to": "rank 1"},
            "source": log.url}
    logger.info("dataset %s: %d impressions, %d sessions", snapshot, len(frame),
                info["sessions"])
    return Dataset(frame, table, snapshot, info)


def _propensity_table(estimate: PropensityEstimate, naive: PropensityEstimate) -> pd.DataFrame:
    k = len(naive.propensity)
    shown, clicks = naive.impressions, naive.clicks  # every impression, whatever the method
    propensity = np.concatenate([estimate.propensity,
                                 np.full(k - len(estimate.propensity), np.nan)])[:k]
    return pd.DataFrame({
        "rank": np.arange(1, k + 1), "impressions": shown.astype(np.int64),
        "clicks": clicks.astype(np.int64),
        "ctr": np.divide(clicks, shown, out=np.zeros(k), where=shown > 0),
        "propensity": propensity, "click_ratio": naive.propensity})


def catalog_pairs(products: Iterable[Product], *, fractions: Sequence[float] =
                  DEFAULT_FRACTIONS, salt: str = SPLIT_SALT) -> pd.DataFrame:
    """Self-supervision rows: each product's photo with its title and attributes.

    Args:
        products: The index's products.
        fractions: Shares of products in train, valid and test (split by product id).
        salt: Split salt.

    Returns:
        Columns: product_id, image, title, category, attributes (JSON), attribute_text
        ("Red, Dresses, Women, ..."), document (the text the index encodes), split; only
        products with a photo.
    """
    fractions = _check_fractions(fractions)
    rows = []
    for p in products:
        if not p.image:
            continue
        facts = [p.category, *(p.attributes.get(a, "") for a in CORE_ATTRIBUTES)]
        rows.append({"product_id": p.product_id, "image": p.image, "title": p.title,
                     "category": p.category,
                     "attributes": json.dumps(dict(p.attributes), sort_keys=True,
                                              ensure_ascii=False),
                     "attribute_text": ", ".join(f for f in facts if f),
                     "document": p.document(),
                     "split": split_of(f"product:{p.product_id}", fractions, salt)})
    return pd.DataFrame.from_records(rows, columns=["product_id", "image", "title", "category",
                                                    "attributes", "attribute_text",
                                                    "document", "split"])


def write_parquet(frame: pd.DataFrame, path: Path, metadata: Mapping[str, str]) -> None:
    """Writes one table with ``metadata`` (e.g. the snapshot id) in its Parquet schema."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta.update({f"shopassist.{k}".encode(): str(v).encode() for k, v in metadata.items()})
    pq.write_table(table.replace_schema_metadata(meta), path)


def read_snapshot_id(path: str | Path) -> str | None:
    """The snapshot id recorded in a Parquet file written by :func:`write_dataset`."""
    meta = pq.read_schema(path).metadata or {}
    value = meta.get(b"shopassist.snapshot_id")
    return value.decode() if value is not None else None


def is_log_source(source: str | Path) -> bool:
    """Whether ``source`` names an event log (a URL, or an existing file: a SQLite path)
    rather than a ``shopassist dataset`` folder."""
    return "://" in str(source) or Path(source).expanduser().is_file()


def read_impressions(source: str | Path, *, max_weight: float = 10.0,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS
                     ) -> tuple[pd.DataFrame, str]:
    """The impressions table of an event log (URL or SQLite path; the dataset is built
    from it with ``max_weight`` and ``fractions``) or of a ``shopassist dataset`` folder,
    with its snapshot id.

    Raises:
        FileNotFoundError: No such log or folder, or a folder without
            ``impressions.parquet`` or ``dataset.json``.
        ValueError: An unreadable ``impressions.parquet``, or one without a snapshot id.
        assistant.eventlog.EventLogError: A log that cannot be opened.
    """
    if is_log_source(source):
        with EventLog.open(source, create=False) as log:
            built = build_dataset(log, max_weight=max_weight, fractions=fractions)
        return built.impressions, built.snapshot_id
    folder = Path(source).expanduser()
    rebuild = f"`shopassist dataset --db LOG --out {source}`"
    if not folder.is_dir():
        raise FileNotFoundError(f"No dataset folder or event log at {folder}; build a "
                                f"dataset with {rebuild}, or give the log (a SQLite path "
                                "or URL).")
    for name in ("dataset.json", "impressions.parquet"):
        # dataset.json is written last: without it the folder is no finished dataset.
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {folder} is not a finished "
                                    f"`shopassist dataset` folder; build it with {rebuild}, "
                                    "or give the event log instead.")
    try:
        snapshot = read_snapshot_id(path)
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's message does not name the file
        raise ValueError(f"{path} is not a readable Parquet table ({exc}); rebuild the "
                         f"folder with {rebuild}.") from None
    if snapshot is None:
        raise ValueError(f"{path} carries no snapshot id; rebuild the folder with "
                         f"{rebuild}.")
    return frame, snapshot


def write_dataset(dataset: Dataset, out: str | Path,
                  products: Iterable[Product] | None = None) -> dict[str, Path]:
    """Writes ``impressions.parquet``, ``propensities.parquet``, optionally
    ``catalog_pairs.parquet``, and ``dataset.json`` into ``out``.

    A dataset file of an earlier build that this one does not write (``catalog_pairs``
    without ``products``) is removed, so a reused folder never mixes two builds.

    Returns:
        Table name -> file written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if products is None:
        stale = out / "catalog_pairs.parquet"
        if stale.is_file():
            logger.info("removing %s of an earlier build", stale)
            stale.unlink()
    meta = {"snapshot_id": dataset.snapshot_id, "format": str(DATASET_FORMAT)}
    files = {"impressions": out / "impressions.parquet",
             "propensities": out / "propensities.parquet"}
    write_parquet(dataset.impressions, files["impressions"], meta)
    write_parquet(dataset.propensities, files["propensities"], meta)
    info = dict(dataset.info)
    if products is not None:
        pairs = catalog_pairs(products, fractions=info["fractions"], salt=info["salt"])
        files["catalog_pairs"] = out / "catalog_pairs.parquet"
        write_parquet(pairs, files["catalog_pairs"], meta)
        info["catalog_pairs"] = len(pairs)
    info["files"] = {k: v.name for k, v in files.items()}
    files["info"] = out / "dataset.json"
    files["info"].write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return files
