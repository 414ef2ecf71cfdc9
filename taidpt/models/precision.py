"""Numeric precision and memory layout of the frozen CLIP and of a prompt learner's step.

``PREC``: ``fp32``, ``fp16`` (fp16 CLIP weights) or ``amp`` (fp32 weights, autocast forward:
bfloat16 where the device supports it, needing no loss scaling; float16 with a GradScaler on a
CUDA GPU without bfloat16). ``MODEL.CHANNELS_LAST``: the ResNet image tower in channels_last
memory format on CUDA (the layout cuDNN's fastest convolutions use; skipped on the CPU).
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional, Sequence

import torch
from torch import nn

from taidpt.clip import is_resnet

PRECISIONS = ("fp32", "fp16", "amp")


def check_precision(precision: str, key: str) -> None:
    """A clear error naming ``key`` unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"{key} must be one of {', '.join(PRECISIONS)}, got {precision!r}.")


def amp_dtype(device: torch.device, bf16_supported: Optional[bool] = None) -> torch.dtype:
    """The autocast dtype of ``amp`` on ``device``: bfloat16 on the CPU and on GPUs that support it
    (``bf16_supported``, default: ask CUDA), else float16."""
    if device.type != "cuda":
        return torch.bfloat16
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float16


def use_channels_last(clip_model: nn.Module, device: torch.device, enabled: bool) -> bool:
    """Whether ``MODEL.CHANNELS_LAST`` applies: enabled, a ResNet image tower, on CUDA."""
    return enabled and device.type == "cuda" and is_resnet(clip_model)


def to_channels_last(clip_model: nn.Module) -> nn.Module:
    """The image tower's 4-d weights in channels_last memory format (in place; same values)."""
    clip_model.visual.to(memory_format=torch.channels_last)
    return clip_model


class PrecisionStep:
    """Autocast for the forward pass and the backward + optimiser update that go with it.

    ``amp`` autocasts to :func:`amp_dtype`; only float16 scales the loss (``torch.amp.GradScaler``);
    ``fp32`` / ``fp16`` take the trainer's plain step.
    """

    def __init__(self, precision: str, device: torch.device,
                 bf16_supported: Optional[bool] = None) -> None:
        self.device = device
        self.autocast_enabled = precision == "amp"
        self.dtype = amp_dtype(device, bf16_supported) if self.autocast_enabled else torch.float32
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None)

    def autocast(self) -> ContextManager:
        """The context of the forward pass and the loss."""
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_and_update(self, trainer, loss: torch.Tensor,
                            optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """``trainer.model_backward_and_update(loss)``, or its scaled form (stepping
        ``optimizers``, the trainer's registered ones) under float16 amp."""
        if self.scaler is None:
            trainer.model_backward_and_update(loss)
            return
        trainer.model_zero_grad()
        trainer.model_backward(self.scaler.scale(loss))
        for optim in optimizers:
            self.scaler.step(optim)
        self.scaler.update()
