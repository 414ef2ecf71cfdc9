"""TaI-DPT ensembled with an image-prompt method, from two runs' saved predictions (SPEC 7).

    python train.py --trainer DualCoOpTaIDPT --eval-only --model-dir output/dualcoop \\
      --root DATA --dataset-config-file configs/datasets/voc2007_partial.yaml \\
      --output-dir output/ensemble TRAINER.ENSEMBLE.TAIDPT_DIR output/taidpt TRAINER.ENSEMBLE.RATE 0.9

``--model-dir`` is the image-prompt run (DualCoOp, CoOp), ``TRAINER.ENSEMBLE.TAIDPT_DIR`` the
TaI-DPT run; both must have evaluated the same split of the same dataset. The result is reported
like any method's (heads ``taidpt``, ``other``, ``ensemble``; ``mAP`` = ``ensemble``).
``taidpt ensemble`` computes the same numbers for several rates at once.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import numpy as np
import torch
from yacs.config import CfgNode as CN

from taidpt.datasets.base import label_matrix
from taidpt.engine.ensemble import EvalData, check_same_data, ensemble_scores, load_predictions
from taidpt.engine.registry import TRAINER_REGISTRY
from taidpt.engine.trainer import SimpleTrainer

logger = logging.getLogger(__name__)


class PredictionEnsemble(SimpleTrainer):
    """``(1 - RATE) * minmax(TaI-DPT head) + RATE * minmax(other head)`` on the dataset's split.

    Nothing is trained or loaded as weights: ``load_model(directory)`` records the image-prompt
    run, ``test(split)`` reads both runs' ``predictions_<split>.npz``, checks them against the
    dataset's image ids, class names and targets, and reports through the evaluator.
    """

    other_trainer = ""  # the trainer expected to have written the --model-dir run

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.TRAINER.ENSEMBLE = CN()
        c = cfg.TRAINER.ENSEMBLE
        c.TAIDPT_DIR = ""  # OUTPUT_DIR of the TaI-DPT run (its predictions_<split>.npz)
        c.RATE = 0.5  # weight of the image-prompt run; the paper's README example uses 0.9
        c.HEAD_TAIDPT = ""  # score head of the TaI-DPT run; "" = its headline (merged)
        c.HEAD_OTHER = ""  # score head of the --model-dir run; "" = its headline (DualCoOp: local)

    def check_cfg(self, cfg) -> None:
        rate = cfg.TRAINER.ENSEMBLE.RATE
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"TRAINER.ENSEMBLE.RATE must lie in [0, 1], got {rate}")

    def headline(self) -> str:
        return "ensemble"

    def build_model(self) -> None:
        """No network: the scores come from the runs' predictions files."""
        self.model_dir = ""

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Record ``directory`` (``--model-dir``) as the image-prompt run."""
        if epoch is not None:
            raise ValueError(f"--load-epoch does not apply to {self.cfg.TRAINER.NAME}: it reads "
                             f"{directory}/predictions_<split>.npz as that run's last evaluation "
                             "wrote it. Evaluate the run at the wanted epoch first.")
        self.model_dir = directory

    def save_model(self, *args, **kwargs) -> None:
        """Nothing is trained: no checkpoint."""

    def train(self) -> None:
        raise RuntimeError(f"{self.cfg.TRAINER.NAME} has nothing to train: run train.py with "
                           "--eval-only --model-dir <image-prompt run> TRAINER.ENSEMBLE.TAIDPT_DIR "
                           "<TaI-DPT run>")

    def _check_other_trainer(self, trainer: str) -> None:
        if trainer in TRAINER_REGISTRY:
            trainer = TRAINER_REGISTRY.canonical_name(trainer)
        if self.other_trainer and trainer != self.other_trainer:
            logger.warning("%s expects a %s run under --model-dir %s, found a %s run",
                           self.cfg.TRAINER.NAME, self.other_trainer, self.model_dir, trainer)

    def test(self, split: Optional[str] = None) -> Dict[str, float]:
        """Ensemble the two runs' scores on ``split`` (default ``TEST.SPLIT``) and report them."""
        split = self.check_split(split or self.cfg.TEST.SPLIT)
        c = self.cfg.TRAINER.ENSEMBLE
        if not self.model_dir:
            raise ValueError(f"{self.cfg.TRAINER.NAME} needs --model-dir: the OUTPUT_DIR of the "
                             f"image-prompt run ({self.other_trainer or 'DualCoOp, CoOp'}).")
        if not c.TAIDPT_DIR:
            raise ValueError("TRAINER.ENSEMBLE.TAIDPT_DIR is empty: set it to the OUTPUT_DIR of the "
                             "TaI-DPT run (e.g. TRAINER.ENSEMBLE.TAIDPT_DIR output/taidpt).")
        taidpt, other = load_predictions(c.TAIDPT_DIR, split), load_predictions(self.model_dir, split)
        items = self.split_items(split)
        data = EvalData(f"dataset {self.cfg.DATASET.NAME} ({split} split)", np.array(self.image_ids(items)),
                        np.array(self.classnames), label_matrix(items))
        check_same_data(data, taidpt)
        check_same_data(data, other)
        self._check_other_trainer(other.trainer)
        head_a, head_b = taidpt.resolve_head(c.HEAD_TAIDPT), other.resolve_head(c.HEAD_OTHER)
        a, b = taidpt.scores[head_a], other.scores[head_b]
        logger.info("Ensemble on %s: (1 - %g) * minmax(%s %s) + %g * minmax(%s %s)", split, c.RATE,
                    taidpt.trainer, head_a, c.RATE, other.trainer, head_b)
        self.evaluator.reset()
        self.evaluator.process({"taidpt": torch.from_numpy(a), "other": torch.from_numpy(b),
                                "ensemble": torch.from_numpy(ensemble_scores(a, b, c.RATE))},
                               torch.from_numpy(data.targets))
        return self.report_results(split, list(data.image_ids))


@TRAINER_REGISTRY.register()
class DualCoOpTaIDPT(PredictionEnsemble):
    """TaI-DPT (merged) + DualCoOp (local): the paper's partial-label ensemble (Table 3)."""

    other_trainer = "DualCoOp"


@TRAINER_REGISTRY.register()
class CoOpMLTaIDPT(PredictionEnsemble):
    """TaI-DPT (merged) + multi-label CoOp (logits): few-shot (Figure 6) and novel classes (Table 2)."""

    other_trainer = "CoOpML"
