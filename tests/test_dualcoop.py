"""DualCoOp (reference ``Caption_dual``, SPEC 7) against loop-based re-computations of the spec."""
import copy
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip import model as openai_clip_model

import train
from fake_data import write_fake_coco, write_fake_nuswide, write_fake_voc, write_voc_partial
from taidpt.clip import random_clip, tokenize
from taidpt.config import get_cfg_default, setup_cfg
from taidpt.engine.checkpoint import save_checkpoint
from taidpt.engine.data import build_train_transform
from taidpt.engine.optim import build_lr_scheduler, build_optimizer
from taidpt.engine.registry import TRAINER_REGISTRY
from taidpt.engine.trainer import TrainerBase
from taidpt.losses import asl_loss, known_label_loss
from taidpt.trainers.dualcoop import DualCoOp, DualCoOpModel, dualcoop_loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["cat", "hot dog", "person"]
STATE_KEYS = ["ctx", "ctx_neg", "temperature", "spatial_T", "token_prefix", "token_suffix",
              "token_suffix_nocls"]
PARAMETERS = ["prompt_learner.ctx", "prompt_learner.ctx_neg", "prompt_learner.temperature",
              "prompt_learner.spatial_T"]
LABELS = torch.tensor([[1.0, 0, -1], [-1, 1, 0], [0, -1, 1], [1, 1, -1]])


@pytest.fixture(scope="module")
def clip_model():
    return random_clip("tiny", seed=0)


@pytest.fixture(autouse=True)
def fp64_layer_norm(monkeypatch):
    """openai-clip's LayerNorm computes in fp32 whatever its input; let fp64 stay fp64 (a no-op
    for fp32 inputs) so that the loops below and the fp64 model run in float64 throughout."""
    monkeypatch.setattr(openai_clip_model.LayerNorm, "forward", torch.nn.LayerNorm.forward)


