"""CoCoOp (Zhou et al., CVPR 2022) for multi-label images: conditional prompts per image.

CoOp's context (``ctx``, ``M x W``) plus a meta-net ``Linear(D, D // 16) -> ReLU ->
Linear(D // 16, W)`` on the normalised image feature ``f_b``: its output ``pi_b`` (``W``) is added
to every context vector, so image ``b`` gets its own prompts (``B x C x L x W``) and class
embeddings ``G_b`` (``B x C x D``); ``logit_bc = exp(logit_scale) * f_b . G_bc``. Training, loss,
scale and image feature are CoOpML's (:mod:`taidpt.trainers.coop_ml`); only the context and the
meta-net are trained.

Cost: every step (and every test batch) runs ``B x C`` prompts through the text transformer,
each cut after the longest prompt's EOS (exact): ``L' = 10`` tokens instead of 77 for VOC and COCO
with the default ``"a photo of a"`` context (9 for NUS-WIDE). The RN50 configs (batch 8) thus
encode 8 x 20 = 160 (VOC) or 8 x 80 = 640 (COCO) sequences of 10 tokens per step, about as many
tokens as CoOp's C uncut prompts (20 or 80 x 77); the test set costs N x C sequences (COCO val:
3.2 M).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from taidpt.engine.registry import TRAINER_REGISTRY
from taidpt.models import ContextPrompts, PromptedCLIP
from taidpt.trainers.coop_ml import CoOpML

logger = logging.getLogger(__name__)


class MetaNetPrompts(ContextPrompts):
    """A generic context ``ctx`` (``M x W``) and the meta-net (``D -> D // 16 -> W``).

    State dict (CoCoOp's keys): ``ctx``, ``token_prefix``, ``token_suffix``,
    ``meta_net.linear1.{weight,bias}``, ``meta_net.linear2.{weight,bias}``.
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 4,
                 ctx_init: str = "a photo of a") -> None:
        super().__init__(clip_model, classnames, n_ctx, csc=False, ctx_init=ctx_init)
        dim = clip_model.text_projection.shape[1]
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(dim, dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(dim // 16, self.width)),
        ])).to(self.dtype)


class CoCoOpMLModel(PromptedCLIP):
    """Frozen CLIP + :class:`MetaNetPrompts`; ``forward`` scores images ``B x 3 x H x W`` ->
    logits ``B x C`` with prompts conditioned on each image."""

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 4,
                 ctx_init: str = "a photo of a") -> None:
        super().__init__(clip_model, MetaNetPrompts(clip_model, classnames, n_ctx, ctx_init))

    @classmethod
    def from_cfg(cls, c: CN, clip_model: nn.Module, classnames: Sequence[str]) -> "CoCoOpMLModel":
        """From the ``TRAINER.COCOOPML`` node ``c``."""
        return cls(clip_model, classnames, c.N_CTX, c.CTX_INIT)

    def class_embeddings(self, f: torch.Tensor) -> torch.Tensor:
        """Normalised image features ``B x D`` -> normalised per-image class embeddings
        ``B x C x D``."""
        learner = self.prompt_learner
        pi = learner.meta_net(f)  # B x W
        ctx = learner.ctx + pi[:, None, None, :]  # B x 1 x M x W: one context per image
        return F.normalize(learner.encode(self.clip, ctx, cut_at_eos=True), dim=-1)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """Normalised image features ``f`` ``B x D`` -> logits ``B x C``."""
        g = self.class_embeddings(f)  # B x C x D: prompts conditioned on each image
        return self.logit_scale * torch.einsum("bd,bcd->bc", f, g)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.image_features(images))


@TRAINER_REGISTRY.register()
class CoCoOpML(CoOpML):
    """CoOpML's training and testing with :class:`CoCoOpMLModel` and ``TRAINER.COCOOPML``."""

    cfg_node = "COCOOPML"
    model_class = CoCoOpMLModel

    @staticmethod
    def extend_cfg(cfg: CN) -> None:
        cfg.TRAINER.COCOOPML = CN()
        c = cfg.TRAINER.COCOOPML
        c.N_CTX = 4  # context vectors (ignored with CTX_INIT)
        c.CTX_INIT = "a photo of a"  # words initialising the context; "" -> N(0, 0.02^2)
        c.PREC = "fp32"  # fp32, fp16 or amp
        c.LOSS = "bce"  # bce or asl, over the known labels (1 / -1) only
        c.CACHE_FEATURES = False  # encode training images once (no random INPUT.TRANSFORMS)
