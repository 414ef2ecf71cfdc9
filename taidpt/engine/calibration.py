"""Score calibration for tagging: min-max scores and per-class F1-maximising thresholds (numpy only).

A head's *min-max score* is ``(raw - lo) / (hi - lo)`` with ``lo`` / ``hi`` one scalar each: the
minimum and maximum of that head's raw ``N x C`` scores on the split it was calibrated on (the
run's val split for ``taidpt tag``), so that it is one fixed affine map per run and head: rankings
and AP are unchanged, and new images may fall slightly outside ``[0, 1]``. Per-class thresholds
are chosen on those min-max scores to maximise each class's F1.

Targets follow :mod:`taidpt.metrics`: ``> 0`` positive, ``< 0`` negative, ``0`` difficult /
unknown, counted as a negative (``difficult="negative"``) or dropped (``"ignore"``).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from taidpt.metrics import DIFFICULT_MODES


def score_range(scores: np.ndarray) -> Tuple[float, float]:
    """``(min, max)`` over the whole ``N x C`` matrix (two scalars, float)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(scores.min()), float(scores.max())


def minmax(scores: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(scores - lo) / (hi - lo)`` in float64, any shape; a flat range (``hi == lo``) gives 0."""
    span = hi - lo
    return (np.asarray(scores, dtype=np.float64) - lo) / (span if span > 0 else 1.0)


def _counted(targets: np.ndarray, difficult: str) -> np.ndarray:
    if difficult not in DIFFICULT_MODES:
        raise ValueError(f"difficult={difficult!r} is not a valid mode: use one of {DIFFICULT_MODES}")
    return targets != 0 if difficult == "ignore" else np.ones(targets.shape, dtype=bool)


def f1_thresholds(scores: np.ndarray, targets: np.ndarray, difficult: str = "negative") -> np.ndarray:
    """Per class, the threshold ``t`` for which predicting ``score >= t`` has the highest F1.

    ``scores``, ``targets``: ``N x C``. Returns ``C`` float64 thresholds, each the midpoint
    between the lowest score predicted positive and the next lower score (the lowest score
    itself when every image is predicted); ``inf`` (never predicted) for a class with no
    positive. Ties in F1 keep the highest threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must both be N x C; got {scores.shape} and {targets.shape}")
    counted = _counted(targets, difficult)
    thresholds = np.full(scores.shape[1], np.inf)
    for c in range(scores.shape[1]):
        s, positive = scores[counted[:, c], c], targets[counted[:, c], c] > 0
        num_positive = int(positive.sum())
        if num_positive == 0:
            continue
        order = np.argsort(-s, kind="stable")
        s, positive = s[order], positive[order]
        f1 = 2.0 * np.cumsum(positive) / (np.arange(1, s.size + 1) + num_positive)
        cut = np.append(s[1:] != s[:-1], True)  # a cut only after the last of equal scores
        best = int(np.flatnonzero(cut)[np.argmax(f1[cut])])
        thresholds[c] = s[best] if best + 1 == s.size else (s[best] + s[best + 1]) / 2.0
    return thresholds


def f1_per_class(predicted: np.ndarray, targets: np.ndarray, difficult: str = "negative") -> np.ndarray:
    """F1 of every class of the boolean ``N x C`` predictions; ``C`` float64, NaN for a class with no
    positive target."""
    predicted = np.asarray(predicted, dtype=bool)
    targets = np.asarray(targets, dtype=np.float64)
    counted = _counted(targets, difficult)
    positive = targets > 0
    tp = (predicted & positive).sum(axis=0)
    fp = (predicted & ~positive & counted).sum(axis=0)
    fn = (~predicted & positive).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2.0 * tp / (2.0 * tp + fp + fn)
    return np.where(positive.sum(axis=0) > 0, f1, np.nan)
