"""Prompts cut at their EOS (issue 13 item 2): the 2C TaI-DPT prompts run only up to the longest
prompt's EOS and give the class embeddings of the full-length (reference) encoding."""
import pytest
import torch
import torch.nn.functional as F

import taidpt.clip.features as features
from taidpt.clip import random_clip
from taidpt.trainers.taidpt import TaIDPTModel
from test_coop_ml import clip_in

CLASSES = ["cat", "hot dog", "traffic light", "person"]


@pytest.fixture(scope="module")
def clip_model():
    return random_clip("tiny", seed=0)


def _full_length(model):
    learner = model.prompt_learner
    return tuple(F.normalize(learner.encode(model.clip, ctx, cut_at_eos=False), dim=-1)
                 for ctx in (learner.ctx, learner.ctx_double))


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("position,csc", [("end", False), ("middle", True), ("front", False)])
def test_class_embeddings_cut_at_eos_equal_the_full_length(clip_model, dtype, tolerance, position,
                                                           csc, monkeypatch):
    torch.manual_seed(0)
    model = TaIDPTModel(clip_in(clip_model, dtype, monkeypatch), CLASSES, n_ctx=4, csc=csc,
                        class_token_position=position)
    with torch.no_grad():
        for p in (model.prompt_learner.ctx, model.prompt_learner.ctx_double):
            p.normal_(std=0.5)
    lengths = []
    transformer = features._text_transformer
    monkeypatch.setattr(features, "_text_transformer",
                        lambda m, x: lengths.append(x.shape[1]) or transformer(m, x))
    with torch.no_grad():
        cut = model.class_embeddings()
    # "traffic light" is the longest prompt: SOS, 4 context vectors, 2 name tokens, '.', EOS.
    assert lengths == [1 + 4 + 2 + 1 + 1] * 2 and lengths[0] < clip_model.context_length
    with torch.no_grad():
        full = _full_length(model)
    assert lengths[2:] == [clip_model.context_length] * 2
    for a, b in zip(cut, full):
        assert a.dtype == dtype and a.shape == (len(CLASSES), clip_model.text_projection.shape[1])
        assert (a - b).abs().max() <= tolerance


def test_gradients_through_the_cut_prompts_equal_the_full_length(clip_model, monkeypatch):
    torch.manual_seed(0)
    model = TaIDPTModel(clip_in(clip_model, torch.float64, monkeypatch), CLASSES, n_ctx=4)
    weights = torch.randn(2, len(CLASSES), clip_model.text_projection.shape[1], dtype=torch.float64)
    grads = []
    for embeddings in (model.class_embeddings, lambda: _full_length(model)):
        learner = model.prompt_learner
        learner.zero_grad()
        g, l = embeddings()
        ((g * weights[0]).sum() + (l * weights[1]).sum()).backward()
        grads.append((learner.ctx.grad.clone(), learner.ctx_double.grad.clone()))
    for cut, full in zip(*grads):
        assert cut.abs().max() > 0
        assert (cut - full).abs().max() <= 1e-12
