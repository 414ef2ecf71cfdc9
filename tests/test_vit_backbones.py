"""Issue-11 item 4: ViT backbones as a first-class choice. The vit_* configs mirror the RN50 ones
but for the backbone and its input size, sizes come from the backbone, zero-shot ViT equals
stock ``encode_image``, and TaI-DPT trains and evaluates through ``train.py`` on a small random
ViT of the real architecture."""
import json
import logging
import os

import pytest
import torch
import torch.nn.functional as F

from fake_data import TOY_CAPTIONS as CAPTIONS, TOY_CLASSES as CLASSES, TOY_SYNONYMS as SYNONYMS
from fake_data import run_train_py, epoch_losses, write_image_list
from taidpt.clip import CLIP_MODEL_URLS, GEOMETRIES, CLIPGeometry, load_clip, random_clip, save_clip
from taidpt.config import setup_cfg
from taidpt.engine import build_trainer
from taidpt.models import backbone_context_length, backbone_resolution, check_input_size, load_backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
BACKBONES = {"vit_b32": "ViT-B/32", "vit_b16": "ViT-B/16", "vit_l14": "ViT-L/14",
             "vit_l14_336px": "ViT-L/14@336px"}
DATASETS = ("voc2007", "coco2014", "nuswide")
BACKBONE_KEYS = {"MODEL.BACKBONE.NAME", "INPUT.SIZE"}  # all a vit config may change
# A small random ViT shaped like ViT-B/32 at its 224 px (7 x 7 patches): stock encode_image runs
# at the vit configs' own INPUT.SIZE without interpolation.
B32_SHAPED = CLIPGeometry(64, 224, 2, 64, 32, context_length=32, transformer_width=64,
                          transformer_layers=1)


def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _method(trainer, name):
    return os.path.join(CONFIGS, "trainers", trainer, f"{name}.yaml")


def _clip_file(tmp_path_factory, geometry, name):
    return save_clip(random_clip(geometry, seed=0), str(tmp_path_factory.mktemp("clip") / name))


@pytest.fixture(scope="module")
def tiny_vit_file(tmp_path_factory):
    return _clip_file(tmp_path_factory, "tiny-vit", "tiny_vit.pt")


@pytest.fixture(scope="module")
def b32_shaped_file(tmp_path_factory):
    return _clip_file(tmp_path_factory, B32_SHAPED, "b32_shaped.pt")


@pytest.fixture()
def image_root(tmp_path):
    root = tmp_path / "data"
    write_image_list(str(root), CLASSES, n=8, synonyms=SYNONYMS, size=64)
    (root / "captions.txt").write_text("\n".join(CAPTIONS * 6) + "\n")
    return root


# --- configs ----------------------------------------------------------------------------------
def _check_backbone(cfg, name):
    assert cfg.MODEL.BACKBONE.NAME == name and name in CLIP_MODEL_URLS  # a name load_clip knows
    resolution = GEOMETRIES[name].image_resolution
    assert tuple(cfg.INPUT.SIZE) == (resolution, resolution)
    assert backbone_context_length(cfg) == GEOMETRIES[name].context_length == 77


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("prefix", list(BACKBONES))
def test_taidpt_vit_configs_are_the_rn50_ones_but_for_the_backbone(prefix, dataset):
    dataset_cfg = os.path.join(CONFIGS, "datasets", f"{dataset}_caption.yaml")
    vit = setup_cfg(dataset_cfg, _method("TaIDPT", f"{prefix}_{dataset}"))
    _check_backbone(vit, BACKBONES[prefix])
    rn50 = _flat(setup_cfg(dataset_cfg, _method("TaIDPT", f"rn50_{dataset}")))
    changed = {key for key, value in _flat(vit).items() if rn50[key] != value}
    assert changed <= BACKBONE_KEYS and "MODEL.BACKBONE.NAME" in changed


