"""Linear probe on frozen CLIP image features: a supervised reference that *uses image labels*.

Not a method of the paper: the quickstart reports it as the ceiling that labelled images reach
with the same frozen backbone, next to the text-only TaI-DPT.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm import tqdm
from yacs.config import CfgNode as CN

from taidpt.clip import encode_image
from taidpt.engine.data import ImageDataset, build_loader, build_test_transform, seeded_generator
from taidpt.engine.optim import build_lr_scheduler, build_optimizer
from taidpt.engine.registry import TRAINER_REGISTRY
from taidpt.engine.trainer import SimpleTrainer
from taidpt.models import load_backbone

logger = logging.getLogger(__name__)


class LinearProbeModel(nn.Module):
    """Frozen CLIP image encoder + a trainable linear layer on L2-normalised features."""

    def __init__(self, clip_model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.clip = clip_model.eval().requires_grad_(False)
        self.head = nn.Linear(clip_model.text_projection.shape[1], num_classes)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``B x 3 x H x W`` -> normalised features ``B x D``."""
        return F.normalize(encode_image(self.clip, images), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@TRAINER_REGISTRY.register()
class LinearProbe(SimpleTrainer):
    """Extracts training-image features once, then trains the head on them (BCE)."""

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.TRAINER.LINEARPROBE = CN()
        cfg.TRAINER.LINEARPROBE.MAX_TRAIN_IMAGES = -1  # first N training images; -1 all

    def build_model(self) -> None:
        self.model = LinearProbeModel(load_backbone(self.cfg), self.num_classes).to(self.device)
        optim = build_optimizer(self.model.head, self.cfg.OPTIM)
        self.register_model("linear_head", self.model.head, optim, build_lr_scheduler(optim, self.cfg.OPTIM))
        self.train_loader_x = self._feature_loader()

    def _feature_loader(self) -> DataLoader:
        items = self.dataset.train_x
        limit = self.cfg.TRAINER.LINEARPROBE.MAX_TRAIN_IMAGES
        images = ImageDataset(items, build_test_transform(self.cfg))
        if limit > 0:
            images = Subset(images, range(min(limit, len(items))))
        feats, labels = [], []
        loader = build_loader(self.cfg, images, self.cfg.DATALOADER.TEST.BATCH_SIZE, shuffle=False)
        for batch in tqdm(loader, desc="image features", leave=False, disable=None):
            feats.append(self.model.features(batch["img"].to(self.device)))
            labels.append((batch["label"] > 0).float().to(self.device))
        logger.info("Linear probe: %d labelled training images", sum(len(f) for f in feats))
        return DataLoader(TensorDataset(torch.cat(feats), torch.cat(labels)), shuffle=True,
                          batch_size=self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE, generator=seeded_generator(self.cfg))

    def forward_backward(self, batch) -> dict:
        feats, labels = batch
        loss = F.binary_cross_entropy_with_logits(self.model.head(feats), labels)
        self.model_backward_and_update(loss)
        return {"loss": loss.item()}
