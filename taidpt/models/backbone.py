"""The frozen CLIP backbone every method loads from ``MODEL.BACKBONE``.

Sizes come from the backbone: the text context length is the CLIP's own
(:func:`backbone_context_length`, 77 for OpenAI's models), and ``INPUT.SIZE`` keeps Dassl's
meaning (what the images are resized to, never changed behind the user's back), so each
backbone's configs set it to the backbone's pretraining resolution (:func:`backbone_resolution`:
224 px, 288 for RN50x4, 384 RN50x16, 448 RN50x64, 336 ViT-L/14@336px). :func:`check_input_size`
checks the two agree when the backbone is loaded.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from taidpt.clip import context_length_of, is_resnet, load_clip, to_fp16
from taidpt.models.precision import to_channels_last, use_channels_last

logger = logging.getLogger(__name__)


def backbone_source(cfg) -> str:
    """``MODEL.BACKBONE.PATH`` when set (a CLIP file), else ``MODEL.BACKBONE.NAME`` (``RN50`` ...)."""
    backbone = cfg.MODEL.BACKBONE
    return backbone.PATH or backbone.NAME


def load_backbone(cfg, precision: str = "fp32") -> nn.Module:
    """CLIP in eval mode from :func:`backbone_source`; ``precision="fp16"`` casts its weights to
    fp16 as openai-clip ships them (``fp32`` and ``amp`` keep fp32 weights). ``INPUT.SIZE`` is
    checked against it (:func:`check_input_size`). A ResNet's image tower is channels_last on
    CUDA with ``MODEL.CHANNELS_LAST``."""
    source = backbone_source(cfg)
    clip_model = load_clip(source)
    check_input_size(cfg, clip_model)
    if precision == "fp16":
        to_fp16(clip_model)
    device = torch.device("cuda" if cfg.USE_CUDA and torch.cuda.is_available() else "cpu")
    channels_last = use_channels_last(clip_model, device, cfg.MODEL.CHANNELS_LAST)
    if channels_last:
        to_channels_last(clip_model)
    logger.info("Loaded CLIP %s (%s%s)", source, precision, ", channels_last" if channels_last else "")
    return clip_model.eval()


def backbone_context_length(cfg) -> int:
    """The token length of the configured CLIP's text encoder (77 for OpenAI CLIPs)."""
    return context_length_of(backbone_source(cfg))


def backbone_resolution(clip_model: nn.Module) -> int:
    """The side (px) of the square images the CLIP's image tower was pretrained on."""
    return int(clip_model.visual.input_resolution)


def check_input_size(cfg, clip_model: nn.Module) -> None:
    """``INPUT.SIZE`` against the backbone. A ViT side that is not a multiple of the patch size is
    an error (its patch embedding would drop the edge pixels). A size other than the backbone's
    resolution works (the positional embedding is interpolated where it is used: every ViT
    feature, ResNets' stock global feature only) and is logged: a WARNING for a ViT, whose
    features all depend on it, INFO for a ResNet (TaI-DPT and DualCoOp use none, SPEC 3)."""
    height, width = (int(side) for side in cfg.INPUT.SIZE)
    resolution = backbone_resolution(clip_model)
    name = backbone_source(cfg)
    vit = not is_resnet(clip_model)
    if vit:
        patch = clip_model.visual.conv1.kernel_size[0]
        if height % patch or width % patch:
            raise ValueError(
                f"INPUT.SIZE {height}x{width} is not a multiple of the {patch} px patches of the ViT "
                f"backbone {name}: set INPUT.SIZE to multiples of {patch} (its resolution is "
                f"{resolution} px; the configs/trainers/*/vit_*.yaml configs set it).")
    if (height, width) == (resolution, resolution):
        return
    message = "INPUT.SIZE %dx%d differs from the %d px resolution of the backbone %s: "
    if vit:
        logger.warning(message + "its positional embedding is interpolated to the %dx%d patch grid",
                       height, width, resolution, name, height // patch, width // patch)
    else:
        logger.info(message + "the stock global feature interpolates its positional embedding "
                    "(the dense features use none)", height, width, resolution, name)
