"""The fusion head's training objective: InfoNCE per query kind plus the match BCE.

One module computes the whole loss in one ``forward`` so that a distributed run wraps a
single call per step (DDP synchronises gradients once, whatever subset of query kinds a
batch holds). The match logit's scale and bias are learned here and recorded with the
artifact (``calibration``), so a later ranker can read a head's cosine as a probability.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from retrieval.fusion_head import FusionHead, TagOutputs
from training.fusion_config import FusionConfig
from training.losses import hardest_negatives, info_nce, match_bce


def tag_loss(out: TagOutputs, codes: torch.Tensor, spoken: bool = False) -> torch.Tensor:
    """Cross-entropy of the combined value logits on every known tag, plus each present
    group's BCE on whether it names the tag.

    Args:
        out: What the head read (:meth:`retrieval.fusion_head.FusionHead.read_tags`).
        codes: ``(n, n_tags)`` value codes, ``-1`` where unknown.
        spoken: The inputs are a shopper's words: ``-1`` means the words leave the tag open
            (a "not named" target) rather than unknown (no target).
    """
    terms = []
    for i, logit in enumerate(out.logits):
        ok = codes[:, i] >= 0
        if bool(ok.any()):
            terms.append(nn.functional.cross_entropy(logit[ok].float(), codes[ok, i]))
    named = (codes >= 0).float()
    known = torch.ones_like(codes, dtype=torch.bool) if spoken else codes >= 0
    for _values, named_logit, present in out.groups.values():
        mask = present[:, None] & known
        if bool(mask.any()):
            terms.append(nn.functional.binary_cross_entropy_with_logits(
                named_logit[mask].float(), named[mask]))
    if not terms:
        return out.named.sum() * 0.0
    return torch.stack(terms).mean()


class FusionObjective(nn.Module):
    """A :class:`FusionHead` plus the match calibration, returning the training loss."""

    def __init__(self, head: FusionHead, config: FusionConfig) -> None:
        super().__init__()
        self.head = head
        self.config = config
        self.match_scale = nn.Parameter(torch.tensor(10.0))
        self.match_bias = nn.Parameter(torch.tensor(-5.0))

    def calibration(self) -> dict[str, float]:
        return {"scale": float(self.match_scale.detach()), "bias": float(self.match_bias.detach())}

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        t = c.temperature
        parts: dict[str, torch.Tensor] = {}
        cos: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []

        def pairs(q: torch.Tensor, items: torch.Tensor, positives: torch.Tensor) -> None:
            # The positive of row i is column i; its hardest in-batch non-positive is mined.
            sims = q @ items.T
            cos.append(sims.diagonal())
            labels.append(torch.ones_like(sims.diagonal()))
            neg = hardest_negatives(sims, positives)
            ok = neg >= 0
            cos.append(sims[ok, neg[ok]])
            labels.append(torch.zeros_like(cos[-1]))

        prod = self.head(batch["prod"])
        attr = self.head(batch["attr_q"])
        parts["attribute"] = info_nce(attr, prod, t, batch["attr_pos"])
        pairs(attr, prod, batch["attr_pos"])
        loss = c.w_attribute * parts["attribute"]
        if batch["doc_q"] and c.w_document > 0:
            doc = self.head(batch["doc_q"])
            parts["document"] = info_nce(doc, prod, t, batch["doc_pos"])
            loss = loss + c.w_document * parts["document"]
        if "photo_q" in batch:
            photo = self.head(batch["photo_q"])
            target = self.head(batch["photo_prod"])
            parts["photo"] = info_nce(photo, target, t, batch["photo_pos"])
            loss = loss + c.w_photo * parts["photo"]
            pairs(photo, target, batch["photo_pos"])
            ok = batch["photo_neg_ok"]
            if bool(ok.any()):
                sibling = self.head({k: v[ok] for k, v in batch["photo_neg"].items()})
                cos.append((photo[ok] * sibling).sum(dim=1))
                labels.append(torch.zeros_like(cos[-1]))
        if "prod_tags" in batch and c.w_tags > 0:
            tagged = [tag_loss(self.head.read_tags(batch["prod"]), batch["prod_tags"]),
                      tag_loss(self.head.read_tags(batch["attr_q"]), batch["attr_tags"],
                               spoken=True)]
            if batch["doc_q"]:
                tagged.append(tag_loss(self.head.read_tags(batch["doc_q"]),
                                       batch["prod_tags"]))
            parts["tags"] = torch.stack(tagged).mean()
            loss = loss + c.w_tags * parts["tags"]
        parts["match"] = match_bce(torch.cat(cos), torch.cat(labels), self.match_scale,
                                   self.match_bias)
        loss = loss + c.w_match * parts["match"]
        if "log_q" in batch:
            q = self.head(batch["log_q"])
            p = self.head(batch["log_prod"])
            logged = match_bce((q * p).sum(dim=1), batch["log_label"], self.match_scale,
                               self.match_bias, batch["log_weight"])
            pos = batch["log_label"] > 0
            if int(pos.sum()) > 1:
                logged = logged + info_nce(q[pos], p[pos], t, batch["log_pos"][pos][:, pos])
            parts["logged"] = logged
            loss = loss + c.w_logged * logged
        parts = {k: v.detach() for k, v in parts.items()}
        return loss, parts
