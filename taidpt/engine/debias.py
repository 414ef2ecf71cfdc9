"""Score debiasing at test time: per-class standardisation of a head's ``N x C`` scores (numpy only).

Each class column becomes ``(s - mean_c) / std_c``, which removes a class's offset and spread
(its bias) before heads are merged or scores are compared across classes. Two variants:

- ``transductive``: ``mean_c`` / ``std_c`` over the evaluated split itself (it reads the whole
  test split before scoring any image of it);
- ``val``: the statistics of the same head on the validation split (non-transductive: each test
  image is scored on its own).

A per-class standardisation is a per-class increasing affine map, so it leaves every class's AP,
and thus the mAP of that head alone, unchanged; it changes what heads merged after it give, and
any metric comparing scores across classes.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

DEBIAS_MODES = ("transductive", "val")
MIN_STD = 1e-12  # a constant class column keeps its spread (divided by 1 instead of 0)


def class_statistics(scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``N x C`` scores -> (per-class mean ``C``, per-class std ``C``), float64; a std below
    :data:`MIN_STD` is 1."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"scores must be N x C with N >= 1, got shape {scores.shape}")
    std = scores.std(axis=0)
    return scores.mean(axis=0), np.where(std < MIN_STD, 1.0, std)


def standardise(scores: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(scores - mean) / std`` per class column, float64."""
    return (np.asarray(scores, dtype=np.float64) - mean) / std


def debias(scores: np.ndarray, mode: str, val_scores: Optional[np.ndarray] = None) -> np.ndarray:
    """Standardise ``scores`` (``N x C``) with the statistics of ``mode``: ``transductive`` (of
    ``scores``) or ``val`` (of ``val_scores``, the same head on the validation split)."""
    if mode not in DEBIAS_MODES:
        raise ValueError(f"debias mode must be one of {', '.join(DEBIAS_MODES)}, got {mode!r}")
    if mode == "val":
        if val_scores is None:
            raise ValueError("debias mode 'val' needs the head's val_scores (predictions_val.npz)")
        return standardise(scores, *class_statistics(val_scores))
    return standardise(scores, *class_statistics(scores))
