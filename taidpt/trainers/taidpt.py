"""TaI-DPT (Guo et al., CVPR 2023): double-grained prompts trained on captions, tested on images.

Two learnable contexts give class embeddings ``G`` (global, ``ctx``) and ``L`` (local,
``ctx_double``). Training treats a caption as an image (SPEC 2): its EOS feature plays the image
feature, its per-token features the dense features. Testing uses the ResNet attention pool
without positional embedding and the dense ``c_proj(v_proj(F))`` features (SPEC 3).

Scales follow the reference: the logit scale is the constant 4.0 unless ``LEARN_SCALE`` (then
``exp(temperature)``); the spatial temperature is ``SPATIAL_SCALE_TEXT`` / ``SPATIAL_SCALE_IMAGE``
unless ``LEARN_SPATIAL_SCALE`` (then ``exp(spatial_T)`` on both sides). ``ranking_scale`` is kept
in the state dict for checkpoint compatibility only.
"""
from __future__ import annotations

import functools
import logging
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from yacs.config import CfgNode as CN

from taidpt.clip import dense_image_features, text_sequence_features, tokenize
from taidpt.datasets._common import cache_root
from taidpt.datasets.captions import build_caption_corpus
from taidpt.engine.data import seeded_generator
from taidpt.engine.optim import build_lr_scheduler, build_optimizer
from taidpt.engine.registry import TRAINER_REGISTRY
from taidpt.engine.trainer import SimpleTrainer
from taidpt.losses import REFERENCE_LOSSES, double_loss
from taidpt.models import (PromptContext, PrecisionStep, Scale, TwoContextModel, check_precision,
                           load_backbone, spatial_pool)
from taidpt.models.feature_cache import CaptionFeatureDataset, caption_feature_cache
from taidpt.models.image_feature_cache import FeatureCacheEvaluation
from taidpt.models.modality_gap import (ModalityGap, add_modality_gap_cfg, build_modality_gap,
                                        modality_gap_active)
from taidpt.models.prototypes import HEADLINE, CaptionPrototypes, add_prototype_cfg

logger = logging.getLogger(__name__)

FIXED_LOGIT_SCALE = 4.0
PADDING_LOGIT = -10000.0  # added to the local similarity of token id 0 (padding, and also '!')


def cut_after_last_eos(tokens: torch.Tensor) -> torch.Tensor:
    """``B x L`` -> ``B x L'``, dropping the positions after the batch's last EOS (exact: the text
    transformer is causal and those positions are padding)."""
    return tokens[:, :int(tokens.argmax(dim=-1).max()) + 1]


def padding_mask(tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Tokens ``B x L`` -> additive mask ``L x B x 1``: ``PADDING_LOGIT`` where the id is 0."""
    return (tokens == 0).t().unsqueeze(-1).to(dtype) * PADDING_LOGIT


class DoublePromptLearner(PromptContext):
    """The two contexts and the reference's scalars.

    State dict: ``ctx``, ``ctx_double`` (``M x W``, or ``C x M x W`` with ``csc``),
    ``temperature`` (3.0), ``spatial_T`` (3.0), ``ranking_scale`` (4.0), ``token_prefix``,
    ``token_suffix`` and ``token_suffix_nocls`` (the suffix of ``"X ... X."``, ``C x (L-1-M) x W``).
    The scalars require grad only when learnt.
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 16,
                 csc: bool = False, ctx_init: str = "", class_token_position: str = "end",
                 learn_scale: bool = False, learn_spatial_scale: bool = False) -> None:
        super().__init__(clip_model, classnames, n_ctx, ctx_init, class_token_position)
        self.ctx = nn.Parameter(self.initial_context(csc))
        self.ctx_double = nn.Parameter(self.initial_context(csc))

        def scalar(value: float, learnt: bool) -> nn.Parameter:
            return nn.Parameter(torch.tensor(value, dtype=self.dtype), requires_grad=learnt)

        self.temperature = scalar(3.0, learn_scale)
        self.spatial_T = scalar(3.0, learn_spatial_scale)
        self.ranking_scale = scalar(4.0, False)
        nocls_tokens = tokenize([f"{self.prompt_prefix}."] * self.n_cls, self.context_length)
        nocls = self.embed(clip_model, nocls_tokens)
        self.register_buffer("token_suffix_nocls", nocls[:, 1 + self.n_ctx:])


