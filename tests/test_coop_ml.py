"""CoOpML (and the image-training loop CoCoOpML shares) against stock-CLIP re-computations."""
import copy
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip import model as openai_model

import train
from fake_data import write_fake_coco, write_fake_nuswide, write_fake_voc, write_image_list
from taidpt.clip import random_clip, tokenize
from taidpt.config import get_cfg_default
from taidpt.engine import build_trainer
from taidpt.engine.checkpoint import save_checkpoint
from taidpt.engine.trainer import TrainerBase
from taidpt.losses import known_label_loss
from taidpt.trainers.cocoop_ml import CoCoOpML, CoCoOpMLModel
from taidpt.trainers.coop_ml import CoOpML, CoOpMLModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["cat", "hot dog", "person"]
PLACEHOLDER = int(tokenize("X")[0, 1])


@pytest.fixture(scope="module")
def clip_model():
    return random_clip("tiny", seed=0)


def clip_in(clip_model, dtype, monkeypatch):
    """A copy of ``clip_model`` in ``dtype``; openai-clip's LayerNorm (which computes in fp32)
    runs in that dtype too, so that fp64 comparisons are fp64 throughout."""
    monkeypatch.setattr(openai_model.LayerNorm, "forward", torch.nn.LayerNorm.forward)
    return copy.deepcopy(clip_model).to(dtype)