def _model(clip_model, classnames=CLASSES, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = DualCoOpModel(clip_model, classnames, **{"n_ctx": 4, **kwargs})
    learner = model.prompt_learner
    with torch.no_grad():  # contexts and scalars away from their init: meaningful comparisons
        learner.ctx.normal_(std=0.5)
        learner.ctx_neg.normal_(std=0.5)
        learner.temperature.add_(0.3)
        learner.spatial_T.sub_(0.5)
    return model


def _images(n=4, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- SPEC 7 with explicit loops over b, c, hw in float64 ---------------------------------------
def _class_embedding(clip64, ctx, classname, n_ctx):
    """``"X .. X {name}."`` with the placeholders replaced by ``ctx`` -> EOS feature ``D``."""
    tokens = tokenize([" ".join(["X"] * n_ctx) + f" {classname}."], clip64.context_length)[0]
    emb = clip64.token_embedding(tokens).clone()
    emb[1:1 + n_ctx] = ctx
    x = clip64.transformer((emb + clip64.positional_embedding).unsqueeze(1)).squeeze(1)
    return (clip64.ln_final(x) @ clip64.text_projection)[int(tokens.argmax())]


def _image_features(clip64, image):
    """One image -> (attention pool without positional embedding ``D``, dense: HW of ``D``)."""
    v = clip64.visual
    x = image.unsqueeze(0)
    x = v.relu1(v.bn1(v.conv1(x)))
    x = v.relu2(v.bn2(v.conv2(x)))
    x = v.avgpool(v.relu3(v.bn3(v.conv3(x))))
    feats = v.layer4(v.layer3(v.layer2(v.layer1(x))))[0].flatten(1).t()  # HW x C_v
    pool = v.attnpool
    tokens = torch.cat([feats.mean(0, keepdim=True), feats])
    q, k, val = pool.q_proj(tokens[0]), pool.k_proj(tokens), pool.v_proj(tokens)
    dim = feats.shape[1] // pool.num_heads
    heads = []
    for h in range(pool.num_heads):
        part = slice(h * dim, (h + 1) * dim)
        heads.append(torch.softmax(k[:, part] @ q[part] / math.sqrt(dim), dim=0) @ val[:, part])
    return pool.c_proj(torch.cat(heads)), [pool.c_proj(pool.v_proj(f)) for f in feats]


def _cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


@torch.no_grad()
def logits_loop(clip_model, model, images, classnames=CLASSES):
    """(local, global) ``B x C`` float64: ``T sum_hw softmax_hw(tau cos+) (cos+ - cos-)`` and
    ``T (cos(f, G+) - cos(f, G-))``, ``T = exp(temperature)``, ``tau = exp(spatial_T)``."""
    clip64 = copy.deepcopy(clip_model).double()
    learner = model.prompt_learner
    rows = {}
    for name in ("ctx", "ctx_neg"):
        ctx = getattr(learner, name).double()
        rows[name] = [_class_embedding(clip64, ctx[c] if ctx.dim() == 3 else ctx, cls,
                                       learner.n_ctx) for c, cls in enumerate(classnames)]
    scale, tau = math.exp(float(learner.temperature)), math.exp(float(learner.spatial_T))
    local = torch.zeros(len(images), len(classnames), dtype=torch.float64)
    global_ = torch.zeros_like(local)
    for b in range(len(images)):
        feat, dense = _image_features(clip64, images[b].double())
        for c in range(len(classnames)):
            pos = [_cos(f, rows["ctx"][c]) for f in dense]
            neg = [_cos(f, rows["ctx_neg"][c]) for f in dense]
            top = max(pos)
            weights = [math.exp(tau * (p - top)) for p in pos]
            total = sum(weights)
            local[b, c] = scale * sum(w / total * (p - n) for w, p, n in zip(weights, pos, neg))
            global_[b, c] = scale * (_cos(feat, rows["ctx"][c]) - _cos(feat, rows["ctx_neg"][c]))
    return local, global_


def spec_asl(logits, labels):
    """SPEC 7's loss, word for word, with the focusing weights detached."""
    p = torch.sigmoid(logits)
    q = (1 - p + 0.05).clamp(max=1)
    positive = (labels > 0.9).to(logits.dtype) * (1 - p).detach() * p.clamp(min=1e-8).log()
    negative = (labels < -0.9).to(logits.dtype) * ((1 - q) ** 2).detach() * q.clamp(min=1e-8).log()
    return -(positive + negative).sum() / logits.shape[0]


# --- model ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("csc,size", [(False, 64), (True, 96)])
def test_logits_match_the_loop(clip_model, csc, size):
    model = _model(clip_model, csc=csc)
    images = _images(2, size=size)
    with torch.no_grad():
        out = model(images)
    local, global_ = logits_loop(clip_model, model, images)
    assert list(out) == ["local", "global"]
    assert (out["local"].double() - local).abs().max() <= 1e-5
    assert (out["global"].double() - global_).abs().max() <= 1e-5
    assert local.abs().max() > 0.1  # the comparison is not between near-zero numbers


def test_logits_match_the_loop_in_fp64(clip_model):
    model = _model(clip_model, csc=True)
    model64 = copy.deepcopy(model).double()
    images = _images(2).double()
    with torch.no_grad():
        out = model64(images)
    local, global_ = logits_loop(clip_model, model64, images)
    assert (out["local"] - local).abs().max() <= 1e-12
    assert (out["global"] - global_).abs().max() <= 1e-12


def test_initial_state(clip_model):
    torch.manual_seed(0)
    learner = DualCoOpModel(clip_model, CLASSES, csc=True).prompt_learner
    assert list(learner.state_dict()) == STATE_KEYS
    assert learner.ctx.shape == learner.ctx_neg.shape == (3, 16, 64)
    assert not torch.equal(learner.ctx, learner.ctx_neg)
    for ctx in (learner.ctx, learner.ctx_neg):
        assert abs(float(ctx.detach().std()) - 0.02) < 0.003
    assert float(learner.temperature.detach()) == pytest.approx(3.91)
    assert float(learner.spatial_T.detach()) == 3.0
    tokens = tokenize(["X " * 15 + "X."] * 3, clip_model.context_length)
    assert torch.equal(learner.token_suffix_nocls, clip_model.token_embedding(tokens)[:, 17:])
    generic = DualCoOpModel(clip_model, CLASSES).prompt_learner
    assert generic.ctx.shape == generic.ctx_neg.shape == (16, 64)


@pytest.mark.parametrize("position", ["middle", "front"])
def test_other_class_token_positions(clip_model, position):
    model = _model(clip_model, class_token_position=position)
    end = _model(clip_model)
    images = _images(2)
    with torch.no_grad():
        out, ref = model(images)["local"], end(images)["local"]
    assert torch.isfinite(out).all() and not torch.allclose(out, ref)


# --- loss and gradients ---------------------------------------------------------------------------
def test_asl_equals_the_spec_formula_with_detached_focusing_weights():
    logits = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    ours = logits.clone().requires_grad_(True)
    spec = logits.clone().requires_grad_(True)
    loss, expected = known_label_loss("asl", ours, LABELS.double()), spec_asl(spec, LABELS.double())
    loss.backward()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-14)
    assert torch.allclose(ours.grad, spec.grad, rtol=1e-13, atol=0)
    attached = logits.clone().requires_grad_(True)  # the gradient differs with attached weights
    asl_loss(attached, LABELS.double(), mask=LABELS != 0, detach_focal_weights=False).backward()
    assert not torch.allclose(attached.grad, spec.grad)


def test_training_loss_is_asl_of_the_local_logits(clip_model):
    model = _model(clip_model)
    out = model(_images())
    loss, expected = dualcoop_loss("asl", out, LABELS), spec_asl(out["local"], LABELS)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    params = [model.prompt_learner.ctx, model.prompt_learner.temperature]
    for ours, spec in zip(torch.autograd.grad(loss, params, retain_graph=True),
                          torch.autograd.grad(expected, params, retain_graph=True)):
        assert torch.allclose(ours, spec, rtol=1e-5, atol=1e-8)
    known, targets = LABELS != 0, (LABELS[LABELS != 0] > 0).float()
    fewshot = sum(F.binary_cross_entropy_with_logits(out[k][known], targets) for k in out)
    assert dualcoop_loss("fewshot", out, LABELS).item() == pytest.approx(fewshot.item(), rel=1e-6)
    with pytest.raises(ValueError, match="TRAINER.DUALCOOP.LOSS"):
        dualcoop_loss("ranking", out, LABELS)


@pytest.mark.parametrize("loss", ["asl", "fewshot"])
def test_unknown_labels_get_zero_loss_and_zero_gradient(loss):
    logits = {k: torch.randn(4, 3, requires_grad=True) for k in ("local", "global")}
    value = dualcoop_loss(loss, logits, LABELS)
    value.backward()
    unknown = LABELS == 0
    trained = ["local", "global"] if loss == "fewshot" else ["local"]
    assert [k for k, v in logits.items() if v.grad is not None] == trained
    for k in trained:
        assert (logits[k].grad[unknown] == 0).all() and (logits[k].grad[~unknown] != 0).all()
    moved = {k: v.detach().masked_fill(unknown, 50.0) for k, v in logits.items()}
    assert float(dualcoop_loss(loss, moved, LABELS)) == value.item()


@pytest.mark.parametrize("loss", ["asl", "fewshot"])
def test_only_the_four_parameters_get_gradients(clip_model, loss):
    model = _model(clip_model)
    dualcoop_loss(loss, model(_images()), LABELS).backward()
    with_grad = [name for name, p in model.named_parameters() if p.grad is not None]
    assert with_grad == PARAMETERS
    assert all(p.grad.abs().sum() > 0 for name, p in model.named_parameters() if name in PARAMETERS)


def test_clip_unchanged_and_in_eval_mode_after_a_step(clip_model):
    model = _model(clip_model)
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    learner_before = {k: v.clone() for k, v in model.prompt_learner.state_dict().items()}
    cfg = get_cfg_default()
    cfg.OPTIM.LR = 0.1
    optim = build_optimizer(model.prompt_learner, cfg.OPTIM)
    model.train()
    assert not model.clip.training and model.prompt_learner.training
    dualcoop_loss("asl", model(_images()), LABELS).backward()
    optim.step()
    assert all(torch.equal(before[k], v) for k, v in model.clip.state_dict().items())
    after = model.prompt_learner.state_dict()
    changed = [k for k in STATE_KEYS if not torch.equal(learner_before[k], after[k])]
    assert changed == ["ctx", "ctx_neg", "temperature", "spatial_T"]


def test_checkpoint_round_trip_drops_the_token_buffers(clip_model, tmp_path):
    source = _model(clip_model, seed=1).prompt_learner
    target = _model(clip_model, ["car", "bird", "giraffe"], seed=2).prompt_learner
    buffers = {k: v.clone() for k, v in target.named_buffers()}
    save_checkpoint({"state_dict": source.state_dict(), "epoch": 3, "optimizer": None,
                     "scheduler": None}, str(tmp_path / "prompt_learner"), is_best=False)
    trainer = TrainerBase()
    trainer.ignored_checkpoint_keys = DualCoOp.ignored_checkpoint_keys
    trainer.register_model("prompt_learner", target)
    trainer.load_model(str(tmp_path), epoch=3)
    for key in ("ctx", "ctx_neg", "temperature", "spatial_T"):
        assert torch.equal(getattr(target, key), getattr(source, key))
    assert all(torch.equal(v, buffers[k]) for k, v in target.named_buffers())  # own class names


# --- config, schedule ----------------------------------------------------------------------------
def test_reference_keys_and_names():
    cfg = setup_cfg(opts=["TRAINER.NAME", "Caption_dual", "TRAINER.Caption.N_CTX", "8",
                          "TRAINER.Caption.CSC", "True", "TRAINER.Caption.CTX_INIT", "a photo of",
                          "TRAINER.Caption.PREC", "amp", "TRAINER.Caption.CLASS_TOKEN_POSITION",
                          "front", "TRAIN.LOSSFUNC", "fewshot"])
    assert TRAINER_REGISTRY.get("Caption_dual") is DualCoOp
    c = cfg.TRAINER.DUALCOOP
    assert (c.N_CTX, c.CSC, c.CTX_INIT, c.PREC, c.CLASS_TOKEN_POSITION, c.LOSS) == (
        8, True, "a photo of", "amp", "front", "fewshot")
    assert cfg.TRAINER.TAIDPT.N_CTX == 16  # TaI-DPT's node is not touched


@pytest.mark.parametrize("key,value", [("TRAINER.DUALCOOP.LOSS", "ranking"),
                                       ("TRAINER.DUALCOOP.PREC", "bf16")])
def test_bad_settings_name_the_key(key, value):
    cfg = get_cfg_default()
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DualCoOp.check_cfg(None, cfg)


@pytest.mark.parametrize("dataset", ["voc2007", "coco2014", "nuswide"])
def test_reference_schedule(dataset):
    cfg = setup_cfg(os.path.join(REPO, f"configs/datasets/{dataset}_partial.yaml"),
                    os.path.join(REPO, f"configs/trainers/DualCoOp/rn101_{dataset}.yaml"))
    param = torch.nn.Parameter(torch.zeros(1))
    optim = build_optimizer([param], cfg.OPTIM)
    sched = build_lr_scheduler(optim, cfg.OPTIM)
    lrs = []
    for _ in range(cfg.OPTIM.MAX_EPOCH):
        lrs.append(optim.param_groups[0]["lr"])
        optim.step()
        sched.step()
    assert len(lrs) == 50
    assert lrs[0] == 1e-5
    for e in (1, 2, 25, 49):
        assert lrs[e] == pytest.approx(0.001 * (1 + math.cos(math.pi * (e - 1) / 50)), rel=1e-12)
    group = optim.param_groups[0]
    assert (group["momentum"], group["weight_decay"]) == (0.9, 5e-4)
    assert cfg.TEST.FINAL_MODEL == "best_val" and cfg.INPUT.TEST_RESIZE == "square"
    assert tuple(cfg.INPUT.SIZE) == (448, 448) and cfg.MODEL.BACKBONE.NAME == "RN101"
    assert cfg.DATASET.CAPTIONS.SOURCE == "" and cfg.TRAINER.DUALCOOP.CSC
    assert cfg.DATASET.VAL_STRIDE == {"voc2007": -1, "coco2014": 20, "nuswide": 60}[dataset]
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == (192 if dataset == "nuswide" else 64)
    assert tuple(cfg.INPUT.RRCROP_SCALE) == ((0.6, 1.0) if dataset == "nuswide" else (0.5, 1.0))


# --- end to end through train.py on the fake benchmark trees -------------------------------------
def _write_tree(dataset, root):
    if dataset == "voc2007":
        trainval = write_fake_voc(root, n_test=6, n_trainval=8)["trainval"][1]
        write_voc_partial(root, trainval, 0.5)
    elif dataset == "coco2014":
        write_fake_coco(root, n_val=6, n_train=8)
    else:
        write_fake_nuswide(root, n_test=6, n_train=8)


def _results(directory):
    return json.loads((directory / "results_test.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("dataset,name", [("voc2007", "VOC2007_partial"),
                                          ("coco2014", "COCO2014_partial"),
                                          ("nuswide", "nuswide_partial")])
def test_train_py_trains_saves_and_eval_only_reproduces(tmp_path, tiny_clip_file, dataset, name):
    root = tmp_path / "data"
    _write_tree(dataset, str(root))
    common = ["--trainer", "Caption_dual", "--root", str(root), "--seed", "1",
              "--dataset-config-file", f"{REPO}/configs/datasets/{dataset}_partial.yaml",
              "--config-file", f"{REPO}/configs/trainers/DualCoOp/rn101_{dataset}.yaml"]
    opts = ["DATASET.NAME", name, "MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(64, 64)",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
            "DATALOADER.TEST.BATCH_SIZE", "4", "DATASET.VAL_STRIDE", "2", "OPTIM.MAX_EPOCH", "2",
            "OPTIM.WARMUP_EPOCH", "-1", "TRAINER.Caption.N_CTX", "4", "USE_CUDA", "False"]
    out = tmp_path / "out"
    assert train.main([*common, "--output-dir", str(out), *opts]) == 0
    log = (out / "log.txt").read_text()
    assert "partial labels (PARTIAL_PROB 0.5" in log
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()
    assert (out / "prompt_learner" / "model-best.pth.tar").is_file()
    trained = _results(out)
    assert trained["trainer"] == "Caption_dual" and trained["epoch"] >= 1
    assert set(trained["results"]) == {"mAP", "mAP_local", "mAP_global"}
    assert trained["results"]["mAP"] == trained["results"]["mAP_local"]
    checkpoint = torch.load(out / "prompt_learner" / "model.pth.tar-2", weights_only=False)
    assert list(checkpoint["state_dict"]) == STATE_KEYS
    predictions = np.load(out / "predictions_test.npz")
    assert str(predictions["headline"]) == "local" and "scores_global" in predictions

    evaluated = tmp_path / "eval"
    assert train.main([*common, "--output-dir", str(evaluated), "--eval-only", "--model-dir",
                       str(out), *opts]) == 0  # model-best, as the training run's final test
    assert _results(evaluated)["results"] == pytest.approx(trained["results"], abs=1e-6)


def test_training_on_a_caption_dataset_config_is_a_clear_error(tmp_path, tiny_clip_file, capsys):
    root = tmp_path / "data"
    write_fake_voc(str(root), n_test=4, n_trainval=2)
    assert train.main(["--trainer", "DualCoOp", "--root", str(root), "--output-dir", str(tmp_path),
                       "--dataset-config-file", f"{REPO}/configs/datasets/voc2007_caption.yaml",
                       "MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(64, 64)",
                       "DATALOADER.NUM_WORKERS", "0", "USE_CUDA", "False"]) == 1  # RuntimeError
    assert "DATASET.CAPTIONS.SOURCE" in capsys.readouterr().err


@pytest.mark.slow
def test_the_same_seed_trains_the_same_prompts_with_loader_workers(tmp_path, tiny_clip_file):
    root = tmp_path / "data"
    _write_tree("voc2007", str(root))
    args = ["--trainer", "DualCoOp", "--root", str(root), "--seed", "3",
            "--dataset-config-file", f"{REPO}/configs/datasets/voc2007_partial.yaml",
            "--config-file", f"{REPO}/configs/trainers/DualCoOp/rn101_voc2007.yaml",
            "MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(64, 64)",
            "DATALOADER.NUM_WORKERS", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
            "OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "-1", "OPTIM.LR", "0.05",
            "TEST.FINAL_MODEL", "last_step", "TRAINER.DUALCOOP.N_CTX", "4", "USE_CUDA", "False"]
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert train.main(["--output-dir", str(run), *args]) == 0
    weights = [torch.load(run / "prompt_learner" / "model.pth.tar-1", weights_only=False)["state_dict"]
               for run in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in STATE_KEYS)
    assert _results(runs[0])["results"] == _results(runs[1])["results"]


def test_tiny_synthetic_config():
    cfg = setup_cfg(f"{REPO}/configs/datasets/synthetic.yaml",
                    f"{REPO}/configs/trainers/DualCoOp/tiny_synthetic.yaml", {"TRAINER.NAME": "DualCoOp"})
    assert tuple(cfg.INPUT.SIZE) == (64, 64) and cfg.INPUT.TEST_RESIZE == "square"
    assert cfg.TRAINER.DUALCOOP.CTX_INIT == "a photo of a" and cfg.TRAINER.DUALCOOP.LOSS == "asl"
    build_train_transform(cfg)
