"""CoOp (Zhou et al., IJCV 2022) for multi-label images: the image-prompt baseline of SPEC 7.

A learnable context (``N_CTX`` vectors, generic or class-specific, optionally initialised from
``CTX_INIT`` words) gives class embeddings ``G`` (``C x D``) that are scored against the *stock*
CLIP image feature ``f`` (attention pool with positional embedding) as in CoOp:
``logits = exp(logit_scale) * f G^T`` (``B x C``, both normalised). It is trained on labelled
images (few-shot subsets, ``DATASET.NUM_SHOTS``; partial labels, ``DATASET.PARTIAL_PROB``) with a
loss over the known labels only (``LOSS`` ``bce`` or ``asl``). CLIP is frozen; only the context
is trained. Few-shot CoOp on VOC / COCO / NUS-WIDE is the paper's Figure 6, ensembled with TaI-DPT
the way DualCoOp is.

Each step encodes the ``C`` class prompts once, cut after their longest EOS (``C`` sequences of
``L'`` instead of ``L`` tokens; exact, see :meth:`PromptContext.encode`). Without random
``INPUT.TRANSFORMS`` the frozen image features never change: ``CACHE_FEATURES`` computes them
once before training instead of every epoch (the synthetic world's configs do).
"""
from __future__ import annotations

import functools
import logging
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from yacs.config import CfgNode as CN

from taidpt.engine.data import ImageDataset, build_loader, build_train_transform, seeded_generator
from taidpt.engine.optim import build_lr_scheduler, build_optimizer
from taidpt.engine.registry import TRAINER_REGISTRY
from taidpt.engine.trainer import SimpleTrainer
from taidpt.losses import KNOWN_LABEL_LOSSES, known_label_loss
from taidpt.models import (ContextPrompts, PrecisionStep, PromptedCLIP, check_precision,
                           load_backbone)

logger = logging.getLogger(__name__)


class CoOpMLModel(PromptedCLIP):
    """Frozen CLIP + :class:`ContextPrompts`; ``forward`` scores images ``B x 3 x H x W`` ->
    logits ``B x C``."""

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 16,
                 csc: bool = False, ctx_init: str = "", class_token_position: str = "end") -> None:
        super().__init__(clip_model, ContextPrompts(clip_model, classnames, n_ctx, csc, ctx_init,
                                                    class_token_position))

    @classmethod
    def from_cfg(cls, c: CN, clip_model: nn.Module, classnames: Sequence[str]) -> "CoOpMLModel":
        """From the ``TRAINER.COOPML`` node ``c``."""
        return cls(clip_model, classnames, c.N_CTX, c.CSC, c.CTX_INIT, c.CLASS_TOKEN_POSITION)

    def class_embeddings(self) -> torch.Tensor:
        """Normalised class embeddings ``G``, ``C x D``."""
        learner = self.prompt_learner
        return F.normalize(learner.encode(self.clip, learner.ctx, cut_at_eos=True), dim=-1)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """Normalised image features ``f`` ``B x D`` -> logits ``B x C``."""
        g = self.class_embeddings()  # C x D
        return self.logit_scale * f @ g.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.image_features(images))


