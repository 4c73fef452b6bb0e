"""The fusion losses on cases small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from training.losses import hardest_negatives, info_nce, match_bce, multi_positive_nce


def test_info_nce_two_orthogonal_pairs():
    # logits [[1, 0], [0, 1]]: each row's loss is -log(e / (e + 1)) = log(1 + 1/e)
    q = torch.eye(2)
    expected = math.log(1 + math.exp(-1))
    assert info_nce(q, q, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)
    assert info_nce(q, q, temperature=1.0, symmetric=False).item() == \
        pytest.approx(expected, abs=1e-6)


def test_temperature_divides_the_cosines():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    # cosines [[0.6, 0.8], [0.8, 0.6]] / 0.5 -> [[1.2, 1.6], [1.6, 1.2]]
    row = math.log(math.exp(1.2) + math.exp(1.6)) - 1.2
    assert info_nce(q, items, temperature=0.5, symmetric=False).item() == \
        pytest.approx(row, abs=1e-6)


def test_multi_positive_rows_count_every_positive():
    logits = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.4, 0.0]])
    positives = torch.tensor([[True, False, True], [False, True, False]])
    row0 = math.log(math.e + 1 + math.exp(0.5)) - math.log(math.e + math.exp(0.5))
    row1 = math.log(math.exp(0.2) + math.exp(0.4) + 1) - 0.4
    assert multi_positive_nce(logits, positives).item() == \
        pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_rows_without_positive_are_left_out():
    logits = torch.tensor([[2.0, 0.0], [5.0, -5.0]])
    positives = torch.tensor([[True, False], [False, False]])
    assert multi_positive_nce(logits, positives).item() == \
        pytest.approx(math.log(math.exp(2) + 1) - 2, abs=1e-6)
    none = torch.zeros(2, 2, dtype=torch.bool)
    assert multi_positive_nce(logits, none).item() == 0.0


def test_single_positive_is_cross_entropy_with_the_same_gradient():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(5, 8), dim=1).requires_grad_()
    k = F.normalize(torch.randn(5, 8), dim=1)
    ours = info_nce(q, k, temperature=0.1, symmetric=False)
    ref = F.cross_entropy(q @ k.T / 0.1, torch.arange(5))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    (g1,) = torch.autograd.grad(ours, q)
    (g2,) = torch.autograd.grad(F.cross_entropy(q @ k.T / 0.1, torch.arange(5)), q)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_symmetric_is_the_mean_of_both_directions():
    logits = torch.tensor([[0.9, 0.1], [0.3, 0.2]])
    both = info_nce(torch.eye(2), logits.T.contiguous(), temperature=1.0)  # eye @ L == L
    forward = F.cross_entropy(logits, torch.arange(2))
    backward = F.cross_entropy(logits.T, torch.arange(2))
    assert both.item() == pytest.approx(((forward + backward) / 2).item(), abs=1e-6)


def test_match_bce_by_hand():
    # logits 10 * [1, 0] - 5 = [5, -5], both right: log(1 + e^-5) each
    loss = match_bce(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-5)), abs=1e-6)
    # logits [1, 1] with labels [1, 0]: [log(1 + 1/e), log(1 + e)], weights 3 : 1
    weighted = match_bce(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]), scale=2.0,
                         bias=0.0, weights=torch.tensor([3.0, 1.0]))
    expected = (3 * math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 4
    assert weighted.item() == pytest.approx(expected, abs=1e-6)
    assert match_bce(torch.zeros(0), torch.zeros(0)).item() == 0.0


def test_match_bce_trains_scale_and_bias():
    scale = torch.tensor(1.0, requires_grad=True)
    bias = torch.tensor(0.0, requires_grad=True)
    match_bce(torch.tensor([0.9, 0.1]), torch.tensor([1.0, 0.0]), scale, bias).backward()
    assert scale.grad is not None and scale.grad.item() < 0  # a larger scale separates more


def test_hardest_negatives():
    sims = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.3, 0.7], [0.5, 0.5, 0.5]])
    positives = torch.tensor([[True, False, False], [False, False, True],
                              [True, True, True]])
    assert hardest_negatives(sims, positives).tolist() == [1, 1, -1]


def test_bad_arguments_say_what_to_pass():
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.eye(2), torch.eye(2), temperature=0.0)
    with pytest.raises(ValueError, match="positives="):
        info_nce(torch.eye(2), torch.eye(3)[:, :2])
    with pytest.raises(ValueError, match="same shape"):
        multi_positive_nce(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.bool))


def test_tag_loss_by_hand():
    from retrieval.fusion_head import TagOutputs
    from training.fusion_objective import tag_loss

    # Two inputs, two tags (2 and 3 values), one group that names tag 0 surely (logit 0 ->
    # p 0.5 for tag 1: sigmoid(0)).
    logits = [torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]),
              torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])]
    named_logit = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    present = torch.tensor([True, True])
    out = TagOutputs(logits, torch.sigmoid(named_logit), {"g": (None, named_logit, present)})
    codes = torch.tensor([[1, -1], [0, 0]])
    # CE: tag 0 over rows 0, 1: (-log 3/4 - log 1/2) / 2; tag 1 over row 1: -log 2/4.
    ce0 = (-math.log(0.75) - math.log(0.5)) / 2
    ce1 = -math.log(0.5)
    # BCE of "named", where the code is known (3 entries, all targets 1, p = 0.5): log 2.
    expected = (ce0 + ce1 + math.log(2.0)) / 3
    assert tag_loss(out, codes).item() == pytest.approx(expected, abs=1e-6)
    # A shopper's words: -1 means "left open", a target of 0, so BCE covers all 4 entries
    # (still log 2 each at p = 0.5).
    assert tag_loss(out, codes, spoken=True).item() == pytest.approx(expected, abs=1e-6)
    # The named logits are what the BCE trains: confident and right costs ~nothing there.
    sure = torch.tensor([[20.0, -20.0], [20.0, 20.0]])
    out = TagOutputs(logits, torch.sigmoid(sure), {"g": (None, sure, present)})
    assert tag_loss(out, codes, spoken=True).item() == pytest.approx((ce0 + ce1) / 3,
                                                                     abs=1e-6)
