"""The trainer life cycle on a toy image dataset: training, checkpoints, resume, evaluation."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from taidpt.config import get_cfg_default
from taidpt.datasets.base import DATASET_REGISTRY, DatasetBase, ImageItem
from taidpt.engine.optim import build_lr_scheduler, build_optimizer
from taidpt.engine.registry import TRAINER_REGISTRY
from taidpt.engine.trainer import SimpleTrainer


def _toy_items(root, n=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        label = -np.ones(classes, dtype=np.float32)
        label[i % classes] = 1
        colour = np.zeros((8, 8, 3), dtype=np.uint8)
        colour[..., i % classes] = 200
        colour = np.clip(colour + rng.integers(0, 30, colour.shape), 0, 255).astype(np.uint8)
        path = os.path.join(root, f"{i}.png")
        Image.fromarray(colour).save(path)
        items.append(ImageItem(path, label))
    return items


if "ToyImages" not in DATASET_REGISTRY:
    @DATASET_REGISTRY.register()
    class ToyImages(DatasetBase):
        def __init__(self, cfg):
            items = _toy_items(cfg.DATASET.ROOT)
            super().__init__(["red", "green", "blue"], test=items, train_x=items)

    @TRAINER_REGISTRY.register()
    class ToyLinear(SimpleTrainer):
        def build_model(self):
            self.model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, self.num_classes))
            optim = build_optimizer(self.model, self.cfg.OPTIM)
            self.register_model("linear", self.model, optim, build_lr_scheduler(optim, self.cfg.OPTIM))

        def forward_backward(self, batch):
            images, labels = self.parse_batch_train(batch)
            loss = nn.functional.binary_cross_entropy_with_logits(self.model(images), (labels > 0).float())
            self.model_backward_and_update(loss)
            return {"loss": loss.item()}


def _cfg(tmp_path, **extra):
    cfg = get_cfg_default()
    cfg.merge_from_list(["DATASET.NAME", "ToyImages", "DATASET.ROOT", str(tmp_path / "data"),
                         "TRAINER.NAME", "ToyLinear", "OUTPUT_DIR", str(tmp_path / "out"),
                         "INPUT.SIZE", (8, 8), "DATALOADER.NUM_WORKERS", 0, "USE_CUDA", False,
                         "DATALOADER.TRAIN_X.BATCH_SIZE", 4, "OPTIM.LR", 0.5, "OPTIM.MAX_EPOCH", 3,
                         "SEED", 1, "TRAIN.PRINT_FREQ", 1])
    for key, value in extra.items():
        cfg.merge_from_list([key, value])
    return cfg


def test_training_saves_dassl_checkpoints_and_logs(tmp_path):
    from taidpt.engine import build_trainer

    trainer = build_trainer(_cfg(tmp_path))
    trainer.train()
    folder = tmp_path / "out" / "linear"
    assert (folder / "model.pth.tar-3").is_file()
    assert (folder / "checkpoint").read_text().strip() == "model.pth.tar-3"
    assert os.listdir(tmp_path / "out" / "tensorboard")
    results = trainer.test()
    assert results["mAP"] > 90.0  # the toy task is separable by colour
    record = json.loads((tmp_path / "out" / "results_test.json").read_text())
    assert record["results"] == pytest.approx(dict(results)) and record["epoch"] == 3


def test_resume_continues_from_the_saved_epoch(tmp_path):
    from taidpt.engine import build_trainer

    first = build_trainer(_cfg(tmp_path, **{"OPTIM.MAX_EPOCH": 2}))
    first.train()
    resumed = build_trainer(_cfg(tmp_path, **{"OPTIM.MAX_EPOCH": 3}))
    resumed.before_train()
    assert resumed.start_epoch == 2
    assert torch.equal(resumed.model[2].weight, first.model[2].weight)
    resumed.close_writer()


def test_best_val_writes_model_best_and_load_model_reads_it(tmp_path):
    from taidpt.engine import build_trainer

    trainer = build_trainer(_cfg(tmp_path, **{"TEST.FINAL_MODEL": "best_val"}))
    trainer.train()
    assert (tmp_path / "out" / "linear" / "model-best.pth.tar").is_file()
    fresh = build_trainer(_cfg(tmp_path))
    fresh.load_model(str(tmp_path / "out"))
    best = torch.load(tmp_path / "out" / "linear" / "model-best.pth.tar", weights_only=False)
    assert torch.equal(fresh.model[2].weight, best["state_dict"]["2.weight"])


def test_load_model_errors_name_the_path(tmp_path):
    from taidpt.engine import build_trainer

    trainer = build_trainer(_cfg(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"model\.pth\.tar-7"):
        trainer.load_model(str(tmp_path / "nowhere"), epoch=7)


def test_shape_mismatch_on_load_is_explained(tmp_path):
    from taidpt.engine import build_trainer

    trainer = build_trainer(_cfg(tmp_path, **{"OPTIM.MAX_EPOCH": 1}))
    trainer.train()
    other = build_trainer(_cfg(tmp_path))
    other.model[2] = nn.Linear(3, 5)
    other._models["linear"] = other.model
    with pytest.raises(ValueError, match="shape"):
        other.load_model(str(tmp_path / "out"), epoch=1)
