"""Multi-label evaluation: mAP of every score head, the headline, saved predictions (SPEC 3, 6, 7).

``model_inference`` returns one of three forms, each normalised to named ``B x C`` heads:
a tensor (head ``logits``), a ``(global, local)`` pair (heads ``global``, ``local`` and
``merged = r * global + (1 - r) * local``) or a mapping ``{head name: B x C}``.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from taidpt.engine.calibration import f1_thresholds, minmax, score_range
from taidpt.engine.registry import EVALUATOR_REGISTRY
from taidpt.io import atomic_write
from taidpt.metrics import average_precision_per_class, mean_average_precision

logger = logging.getLogger(__name__)

Scores = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]]
SINGLE_HEAD = "logits"
SPLITS = ("test", "val")  # what TEST.SPLIT and predictions_<split>.npz accept


def relative_image_id(path: str, root: str, dataset_dir: str = "") -> str:
    """The id of an image in a predictions file: ``path`` relative to ``root`` when it lies under
    it, else relative to ``dataset_dir`` (itself relative to ``root`` unless absolute) when set
    and under it, else ``path`` as is. Two runs on the same data agree from any working dir."""
    path_abs = os.path.abspath(path)
    bases = [root] if root else []
    if dataset_dir:
        bases.append(dataset_dir if os.path.isabs(dataset_dir) else os.path.join(root, dataset_dir))
    for base in bases:
        base_abs = os.path.abspath(base)
        if os.path.commonpath([path_abs, base_abs]) == base_abs:
            return os.path.relpath(path_abs, base_abs).replace(os.sep, "/")
    return path


def _to_numpy(scores: torch.Tensor) -> np.ndarray:
    """fp64 stays fp64 (ensembles); every other dtype becomes fp32."""
    scores = scores.detach().cpu()
    return (scores if scores.dtype == torch.float64 else scores.float()).numpy()


@EVALUATOR_REGISTRY.register(aliases=("MLClassificationEvaluator",))
class MLClassification:
    """Collects the named ``B x C`` score heads and labels, then reports mAP per head.

    Results: one head ``logits`` -> ``mAP`` only; otherwise ``mAP_<head>`` for each head and
    ``mAP`` = the headline head's (default: ``merged`` for a pair, the first head of a mapping).
    """

    def __init__(self, cfg, lab2cname: Optional[Dict[int, str]] = None, merge_rate: float = 0.5,
                 headline: Optional[str] = None) -> None:
        self.lab2cname = lab2cname or {}
        self.merge_rate = float(merge_rate)
        self.headline = headline
        self.difficult = cfg.DATASET.DIFFICULT
        self.per_class = cfg.TEST.PER_CLASS_RESULT
        self.reset()

    def reset(self) -> None:
        self._scores: "OrderedDict[str, List[np.ndarray]]" = OrderedDict()
        self._labels: List[np.ndarray] = []

    def _heads(self, output: Scores) -> "OrderedDict[str, torch.Tensor]":
        if isinstance(output, Mapping):
            return OrderedDict(output)
        if isinstance(output, (tuple, list)):
            if len(output) != 2:
                raise ValueError(f"model_inference returned {len(output)} score matrices; a sequence "
                                 "must be a (global, local) pair. Return a {head name: B x C} mapping "
                                 "for other heads.")
            return OrderedDict([("global", output[0]), ("local", output[1])])
        return OrderedDict([(SINGLE_HEAD, output)])

    def process(self, output: Scores, gt: torch.Tensor) -> None:
        """Add one batch: ``output`` in any of the three forms, ``gt`` ``B x C`` (1 / 0 / -1)."""
        heads = self._heads(output)
        if self._scores and list(heads) != list(self._scores):
            raise ValueError(f"process() got heads {list(heads)} after {list(self._scores)}: "
                             "model_inference must return the same heads for every batch")
        for name, scores in heads.items():
            self._scores.setdefault(name, []).append(_to_numpy(scores))
        self._labels.append(gt.detach().cpu().float().numpy())

    def score_matrices(self) -> "OrderedDict[str, np.ndarray]":
        """Head name -> ``N x C`` scores; a (global, local) pair adds ``merged``."""
        mats = OrderedDict((name, np.concatenate(parts)) for name, parts in self._scores.items())
        if list(mats) == ["global", "local"]:
            mats["merged"] = self.merge_rate * mats["global"] + (1.0 - self.merge_rate) * mats["local"]
        return mats

    def headline_name(self, heads: Sequence[str]) -> str:
        """The head reported as ``mAP``: the given headline, else ``merged``, else the first."""
        name = self.headline or ("merged" if "merged" in heads else heads[0])
        if name not in heads:
            raise KeyError(f"Headline head {name!r} is not among the model's heads {list(heads)}: "
                           "fix the trainer's headline()")
        return name

    def targets(self) -> np.ndarray:
        """The ``N x C`` labels seen so far (float32, 1 / 0 / -1)."""
        if not self._labels:
            raise RuntimeError("evaluate() called before any process(): the test loader was empty")
        return np.concatenate(self._labels)

    def evaluate(self) -> "OrderedDict[str, float]":
        labels = self.targets()
        mats = self.score_matrices()
        headline = self.headline_name(list(mats))
        results: "OrderedDict[str, float]" = OrderedDict()
        if list(mats) == [SINGLE_HEAD]:
            results["mAP"] = mean_average_precision(mats[SINGLE_HEAD], labels, difficult=self.difficult)
        else:
            for name, scores in mats.items():
                results[f"mAP_{name}"] = mean_average_precision(scores, labels, difficult=self.difficult)
            results["mAP"] = results[f"mAP_{headline}"]
        logger.info("=> result\n* images: %d\n%s", labels.shape[0],
                    "\n".join(f"* {k}: {v:.2f}%" for k, v in results.items()))
        if self.per_class:
            ap = average_precision_per_class(mats[headline], labels, difficult=self.difficult)
            logger.info("=> AP per class (%s)\n%s", headline, "\n".join(
                f"* {self.lab2cname.get(i, str(i))}: {v:.2f}%" for i, v in enumerate(ap)))
        return results

    def calibration(self) -> "OrderedDict[str, Tuple[Tuple[float, float], np.ndarray]]":
        """Head name -> ``((lo, hi), thresholds C)``: the min and max of the head's ``N x C`` scores
        and per-class F1-maximising thresholds on ``minmax(scores, lo, hi)``
        (:mod:`taidpt.engine.calibration`; what ``taidpt tag --threshold calibrated`` reads from
        the val split's predictions)."""
        labels = self.targets()
        result: "OrderedDict[str, Tuple[Tuple[float, float], np.ndarray]]" = OrderedDict()
        for name, scores in self.score_matrices().items():
            lo, hi = score_range(scores)
            result[name] = ((lo, hi), f1_thresholds(minmax(scores, lo, hi), labels, self.difficult))
        return result

    def save_predictions(self, path: str, image_ids: Sequence[str],
                         image_paths: Optional[Sequence[str]] = None, **meta) -> None:
        """Write ``path`` (npz) atomically: ``image_ids`` (N), ``image_paths`` (N, when given: the
        files as read), ``classnames`` (C), ``targets`` (N x C), per head ``scores_<head>``
        (N x C), ``range_<head>`` (2: min, max) and ``thresholds_<head>`` (C, see
        :meth:`calibration`), ``headline`` and the ``meta`` strings / numbers (``trainer``,
        ``dataset``, ``split``, ``epoch``)."""
        labels = self.targets()
        if len(image_ids) != labels.shape[0]:
            raise ValueError(f"{len(image_ids)} image ids for {labels.shape[0]} evaluated images")
        if image_paths is not None and len(image_paths) != labels.shape[0]:
            raise ValueError(f"{len(image_paths)} image paths for {labels.shape[0]} evaluated images")
        mats = self.score_matrices()
        arrays = {"image_ids": np.array(list(image_ids), dtype=str),
                  "classnames": np.array([self.lab2cname.get(i, str(i)) for i in range(labels.shape[1])],
                                         dtype=str),
                  "targets": labels, "headline": np.array(self.headline_name(list(mats))),
                  **{f"scores_{name}": scores for name, scores in mats.items()},
                  **{key: np.array(value) for key, value in meta.items()}}
        if image_paths is not None:
            arrays["image_paths"] = np.array(list(image_paths), dtype=str)
        for name, (bounds, thresholds) in self.calibration().items():
            arrays[f"range_{name}"] = np.array(bounds, dtype=np.float64)
            arrays[f"thresholds_{name}"] = thresholds
        atomic_write(path, lambda f: np.savez(f, **arrays))
        logger.info("Predictions saved to %s", path)


def build_evaluator(cfg, **kwargs) -> MLClassification:
    """``cfg.TEST.EVALUATOR`` built with ``lab2cname``, ``merge_rate``, ``headline``."""
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)
