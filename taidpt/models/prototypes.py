"""Caption prototypes: a training-free classifier from the labelled caption corpus.

The prototype of class ``c`` is the normalised mean of the normalised EOS features of the training
captions whose label contains ``c`` (a class no caption mentions gets a zero prototype: it scores
0 on every image). Images are scored like TaI-DPT's global branch, ``scale * f P^T`` on the
normalised global feature ``f``; with ``DENSE`` also like its local branch (the dense features
against the prototypes, pooled by :func:`spatial_pool`), merged with the trainer's global / local
rate. The headline ``merged_prototype = (1 - w) merged + w prototype`` uses ``WEIGHT`` = ``w``.

Shapes: N captions, C classes, D joint embedding width, B images, HW dense positions.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from taidpt.clip import encode_text
from taidpt.models.spatial import Scale, spatial_pool

logger = logging.getLogger(__name__)

PROTOTYPE_HEAD = "prototype"
HEADLINE = "merged_prototype"
FEATURE_BATCH = 1024  # captions per text-encoder pass


def add_prototype_cfg(node: CN) -> None:
    """Add ``node.PROTOTYPES`` (``ENABLED``, ``WEIGHT``, ``DENSE``) to a trainer's node."""
    node.PROTOTYPES = CN()
    node.PROTOTYPES.ENABLED = False  # add the caption-prototype heads (training-free)
    node.PROTOTYPES.WEIGHT = 0.5  # merged_prototype = (1 - WEIGHT) * merged + WEIGHT * prototype
    node.PROTOTYPES.DENSE = False  # also score the dense features against the prototypes


def caption_prototypes(eos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EOS features ``N x D`` and multi-hot labels ``N x C`` -> prototypes ``C x D`` (float32): per
    class the normalised mean of the normalised features of its captions (zero without any)."""
    features = F.normalize(eos.float(), dim=-1)
    positive = (labels > 0).float()
    sums = positive.t() @ features
    counts = positive.sum(dim=0, keepdim=True).t()
    empty = int((counts == 0).sum())
    if empty:
        logger.warning("%d classes have no caption: their prototypes are zero (score 0)", empty)
    return F.normalize(sums / counts.clamp(min=1.0), dim=-1)


@torch.no_grad()
def caption_eos_features(clip_model: nn.Module, tokens: torch.Tensor,
                         batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """Tokens ``N x L`` -> CLIP EOS features ``N x D`` (float32, not normalised), in batches on the
    CLIP's device, each cut after its last EOS (the text transformer is causal)."""
    device = next(clip_model.parameters()).device
    parts = []
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i:i + batch_size].to(device)
        batch = batch[:, :int(batch.argmax(dim=-1).max()) + 1]
        parts.append(encode_text(clip_model, batch).float())
    return torch.cat(parts)


class CaptionPrototypes(nn.Module):
    """The prototype heads over precomputed prototypes ``C x D`` (a non-persistent buffer: rebuilt
    from the corpus, never saved in checkpoints)."""

    def __init__(self, prototypes: torch.Tensor, weight: float, dense: bool) -> None:
        super().__init__()
        self.register_buffer("prototypes", prototypes, persistent=False)
        self.weight = float(weight)
        self.dense = dense

    @classmethod
    def from_corpus(cls, node: CN, clip_model: nn.Module, tokens: torch.Tensor,
                    labels: torch.Tensor) -> "CaptionPrototypes":
        """Prototypes of the caption corpus (``tokens`` ``N x L``, ``labels`` ``N x C``) with the
        ``PROTOTYPES`` settings of ``node``."""
        start = time.time()
        prototypes = caption_prototypes(caption_eos_features(clip_model, tokens), labels)
        logger.info("Caption prototypes of %d classes from %d captions in %.1f s (weight %.2f%s)",
                    prototypes.shape[0], len(tokens), time.time() - start, node.PROTOTYPES.WEIGHT,
                    ", dense too" if node.PROTOTYPES.DENSE else "")
        return cls(prototypes, node.PROTOTYPES.WEIGHT, node.PROTOTYPES.DENSE)

    def scores(self, global_feat: torch.Tensor, dense: Optional[torch.Tensor], scale: Scale,
               temperature: Scale, merge_rate: float) -> torch.Tensor:
        """Global features ``B x D`` (and dense ``HW x B x D``) -> prototype scores ``B x C``."""
        prototypes = self.prototypes.to(global_feat.dtype)
        score = scale * F.normalize(global_feat, dim=-1) @ prototypes.t()
        if not self.dense:
            return score
        local = spatial_pool(F.normalize(dense, dim=-1) @ prototypes.t(), temperature, scale)[0]
        return merge_rate * score + (1.0 - merge_rate) * local

    def heads(self, pair: Tuple[torch.Tensor, torch.Tensor], prototype: torch.Tensor,
              merge_rate: float) -> "OrderedDict[str, torch.Tensor]":
        """(global, local) logits and prototype scores, ``B x C`` each -> heads ``global``,
        ``local``, ``merged`` (as the evaluator merges a pair), ``prototype`` and the headline
        ``merged_prototype``."""
        global_logits, local_logits = pair
        merged = merge_rate * global_logits + (1.0 - merge_rate) * local_logits
        return OrderedDict([("global", global_logits), ("local", local_logits), ("merged", merged),
                            (PROTOTYPE_HEAD, prototype),
                            (HEADLINE, (1.0 - self.weight) * merged + self.weight * prototype)])

    def infer(self, pair: Tuple[torch.Tensor, torch.Tensor], global_feat: torch.Tensor,
              dense: Optional[torch.Tensor], scale: Scale, temperature: Scale,
              merge_rate: float) -> "OrderedDict[str, torch.Tensor]":
        """A trainer's (global, local) logits and the image features they came from -> every head
        (:meth:`heads`)."""
        return self.heads(pair, self.scores(global_feat, dense, scale, temperature, merge_rate),
                          merge_rate)
