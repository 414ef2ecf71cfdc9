"""TaI-DPT's prompts and model (SPEC 1-3) against independent loop-based re-computations."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import taidpt.trainers.taidpt as taidpt_module
from taidpt.clip import random_clip, tokenize
from taidpt.config import get_cfg_default
from taidpt.datasets.base import DATASET_REGISTRY, DatasetBase, ImageItem
from taidpt.engine.checkpoint import save_checkpoint
from taidpt.engine.optim import build_optimizer
from taidpt.engine.registry import TRAINER_REGISTRY
from taidpt.engine.trainer import TrainerBase
from taidpt.losses import double_loss
from taidpt.models.spatial import spatial_pool
from taidpt.trainers.taidpt import DoublePromptLearner, TaIDPT, TaIDPTModel, padding_mask

CLASSES = ["cat", "hot dog", "person"]
CAPTIONS = ["a cat sits next to a person !~", "two people eat a hot dog at the beach",
            "a photo of a cat"]
STATE_KEYS = ["ctx", "ctx_double", "temperature", "spatial_T", "ranking_scale", "token_prefix",
              "token_suffix", "token_suffix_nocls"]


@pytest.fixture(scope="module")
def clip_model():
    return random_clip("tiny", seed=0)


def _model(clip_model, classnames=CLASSES, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = TaIDPTModel(clip_model, classnames, **{"n_ctx": 4, **kwargs})
    with torch.no_grad():  # contexts far from their init make the comparisons meaningful
        for p in (model.prompt_learner.ctx, model.prompt_learner.ctx_double):
            p.normal_(std=0.5)
    return model


def _tokens(clip_model, texts=CAPTIONS):
    return tokenize(texts, clip_model.context_length)


# --- loop-based re-computations with the plain CLIP modules ----------------------------------
def _text_sequence(clip_model, embeddings):
    """One sequence ``L x W`` of token embeddings -> ``L x D`` via the stock transformer."""
    x = embeddings + clip_model.positional_embedding
    x = clip_model.transformer(x.unsqueeze(1)).squeeze(1)
    return clip_model.ln_final(x) @ clip_model.text_projection


def _class_embedding(clip_model, ctx, classname, n_ctx):
    tokens = tokenize([" ".join(["X"] * n_ctx) + f" {classname}."], clip_model.context_length)[0]
    emb = clip_model.token_embedding(tokens).clone()
    emb[1:1 + n_ctx] = ctx
    return _text_sequence(clip_model, emb)[int(tokens.argmax())].double()


def _cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def _pool(sims, tau, scale):
    top = max(sims)
    weights = [math.exp(tau * (s - top)) for s in sims]
    total = sum(weights)
    return sum(w / total * scale * s for w, s in zip(weights, sims))


def _class_embeddings_loop(clip_model, model, classnames):
    learner = model.prompt_learner
    ctxs = []
    for ctx in (learner.ctx, learner.ctx_double):
        rows = [ctx[i] if ctx.dim() == 3 else ctx for i in range(len(classnames))]
        ctxs.append([_class_embedding(clip_model, row, name, learner.n_ctx)
                     for row, name in zip(rows, classnames)])
    return ctxs


def _scales(model, fixed_tau):
    learner = model.prompt_learner
    scale = float(learner.temperature.detach().exp()) if model.learn_scale else 4.0
    tau = float(learner.spatial_T.detach().exp()) if model.learn_spatial_scale else fixed_tau
    return scale, tau


@torch.no_grad()
def text_logits_loop(clip_model, model, tokens, classnames):
    """SPEC 2, one caption, class and token at a time (full 77-style length, no cutting)."""
    g_emb, l_emb = _class_embeddings_loop(clip_model, model, classnames)
    scale, tau = _scales(model, model.spatial_scale_text)
    out_g = torch.zeros(len(tokens), len(classnames), dtype=torch.float64)
    out_l = torch.zeros_like(out_g)
    for b, caption in enumerate(tokens):
        seq = _text_sequence(clip_model, clip_model.token_embedding(caption)).double()
        eos = int(caption.argmax())
        for c in range(len(classnames)):
            out_g[b, c] = scale * _cos(seq[eos], g_emb[c])
            sims = [_cos(seq[t], l_emb[c]) + (-10000.0 if int(caption[t]) == 0 else 0.0)
                    for t in range(len(caption))]
            out_l[b, c] = _pool(sims, tau, scale)
    return out_g, out_l


@torch.no_grad()
def image_logits_loop(clip_model, model, images, classnames):
    """SPEC 3, one image, class and position at a time."""
    v = clip_model.visual
    x = v.relu1(v.bn1(v.conv1(images)))
    x = v.relu2(v.bn2(v.conv2(x)))
    x = v.avgpool(v.relu3(v.bn3(v.conv3(x))))
    fmap = v.layer4(v.layer3(v.layer2(v.layer1(x))))
    pool = v.attnpool
    g_emb, l_emb = _class_embeddings_loop(clip_model, model, classnames)
    scale, tau = _scales(model, model.spatial_scale_image)
    out_g = torch.zeros(len(images), len(classnames), dtype=torch.float64)
    out_l = torch.zeros_like(out_g)
    heads, width = pool.num_heads, fmap.shape[1]
    dim = width // heads
    for b in range(len(images)):
        feats = fmap[b].flatten(1).t()  # HW x C_v
        tokens = torch.cat([feats.mean(0, keepdim=True), feats])  # no positional embedding
        q, k, val = pool.q_proj(tokens[0]), pool.k_proj(tokens), pool.v_proj(tokens)
        pooled = []
        for h in range(heads):
            part = slice(h * dim, (h + 1) * dim)
            att = torch.softmax(k[:, part] @ q[part] / math.sqrt(dim), dim=0)
            pooled.append(att @ val[:, part])
        global_feat = pool.c_proj(torch.cat(pooled)).double()
        dense = [pool.c_proj(pool.v_proj(f)).double() for f in feats]
        for c in range(len(classnames)):
            out_g[b, c] = scale * _cos(global_feat, g_emb[c])
            out_l[b, c] = _pool([_cos(f, l_emb[c]) for f in dense], tau, scale)
    return out_g, out_l


# --- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry,size,dim", [("tiny", 64, 128), ("tiny-vit", 32, 64)])
def test_shapes(geometry, size, dim):
    clip_model = random_clip(geometry)
    model = _model(clip_model)
    tokens = _tokens(clip_model)
    eos, seq = model.caption_features(tokens)
    last = int(tokens.argmax(-1).max()) + 1
    assert eos.shape == (3, dim) and seq.shape == (3, last, dim) and last < tokens.shape[1]
    g, l = model.class_embeddings()
    assert g.shape == l.shape == (3, dim)
    assert torch.allclose(g.norm(dim=-1), torch.ones(3)) and torch.allclose(l.norm(dim=-1), torch.ones(3))
    outputs = [(3, out) for out in model.forward_text(tokens)]  # 3 captions
    outputs += [(2, out) for out in model.forward_image(torch.randn(2, 3, size, size))]  # 2 images
    for batch, out in outputs:
        assert out.shape == (batch, 3) and torch.isfinite(out).all()


def test_state_dict_keys_and_trainable_parameters(clip_model):
    model = _model(clip_model)
    assert list(model.prompt_learner.state_dict()) == STATE_KEYS
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_learner.ctx", "prompt_learner.ctx_double"]
    learner = model.prompt_learner
    scalars = (learner.temperature, learner.spatial_T, learner.ranking_scale)
    assert [float(p) for p in scalars] == [3.0, 3.0, 4.0]


def test_padding_gets_exactly_zero_spatial_weight(clip_model):
    model = _model(clip_model)
    tokens = _tokens(clip_model)
    _, seq = model.caption_features(tokens)
    tokens = tokens[:, :seq.shape[1]]
    _, local = model.class_embeddings()
    similarity = F.normalize(seq, dim=-1).permute(1, 0, 2) @ local.t()
    _, weights = spatial_pool(similarity + padding_mask(tokens, similarity.dtype), 50.0, 4.0)
    padded = (tokens == 0).t()  # L x B; with the first caption's "!" (id 0 before "~")
    assert int(padded[:, 0].sum()) == 1 + (seq.shape[1] - 1 - int(tokens[0].argmax()))
    assert (weights[padded] == 0).all()
    batch = torch.arange(len(tokens))
    assert (weights[0] > 0).all()  # SOS
    assert (weights[tokens.argmax(-1), batch] > 0).all()  # EOS
    assert torch.allclose(weights.sum(0), torch.ones(3, 3))


# With LEARN_SCALE the scale is exp(3) ~ 20: logits reach ~12, where the fp32 spacing is ~1e-6.
# Without it logits reach ~3.2 (spacing 2.4e-7); the prompts cut at their EOS (the loop runs all
# positions) change the fp32 summation order: measured 1.19e-6 on the local logits.
@pytest.mark.parametrize("csc,learn_scale,learn_spatial,tolerance", [(False, False, False, 2e-6),
                                                                     (True, True, True, 1e-5)])
def test_forward_text_matches_loop(clip_model, csc, learn_scale, learn_spatial, tolerance):
    model = _model(clip_model, csc=csc, learn_scale=learn_scale, learn_spatial_scale=learn_spatial)
    tokens = _tokens(clip_model)
    with torch.no_grad():
        g, l = model.forward_text(tokens)
    ref_g, ref_l = text_logits_loop(clip_model, model, tokens, CLASSES)
    assert (g.double() - ref_g).abs().max() <= tolerance
    assert (l.double() - ref_l).abs().max() <= tolerance


@pytest.mark.parametrize("size,tau", [(64, 40.0), (96, 4.0)])
def test_forward_image_matches_loop(clip_model, size, tau):
    model = _model(clip_model, spatial_scale_image=tau)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        g, l = model.forward_image(images)
    ref_g, ref_l = image_logits_loop(clip_model, model, images, CLASSES)
    assert (g.double() - ref_g).abs().max() <= 1e-6
    assert (l.double() - ref_l).abs().max() <= 1e-6


def test_cutting_after_last_eos_changes_no_logit(clip_model, monkeypatch):
    model = _model(clip_model)
    tokens = _tokens(clip_model)
    with torch.no_grad():
        cut = model.forward_text(tokens)
        monkeypatch.setattr(taidpt_module, "cut_after_last_eos", lambda t: t)
        full = model.forward_text(tokens)
    assert model.caption_features(tokens)[1].shape[1] == tokens.shape[1]
    for a, b in zip(cut, full):
        assert (a - b).abs().max() <= 1e-6


def test_cached_prompts_encode_the_classes_once(clip_model, monkeypatch):
    model = _model(clip_model)
    encode = model.prompt_learner.encode
    calls = []
    monkeypatch.setattr(model.prompt_learner, "encode", lambda *a: calls.append(1) or encode(*a))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        direct = model.forward_image(images)
        with model.cached_prompts():
            cached = [model.forward_image(images) for _ in range(3)]
        assert len(calls) == 2 + 2  # direct call, then once for the whole block
        model.forward_image(images)
    assert len(calls) == 6  # the cache ends with the block
    for logits in cached:
        assert all(torch.equal(a, b) for a, b in zip(direct, logits))


@pytest.mark.parametrize("loss", ["double_ranking", "bce", "asl"])
def test_gradients_reach_only_the_contexts(clip_model, loss):
    model = _model(clip_model)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 1], [1, 0, 0]])
    double_loss(loss, *model.forward_text(_tokens(clip_model)), labels).backward()
    with_grad = [name for name, p in model.named_parameters() if p.grad is not None]
    assert with_grad == ["prompt_learner.ctx", "prompt_learner.ctx_double"]
    assert model.prompt_learner.ctx.grad.abs().sum() > 0
    assert model.prompt_learner.ctx_double.grad.abs().sum() > 0


def test_learnt_scales_get_gradients(clip_model):
    model = _model(clip_model, learn_scale=True, learn_spatial_scale=True)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 1], [1, 0, 0]])
    double_loss("double_ranking", *model.forward_text(_tokens(clip_model)), labels).backward()
    learner = model.prompt_learner
    assert learner.temperature.grad is not None and learner.spatial_T.grad is not None
    assert learner.ranking_scale.grad is None


def test_clip_unchanged_after_an_sgd_step(clip_model):
    model = _model(clip_model)
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    ctx_before = model.prompt_learner.ctx.detach().clone()
    cfg = get_cfg_default()
    cfg.OPTIM.LR, cfg.OPTIM.WEIGHT_DECAY = 0.1, 5e-4
    optim = build_optimizer(model.prompt_learner, cfg.OPTIM)
    model.train()
    assert not model.clip.training and model.prompt_learner.training
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 1], [1, 0, 0]])
    global_img, local_img = model.forward_image(torch.randn(2, 3, 64, 64))  # BN in eval mode
    loss = double_loss("double_ranking", *model.forward_text(_tokens(clip_model)), labels)
    (loss + 0 * (global_img.sum() + local_img.sum())).backward()
    optim.step()
    after = model.clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(model.prompt_learner.ctx, ctx_before)


@pytest.mark.parametrize("position,texts", [
    ("end", ["X X X X cat.", "X X X X hot dog."]),
    ("middle", ["X X cat X X.", "X X hot dog X X."]),
    ("front", ["cat X X X X.", "hot dog X X X X."]),
])
def test_class_token_positions(clip_model, position, texts):
    learner = DoublePromptLearner(clip_model, ["cat", "hot_dog"], n_ctx=4, class_token_position=position)
    expected = tokenize(texts, clip_model.context_length)
    assert torch.equal(learner.layout_tokens, expected)
    ctx = torch.randn(4, 64)
    expected_emb = clip_model.token_embedding(expected).detach().clone()
    placeholder = int(tokenize("X")[0, 1])
    for c in range(2):
        expected_emb[c, expected[c] == placeholder] = ctx
    assert torch.equal(learner.assemble(ctx), expected_emb)


def test_class_specific_contexts(clip_model):
    learner = DoublePromptLearner(clip_model, CLASSES, n_ctx=4, csc=True)
    assert learner.ctx.shape == learner.ctx_double.shape == (3, 4, 64)
    assert not torch.equal(learner.ctx, learner.ctx_double)
    ctx = torch.randn(3, 4, 64)
    prompts = learner.assemble(ctx)
    for c in range(3):
        assert torch.equal(prompts[c, 1:5], ctx[c])
    assert abs(float(learner.ctx.detach().std()) - 0.02) < 0.005


@pytest.mark.parametrize("csc", [False, True])
def test_ctx_init_words(clip_model, csc):
    learner = DoublePromptLearner(clip_model, ["cat", "hot dog"], n_ctx=16, csc=csc, ctx_init="a_photo_of_a")
    words = clip_model.token_embedding(tokenize("a photo of a", clip_model.context_length))[0, 1:5]
    assert learner.n_ctx == 4
    assert learner.ctx.shape == ((2, 4, 64) if csc else (4, 64))
    assert torch.equal(learner.ctx.expand(2, 4, 64), words.expand(2, 4, 64))
    assert torch.equal(learner.ctx_double, learner.ctx)
    expected = tokenize(["a photo of a cat.", "a photo of a hot dog."], clip_model.context_length)
    assert torch.equal(learner.layout_tokens, expected)
    assert torch.equal(learner.assemble(learner.ctx).detach(), clip_model.token_embedding(expected).detach())


def test_prompt_too_long_is_a_clear_error(clip_model):
    with pytest.raises(ValueError, match="N_CTX"):
        DoublePromptLearner(clip_model, ["cat"], n_ctx=40)


def _load_into(tmp_path, source, target):
    save_checkpoint({"state_dict": source.state_dict(), "epoch": 2, "optimizer": None,
                     "scheduler": None}, str(tmp_path / "prompt_learner"), is_best=False)
    trainer = TrainerBase()
    trainer.ignored_checkpoint_keys = TaIDPT.ignored_checkpoint_keys
    trainer.register_model("prompt_learner", target)
    trainer.load_model(str(tmp_path), epoch=2)


def test_checkpoint_loads_with_other_class_names(clip_model, tmp_path):
    source = _model(clip_model, seed=1).prompt_learner
    target = _model(clip_model, ["car", "hot dog", "bird", "giraffe"], seed=2).prompt_learner
    buffers = {k: v.clone() for k, v in target.named_buffers()}
    _load_into(tmp_path, source, target)
    assert torch.equal(target.ctx, source.ctx) and torch.equal(target.ctx_double, source.ctx_double)
    assert all(torch.equal(v, buffers[k]) for k, v in target.named_buffers())  # own class names


@pytest.mark.parametrize("target_kwargs", [{"n_ctx": 8}, {"csc": True}])
def test_checkpoint_context_mismatch_is_a_clear_error(clip_model, tmp_path, target_kwargs):
    source = _model(clip_model).prompt_learner
    target = _model(clip_model, **target_kwargs).prompt_learner
    with pytest.raises(ValueError, match="N_CTX, CSC"):
        _load_into(tmp_path, source, target)


# --- the trainer on a toy caption / image world ----------------------------------------------
if "ToyCaptionWorld" not in DATASET_REGISTRY:
    @DATASET_REGISTRY.register()
    class ToyCaptionWorld(DatasetBase):
        """Three colour classes: 6 test images, captions from a text file."""

        def __init__(self, cfg):
            rng = np.random.default_rng(0)
            items = []
            for i in range(6):
                pixels = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
                pixels[..., i % 3] = 220
                path = os.path.join(cfg.DATASET.ROOT, f"{i}.png")
                Image.fromarray(pixels).save(path)
                label = -np.ones(3, dtype=np.float32)
                label[i % 3] = 1
                items.append(ImageItem(path, label))
            super().__init__(["red", "green", "blue"], test=items,
                             synonyms=[["red", "crimson"], ["green"], ["blue", "navy"]])


def _trainer_cfg(tmp_path):
    (tmp_path / "data").mkdir(exist_ok=True)
    captions = ["a red ball", "a crimson car and a green tree", "the blue sky", "navy and red",
                "green grass", "a blue and green flag", "red apples", "a navy coat"] * 4
    (tmp_path / "data" / "captions.txt").write_text("\n".join(captions) + "\n")
    cfg = get_cfg_default()
    cfg.merge_from_list([
        "DATASET.NAME", "ToyCaptionWorld", "DATASET.ROOT", str(tmp_path / "data"),
        "DATASET.CAPTIONS.SOURCE", "text", "DATASET.CAPTIONS.PATH", "captions.txt",
        "TRAINER.NAME", "Caption_distill_double", "OUTPUT_DIR", str(tmp_path / "out"),
        "MODEL.BACKBONE.PATH", str(tmp_path / "clip.pt"), "INPUT.SIZE", (64, 64),
        "DATALOADER.NUM_WORKERS", 0, "DATALOADER.TRAIN_X.BATCH_SIZE", 16, "USE_CUDA", False,
        "OPTIM.LR", 0.01, "OPTIM.MAX_EPOCH", 2, "SEED", 1, "TRAINER.TAIDPT.N_CTX", 4])
    return cfg


@pytest.mark.slow  # ~10 s idle, more on a busy machine
def test_trainer_trains_saves_and_reloads(tiny_clip_file, tmp_path):
    from taidpt.engine import build_trainer

    os.symlink(tiny_clip_file, tmp_path / "clip.pt")
    cfg = _trainer_cfg(tmp_path)
    assert TRAINER_REGISTRY.get(cfg.TRAINER.NAME) is TaIDPT
    trainer = build_trainer(cfg)
    assert len(trainer.build_caption_loader()) == (32 + 3 * 89) // 16  # incomplete batch dropped
    start = trainer.model.prompt_learner.ctx.detach().clone()
    trainer.train()
    checkpoint = torch.load(tmp_path / "out" / "prompt_learner" / "model.pth.tar-2", weights_only=False)
    assert list(checkpoint["state_dict"]) == STATE_KEYS
    assert not torch.equal(trainer.model.prompt_learner.ctx, start)
    results = trainer.test()
    assert {"mAP", "mAP_global", "mAP_local", "mAP_merged"} <= set(results)

    fresh = build_trainer(cfg)
    fresh.load_model(cfg.OUTPUT_DIR, epoch=2)
    assert fresh.test() == pytest.approx(results, abs=1e-6)
