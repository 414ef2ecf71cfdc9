"""taidpt.models: backbone loading from the config and the precision step."""
import pytest
import torch

from taidpt.config import setup_cfg
from taidpt.models import PrecisionStep, backbone_context_length, check_precision, load_backbone


class _Recorder:
    """The trainer methods PrecisionStep calls."""

    def __init__(self, param):
        self.param, self.calls = param, []

    def model_backward_and_update(self, loss, names=None):
        self.calls.append("plain")
        loss.backward()

    def model_zero_grad(self, names=None):
        self.calls.append("zero_grad")

    def detect_anomaly(self, loss):
        self.calls.append("anomaly")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plain_precisions_take_the_trainers_update(precision):
    step = PrecisionStep(precision, torch.device("cpu"))
    param = torch.nn.Parameter(torch.ones(3))
    trainer = _Recorder(param)
    with step.autocast():
        loss = (param * 2).sum()
    step.backward_and_update(trainer, loss, [])
    assert trainer.calls == ["plain"] and step.scaler is None
    assert torch.equal(param.grad, torch.full((3,), 2.0))


def test_amp_autocasts_on_cpu_without_a_scaler():
    step = PrecisionStep("amp", torch.device("cpu"))
    a = torch.randn(4, 4)
    with step.autocast():
        product = a @ a
    assert product.dtype == torch.bfloat16 and step.scaler is None
    with PrecisionStep("fp32", torch.device("cpu")).autocast():
        assert (a @ a).dtype == torch.float32


def test_check_precision_names_the_key():
    check_precision("amp", "TRAINER.X.PREC")
    with pytest.raises(ValueError, match="TRAINER.X.PREC must be one of fp32, fp16, amp"):
        check_precision("bf16", "TRAINER.X.PREC")


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("fp16", torch.float16)])
def test_load_backbone_reads_the_path_in_the_precision(tiny_clip_file, precision, dtype):
    cfg = setup_cfg(opts=["MODEL.BACKBONE.PATH", tiny_clip_file])
    model = load_backbone(cfg, precision)
    assert model.visual.conv1.weight.dtype == dtype and not model.training
    assert backbone_context_length(cfg) == model.context_length


def test_two_context_model_keeps_clip_frozen_and_caches_within_the_block():
    from taidpt.clip import random_clip
    from taidpt.models import TwoContextModel
    from taidpt.trainers.dualcoop import DualPromptLearner

    class Model(TwoContextModel):
        context_names = ("ctx", "ctx_neg")

    clip_model = random_clip("tiny", seed=0)
    model = Model(clip_model, DualPromptLearner(clip_model, ["cat", "dog"], n_ctx=4))
    model.train()
    assert model.prompt_learner.training and not model.clip.training
    assert not any(p.requires_grad for p in model.clip.parameters())
    pos, neg = model.class_embeddings()
    assert pos.shape == neg.shape == (2, clip_model.text_projection.shape[1])
    assert not torch.allclose(pos, neg)  # two different contexts
    with model.cached_prompts():
        cached = model.class_embeddings()
        assert cached[0] is model.class_embeddings()[0]
    assert model._cached_embeddings is None
    assert torch.allclose(cached[0], pos)