def _coop(clip_model, classnames=CLASSES, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = CoOpMLModel(clip_model, classnames, **{"n_ctx": 4, **kwargs})
    with torch.no_grad():  # contexts far from their init make the comparisons meaningful
        model.prompt_learner.ctx.normal_(std=0.5)
    return model


def _images(n=2, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- independent re-computation with the stock openai-clip modules ----------------------------
def stock_prompt_feature(clip_model, text, ctx):
    """``text`` with placeholders "X" -> EOS feature ``D`` of the stock transformer at full length,
    the placeholders' embeddings replaced by the rows of ``ctx`` (``M x W``) in order."""
    tokens = tokenize([text], clip_model.context_length)[0]
    emb = clip_model.token_embedding(tokens).type(clip_model.dtype).clone()
    emb[tokens == PLACEHOLDER] = ctx
    x = clip_model.transformer((emb + clip_model.positional_embedding).unsqueeze(1)).squeeze(1)
    return (clip_model.ln_final(x) @ clip_model.text_projection)[int(tokens.argmax())]


def prompt_text(classname, n_ctx, position="end"):
    ctx = ["X"] * n_ctx
    words = {"end": ctx + [classname], "front": [classname] + ctx,
             "middle": ctx[:n_ctx // 2] + [classname] + ctx[n_ctx // 2:]}[position]
    return " ".join(words) + "."


@torch.no_grad()
def coop_logits_stock(clip_model, ctx, classnames, position="end"):
    """CoOp's logits, one class at a time: ``exp(logit_scale) * cos(encode_image, G_c)``."""
    f = F.normalize(clip_model.encode_image(_images().type(clip_model.dtype)), dim=-1)
    rows = [ctx[c] if ctx.dim() == 3 else ctx for c in range(len(classnames))]
    texts = [prompt_text(name, ctx.shape[-2], position) for name in classnames]
    g = torch.stack([stock_prompt_feature(clip_model, text, row) for text, row in zip(texts, rows)])
    return clip_model.logit_scale.exp() * f @ F.normalize(g, dim=-1).t()


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("csc,position", [(False, "end"), (True, "end"), (False, "middle"),
                                          (True, "front")])
def test_logits_equal_the_stock_clip_computation(clip_model, dtype, tolerance, csc, position,
                                                 monkeypatch):
    clip_model = clip_in(clip_model, dtype, monkeypatch)
    model = _coop(clip_model, csc=csc, class_token_position=position)
    with torch.no_grad():
        logits = model(_images().to(dtype))
    expected = coop_logits_stock(clip_model, model.prompt_learner.ctx, CLASSES, position)
    assert logits.shape == (2, 3) and logits.dtype == dtype
    # logit scale exp(log(1/0.07)) ~ 14: fp32 logits of size ~5 differ in their last bits
    assert (logits - expected).abs().max() <= tolerance
    assert expected.abs().max() > 0.1  # not trivially zero


def test_ctx_init_words_start_from_their_embeddings(clip_model):
    model = CoOpMLModel(clip_model, CLASSES, ctx_init="a photo of a")
    learner = model.prompt_learner
    assert learner.n_ctx == 4 and learner.ctx.shape == (4, 64)
    expected = tokenize([f"a photo of a {c}." for c in CLASSES], clip_model.context_length)
    with torch.no_grad():
        g = learner.encode(clip_model, learner.ctx, cut_at_eos=True)
        zero_shot = clip_model.encode_text(expected)
    assert (g - zero_shot).abs().max() <= 1e-5  # CoOp initialised with words = zero-shot CLIP


def test_state_dict_and_trainable_parameters(clip_model):
    model = _coop(clip_model, csc=True)
    assert list(model.prompt_learner.state_dict()) == ["ctx", "token_prefix", "token_suffix"]
    assert model.prompt_learner.ctx.shape == (3, 4, 64)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    model.train()
    assert model.prompt_learner.training and not model.clip.training


# --- the trainers on a tiny image list -----------------------------------------------------
TRAINERS = {"CoOpML": "COOPML", "CoCoOpML": "COCOOPML"}


def _cfg(tmp_path, clip_file, trainer, **opts):
    root = tmp_path / "data"
    if not root.exists():
        write_image_list(str(root), ["cat", "dog", "car", "hot dog"], n=6, size=64)
    cfg = get_cfg_default()
    cfg.merge_from_list([
        "DATASET.NAME", "MultiLabelImageList", "DATASET.ROOT", str(root),
        "DATASET.CLASSNAMES_FILE", "classnames.txt", "DATASET.TRAIN_LIST", "train.csv",
        "DATASET.TEST_LIST", "test.csv", "TRAINER.NAME", trainer,
        "OUTPUT_DIR", str(tmp_path / "out"),
        "MODEL.BACKBONE.PATH", clip_file, "INPUT.SIZE", (64, 64), "DATALOADER.NUM_WORKERS", 0,
        "DATALOADER.TRAIN_X.BATCH_SIZE", 3, "USE_CUDA", False, "OPTIM.LR", 0.05,
        "OPTIM.WEIGHT_DECAY", 0.0, "OPTIM.MAX_EPOCH", 1, "SEED", 1,
        f"TRAINER.{TRAINERS[trainer]}.N_CTX", 4, *[v for kv in opts.items() for v in kv]])
    return cfg


def _trainable(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.prompt_learner.named_parameters()}


@pytest.mark.parametrize("trainer_name", list(TRAINERS))
@pytest.mark.parametrize("loss", ["bce", "asl"])
def test_unknown_labels_give_zero_loss_and_zero_gradient(tmp_path, tiny_clip_file, trainer_name,
                                                         loss):
    trainer = build_trainer(_cfg(tmp_path, tiny_clip_file, trainer_name,
                                 **{f"TRAINER.{TRAINERS[trainer_name]}.LOSS": loss}))
    images = _images(3)
    before = _trainable(trainer)
    trainer.set_model_mode("train")
    out = trainer.forward_backward({"img": images, "label": torch.zeros(3, 4), "index": None})
    assert out["loss"] == 0.0
    for name, p in trainer.model.prompt_learner.named_parameters():
        assert p.grad is not None and not p.grad.any(), name
        assert torch.equal(p, before[name]), name  # no weight decay: a zero step

    labels = torch.tensor([[1.0, 0, -1, 0], [0, 0, 1, -1], [-1, 1, 0, 0]])
    logits = trainer.model(images).detach().requires_grad_()
    value = known_label_loss(loss, logits, labels)
    value.backward()
    assert value > 0 and (logits.grad[labels == 0] == 0).all() and logits.grad[labels != 0].any()
    moved = logits.detach() + 10.0 * (labels == 0)  # unknown entries can take any value
    assert float(known_label_loss(loss, moved, labels)) == pytest.approx(float(value), abs=1e-6)


@pytest.mark.parametrize("trainer_name,trainable", [
    ("CoOpML", ["ctx"]),
    ("CoCoOpML", ["ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
                  "meta_net.linear2.weight", "meta_net.linear2.bias"])])
def test_a_step_trains_only_the_prompt_learner(tmp_path, tiny_clip_file, trainer_name, trainable):
    trainer = build_trainer(_cfg(tmp_path, tiny_clip_file, trainer_name))
    clip_before = copy.deepcopy(trainer.model.clip.state_dict())  # BatchNorm statistics too
    learner_before = _trainable(trainer)
    trainer.set_model_mode("train")
    labels = torch.tensor([[1.0, -1, -1, 1], [-1, 1, 0, -1], [1, 1, -1, -1]])
    trainer.forward_backward({"img": _images(3), "label": labels, "index": None})
    assert not trainer.model.clip.training
    with_grad = [n for n, p in trainer.model.named_parameters() if p.grad is not None]
    assert with_grad == [f"prompt_learner.{n}" for n in trainable]
    for name, p in trainer.model.prompt_learner.named_parameters():
        assert not torch.equal(p, learner_before[name]), name
    clip_after = trainer.model.clip.state_dict()
    assert all(torch.equal(clip_before[k], clip_after[k]) for k in clip_before)


@pytest.mark.parametrize("trainer_name", list(TRAINERS))
def test_checkpoint_round_trip_with_other_class_names(tmp_path, trainer_name):
    clip_model = random_clip("tiny", seed=0)
    model_class = CoOpMLModel if trainer_name == "CoOpML" else CoCoOpMLModel
    torch.manual_seed(1)
    source = model_class(clip_model, CLASSES, n_ctx=4)
    with torch.no_grad():
        for p in source.prompt_learner.parameters():
            p.normal_()
    torch.manual_seed(2)
    target = model_class(clip_model, ["car", "bird", "hot dog", "giraffe"], n_ctx=4)
    buffers = {k: v.clone() for k, v in target.prompt_learner.named_buffers()}
    save_checkpoint({"state_dict": source.prompt_learner.state_dict(), "epoch": 3,
                     "optimizer": None, "scheduler": None}, str(tmp_path / "prompt_learner"),
                    is_best=False)
    loader = TrainerBase()
    loader.ignored_checkpoint_keys = CoOpML.ignored_checkpoint_keys
    loader.register_model("prompt_learner", target.prompt_learner)
    loader.load_model(str(tmp_path), epoch=3)
    for (name, p), q in zip(source.prompt_learner.named_parameters(),
                            target.prompt_learner.parameters()):
        assert torch.equal(p, q), name
    for name, value in target.prompt_learner.named_buffers():  # its own class names
        assert torch.equal(value, buffers[name]), name


@pytest.mark.parametrize("key,value,match", [
    ("LOSS", "ranking", "TRAINER.{node}.LOSS must be one of bce, asl"),
    ("PREC", "bf16", "TRAINER.{node}.PREC must be one of fp32, fp16, amp")])
@pytest.mark.parametrize("trainer_name", list(TRAINERS))
def test_bad_settings_name_the_key(tmp_path, tiny_clip_file, trainer_name, key, value, match):
    node = TRAINERS[trainer_name]
    cfg = _cfg(tmp_path, tiny_clip_file, trainer_name, **{f"TRAINER.{node}.{key}": value})
    with pytest.raises(ValueError, match=match.format(node=node)):
        build_trainer(cfg)


@pytest.mark.parametrize("trainer_name", list(TRAINERS))
def test_cached_features_train_exactly_like_images(tmp_path, tiny_clip_file, trainer_name):
    node = TRAINERS[trainer_name]
    learned = []
    for cache in (False, True):
        torch.manual_seed(0)  # the same initial context
        trainer = build_trainer(_cfg(tmp_path, tiny_clip_file, trainer_name, **{
            f"TRAINER.{node}.CACHE_FEATURES": cache, "OPTIM.MAX_EPOCH": 2, "TEST.NO_TEST": True,
            "OUTPUT_DIR": str(tmp_path / f"out_{cache}")}))
        trainer.train()
        learned.append(_trainable(trainer))
    assert isinstance(trainer.train_loader_x.dataset, list)  # the cached run read no image
    for name, value in learned[0].items():
        assert (value - learned[1][name]).abs().max() <= 1e-6, name


def test_cached_features_refuse_random_transforms(tmp_path, tiny_clip_file):
    cfg = _cfg(tmp_path, tiny_clip_file, "CoOpML", **{"TRAINER.COOPML.CACHE_FEATURES": True,
                                                      "INPUT.TRANSFORMS": ("random_flip",)})
    with pytest.raises(ValueError, match=r"INPUT.TRANSFORMS \['random_flip'\]"):
        build_trainer(cfg)


def test_no_training_images_is_a_clear_error(tmp_path, tiny_clip_file):
    cfg = _cfg(tmp_path, tiny_clip_file, "CoOpML", **{"DATASET.TRAIN_LIST": ""})
    trainer = build_trainer(cfg)
    with pytest.raises(RuntimeError, match="DATASET.CAPTIONS.SOURCE ''"):
        trainer.train()


def test_defaults_follow_coop_and_cocoop():
    cfg = get_cfg_default()
    coop, cocoop = cfg.TRAINER.COOPML, cfg.TRAINER.COCOOPML
    assert (coop.N_CTX, coop.CSC, coop.CTX_INIT, coop.CLASS_TOKEN_POSITION, coop.LOSS) == (
        16, False, "", "end", "bce")
    assert (cocoop.N_CTX, cocoop.CTX_INIT, cocoop.LOSS) == (4, "a photo of a", "bce")
    assert CoCoOpML.ignored_checkpoint_keys == ("token_prefix", "token_suffix")


# --- end to end through train.py on fake VOC / COCO / NUS-WIDE trees --------------------------
FAKE_TREES = {
    "VOC2007": lambda root: write_fake_voc(root, n_test=6, n_trainval=8),
    "COCO2014": lambda root: write_fake_coco(root, n_val=6, n_train=8),
    "NUSWIDE": lambda root: write_fake_nuswide(root, n_test=6, n_train=8),
}


@pytest.mark.slow  # 4-20 s per case on 2 busy cores
@pytest.mark.parametrize("dataset", list(FAKE_TREES))
@pytest.mark.parametrize("trainer_name", list(TRAINERS))
def test_train_then_eval_only_reproduces_the_map(tmp_path, tiny_clip_file, trainer_name, dataset):
    root = tmp_path / "data"
    FAKE_TREES[dataset](str(root))
    dataset_cfg = tmp_path / "images.yaml"
    dataset_cfg.write_text(f"DATASET:\n  NAME: {dataset}\n  CAPTIONS:\n    SOURCE: ''\n")
    method_cfg = os.path.join(REPO, "configs", "trainers", trainer_name,
                              f"rn50_{dataset.lower()}.yaml")  # the real configs, made tiny:
    common = ["--trainer", trainer_name, "--root", str(root), "--seed", "1",
              "--dataset-config-file", str(dataset_cfg), "--config-file", method_cfg]
    opts = ["MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(64, 64)", "OPTIM.MAX_EPOCH", "2",
            "DATASET.NUM_SHOTS", "-1", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "USE_CUDA", "False", "TRAIN.PRINT_FREQ", "1"]
    out = tmp_path / "out"
    assert train.main([*common, "--output-dir", str(out), *opts]) == 0
    log = (out / "log.txt").read_text()
    assert "Training on 8 images" in log and "epoch [2/2] batch [2/2]" in log
    checkpoint = torch.load(out / "prompt_learner" / "model.pth.tar-2", weights_only=False)
    assert {"ctx", "token_prefix", "token_suffix"} <= set(checkpoint["state_dict"])
    trained = json.loads((out / "results_test.json").read_text())
    assert trained["dataset"] == dataset and set(trained["results"]) == {"mAP"}

    evaluated = tmp_path / "eval"
    assert train.main([*common, "--output-dir", str(evaluated), "--eval-only",
                       "--model-dir", str(out), *opts]) == 0
    again = json.loads((evaluated / "results_test.json").read_text())["results"]
    assert again == pytest.approx(trained["results"], abs=1e-6)
    scores = [np.load(run / "predictions_test.npz")["scores_logits"] for run in (out, evaluated)]
    assert np.abs(scores[0] - scores[1]).max() <= 1e-6
    untrained = tmp_path / "untrained"  # the reload matters: the initial context scores otherwise
    assert train.main([*common, "--output-dir", str(untrained), "--eval-only", *opts]) == 2
    args = train.build_parser().parse_args([*common, "--output-dir", str(untrained), *opts])
    build_trainer(train.cfg_from_args(args)).test()  # what --eval-only without --model-dir did
    initial = np.load(untrained / "predictions_test.npz")["scores_logits"]
    assert np.abs(scores[0] - initial).max() > 1e-3
