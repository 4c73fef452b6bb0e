"""Evaluation of a ranking head on logged lists: re-rank each query's shown products by the
head's expected utility and by similarity alone, and compare NDCG@10 of the products that
were purchased, clicked, or graded (click + cart + purchase).

On lists the engine ordered, logged labels favour the engine's own order (shoppers examine
the top more); on lists shown in a random order (exploration, ``+shuffle``) they do not, so
:func:`evaluate_rows` can restrict itself to those.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from retrieval.metrics import ndcg_at_k
from retrieval.ranker import Blend, RankingHead
from training.ranker_data import RankerData
from training.ranker_losses import ranker_losses

LABELS = ("purchased", "clicked", "graded")


def grouped_ndcg(scores: np.ndarray, gains: np.ndarray, group: np.ndarray, k: int = 10,
                 tiebreak: np.ndarray | None = None) -> tuple[float, int]:
    """Mean NDCG@k over the groups (queries) that have a positive gain.

    Args:
        scores: Ranking score of each row (higher first).
        gains: Gain of each row.
        group: Query of each row.
        k: Cut-off.
        tiebreak: Lower first among equal scores (default: row order).

    Returns:
        The mean NDCG@k and the number of queries it averages.
    """
    gains = np.asarray(gains, dtype=np.float64)
    group = np.asarray(group)
    _, group = np.unique(group, return_inverse=True)
    has = np.bincount(group, weights=gains > 0, minlength=group.max() + 1 if len(group) else 0) > 0
    keep = has[group]
    if not keep.any():
        return 0.0, 0
    scores, gains, group = np.asarray(scores)[keep], gains[keep], group[keep]
    tie = np.arange(len(scores)) if tiebreak is None else np.asarray(tiebreak)[keep]
    _, group = np.unique(group, return_inverse=True)
    n = int(group.max()) + 1
    width = int(np.bincount(group).max())
    ranked = np.zeros((n, width))
    ideal = np.zeros((n, width))
    order = np.lexsort((tie, -scores, group))
    pos = _positions(group[order])
    ranked[group[order], pos] = gains[order]
    best = np.lexsort((-gains, group))
    ideal[group[best], _positions(group[best])] = gains[best]
    return ndcg_at_k(ranked, ideal, k), n


def _positions(sorted_groups: np.ndarray) -> np.ndarray:
    """Position of each row within its group (rows sorted by group)."""
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(sorted_groups)]))
    return np.arange(len(sorted_groups)) - first


def gains_of(data: RankerData, label: str) -> np.ndarray:
    if label == "purchased":
        return data.purchased.astype(np.float64)
    if label == "clicked":
        return data.click.astype(np.float64)
    if label == "graded":
        return data.click + data.carted + data.purchased.astype(np.float64)
    raise ValueError(f"Unknown label {label!r}; use one of {', '.join(LABELS)}.")


@torch.inference_mode()
def predict(model: RankingHead, data: RankerData, rows: np.ndarray, device: torch.device |
            str = "cpu", batch: int = 16384) -> dict[str, np.ndarray]:
    """The head's outputs for ``rows`` of ``data`` (``click``, ``convert`` logits, ``dwell``)."""
    was = model.training
    model.eval()
    outs: dict[str, list[np.ndarray]] = {"click": [], "convert": [], "dwell": []}
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        out = model(torch.from_numpy(data.dense[part]).to(device),
                    torch.from_numpy(data.cats[part]).to(device))
        for key in outs:
            outs[key].append(out[key].float().cpu().numpy())
    model.train(was)
    return {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in outs.items()}


def utility(outputs: Mapping[str, np.ndarray], fused: np.ndarray, blend: Blend) -> np.ndarray:
    """The serving blend (:meth:`retrieval.ranker.Reranker.score`) from raw outputs."""
    p_click = 1.0 / (1.0 + np.exp(-outputs["click"].astype(np.float64)))
    p_convert = 1.0 / (1.0 + np.exp(-outputs["convert"].astype(np.float64)))
    return (blend.purchase_value * p_click * p_convert + blend.click_value * p_click
            + blend.similarity_weight * fused)


def evaluate_rows(model: RankingHead, data: RankerData, rows: np.ndarray, blend: Blend,
                  lambdas: tuple[float, float, float, float],
                  device: torch.device | str = "cpu") -> dict[str, float]:
    """NDCG@10 of the head and of similarity alone on ``rows`` (whole queries), and the
    joint loss there (``lambdas``: λ1..λ4).

    Returns:
        ``ranker <label>`` and ``similarity <label>`` NDCG@10 per label, ``queries
        <label>`` counted, and ``loss``, ``click``, ``convert``, ``stay``.
    """
    if len(rows) == 0:
        return {}
    out = predict(model, data, rows, device)
    score = utility(out, data.fused[rows], blend)
    report: dict[str, float] = {}
    for label in LABELS:
        gains = gains_of(data, label)[rows]
        ours, n = grouped_ndcg(score, gains, data.group[rows], tiebreak=data.rank[rows])
        base, _ = grouped_ndcg(data.fused[rows], gains, data.group[rows],
                               tiebreak=data.rank[rows])
        report[f"ranker {label}"] = ours
        report[f"similarity {label}"] = base
        report[f"queries {label}"] = n
    t = {k: torch.from_numpy(v) for k, v in out.items()}
    group = torch.from_numpy(np.unique(data.group[rows], return_inverse=True)[1])
    loss, parts = ranker_losses(t, torch.from_numpy(data.click[rows]),
                                torch.from_numpy(data.convert[rows]),
                                torch.from_numpy(data.log_dwell[rows]),
                                torch.from_numpy(data.ipw[rows]), lambdas[:3], group,
                                lambdas[3])
    report["loss"] = float(loss)
    report.update({k: float(v) for k, v in parts.items()})
    return report


def monitor_value(report: Mapping[str, float], monitor: str) -> float:
    """Higher is better: NDCG@10 of the monitored label, or minus the joint loss."""
    if monitor == "loss":
        return -float(report["loss"])
    return float(report[f"ranker {monitor}"])
