"""Spatial (or token-wise) softmax pooling of class similarities, shared by the dense methods."""
from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F

Scale = Union[float, torch.Tensor]


def spatial_pool(similarity: torch.Tensor, temperature: Scale,
                 scale: Scale) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities ``N x B x C`` (N tokens or positions) -> (logits ``B x C``, weights
    ``N x B x C``): ``sum_N softmax_N(temperature * P) * scale * P``."""
    weights = F.softmax(similarity * temperature, dim=0)
    return (scale * similarity * weights).sum(dim=0), weights