class TaIDPTModel(TwoContextModel):
    """Frozen CLIP + :class:`DoublePromptLearner`; :meth:`class_embeddings` gives (global ``G``,
    local ``L``), ``C x D`` each.

    ``forward_text`` scores captions (training, SPEC 2), ``forward_image`` / ``forward`` scores
    images (testing, SPEC 3); both return (global logits ``B x C``, local logits ``B x C``).
    """

    context_names = ("ctx", "ctx_double")

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 16,
                 csc: bool = False, ctx_init: str = "", class_token_position: str = "end",
                 spatial_scale_text: float = 50.0, spatial_scale_image: float = 40.0,
                 learn_scale: bool = False, learn_spatial_scale: bool = False) -> None:
        super().__init__(clip_model, DoublePromptLearner(clip_model, classnames, n_ctx, csc, ctx_init,
                                                         class_token_position, learn_scale,
                                                         learn_spatial_scale))
        self.spatial_scale_text = spatial_scale_text
        self.spatial_scale_image = spatial_scale_image
        self.learn_scale = learn_scale
        self.learn_spatial_scale = learn_spatial_scale
        self.modality_gap: Optional[ModalityGap] = None  # training-time caption feature bridge

    @classmethod
    def from_cfg(cls, cfg: CN, clip_model: nn.Module, classnames: Sequence[str]) -> "TaIDPTModel":
        c = cfg.TRAINER.TAIDPT
        return cls(clip_model, classnames, c.N_CTX, c.CSC, c.CTX_INIT, c.CLASS_TOKEN_POSITION,
                   c.SPATIAL_SCALE_TEXT, c.SPATIAL_SCALE_IMAGE, c.LEARN_SCALE, c.LEARN_SPATIAL_SCALE)

    @property
    def logit_scale(self) -> Scale:
        return self.prompt_learner.temperature.exp() if self.learn_scale else FIXED_LOGIT_SCALE

    def spatial_temperature(self, fixed: float) -> Scale:
        return self.prompt_learner.spatial_T.exp() if self.learn_spatial_scale else fixed

    @torch.no_grad()
    def caption_features(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``B x L`` -> (EOS features ``B x D``, token features ``B x L' x D``), not
        normalised, with ``L'`` = one past the batch's last EOS."""
        tokens = cut_after_last_eos(tokens)
        sequence = text_sequence_features(self.clip, tokens)
        return sequence[torch.arange(len(tokens), device=tokens.device), tokens.argmax(dim=-1)], sequence

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``B x 3 x H x W`` -> (global ``B x D``, dense ``HW x B x D``), not normalised."""
        return dense_image_features(self.clip, images)

    def _logits(self, global_feat: torch.Tensor, dense: torch.Tensor, mask: Optional[torch.Tensor],
                temperature: Scale) -> Tuple[torch.Tensor, torch.Tensor]:
        g, l = self.class_embeddings()
        scale = self.logit_scale
        global_logits = scale * F.normalize(global_feat, dim=-1) @ g.t()
        similarity = F.normalize(dense, dim=-1) @ l.t()
        if mask is not None:
            similarity = similarity + mask
        return global_logits, spatial_pool(similarity, temperature, scale)[0]

    def forward_text(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Captions ``B x L`` -> (global logits, local logits), ``B x C`` each (SPEC 2)."""
        tokens = cut_after_last_eos(tokens)
        return self.forward_caption_features(tokens, *self.caption_features(tokens))

    def forward_caption_features(self, tokens: torch.Tensor, eos: torch.Tensor,
                                 sequence: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Captions from their features (SPEC 2; the caption feature cache): tokens ``B x L'``,
        EOS features ``B x D``, token features ``B x L' x D`` -> (global, local) logits
        ``B x C``. Positions whose token id is 0 are masked, whatever features they hold."""
        if self.modality_gap is not None:
            eos, sequence = self.modality_gap(eos, sequence)
        return self._logits(eos, sequence.permute(1, 0, 2), padding_mask(tokens, sequence.dtype),
                            self.spatial_temperature(self.spatial_scale_text))

    def forward_image(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``B x 3 x H x W`` -> (global logits, local logits), ``B x C`` each (SPEC 3)."""
        return self.image_logits(*self.image_features(images))

    def image_logits(self, global_feat: torch.Tensor,
                     dense: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Global ``B x D`` and dense ``HW x B x D`` image features -> (global, local) logits."""
        return self._logits(global_feat, dense, None,
                            self.spatial_temperature(self.spatial_scale_image))

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.forward_image(images)


@TRAINER_REGISTRY.register(aliases=("Caption_distill_double",))
class TaIDPT(FeatureCacheEvaluation, SimpleTrainer):
    """Trains the prompt learner on a caption corpus; tests on the dataset's images and reports
    global ("TaI"), local and merged ("TaI-DPT") mAP."""

    ignored_checkpoint_keys = ("token_prefix", "token_suffix", "token_suffix_nocls")
    reference_key_aliases = {  # the reference's keys for Caption_distill_double -> ours
        "TRAINER.Caption.N_CTX": "TRAINER.TAIDPT.N_CTX",
        "TRAINER.Caption.CSC": "TRAINER.TAIDPT.CSC",
        "TRAINER.Caption.CTX_INIT": "TRAINER.TAIDPT.CTX_INIT",
        "TRAINER.Caption.PREC": "TRAINER.TAIDPT.PREC",
        "TRAINER.Caption.CLASS_TOKEN_POSITION": "TRAINER.TAIDPT.CLASS_TOKEN_POSITION",
        "TRAINER.Caption.GL_merge_rate": "TRAINER.TAIDPT.GL_MERGE_RATE",
        "TRAIN.LOSSFUNC": "TRAINER.TAIDPT.LOSS",
        "TRAIN.IF_LEARN_SCALE": "TRAINER.TAIDPT.LEARN_SCALE",
        "TRAIN.IF_LEARN_spatial_SCALE": "TRAINER.TAIDPT.LEARN_SPATIAL_SCALE",
        "TRAIN.spatial_SCALE_text": "TRAINER.TAIDPT.SPATIAL_SCALE_TEXT",
        "TRAIN.spatial_SCALE_image": "TRAINER.TAIDPT.SPATIAL_SCALE_IMAGE",
    }
    # Reference keys whose values are translated too: TRAIN.LOSSFUNC names the reference's losses
    # (its "ranking" and "asl" are our "ranking_scale2" and "asl_mean"; see taidpt.losses).
    reference_values = {"TRAIN.LOSSFUNC": REFERENCE_LOSSES}

    @staticmethod
    def extend_cfg(cfg: CN) -> None:
        cfg.TRAINER.TAIDPT = CN()
        c = cfg.TRAINER.TAIDPT
        c.N_CTX = 16  # context vectors per prompt (ignored with CTX_INIT)
        c.CSC = False  # class-specific contexts
        c.CTX_INIT = ""  # words initialising the contexts, e.g. "a photo of a"
        c.CLASS_TOKEN_POSITION = "end"  # end, middle or front
        c.PREC = "fp32"  # fp32, fp16 or amp
        c.GL_MERGE_RATE = 0.5  # test score = r * global + (1 - r) * local
        # double_ranking (the paper's), ranking, bce, asl (sum / B), ranking_scale2, asl_mean
        # (mean over B x C), focal: taidpt.losses.DOUBLE_LOSSES; TRAIN.LOSSFUNC takes the reference's
        c.LOSS = "double_ranking"
        c.SPATIAL_SCALE_TEXT = 50.0  # softmax temperature over caption tokens
        c.SPATIAL_SCALE_IMAGE = 40.0  # softmax temperature over image positions
        c.LEARN_SCALE = False  # logit scale exp(temperature) instead of 4.0
        c.LEARN_SPATIAL_SCALE = False  # spatial temperature exp(spatial_T) instead of the above
        add_modality_gap_cfg(c)  # NOISE_STD, MEAN_SHIFT (taidpt.models.modality_gap)
        add_prototype_cfg(c)  # PROTOTYPES.* (taidpt.models.prototypes)

    def check_cfg(self, cfg: CN) -> None:
        check_precision(cfg.TRAINER.TAIDPT.PREC, "TRAINER.TAIDPT.PREC")

    def merge_rate(self) -> float:
        return self.cfg.TRAINER.TAIDPT.GL_MERGE_RATE

    def headline(self) -> Optional[str]:
        return HEADLINE if self.cfg.TRAINER.TAIDPT.PROTOTYPES.ENABLED else None

    @functools.cached_property
    def clip_model(self) -> nn.Module:
        """CLIP from ``MODEL.BACKBONE.PATH`` (or ``NAME``), in the precision of ``PREC``."""
        return load_backbone(self.cfg, self.cfg.TRAINER.TAIDPT.PREC)

    def before_train(self) -> None:
        """Build the caption loader (only when training: ``--eval-only`` needs no corpus)."""
        self.train_loader_x = self.build_caption_loader()
        c = self.cfg.TRAINER.TAIDPT
        if modality_gap_active(c):
            self.model.modality_gap = build_modality_gap(
                self.cfg, c, self.model, self.train_loader_x.dataset.tokens, self.dataset.train_x,
                self.device)
        super().before_train()

    def build_caption_loader(self) -> DataLoader:
        """Batches of the corpus' cached CLIP features (``DATASET.CAPTIONS.FEATURE_CACHE``) or of
        its tokens; the same seeded shuffle either way."""
        corpus = build_caption_corpus(self.cfg, self.dataset, self.clip_model.context_length)
        dataset, collate = corpus, None
        if self.cfg.DATASET.CAPTIONS.FEATURE_CACHE:
            features = caption_feature_cache(self.cfg, self.clip_model, corpus.tokens,
                                             cache_root(self.cfg), self.device)
            dataset = CaptionFeatureDataset(corpus.tokens, corpus.labels, features)
            collate = dataset.collate
        batch_size = self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        # In-memory tokens / memory-mapped features: worker processes would only add start-up
        # time. Dassl drops the last incomplete training batch.
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                            drop_last=len(corpus) >= batch_size, generator=seeded_generator(self.cfg))
        logger.info("Training on %d captions, %d batches of %d", len(corpus), len(loader), batch_size)
        return loader

    def build_model(self) -> None:
        cfg = self.cfg
        logger.info("Building TaI-DPT for %d classes", self.num_classes)
        self.model = TaIDPTModel.from_cfg(cfg, self.clip_model, self.classnames).to(self.device)
        learner = self.model.prompt_learner
        self.optim = build_optimizer(learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", learner, self.optim, self.sched)
        self.precision = PrecisionStep(cfg.TRAINER.TAIDPT.PREC, self.device)

    def parse_batch_train(self, batch: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        return batch["tokens"].to(self.device), batch["label"].to(self.device)

    def forward_backward(self, batch: dict) -> dict:
        tokens, labels = self.parse_batch_train(batch)
        c = self.cfg.TRAINER.TAIDPT
        with self.precision.autocast():
            if "sequence" in batch:  # cached caption features
                dtype = self.model.clip.dtype
                global_logits, local_logits = self.model.forward_caption_features(
                    tokens, batch["eos"].to(self.device, dtype), batch["sequence"].to(self.device, dtype))
            else:
                global_logits, local_logits = self.model.forward_text(tokens)
            loss = double_loss(c.LOSS, global_logits, local_logits, labels)
        self.precision.backward_and_update(self, loss, [self.optim])
        return {"loss": loss.item()}

    def features_inference(self, global_feat: torch.Tensor, dense: torch.Tensor):
        """(global, local) logits ``B x C``; with ``PROTOTYPES.ENABLED`` the prototype heads."""
        if self.prototypes is None:
            return self.model.image_logits(global_feat, dense)
        return self.prototypes.infer(self.model.image_logits(global_feat, dense), global_feat, dense,
                                     self.model.logit_scale,
                                     self.model.spatial_temperature(self.model.spatial_scale_image),
                                     self.merge_rate())

    @functools.cached_property
    def prototypes(self) -> Optional[CaptionPrototypes]:
        """The caption prototypes of the corpus (``PROTOTYPES.ENABLED``), else None."""
        c = self.cfg.TRAINER.TAIDPT
        if not c.PROTOTYPES.ENABLED:
            return None
        corpus = build_caption_corpus(self.cfg, self.dataset, self.clip_model.context_length)
        return CaptionPrototypes.from_corpus(c, self.clip_model, corpus.tokens,
                                             corpus.labels).to(self.device)

    def test(self, split: Optional[str] = None) -> dict:
        """Evaluate with the class embeddings computed once."""
        with self.model.cached_prompts():
            return super().test(split)
