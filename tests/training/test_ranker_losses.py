"""The ranking head's losses and metrics on cases small enough to compute by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from training.ranker_eval import grouped_ndcg
from training.ranker_losses import click_loss, ctcvr_loss, dwell_loss, list_loss, ranker_losses

LN3 = math.log(3.0)
# Three impressions: pCTR 0.75, 0.5, 0.25; pCVR 0.5, 0.75, 0.5 -> pCTCVR 0.375, 0.375, 0.125.
CLICK_LOGIT = torch.tensor([LN3, 0.0, -LN3])
CONVERT_LOGIT = torch.tensor([0.0, LN3, 0.0])
CLICK = torch.tensor([1.0, 1.0, 0.0])
CONVERT = torch.tensor([1.0, 0.0, 0.0])
IPW = torch.tensor([2.0, 1.5, 4.0])  # the third row is a negative: it counts once


def test_click_loss_weights_positives_by_inverse_propensity():
    expected = (2.0 * -math.log(0.75) + 1.5 * -math.log(0.5) + 1.0 * -math.log(0.75)) / 3
    assert click_loss(CLICK_LOGIT, CLICK, IPW).item() == pytest.approx(expected, abs=1e-6)
    unweighted = (-math.log(0.75) - math.log(0.5) - math.log(0.75)) / 3
    assert click_loss(CLICK_LOGIT, CLICK).item() == pytest.approx(unweighted, abs=1e-6)


def test_esmm_conversion_is_fitted_as_pctcvr_over_every_impression():
    # row 1 converted (weight 2): -ln 0.375; rows 2 and 3 did not: -ln(1 - 0.375), -ln 0.875
    expected = (2.0 * -math.log(0.375) - math.log(0.625) - math.log(0.875)) / 3
    assert ctcvr_loss(CLICK_LOGIT, CONVERT_LOGIT, CONVERT, IPW).item() == \
        pytest.approx(expected, abs=1e-6)
    # the same as a cross-entropy on the product of the two probabilities
    p = torch.sigmoid(CLICK_LOGIT) * torch.sigmoid(CONVERT_LOGIT)
    direct = F.binary_cross_entropy(p, CONVERT, reduction="none")
    weights = torch.tensor([2.0, 1.0, 1.0])
    assert ctcvr_loss(CLICK_LOGIT, CONVERT_LOGIT, CONVERT, IPW).item() == \
        pytest.approx(float((direct * weights).mean()), abs=1e-6)


def test_esmm_trains_pcvr_on_unclicked_rows_too():
    convert_logit = CONVERT_LOGIT.clone().requires_grad_()
    ctcvr_loss(CLICK_LOGIT, convert_logit, CONVERT, IPW).backward()
    # the unclicked third row still pushes its pCTCVR (hence pCVR) down
    assert convert_logit.grad is not None and convert_logit.grad[2].item() > 0


def test_log_space_stays_finite_at_extreme_logits():
    big = torch.tensor([30.0, -30.0])
    loss = ctcvr_loss(big, big, torch.tensor([1.0, 0.0]))
    assert torch.isfinite(loss) and loss.item() < 1e-6


def test_dwell_is_a_weighted_mean_over_clicked_rows():
    pred = torch.tensor([9.0, 8.0, 7.0])
    log_dwell = torch.tensor([10.0, 8.5, 0.0])  # the unclicked row's value is ignored
    expected = (2.0 * 1.0 + 1.5 * 0.25) / 3.5
    assert dwell_loss(pred, log_dwell, CLICK, IPW).item() == pytest.approx(expected, abs=1e-6)
    assert dwell_loss(pred, log_dwell, torch.zeros(3), IPW).item() == 0.0


def test_joint_loss_is_the_lambda_weighted_sum():
    out = {"click": CLICK_LOGIT, "convert": CONVERT_LOGIT, "dwell": torch.tensor([9.0, 8.0, 7.0])}
    total, parts = ranker_losses(out, CLICK, CONVERT, torch.tensor([10.0, 8.5, 0.0]), IPW,
                                 (1.0, 0.5, 0.1))
    assert set(parts) == {"click", "convert", "stay"}
    expected = parts["click"] + 0.5 * parts["convert"] + 0.1 * parts["stay"]
    assert total.item() == pytest.approx(expected.item(), abs=1e-6)
    assert parts["click"].item() == pytest.approx(click_loss(CLICK_LOGIT, CLICK, IPW).item())


def test_grouped_ndcg_by_hand():
    # query 0: the positive ranked 2nd -> 1 / log2(3); query 1: ranked 1st -> 1; query 2 has
    # no positive and is left out
    scores = np.array([0.9, 0.5, 0.1, 0.2, 0.8, 0.7, 0.3])
    gains = np.array([0, 1, 0, 0, 1, 0, 0])
    group = np.array([0, 0, 0, 1, 1, 2, 2])
    value, n = grouped_ndcg(scores, gains, group)
    assert n == 2
    assert value == pytest.approx((1 / math.log2(3) + 1.0) / 2, abs=1e-9)
    # ties are broken by the tiebreak (the logged rank): lower first
    value, _ = grouped_ndcg(np.zeros(3), np.array([0, 0, 1]), np.zeros(3, int),
                            tiebreak=np.array([3, 2, 1]))
    assert value == pytest.approx(1.0)


def test_listwise_term_is_a_softmax_over_each_list():
    # list 0: logits [0, ln 3], the second clicked with weight 2 -> 2 * (ln 4 - ln 3);
    # list 1 has no click and is left out of the mean
    logit = torch.tensor([0.0, LN3, 0.0, 5.0])
    click = torch.tensor([0.0, 1.0, 0.0, 0.0])
    group = torch.tensor([0, 0, 1, 1])
    ipw = torch.tensor([1.0, 2.0, 1.0, 1.0])
    assert list_loss(logit, click, group, ipw).item() == \
        pytest.approx(2 * math.log(4 / 3), abs=1e-6)
    assert list_loss(logit, torch.zeros(4), group).item() == 0.0
    out = {"click": logit, "convert": torch.zeros(4), "dwell": torch.zeros(4)}
    with_list, parts = ranker_losses(out, click, torch.zeros(4), torch.zeros(4), ipw,
                                     (1.0, 1.0, 0.0), group, 0.5)
    without, _ = ranker_losses(out, click, torch.zeros(4), torch.zeros(4), ipw,
                               (1.0, 1.0, 0.0))
    assert with_list.item() == pytest.approx(without.item() + 0.5 * parts["list"].item())
