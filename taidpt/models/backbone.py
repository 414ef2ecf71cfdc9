"""The frozen CLIP backbone every method loads from ``MODEL.BACKBONE``."""
from __future__ import annotations

import logging

from torch import nn

from taidpt.clip import context_length_of, load_clip, to_fp16

logger = logging.getLogger(__name__)


def backbone_source(cfg) -> str:
    """``MODEL.BACKBONE.PATH`` when set (a CLIP file), else ``MODEL.BACKBONE.NAME`` (``RN50`` ...)."""
    backbone = cfg.MODEL.BACKBONE
    return backbone.PATH or backbone.NAME


def load_backbone(cfg, precision: str = "fp32") -> nn.Module:
    """CLIP in eval mode from :func:`backbone_source`; ``precision="fp16"`` casts its weights to
    fp16 as openai-clip ships them (``fp32`` and ``amp`` keep fp32 weights)."""
    source = backbone_source(cfg)
    clip_model = load_clip(source)
    if precision == "fp16":
        to_fp16(clip_model)
    logger.info("Loaded CLIP %s (%s)", source, precision)
    return clip_model.eval()


def backbone_context_length(cfg) -> int:
    """The token length of the configured CLIP's text encoder (77 for OpenAI CLIPs)."""
    return context_length_of(backbone_source(cfg))
