"""DualCoOp (Sun et al., NeurIPS 2022) as in the reference's ``Caption_dual`` (SPEC 7): a positive
and a negative prompt per class, learnt on partially labelled training images.

An image's dense features (``HW x B x D``) are compared with the positive and the negative class
embeddings; the softmax over positions of the *positive* similarities weighs the difference of
both, scaled by the learnt ``exp(temperature)``. The loss (ASL over the known labels) sees the
local logits only; the global (attention-pool) logits are evaluated and saved beside them.
"""
from __future__ import annotations

import functools
import logging
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from taidpt.clip import dense_image_features, tokenize
from taidpt.engine.optim import build_lr_scheduler, build_optimizer
from taidpt.engine.registry import TRAINER_REGISTRY
from taidpt.engine.trainer import SimpleTrainer
from taidpt.losses import known_label_loss
from taidpt.models import PromptContext, PrecisionStep, TwoContextModel, check_precision, load_backbone
from taidpt.models.image_feature_cache import FeatureCacheEvaluation

logger = logging.getLogger(__name__)

TEMPERATURE_INIT = 3.91  # logit scale exp(3.91) ~ 50
SPATIAL_T_INIT = 3.0  # spatial temperature exp(3) ~ 20
LOSSES = ("asl", "fewshot")


class DualPromptLearner(PromptContext):
    """Positive ``ctx`` and negative ``ctx_neg`` contexts (``M x W``, or ``C x M x W`` with
    ``csc``) and the learnt scalars ``temperature`` and ``spatial_T``.

    State dict: ``ctx``, ``ctx_neg``, ``temperature``, ``spatial_T``, ``token_prefix``,
    ``token_suffix``, ``token_suffix_nocls`` (the suffix of ``"X ... X."``, kept for the
    reference's checkpoint layout).
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 16,
                 csc: bool = False, ctx_init: str = "", class_token_position: str = "end") -> None:
        super().__init__(clip_model, classnames, n_ctx, ctx_init, class_token_position)
        self.ctx = nn.Parameter(self.initial_context(csc))
        self.ctx_neg = nn.Parameter(self.initial_context(csc))
        self.temperature = nn.Parameter(torch.tensor(TEMPERATURE_INIT, dtype=self.dtype))
        self.spatial_T = nn.Parameter(torch.tensor(SPATIAL_T_INIT, dtype=self.dtype))
        nocls = self.embed(clip_model, tokenize([f"{self.prompt_prefix}."] * self.n_cls,
                                                self.context_length))
        self.register_buffer("token_suffix_nocls", nocls[:, 1 + self.n_ctx:])


class DualCoOpModel(TwoContextModel):
    """Frozen CLIP + :class:`DualPromptLearner`; :meth:`class_embeddings` gives (positive ``G+``,
    negative ``G-``), ``C x D`` each."""

    context_names = ("ctx", "ctx_neg")

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 16,
                 csc: bool = False, ctx_init: str = "", class_token_position: str = "end") -> None:
        super().__init__(clip_model, DualPromptLearner(clip_model, classnames, n_ctx, csc, ctx_init,
                                                       class_token_position))

    @classmethod
    def from_cfg(cls, cfg: CN, clip_model: nn.Module, classnames: Sequence[str]) -> "DualCoOpModel":
        c = cfg.TRAINER.DUALCOOP
        return cls(clip_model, classnames, c.N_CTX, c.CSC, c.CTX_INIT, c.CLASS_TOKEN_POSITION)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``B x 3 x H x W`` -> (global ``B x D``, dense ``HW x B x D``), not normalised."""
        return dense_image_features(self.clip, images)

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Images ``B x 3 x H x W`` -> ``{"local": B x C, "global": B x C}`` logits (SPEC 7)."""
        return self.logits(*self.image_features(images))

    def logits(self, global_feat: torch.Tensor, dense: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Global ``B x D`` and dense ``HW x B x D`` features -> ``{"local", "global"}`` ``B x C``."""
        global_feat, dense = F.normalize(global_feat, dim=-1), F.normalize(dense, dim=-1)
        pos, neg = self.class_embeddings()
        scale = self.prompt_learner.temperature.exp()  # T
        tau = self.prompt_learner.spatial_T.exp()
        cos_pos, cos_neg = dense @ pos.t(), dense @ neg.t()  # HW x B x C
        weights = F.softmax(tau * cos_pos, dim=0)  # the positive weights serve both branches
        local = scale * (weights * (cos_pos - cos_neg)).sum(dim=0)
        global_logits = scale * (global_feat @ pos.t() - global_feat @ neg.t())
        return {"local": local, "global": global_logits}


