"""CoCoOpML: per-image prompts, the exact cut after EOS, and logits against a loop over images."""
import pytest
import torch
import torch.nn.functional as F

from taidpt.clip import random_clip, tokenize
from taidpt.models import ContextPrompts
from taidpt.trainers.cocoop_ml import CoCoOpMLModel
from test_coop_ml import clip_in, prompt_text, stock_prompt_feature

CLASSES = ["cat", "hot dog", "person", "traffic light"]


@pytest.fixture(scope="module")
def clip_model():
    return random_clip("tiny", seed=0)


def _cocoop(clip_model, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = CoCoOpMLModel(clip_model, CLASSES, **kwargs)
    with torch.no_grad():  # a context and meta-net far from their init
        for p in model.prompt_learner.parameters():
            p.normal_(std=0.5)
    return model


def _images(n=3, size=64, seed=0):
    """Noise images of different brightness (random CLIP features of plain noise are alike)."""
    noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return noise + torch.linspace(-2, 2, n)[:, None, None, None]


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("position", ["end", "front"])
def test_cut_at_eos_equals_the_full_length(clip_model, dtype, tolerance, position, monkeypatch):
    clip_model = clip_in(clip_model, dtype, monkeypatch)
    learner = ContextPrompts(clip_model, CLASSES, n_ctx=4, class_token_position=position)
    assert learner.eos_length == 1 + 4 + 2 + 1 + 1 < clip_model.context_length  # traffic light .
    generic = torch.randn(4, 64, dtype=dtype)
    per_image = generic + torch.randn(3, 1, 1, 64, dtype=dtype)  # B x 1 x M x W
    with torch.no_grad():
        for ctx, shape in ((generic, (4, 128)), (per_image, (3, 4, 128))):
            full = F.normalize(learner.encode(clip_model, ctx, cut_at_eos=False), dim=-1)
            cut = F.normalize(learner.encode(clip_model, ctx, cut_at_eos=True), dim=-1)
            assert full.shape == cut.shape == shape
            assert (full - cut).abs().max() <= tolerance


def test_per_image_prompts_are_the_context_plus_each_bias(clip_model):
    learner = ContextPrompts(clip_model, CLASSES, n_ctx=4, class_token_position="middle")
    ctx = torch.randn(4, 64)
    bias = torch.randn(3, 64)
    prompts = learner.assemble(ctx + bias[:, None, None, :])
    assert prompts.shape == (3, 4, clip_model.context_length, 64)
    for b in range(3):
        assert torch.equal(prompts[b], learner.assemble(ctx + bias[b]))
    short = learner.assemble(ctx + bias[:, None, None, :], learner.eos_length)
    assert torch.equal(short, prompts[:, :, :learner.eos_length])


@torch.no_grad()
def cocoop_logits_loop(clip_model, model, images):
    """One image at a time: ``pi = meta_net(f)``, prompts ``ctx + pi`` at full length through
    the stock transformer, ``exp(logit_scale) * cos``."""
    learner = model.prompt_learner
    out = torch.zeros(len(images), len(CLASSES), dtype=images.dtype)
    for b, image in enumerate(images):
        f = F.normalize(clip_model.encode_image(image[None]), dim=-1)[0]
        ctx = learner.ctx + learner.meta_net(f)
        for c, name in enumerate(CLASSES):
            g = stock_prompt_feature(clip_model, prompt_text(name, 4), ctx)
            out[b, c] = clip_model.logit_scale.exp() * f @ F.normalize(g, dim=-1)
    return out


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_logits_equal_a_loop_over_images(clip_model, dtype, tolerance, monkeypatch):
    clip_model = clip_in(clip_model, dtype, monkeypatch)
    model = _cocoop(clip_model, n_ctx=4, ctx_init="")
    images = _images().to(dtype)
    with torch.no_grad():
        logits = model(images)
    expected = cocoop_logits_loop(clip_model, model, images)
    assert logits.shape == (3, 4)
    assert (logits - expected).abs().max() <= tolerance
    with torch.no_grad():
        g = model.class_embeddings(model.image_features(images))
    assert (g[0] - g[1]).abs().max() > 1e-3  # the prompts depend on the image (noise: 1e-7)


def test_meta_net_shapes_and_state_dict(clip_model):
    model = CoCoOpMLModel(clip_model, CLASSES)
    learner = model.prompt_learner
    assert learner.n_ctx == 4 and learner.ctx.shape == (4, 64)  # "a photo of a"
    words = clip_model.token_embedding(tokenize("a photo of a", clip_model.context_length))[0, 1:5]
    assert torch.equal(learner.ctx, words)
    net = learner.meta_net
    assert (net.linear1.in_features, net.linear1.out_features) == (128, 128 // 16)
    assert (net.linear2.in_features, net.linear2.out_features) == (128 // 16, 64)
    assert list(learner.state_dict()) == [
        "ctx", "token_prefix", "token_suffix", "meta_net.linear1.weight", "meta_net.linear1.bias",
        "meta_net.linear2.weight", "meta_net.linear2.bias"]