@pytest.mark.parametrize("prefix", list(BACKBONES))
def test_zeroshot_vit_configs_are_the_rn50_one_but_for_the_backbone(prefix):
    vit = setup_cfg(config_file=_method("ZeroshotCLIP", prefix))
    _check_backbone(vit, BACKBONES[prefix])
    rn50 = _flat(setup_cfg(config_file=_method("ZeroshotCLIP", "rn50")))
    changed = {key for key, value in _flat(vit).items() if rn50[key] != value}
    assert changed <= BACKBONE_KEYS


def test_every_vit_config_is_tested():
    on_disk = {(trainer, name[:-5]) for trainer in ("TaIDPT", "ZeroshotCLIP")
               for name in os.listdir(os.path.join(CONFIGS, "trainers", trainer))
               if name.startswith("vit_")}
    expected = {("TaIDPT", f"{p}_{d}") for p in BACKBONES for d in DATASETS}
    assert on_disk == expected | {("ZeroshotCLIP", p) for p in BACKBONES}


# --- sizes from the backbone ------------------------------------------------------------------
def test_context_length_and_resolution_come_from_a_vit_file(tiny_vit_file):
    cfg = setup_cfg(opts=["MODEL.BACKBONE.PATH", tiny_vit_file, "INPUT.SIZE", "(32, 32)"])
    model = load_backbone(cfg)
    assert backbone_context_length(cfg) == model.context_length == 32
    assert backbone_resolution(model) == 32
    assert backbone_resolution(load_clip(tiny_vit_file)) == GEOMETRIES["tiny-vit"].image_resolution


def test_input_size_is_checked_against_the_backbone(tiny_vit_file, tiny_clip_file, caplog):
    vit = load_clip(tiny_vit_file)
    caplog.set_level(logging.INFO, logger="taidpt.models.backbone")

    def size_records():  # other taidpt loggers may log too (their level is set by other tests)
        return [r for r in caplog.records if r.name == "taidpt.models.backbone"]

    check_input_size(setup_cfg(opts=["INPUT.SIZE", "(32, 32)"]), vit)
    assert not size_records()
    check_input_size(setup_cfg(opts=["INPUT.SIZE", "(64, 48)", "MODEL.BACKBONE.PATH", tiny_vit_file]), vit)
    [record] = size_records()
    assert record.levelno == logging.WARNING
    assert "INPUT.SIZE 64x48 differs from the 32 px" in record.getMessage()
    assert "8x6 patch grid" in record.getMessage() and tiny_vit_file in record.getMessage()
    with pytest.raises(ValueError, match="INPUT.SIZE 36x32 is not a multiple of the 8 px patches"):
        check_input_size(setup_cfg(opts=["INPUT.SIZE", "(36, 32)"]), vit)
    caplog.clear()
    check_input_size(setup_cfg(opts=["INPUT.SIZE", "(100, 100)"]), load_clip(tiny_clip_file))
    [record] = size_records()  # a ResNet: any size, INFO (its dense features use no positions)
    assert record.levelno == logging.INFO and "differs from the 64 px" in record.getMessage()


# --- zero-shot ViT equals stock CLIP ----------------------------------------------------------
def _interpolated_copy(model, size):
    """Stock CLIP whose ViT positional embedding is resized (bicubic) to ``size`` px inputs."""
    copy = random_clip("tiny-vit", seed=1)
    copy.load_state_dict(model.state_dict())
    pos = copy.visual.positional_embedding.data
    side, grid = round((pos.shape[0] - 1) ** 0.5), size // copy.visual.conv1.kernel_size[0]
    patches = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    copy.visual.positional_embedding = torch.nn.Parameter(
        torch.cat([pos[:1], patches.permute(0, 2, 3, 1).reshape(grid * grid, -1)]))
    return copy


