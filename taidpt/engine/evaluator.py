"""Multi-label evaluation: global, local and merged mAP (SPEC 3, 6)."""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from taidpt.engine.registry import EVALUATOR_REGISTRY
from taidpt.io import atomic_write
from taidpt.metrics import mean_average_precision

logger = logging.getLogger(__name__)

Scores = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


@EVALUATOR_REGISTRY.register(aliases=("MLClassificationEvaluator",))
class MLClassification:
    """Collects ``B x C`` scores (or a (global, local) pair) and labels, then reports mAP.

    With two score matrices the merged score is ``r * global + (1 - r) * local`` and the result
    has ``mAP_global``, ``mAP_local``, ``mAP_merged``; ``mAP`` is always the headline number.
    """

    def __init__(self, cfg, lab2cname: Optional[Dict[int, str]] = None, merge_rate: float = 0.5,
                 output_dir: Optional[str] = None) -> None:
        self.lab2cname = lab2cname or {}
        self.merge_rate = float(merge_rate)
        self.difficult = cfg.DATASET.DIFFICULT
        self.save_preds = cfg.TEST.SAVE_PREDS
        self.per_class = cfg.TEST.PER_CLASS_RESULT
        self.output_dir = output_dir if output_dir is not None else cfg.OUTPUT_DIR
        self.reset()

    def reset(self) -> None:
        self._scores: List[List[np.ndarray]] = []
        self._labels: List[np.ndarray] = []

    def process(self, output: Scores, gt: torch.Tensor) -> None:
        outputs: Sequence[torch.Tensor] = output if isinstance(output, (tuple, list)) else (output,)
        if self._scores and len(self._scores) != len(outputs):
            raise ValueError("process() got a different number of score matrices than before")
        if not self._scores:
            self._scores = [[] for _ in outputs]
        for store, scores in zip(self._scores, outputs):
            store.append(scores.detach().float().cpu().numpy())
        self._labels.append(gt.detach().float().cpu().numpy())

    def score_matrices(self) -> "OrderedDict[str, np.ndarray]":
        """Name -> ``N x C`` scores: ``main`` alone, or ``global``, ``local``, ``merged``."""
        mats = [np.concatenate(s) for s in self._scores]
        if len(mats) == 1:
            return OrderedDict(main=mats[0])
        merged = self.merge_rate * mats[0] + (1.0 - self.merge_rate) * mats[1]
        return OrderedDict(global_=mats[0], local=mats[1], merged=merged)

    def evaluate(self) -> "OrderedDict[str, float]":
        if not self._labels:
            raise RuntimeError("evaluate() called before any process(): the test loader was empty")
        labels = np.concatenate(self._labels)
        results: "OrderedDict[str, float]" = OrderedDict()
        mats = self.score_matrices()
        for name, scores in mats.items():
            key = "mAP" if name == "main" else f"mAP_{name.rstrip('_')}"
            results[key] = mean_average_precision(scores, labels, difficult=self.difficult)
        if "mAP_merged" in results:
            results["mAP"] = results["mAP_merged"]
        logger.info("=> result\n* images: %d\n%s", labels.shape[0],
                    "\n".join(f"* {k}: {v:.2f}%" for k, v in results.items()))
        if self.save_preds:
            self._save(mats, labels)
        return results

    def _save(self, mats: Dict[str, np.ndarray], labels: np.ndarray) -> None:
        path = os.path.join(self.output_dir, "predictions.npz")
        names = np.array([self.lab2cname.get(i, str(i)) for i in range(labels.shape[1])])
        atomic_write(path, lambda f: np.savez(f, labels=labels, classnames=names,
                                              **{k.rstrip("_"): v for k, v in mats.items()}))
        logger.info("Predictions saved to %s", path)


def build_evaluator(cfg, **kwargs) -> MLClassification:
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)