def dualcoop_loss(name: str, logits: Dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Labels ``B x C`` in {1, 0 unknown, -1}. ``asl``: ASL of the local logits over the known
    labels (SPEC 7); ``fewshot``: BCE of the global + BCE of the local logits, known labels only."""
    if name == "asl":
        return known_label_loss("asl", logits["local"], labels)
    if name == "fewshot":
        return (known_label_loss("bce", logits["global"], labels)
                + known_label_loss("bce", logits["local"], labels))
    raise ValueError(f"TRAINER.DUALCOOP.LOSS must be one of {', '.join(LOSSES)}, got {name!r}")


@TRAINER_REGISTRY.register(aliases=("Caption_dual",))
class DualCoOp(FeatureCacheEvaluation, SimpleTrainer):
    """Trains both prompts on the dataset's (partially) labelled training images; reports the local
    mAP (``mAP`` = ``mAP_local``) beside the global one."""

    ignored_checkpoint_keys = ("token_prefix", "token_suffix", "token_suffix_nocls")
    reference_key_aliases = {  # the reference's keys for Caption_dual -> ours
        "TRAINER.Caption.N_CTX": "TRAINER.DUALCOOP.N_CTX",
        "TRAINER.Caption.CSC": "TRAINER.DUALCOOP.CSC",
        "TRAINER.Caption.CTX_INIT": "TRAINER.DUALCOOP.CTX_INIT",
        "TRAINER.Caption.PREC": "TRAINER.DUALCOOP.PREC",
        "TRAINER.Caption.CLASS_TOKEN_POSITION": "TRAINER.DUALCOOP.CLASS_TOKEN_POSITION",
        "TRAIN.LOSSFUNC": "TRAINER.DUALCOOP.LOSS",
    }

    @staticmethod
    def extend_cfg(cfg: CN) -> None:
        cfg.TRAINER.DUALCOOP = CN()
        c = cfg.TRAINER.DUALCOOP
        c.N_CTX = 16  # context vectors per prompt (ignored with CTX_INIT)
        c.CSC = False  # class-specific contexts (the reference's scripts: True)
        c.CTX_INIT = ""  # words initialising both contexts, e.g. "a photo of a"
        c.CLASS_TOKEN_POSITION = "end"  # end (the reference's only one), middle or front
        c.PREC = "fp32"  # fp32, fp16 or amp
        c.LOSS = "asl"  # asl (local logits) or fewshot (BCE on global + local)

    def check_cfg(self, cfg: CN) -> None:
        check_precision(cfg.TRAINER.DUALCOOP.PREC, "TRAINER.DUALCOOP.PREC")
        if cfg.TRAINER.DUALCOOP.LOSS not in LOSSES:
            raise ValueError(f"TRAINER.DUALCOOP.LOSS (reference: TRAIN.LOSSFUNC) must be one of "
                             f"{', '.join(LOSSES)}, got {cfg.TRAINER.DUALCOOP.LOSS!r}")

    def headline(self) -> str:
        return "local"

    @functools.cached_property
    def clip_model(self) -> nn.Module:
        """CLIP from ``MODEL.BACKBONE.PATH`` (or ``NAME``), in the precision of ``PREC``."""
        return load_backbone(self.cfg, self.cfg.TRAINER.DUALCOOP.PREC)

    def build_model(self) -> None:
        cfg = self.cfg
        logger.info("Building DualCoOp for %d classes", self.num_classes)
        self.model = DualCoOpModel.from_cfg(cfg, self.clip_model, self.classnames).to(self.device)
        learner = self.model.prompt_learner
        self.optim = build_optimizer(learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", learner, self.optim, self.sched)
        self.precision = PrecisionStep(cfg.TRAINER.DUALCOOP.PREC, self.device)

    def before_train(self) -> None:
        if self.train_loader_x is None:
            raise RuntimeError(
                f"DualCoOp trains on labelled images, and dataset {self.cfg.DATASET.NAME} reads "
                f"none because DATASET.CAPTIONS.SOURCE is {self.cfg.DATASET.CAPTIONS.SOURCE!r}: "
                'set it to "" (configs/datasets/*_partial.yaml do) or pass --eval-only.')
        super().before_train()

    def forward_backward(self, batch: dict) -> dict:
        images, labels = self.parse_batch_train(batch)
        with self.precision.autocast():
            loss = dualcoop_loss(self.cfg.TRAINER.DUALCOOP.LOSS, self.model(images), labels)
        self.precision.backward_and_update(self, loss, [self.optim])
        return {"loss": loss.item()}

    def features_inference(self, global_feat: torch.Tensor,
                           dense: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.model.logits(global_feat, dense)

    def batch_mean_loss(self) -> bool:
        """``asl`` sums over the known labels / B; ``fewshot``'s BCE divides by the known count."""
        return self.cfg.TRAINER.DUALCOOP.LOSS == "asl"

    def test(self, split: Optional[str] = None) -> dict:
        """Evaluate with the class embeddings computed once."""
        with self.model.cached_prompts():
            return super().test(split)
