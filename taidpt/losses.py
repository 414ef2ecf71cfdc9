"""Multi-label losses on logits ``B x C`` (SPEC 2) and the ablation losses of the paper's Table 4.

Labels are ``B x C``: an entry ``> 0`` is a positive, every other entry a negative (caption labels
are multi-hot 1/0), except in :func:`known_label_loss`, whose image labels are 1 / 0 unknown / -1
(partial labels). No function modifies its inputs.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def ranking_loss(logits: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """Pairwise hinge ranking loss, a scalar.

    ``mean_b sum_{i: y_bi > 0} sum_{j: y_bj <= 0} max(0, margin - z_bi + z_bj)``, logits ``z`` and
    labels ``y`` ``B x C``. A row without positives or without negatives adds 0 to the mean.
    """
    positive = (labels > 0).to(logits.dtype)
    hinge = (margin - logits.unsqueeze(2) + logits.unsqueeze(1)).clamp_min(0)  # B x C(i) x C(j)
    pairs = positive.unsqueeze(2) * (1 - positive).unsqueeze(1)
    return (hinge * pairs).sum(dim=(1, 2)).mean()


def bce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy with logits against ``labels > 0``, mean over all ``B x C`` entries."""
    return F.binary_cross_entropy_with_logits(logits, (labels > 0).to(logits.dtype))


def asl_loss(logits: Tensor, labels: Tensor, gamma_neg: float = 2.0, gamma_pos: float = 1.0,
             clip: float = 0.05, eps: float = 1e-8, mask: Optional[Tensor] = None,
             detach_focal_weights: bool = True) -> Tensor:
    """Asymmetric loss (Ridnik et al., ICCV 2021) on sigmoid probabilities, summed and divided by B.

    With ``p = sigmoid(z)``, a positive costs ``-(1 - p)^gamma_pos log(p)`` and a negative, after
    probability shifting ``p_m = max(p - clip, 0)``, costs ``-p_m^gamma_neg log(1 - p_m)``
    (probabilities clamped to ``>= eps`` inside the logs). ``mask`` (``B x C`` bool) selects the
    entries that count: DualCoOp's partial labels (1 / -1 / 0 unknown) use ``mask=labels != 0``;
    ``None`` counts every entry, which is how the TaI-DPT ablation uses it on 1/0 labels.
    ``detach_focal_weights`` keeps the focusing weights out of the gradient, as the reference ASL
    classes do by default (their ``disable_torch_grad_focal_loss``).
    """
    positive = labels > 0
    prob = torch.sigmoid(logits)
    prob_neg = (1 - prob + clip).clamp(max=1) if clip > 0 else 1 - prob
    likelihood = torch.where(positive, prob, prob_neg)
    weight = (1 - likelihood).pow(torch.where(positive, gamma_pos, gamma_neg).to(logits.dtype))
    if detach_focal_weights:
        weight = weight.detach()
    loss = -weight * likelihood.clamp(min=eps).log()
    if mask is not None:
        loss = loss.masked_fill(~mask.bool(), 0)
    return loss.sum() / logits.shape[0]


LOSSES: Dict[str, Callable[..., Tensor]] = {
    "ranking": ranking_loss,
    "bce": bce_loss,
    "asl": asl_loss,
}

# name -> (loss in LOSSES, whether the local branch is trained too)
_DOUBLE_LOSSES = {
    "double_ranking": ("ranking", True),
    "ranking": ("ranking", False),
    "bce": ("bce", True),
    "asl": ("asl", True),
}


def double_loss(name: str, global_logits: Tensor, local_logits: Tensor, labels: Tensor) -> Tensor:
    """Training loss of TaI-DPT's two branches (logits ``B x C`` each): ``name`` picks the loss.

    ``double_ranking`` (default of the paper), ``bce`` and ``asl`` sum the loss of both branches;
    ``ranking`` trains the global branch only.
    """
    if name not in _DOUBLE_LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(_DOUBLE_LOSSES)}.")
    loss_name, use_local = _DOUBLE_LOSSES[name]
    loss_fn = LOSSES[loss_name]
    loss = loss_fn(global_logits, labels)
    if use_local:
        loss = loss + loss_fn(local_logits, labels)
    return loss


KNOWN_LABEL_LOSSES = ("bce", "asl")


def known_label_loss(name: str, logits: Tensor, labels: Tensor) -> Tensor:
    """Loss of image-trained prompts over the *known* labels only: ``labels`` ``B x C`` in
    {1 positive, 0 unknown, -1 negative}; unknown entries add no loss and no gradient.

    ``bce``: binary cross-entropy, mean over the known entries. ``asl``: :func:`asl_loss` with the
    unknown entries masked (sum over known entries / B, SPEC 7's DualCoOp loss).
    """
    known = labels != 0
    if name == "bce":
        per_entry = F.binary_cross_entropy_with_logits(logits, (labels > 0).to(logits.dtype),
                                                       reduction="none")
        return per_entry.masked_fill(~known, 0).sum() / known.sum().clamp_min(1)
    if name == "asl":
        return asl_loss(logits, labels, mask=known)
    raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(KNOWN_LABEL_LOSSES)}.")
