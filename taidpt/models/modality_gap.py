"""Modality-gap bridging for text-only training: make caption features look more like image ones.

TaI-DPT trains on caption features (EOS = the image's global feature, tokens = its dense
features) and tests on image features, which CLIP keeps in another region of the sphere. Two
optional steps act on the normalised caption features of every training batch:

- mean shift (``MEAN_SHIFT``): ``x - mean_text + mean_image``, re-normalised; the means are over
  the caption corpus (EOS features; token features of non-padding positions) and over the
  dataset's training images used without labels (global; dense features of every position).
  Without training images only the caption mean is subtracted.
- noise (``NOISE_STD``, CapDec): ``x + NOISE_STD * n``, ``n ~ N(0, I)`` drawn from torch's RNG
  (which checkpoints save and resume restores), re-normalised; after the mean shift.

Both off (the defaults: 0.0, False) the trainer installs nothing: training is TaI-DPT bit for bit.
Shapes: B captions, L' tokens, D joint embedding width, N images, HW dense positions.
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from taidpt.engine.data import ImageDataset, build_loader, build_test_transform

logger = logging.getLogger(__name__)

FEATURE_BATCH = 512  # captions per text-encoder pass when computing the means


def add_modality_gap_cfg(node: CN) -> None:
    """Add ``NOISE_STD`` and ``MEAN_SHIFT`` to a caption-trained trainer's node."""
    node.NOISE_STD = 0.0  # std of the Gaussian noise on normalised caption features (0: off)
    node.MEAN_SHIFT = False  # caption features - caption mean + mean of the training images


def modality_gap_active(node: CN) -> bool:
    return node.NOISE_STD > 0 or node.MEAN_SHIFT


class ModalityGap(nn.Module):
    """Caption features (EOS ``B x D``, tokens ``B x L' x D``) -> normalised, shifted, noisy ones.

    ``shift`` is ``(eos shift D, token shift D)`` = image mean - caption mean (None: no shift).
    """

    def __init__(self, noise_std: float = 0.0,
                 shift: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        super().__init__()
        self.noise_std = float(noise_std)
        self.shift = shift

    def _bridge(self, x: torch.Tensor, shift: Optional[torch.Tensor]) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        if shift is not None:
            x = F.normalize(x + shift.to(x), dim=-1)
        if self.noise_std > 0:
            x = F.normalize(x + self.noise_std * torch.randn_like(x), dim=-1)
        return x

    def forward(self, eos: torch.Tensor, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.noise_std <= 0 and self.shift is None:
            return eos, tokens
        eos_shift, token_shift = self.shift if self.shift is not None else (None, None)
        return self._bridge(eos, eos_shift), self._bridge(tokens, token_shift)


def normalised_mean(batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """The mean of the normalised rows of every ``K x D`` batch: ``D`` (float64 sums)."""
    total, count = None, 0
    for rows in batches:
        rows = F.normalize(rows.double(), dim=-1)
        total = rows.sum(dim=0) if total is None else total + rows.sum(dim=0)
        count += rows.shape[0]
    if count == 0:
        raise ValueError("normalised_mean got no rows")
    return total / count


@torch.no_grad()
def caption_means(model: nn.Module, tokens: torch.Tensor, device: torch.device,
                  batch_size: int = FEATURE_BATCH) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``N x L`` -> (mean normalised EOS feature ``D``, mean normalised token feature over
    non-padding positions ``D``), with ``model.caption_features`` (TaI-DPT's)."""
    eos_parts, token_parts = [], []
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i:i + batch_size].to(device)
        eos, sequence = model.caption_features(batch)
        eos_parts.append(eos)
        token_parts.append(sequence[batch[:, :sequence.shape[1]] != 0])
    return normalised_mean(eos_parts), normalised_mean(token_parts)


@torch.no_grad()
def image_means(model: nn.Module, loader: Iterable[dict],
                device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image batches ``{"img": B x 3 x H x W}`` -> (mean normalised global feature ``D``, mean
    normalised dense feature over every position ``D``), with ``model.image_features``."""
    global_parts, dense_parts = [], []
    for batch in loader:
        global_feat, dense = model.image_features(batch["img"].to(device))
        global_parts.append(global_feat)
        dense_parts.append(dense.flatten(0, 1))
    return normalised_mean(global_parts), normalised_mean(dense_parts)


def build_modality_gap(cfg: CN, node: CN, model: nn.Module, tokens: torch.Tensor,
                       images: Sequence, device: torch.device) -> ModalityGap:
    """The :class:`ModalityGap` of ``node``'s ``NOISE_STD`` / ``MEAN_SHIFT`` for ``model``
    (TaI-DPT's): with ``MEAN_SHIFT`` the shift is the mean over the training ``images`` (items,
    read with the test transform, labels unused) minus the mean over the caption ``tokens``
    (``N x L``); without images only the caption mean is subtracted."""
    shift = None
    if node.MEAN_SHIFT:
        text = caption_means(model, tokens, device)
        if images:
            loader = build_loader(cfg, ImageDataset(images, build_test_transform(cfg)),
                                  cfg.DATALOADER.TEST.BATCH_SIZE, shuffle=False)
            image = image_means(model, loader, device)
        else:
            logger.warning("MEAN_SHIFT: the dataset has no training images, so the caption mean is "
                           "only subtracted")
            image = tuple(torch.zeros_like(m) for m in text)
        shift = tuple((i - t).float() for i, t in zip(image, text))
        logger.info("Mean shift of the caption features over %d captions and %d images: "
                    "|EOS shift| %.3f, |token shift| %.3f", len(tokens), len(images),
                    float(shift[0].norm()), float(shift[1].norm()))
    if node.NOISE_STD > 0:
        logger.info("Gaussian noise of std %g on the normalised caption features", node.NOISE_STD)
    return ModalityGap(node.NOISE_STD, shift)
