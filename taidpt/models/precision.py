"""Numeric precision of a prompt learner's step: ``fp32``, ``fp16`` (fp16 CLIP weights) or
``amp`` (autocast with a gradient scaler on CUDA; plain autocast elsewhere)."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional, Sequence

import torch

PRECISIONS = ("fp32", "fp16", "amp")


def check_precision(precision: str, key: str) -> None:
    """A clear error naming ``key`` unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"{key} must be one of {', '.join(PRECISIONS)}, got {precision!r}.")


class PrecisionStep:
    """Autocast for the forward pass and the backward + optimiser update that go with it.

    With ``amp`` on CUDA the loss is scaled (``torch.amp.GradScaler``); on CPU ``amp`` autocasts
    without a scaler (bfloat16 needs none); ``fp32`` / ``fp16`` take the trainer's plain step.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        self.device = device
        self.autocast_enabled = precision == "amp"
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler("cuda") if self.autocast_enabled and device.type == "cuda" else None)

    def autocast(self) -> ContextManager:
        """The context of the forward pass and the loss."""
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type)

    def backward_and_update(self, trainer, loss: torch.Tensor,
                            optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """``trainer.model_backward_and_update(loss)``, or its scaled form (stepping
        ``optimizers``, the trainer's registered ones) under amp on CUDA."""
        if self.scaler is None:
            trainer.model_backward_and_update(loss)
            return
        trainer.model_zero_grad()
        trainer.detect_anomaly(loss)
        self.scaler.scale(loss).backward()
        for optim in optimizers:
            self.scaler.step(optim)
        self.scaler.update()
