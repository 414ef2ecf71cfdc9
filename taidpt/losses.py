"""Multi-label losses on logits ``B x C`` (SPEC 2) and the ablation losses of the paper's Table 4.

Our loss names (``TRAINER.TAIDPT.LOSS``, :data:`DOUBLE_LOSSES`) each have one meaning; the
reference's ``TRAIN.LOSSFUNC`` values mean something else for two of the same words, so they are
translated to our explicitly named losses (:data:`REFERENCE_LOSSES`): the reference's ``ranking``
is our ``ranking_scale2`` (global branch only, logits scaled by 2), its ``asl`` is our
``asl_mean`` (mean over ``B x C``), its ``sigmoid`` our ``bce``, its ``focal`` our ``focal``.

Labels are ``B x C``: an entry ``> 0`` is a positive, every other entry a negative (caption labels
are multi-hot 1/0), except in :func:`known_label_loss`, whose image labels are 1 / 0 unknown / -1
(partial labels). No function modifies its inputs.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def ranking_loss(logits: Tensor, labels: Tensor, margin: float = 1.0, scale: float = 1.0) -> Tensor:
    """Pairwise hinge ranking loss, a scalar.

    ``mean_b sum_{i: y_bi > 0} sum_{j: y_bj <= 0} max(0, margin - s z_bi + s z_bj)``, logits ``z``
    and labels ``y`` ``B x C``, scale ``s`` (1 in SPEC 2; the reference's single-branch
    ``ranking`` uses 2). A row without positives or without negatives adds 0 to the mean.
    """
    positive = (labels > 0).to(logits.dtype)
    scaled = logits * scale
    hinge = (margin - scaled.unsqueeze(2) + scaled.unsqueeze(1)).clamp_min(0)  # B x C(i) x C(j)
    pairs = positive.unsqueeze(2) * (1 - positive).unsqueeze(1)
    return (hinge * pairs).sum(dim=(1, 2)).mean()


def bce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy with logits against ``labels > 0``, mean over all ``B x C`` entries."""
    return F.binary_cross_entropy_with_logits(logits, (labels > 0).to(logits.dtype))


def asl_loss(logits: Tensor, labels: Tensor, gamma_neg: float = 2.0, gamma_pos: float = 1.0,
             clip: float = 0.05, eps: float = 1e-8, mask: Optional[Tensor] = None,
             detach_focal_weights: bool = True, mean: bool = False) -> Tensor:
    """Asymmetric loss (Ridnik et al., ICCV 2021) on sigmoid probabilities, summed and divided by B
    (SPEC 7's DualCoOp loss), or with ``mean`` divided by ``B x C`` (the reference's TaI-DPT ``asl``).

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
    return loss.sum() / (loss.numel() if mean else logits.shape[0])


def focal_loss(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al., ICCV 2017), mean over all ``B x C`` entries.

    With ``p = sigmoid(z)``, ``t = labels > 0``, ``p_t = p`` for positives and ``1 - p`` for
    negatives, ``a_t = alpha`` for positives and ``1 - alpha`` for negatives: each entry costs
    ``-a_t (1 - p_t)^gamma log(p_t)`` (the binary cross-entropy with logits, weighted).
    """
    target = (labels > 0).to(logits.dtype)
    prob = torch.sigmoid(logits)
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (alpha_t * (1 - p_t).pow(gamma) * entropy).mean()


LOSSES: Dict[str, Callable[..., Tensor]] = {
    "ranking": ranking_loss,
    "bce": bce_loss,
    "asl": asl_loss,
    "focal": focal_loss,
}

# TRAINER.TAIDPT.LOSS -> (loss in LOSSES, its keyword arguments, whether the local branch is
# trained too). Ours: double_ranking (the paper's), ranking (global only, scale 1), bce, asl
# (sum / B). Named for the reference's meanings: ranking_scale2, asl_mean, focal.
DOUBLE_LOSSES: Dict[str, Tuple[str, Dict[str, Any], bool]] = {
    "double_ranking": ("ranking", {}, True),
    "ranking": ("ranking", {}, False),
    "bce": ("bce", {}, True),
    "asl": ("asl", {}, True),
    "ranking_scale2": ("ranking", {"scale": 2.0}, False),
    "asl_mean": ("asl", {"mean": True}, True),
    "focal": ("focal", {}, False),
}

# The reference's TRAIN.LOSSFUNC values (Caption_distill_double) -> our TRAINER.TAIDPT.LOSS.
REFERENCE_LOSSES: Dict[str, str] = {
    "double_ranking": "double_ranking",  # ranking_loss(scale 1) on both branches: the same
    "ranking": "ranking_scale2",  # its ranking_loss default scale_=2.0, global branch only
    "sigmoid": "bce",  # BCE with logits on both branches (SPEC 2's BCE ablation)
    "focal": "focal",  # sigmoid focal loss on the global branch only
    "asl": "asl_mean",  # its ASL (gamma_neg 2, gamma_pos 1, clip 0.05) averaged over B x C
}


def double_loss(name: str, global_logits: Tensor, local_logits: Tensor, labels: Tensor) -> Tensor:
    """Training loss of TaI-DPT's two branches (logits ``B x C`` each): ``name`` picks the loss
    of :data:`DOUBLE_LOSSES`, summed over both branches or on the global branch only.

    ``double_ranking`` (the paper's), ``bce``, ``asl`` (sum / B) and ``asl_mean`` (mean over
    ``B x C``) use both branches; ``ranking`` (scale 1), ``ranking_scale2`` and ``focal`` the
    global one.
    """
    if name not in DOUBLE_LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(DOUBLE_LOSSES)}.")
    loss_name, kwargs, use_local = DOUBLE_LOSSES[name]
    loss_fn = LOSSES[loss_name]
    loss = loss_fn(global_logits, labels, **kwargs)
    if use_local:
        loss = loss + loss_fn(local_logits, labels, **kwargs)
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
