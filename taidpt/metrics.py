"""Multi-label ranking metrics: non-interpolated average precision (AP) and its mean (mAP).

Both functions take ``N x C`` scores and targets (numpy arrays or torch tensors). A target
``> 0`` is a positive, ``< 0`` a negative and ``0`` a VOC "difficult" (or unknown) entry, which
``difficult`` decides about: ``"negative"`` counts it as a negative (the reference; binary 1/0
targets also work this way), ``"ignore"`` drops it from that class's ranking (the standard VOC
protocol; needs negatives marked ``-1``).

AP of a class, in percent, is the mean over its positives of the precision at the positive's
rank, the samples ranked by descending score. Ties are ranked by a *stable* sort: samples with
equal scores keep their input (row) order, so the earlier row ranks higher. The reference ranks
with ``argsort()[::-1]``, whose tie order is not defined; the two can differ only on tied scores.
"""
from __future__ import annotations

import warnings
from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
DIFFICULT_MODES = ("negative", "ignore")


def _as_float_array(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def average_precision_per_class(scores: ArrayLike, targets: ArrayLike,
                                difficult: str = "negative") -> np.ndarray:
    """AP of every class in percent, shape ``C``; NaN for a class without a positive.

    ``scores``, ``targets``: ``N x C``. The module docstring explains targets, ``difficult``, ties.
    """
    if difficult not in DIFFICULT_MODES:
        raise ValueError(f"difficult={difficult!r} is not a valid mode: use one of "
                         f"{DIFFICULT_MODES} ('negative' counts targets equal to 0 as negatives, "
                         "'ignore' drops them).")
    scores, targets = _as_float_array(scores), _as_float_array(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must both be N x C; got shapes {scores.shape} and "
                         f"{targets.shape}. Stack the per-image rows into one matrix first.")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN, which has no place in a ranking; check the model "
                         "outputs (e.g. a diverged training run) before computing AP.")
    order = np.argsort(-scores, axis=0, kind="stable")
    ranked = np.take_along_axis(targets, order, axis=0)
    positive = ranked > 0
    counted = ranked != 0 if difficult == "ignore" else np.ones_like(positive)
    precision = np.cumsum(positive, axis=0) / np.maximum(np.cumsum(counted, axis=0), 1)
    num_positive = positive.sum(axis=0)
    with np.errstate(invalid="ignore"):
        return 100.0 * (precision * positive).sum(axis=0) / num_positive


def mean_average_precision(scores: ArrayLike, targets: ArrayLike,
                           difficult: str = "negative") -> float:
    """mAP in percent over the classes with a positive (the others are left out, with a warning).

    ``scores``, ``targets``: ``N x C``. Returns NaN when no class has a positive.
    """
    ap = average_precision_per_class(scores, targets, difficult)
    missing = np.isnan(ap)
    if missing.any():
        warnings.warn(f"{int(missing.sum())} of {ap.size} classes have no positive target and are "
                      "left out of the mAP.", stacklevel=2)
    if missing.all():
        return float("nan")
    return float(ap[~missing].mean())
