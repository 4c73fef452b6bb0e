"""What a ranking head recovered of the simulator's hidden ground truth.

For simulated impressions, :func:`hidden_utility` recomputes the terms of the utility each
shopper really had for each shown product (:class:`training.truth.Utility`: intent match,
the photographed target, the shopper's hidden attribute preferences, price fit, engine
score) from the saved truth. :func:`recovery_report` compares them with the head's
predictions: how well its click logit follows the hidden utility (against the similarity
score alone), how its history features track the hidden preference term, and the
coefficients of a least-squares fit of its logit on the hidden terms beside the truth's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from training.behaviour import Parts, utilities
from training.shoppers import CatalogStats, intent_match, preference_match, price_fit
from training.truth import ATTRIBUTES, SimulationTruth

TERMS = ("intent", "target", "preference", "price", "score")


def hidden_utility(frame: pd.DataFrame, rows: np.ndarray, truth: SimulationTruth,
                   stats: CatalogStats, row_of: Mapping[str, int]) -> pd.DataFrame:
    """The hidden utility's terms for each impression (NaN for queries the truth lacks).

    Args:
        frame: Impressions with ``query_id``, ``product_id`` and ``score`` (query rows
            contiguous).
        rows: Index row of each impression's product.
        truth: The simulation's ground truth.
        stats: Catalog statistics of the index simulated against.
        row_of: Product id -> index row.

    Returns:
        Columns ``intent``, ``target``, ``preference``, ``price``, ``score`` and ``u``.
    """
    n = len(frame)
    out = {t: np.full(n, np.nan) for t in TERMS}
    qids = frame["query_id"].to_numpy()
    scores = frame["score"].fillna(0.0).to_numpy(dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]]) if n else np.zeros(0, int)
    ends = np.r_[starts[1:], n]
    shoppers = {s.shopper_id: s for s in truth.shoppers}
    for start, end in zip(starts, ends, strict=True):
        query = truth.queries.get(qids[start])
        if query is None:
            continue
        shopper = shoppers[query["shopper"]]
        part = list(rows[start:end])
        target = query.get("target")
        target_row = row_of.get(target) if target is not None else None
        out["intent"][start:end] = intent_match(stats, part, query["intent"],
                                                query.get("price_cap"))
        out["target"][start:end] = [float(r == target_row) for r in part]
        out["preference"][start:end] = preference_match(shopper, stats, part)
        out["price"][start:end] = price_fit(shopper, stats, part)
        out["score"][start:end] = scores[start:end]
    frame_out = pd.DataFrame(out)
    frame_out["u"] = utilities(truth.config, Parts(**{t: frame_out[t].to_numpy()
                                                      for t in TERMS}))
    return frame_out


def preference_terms(frame: pd.DataFrame, rows: np.ndarray, truth: SimulationTruth,
                     stats: CatalogStats) -> pd.DataFrame:
    """Per attribute, the shopper's hidden ``importance * affinity`` for each impression's
    product value (the parts of the hidden preference term; NaN where the truth lacks the
    query)."""
    shoppers = {s.shopper_id: s for s in truth.shoppers}
    who = [truth.queries.get(q, {}).get("shopper") for q in frame["query_id"]]
    out = {}
    for attr in ATTRIBUTES:
        column = stats.values[attr]
        out[attr] = [shoppers[w].importance[attr] * shoppers[w].affinity[attr].get(
            column[r], 0.0) if w is not None else np.nan for w, r in zip(who, rows, strict=True)]
    return pd.DataFrame(out)


def expected_gains(u: np.ndarray, truth: SimulationTruth) -> dict[str, np.ndarray]:
    """The hidden chance of a click and of a purchase of an *examined* product: relevance
    free of position bias and of the draw, for NDCG against the truth."""
    config = truth.config
    p_click = _sigmoid(u)
    p_cart = _sigmoid(config.cart.bias + config.cart.utility * u)
    p_buy = _sigmoid(config.purchase.bias + config.purchase.utility * u)
    return {"clicked": p_click, "purchased": p_click * p_cart * p_buy}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def within_list(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Values minus their query's mean: what ranking inside a list depends on."""
    sums = np.bincount(group, weights=values)
    counts = np.bincount(group)
    return values - (sums / np.maximum(counts, 1))[group]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy())


def recovery_report(hidden: pd.DataFrame, group: np.ndarray, logit: np.ndarray,
                    similarity: np.ndarray, history_effect: np.ndarray | None,
                    truth: SimulationTruth) -> dict[str, Any]:
    """How the head's click logit relates to the hidden utility, within each query's list.

    Args:
        hidden: From :func:`hidden_utility` (rows with NaN are left out).
        group: Query of each row.
        logit: The head's click logit.
        similarity: The engine's fused score.
        history_effect: The head's logit minus its logit with the history features
            blanked (``None``: not reported).
        truth: For the true coefficients.

    Returns:
        ``corr_u`` (ranker, similarity: Pearson and Spearman of within-list values with
        the hidden utility), ``corr_preference`` (the history effect against the hidden
        preference term, rows with history only), and ``coefficients`` (least squares of
        the within-list logit on the within-list hidden terms, beside the truth's
        coefficients; the logit's scale is its own, so compare ratios).
    """
    ok = hidden["u"].notna().to_numpy()
    g = np.unique(group[ok], return_inverse=True)[1]
    u = within_list(hidden["u"].to_numpy()[ok], g)
    ours = within_list(logit[ok].astype(np.float64), g)
    base = within_list(similarity[ok].astype(np.float64), g)
    report: dict[str, Any] = {
        "rows": int(ok.sum()),
        "corr_u": {"ranker": {"pearson": pearson(ours, u), "spearman": spearman(ours, u)},
                   "similarity": {"pearson": pearson(base, u),
                                  "spearman": spearman(base, u)}}}
    terms = np.column_stack([within_list(hidden[t].to_numpy()[ok], g) for t in TERMS])
    coef, *_ = np.linalg.lstsq(terms, ours, rcond=None)
    true = truth.config.utility
    report["coefficients"] = {t: {"learned": float(c), "hidden": float(getattr(true, t))}
                              for t, c in zip(TERMS, coef, strict=True)}
    if history_effect is not None:
        effect = history_effect[ok].astype(np.float64)
        has = np.abs(effect) > 1e-9
        pref = hidden["preference"].to_numpy()[ok]
        report["corr_preference"] = {
            "rows": int(has.sum()),
            "pearson": pearson(within_list(effect, g)[has], within_list(pref, g)[has])}
    return report
