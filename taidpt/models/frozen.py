"""Frozen CLIP + a prompt learner: the model shape every prompt-tuning method shares."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class FrozenCLIPModel(nn.Module):
    """Frozen CLIP (always in eval mode, no gradients) + ``prompt_learner``, the trainable part."""

    def __init__(self, clip_model: nn.Module, prompt_learner: nn.Module) -> None:
        super().__init__()
        self.clip = clip_model.eval().requires_grad_(False)
        self.prompt_learner = prompt_learner

    def train(self, mode: bool = True) -> "FrozenCLIPModel":
        super().train(mode)
        self.clip.eval()  # frozen BatchNorm statistics
        return self


class TwoContextModel(FrozenCLIPModel):
    """A prompt learner with two contexts, named by ``context_names`` (TaI-DPT: ``ctx`` /
    ``ctx_double``; DualCoOp: ``ctx`` / ``ctx_neg``), whose class embeddings can be computed once
    per evaluation (:meth:`cached_prompts`)."""

    context_names: Tuple[str, str] = ("ctx", "ctx")

    def __init__(self, clip_model: nn.Module, prompt_learner: nn.Module) -> None:
        super().__init__(clip_model, prompt_learner)
        self._cached_embeddings: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def class_embeddings(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two contexts' normalised class embeddings, ``C x D`` each."""
        if self._cached_embeddings is not None:
            return self._cached_embeddings
        learner = self.prompt_learner
        first, second = (getattr(learner, name) for name in self.context_names)
        return (F.normalize(learner.encode(self.clip, first), dim=-1),
                F.normalize(learner.encode(self.clip, second), dim=-1))

    @contextlib.contextmanager
    def cached_prompts(self) -> Iterator[None]:
        """Compute the class embeddings once and reuse them inside the block (evaluation)."""
        with torch.no_grad():
            self._cached_embeddings = self.class_embeddings()
        try:
            yield
        finally:
            self._cached_embeddings = None