@TRAINER_REGISTRY.register()
class CoOpML(SimpleTrainer):
    """Trains the context on the dataset's labelled training images (``train_x``) and tests on
    its images; reports one mAP (head ``logits``)."""

    cfg_node = "COOPML"  # the TRAINER node this trainer reads (CoCoOpML: COCOOPML)
    model_class = CoOpMLModel
    ignored_checkpoint_keys = ("token_prefix", "token_suffix")

    @staticmethod
    def extend_cfg(cfg: CN) -> None:
        cfg.TRAINER.COOPML = CN()
        c = cfg.TRAINER.COOPML
        c.N_CTX = 16  # context vectors (ignored with CTX_INIT)
        c.CSC = False  # class-specific contexts
        c.CTX_INIT = ""  # words initialising the context, e.g. "a photo of a"
        c.CLASS_TOKEN_POSITION = "end"  # end, middle or front
        c.PREC = "fp32"  # fp32, fp16 or amp
        c.LOSS = "bce"  # bce or asl, over the known labels (1 / -1) only
        c.CACHE_FEATURES = False  # encode training images once (no random INPUT.TRANSFORMS)

    @property
    def settings(self) -> CN:
        """This trainer's node, ``cfg.TRAINER.<cfg_node>``."""
        return self.cfg.TRAINER[self.cfg_node]

    def check_cfg(self, cfg: CN) -> None:
        c = cfg.TRAINER[self.cfg_node]
        check_precision(c.PREC, f"TRAINER.{self.cfg_node}.PREC")
        if c.LOSS not in KNOWN_LABEL_LOSSES:
            raise ValueError(f"TRAINER.{self.cfg_node}.LOSS must be one of "
                             f"{', '.join(KNOWN_LABEL_LOSSES)}, got {c.LOSS!r}.")
        random = [name for name in cfg.INPUT.TRANSFORMS if name != "normalize"]
        if c.CACHE_FEATURES and random:
            raise ValueError(f"TRAINER.{self.cfg_node}.CACHE_FEATURES encodes every training image "
                             f"once, which random INPUT.TRANSFORMS {random} would make wrong: set "
                             "INPUT.TRANSFORMS () or CACHE_FEATURES False.")

    @functools.cached_property
    def clip_model(self) -> nn.Module:
        """CLIP from ``MODEL.BACKBONE.PATH`` (or ``NAME``), in the precision of ``PREC``."""
        return load_backbone(self.cfg, self.settings.PREC)

    def build_model(self) -> None:
        logger.info("Building %s for %d classes", type(self).__name__, self.num_classes)
        self.model = self.model_class.from_cfg(self.settings, self.clip_model,
                                               self.classnames).to(self.device)
        learner = self.model.prompt_learner
        self.optim = build_optimizer(learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", learner, self.optim, self.sched)
        self.precision = PrecisionStep(self.settings.PREC, self.device)

    def before_train(self) -> None:
        if self.train_loader_x is None:
            raise RuntimeError(
                f"{type(self).__name__} trains on labelled images, but dataset "
                f"{self.cfg.DATASET.NAME} has none: set DATASET.CAPTIONS.SOURCE '' (training "
                "images are read only without a caption corpus) and check its training split.")
        logger.info("Training on %d images (DATASET.NUM_SHOTS %d, PARTIAL_PROB %s)",
                    len(self.dataset.train_x), self.cfg.DATASET.NUM_SHOTS,
                    self.cfg.DATASET.PARTIAL_PROB)
        if self.settings.CACHE_FEATURES:
            self.train_loader_x = self.feature_loader()
        super().before_train()

    @torch.no_grad()
    def feature_loader(self) -> DataLoader:
        """The training images encoded once by the frozen CLIP (exact without random transforms):
        batches ``{"feature": B x D, "label": B x C}`` in the image loader's order."""
        images = ImageDataset(self.dataset.train_x, build_train_transform(self.cfg))
        items = []
        for batch in build_loader(self.cfg, images, self.cfg.DATALOADER.TEST.BATCH_SIZE, False):
            features = self.model.image_features(batch["img"].to(self.device))
            items += [{"feature": f, "label": y} for f, y in zip(features, batch["label"])]
        logger.info("Cached the CLIP features of %d training images", len(items))
        return DataLoader(items, batch_size=self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE, shuffle=True,
                          generator=seeded_generator(self.cfg))

    def parse_batch_train(self, batch: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """(normalised image features ``B x D``, labels ``B x C``): cached or encoded now."""
        labels = batch["label"].to(self.device)
        if "feature" in batch:
            return batch["feature"], labels
        return self.model.image_features(batch["img"].to(self.device)), labels

    def batch_mean_loss(self) -> bool:
        """``bce`` divides by the batch's known-label count, not by B (``asl``: sum / B)."""
        return self.settings.LOSS == "asl"

    def forward_backward(self, batch: dict) -> dict:
        features, labels = self.parse_batch_train(batch)
        with self.precision.autocast():
            loss = known_label_loss(self.settings.LOSS, self.model.logits(features).float(), labels)
        self.precision.backward_and_update(self, loss, [self.optim])
        return {"loss": loss.item()}