@pytest.mark.parametrize("clip_name, size", [
    ("tiny_vit_file", 32),       # the model's own size
    ("b32_shaped_file", None),   # vit_b32.yaml's size (224), the model's too
    ("tiny_vit_file", None),     # vit_b32.yaml's size on a 32 px model: positions interpolated
])
@torch.no_grad()
def test_zeroshot_vit_global_equals_stock_encode_image(request, image_root, clip_name, size):
    clip_file = request.getfixturevalue(clip_name)
    opts = ["MODEL.BACKBONE.PATH", clip_file, "DATALOADER.NUM_WORKERS", "0", "USE_CUDA", "False"]
    if size is not None:
        opts += ["INPUT.SIZE", f"({size}, {size})"]
    cfg = setup_cfg(os.path.join(CONFIGS, "datasets", "image_list.yaml"),
                    _method("ZeroshotCLIP", "vit_b32"),
                    {"DATASET.ROOT": str(image_root), "TRAINER.NAME": "ZeroshotCLIP"}, opts)
    trainer = build_trainer(cfg)
    images = next(iter(trainer.test_loader))["img"]
    side = size or 224
    assert images.shape[1:] == (3, side, side)
    model = trainer.model
    stock = model.clip if side == backbone_resolution(model.clip) else _interpolated_copy(model.clip, side)
    expected = F.normalize(stock.encode_image(images), dim=-1)
    global_logits, _ = model(images)
    assert torch.allclose(global_logits, model.scale * expected @ model.text_features.t(), atol=1e-4)


# --- end to end through train.py --------------------------------------------------------------
def _results(run_dir):
    return json.loads((run_dir / "results_test.json").read_text())["results"]


@pytest.mark.slow
def test_taidpt_and_zeroshot_vit_end_to_end(tmp_path, image_root, tiny_vit_file):
    """vit_b16_voc2007.yaml as shipped (INPUT.SIZE 224: 28 x 28 patches of the 32 px tiny ViT),
    shrunk to 2 epochs on a caption file; then ``--eval-only`` and zero-shot."""
    dataset = ["--root", str(image_root), "--seed", "1",
               "--dataset-config-file", os.path.join(CONFIGS, "datasets", "image_list.yaml")]
    common = ["--trainer", "TaIDPT", *dataset, "--config-file", _method("TaIDPT", "vit_b16_voc2007")]
    opts = ["MODEL.BACKBONE.PATH", tiny_vit_file, "DATASET.CAPTIONS.SOURCE", "text",
            "DATASET.CAPTIONS.PATH", "captions.txt", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "16",
            "DATALOADER.TEST.BATCH_SIZE", "8", "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.002",
            "OPTIM.WARMUP_EPOCH", "-1", "TRAIN.PRINT_FREQ", "1", "TRAINER.TAIDPT.N_CTX", "4"]
    out = tmp_path / "out"
    run_train_py(*common, "--output-dir", str(out), *opts, cwd=tmp_path)
    log = (out / "log.txt").read_text()
    losses = epoch_losses(log)
    assert len(losses) == 2 and losses[1] < losses[0], losses
    assert "28x28 patch grid" in log  # the size check's warning
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()
    trained = _results(out)
    assert set(trained) == {"mAP", "mAP_global", "mAP_local", "mAP_merged"}
    assert all(0.0 < value <= 100.0 for value in trained.values())

    evaluated = tmp_path / "eval"
    run_train_py(*common, "--output-dir", str(evaluated), "--eval-only", "--model-dir", str(out),
                 "--load-epoch", "2", *opts, cwd=tmp_path)
    assert _results(evaluated) == pytest.approx(trained, abs=1e-6)

    zeroshot = tmp_path / "zeroshot"
    run_train_py("--trainer", "ZeroshotCLIP", "--eval-only", *dataset, "--output-dir", str(zeroshot),
                 "--config-file", _method("ZeroshotCLIP", "vit_b32"), "MODEL.BACKBONE.PATH",
                 tiny_vit_file, "DATALOADER.NUM_WORKERS", "0", cwd=tmp_path)
    assert set(_results(zeroshot)) == {"mAP", "mAP_global", "mAP_local", "mAP_merged"}
