"""Zero-shot CLIP for multi-label recognition, with and without the dense branch (SPEC 4).

Global score: stock CLIP image feature against "a photo of a {}." with scale exp(logit_scale).
DPT score: the same class embeddings against every dense position, pooled by
``softmax_HW(s * cos) * s * cos`` with ``s = exp(logit_scale)``; the evaluator merges 0.5 / 0.5.
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from taidpt.clip import dense_image_features, encode_text, tokenize
from taidpt.datasets.captions import build_caption_corpus
from taidpt.engine.registry import TRAINER_REGISTRY
from taidpt.engine.trainer import SimpleTrainer
from taidpt.models import load_backbone, spatial_pool
from taidpt.models.image_feature_cache import FeatureCacheEvaluation
from taidpt.models.prototypes import HEADLINE, CaptionPrototypes, add_prototype_cfg

logger = logging.getLogger(__name__)


class ZeroshotCLIPModel(nn.Module):
    """Frozen CLIP with fixed class text embeddings."""

    def __init__(self, clip_model: nn.Module, classnames, template: str) -> None:
        super().__init__()
        self.clip = clip_model.eval().requires_grad_(False)
        tokens = tokenize([template.format(c.replace("_", " ")) for c in classnames],
                          clip_model.context_length)
        with torch.no_grad():
            self.register_buffer("text_features", F.normalize(encode_text(clip_model, tokens), dim=-1))
        self.scale = float(clip_model.logit_scale.exp())

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``B x 3 x H x W`` -> (stock global ``B x D``, dense ``HW x B x D``), not
        normalised."""
        return dense_image_features(self.clip, images, global_positional=True)

    @torch.no_grad()
    def image_logits(self, global_feat: torch.Tensor,
                     dense: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Image features -> (global logits ``B x C``, dense logits ``B x C``)."""
        text = self.text_features
        global_feat = F.normalize(global_feat, dim=-1)
        similarity = F.normalize(dense, dim=-1) @ text.t()
        return self.scale * global_feat @ text.t(), spatial_pool(similarity, self.scale, self.scale)[0]

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``B x 3 x H x W`` -> (global logits ``B x C``, dense logits ``B x C``)."""
        return self.image_logits(*self.image_features(images))


@TRAINER_REGISTRY.register(aliases=("ZeroshotCLIP_dense",))
class ZeroshotCLIP(FeatureCacheEvaluation, SimpleTrainer):
    """No training: ``--eval-only`` reports ZSCLIP (global), DPT (local) and merged mAP."""

    image_feature_kind = "dense_image_features(global_positional=True)"

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.TRAINER.ZEROSHOTCLIP = CN()
        cfg.TRAINER.ZEROSHOTCLIP.TEMPLATE = "a photo of a {}."
        cfg.TRAINER.ZEROSHOTCLIP.GL_MERGE_RATE = 0.5
        add_prototype_cfg(cfg.TRAINER.ZEROSHOTCLIP)  # PROTOTYPES.* (taidpt.models.prototypes)

    def merge_rate(self) -> float:
        return self.cfg.TRAINER.ZEROSHOTCLIP.GL_MERGE_RATE

    def headline(self) -> Optional[str]:
        return HEADLINE if self.cfg.TRAINER.ZEROSHOTCLIP.PROTOTYPES.ENABLED else None

    def build_model(self) -> None:
        self.clip_model = clip_model = load_backbone(self.cfg)
        logger.info("Building zero-shot CLIP for %d classes", self.num_classes)
        self.model = ZeroshotCLIPModel(clip_model, self.classnames,
                                       self.cfg.TRAINER.ZEROSHOTCLIP.TEMPLATE).to(self.device)
        self.register_model("clip", self.model)
        node = self.cfg.TRAINER.ZEROSHOTCLIP
        self.prototypes: Optional[CaptionPrototypes] = None
        if node.PROTOTYPES.ENABLED:
            corpus = build_caption_corpus(self.cfg, self.dataset, clip_model.context_length)
            self.prototypes = CaptionPrototypes.from_corpus(node, clip_model, corpus.tokens,
                                                            corpus.labels).to(self.device)

    def features_inference(self, global_feat: torch.Tensor, dense: torch.Tensor):
        """(global, dense) logits ``B x C``; with ``PROTOTYPES.ENABLED`` the prototype heads."""
        if self.prototypes is None:
            return self.model.image_logits(global_feat, dense)
        return self.prototypes.infer(self.model.image_logits(global_feat, dense), global_feat, dense,
                                     self.model.scale, self.model.scale, self.merge_rate())

    def save_model(self, *args, **kwargs) -> None:
        """Nothing is trained: no checkpoint."""

    def train(self) -> None:
        raise RuntimeError("ZeroshotCLIP has nothing to train: run train.py with --eval-only")
