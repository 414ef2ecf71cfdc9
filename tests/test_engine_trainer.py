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


# --- exact resume and checkpoint metadata (issue 12) -----------------------------------------
if "ToyImagesRenamed" not in DATASET_REGISTRY:
    @DATASET_REGISTRY.register()
    class ToyImagesRenamed(DatasetBase):
        def __init__(self, cfg):
            items = _toy_items(cfg.DATASET.ROOT)
            super().__init__(["rouge", "vert", "bleu"], test=items, train_x=items)

    @TRAINER_REGISTRY.register()
    class ToyBuffered(ToyLinear):
        """A class-name buffer that checkpoints hold and loading drops, as the token buffers."""

        ignored_checkpoint_keys = ("2.names",)

        def build_model(self):
            super().build_model()
            self.model[2].register_buffer("names", torch.tensor([float(len(n)) for n in self.classnames]))


@pytest.fixture
def trainer_log():
    """The messages ``taidpt.engine.trainer`` logs during the test (INFO and up)."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("taidpt.engine.trainer")
    level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    yield lambda: "\n".join(r.getMessage() for r in records)
    log.removeHandler(handler)
    log.setLevel(level)


def _build(cfg):
    from taidpt.engine import build_trainer
    from taidpt.engine.utils import set_random_seed

    set_random_seed(cfg.SEED)  # as train.py does
    return build_trainer(cfg)


def _checkpoint(tmp_path, epoch, folder="linear"):
    return torch.load(tmp_path / "out" / folder / f"model.pth.tar-{epoch}", weights_only=True)


def test_resume_after_a_crash_continues_bit_for_bit(tmp_path, trainer_log):
    """Train 4 epochs; roll the run back to its epoch-2 checkpoint (a crash in epoch 3) and
    resume: epochs 3-4 redo exactly the same steps (shuffle order, random flips, LR, momentum)."""
    opts = {"OPTIM.MAX_EPOCH": 4, "INPUT.TRANSFORMS": ["random_flip"], "OPTIM.LR_SCHEDULER": "cosine"}
    _build(_cfg(tmp_path, **opts)).train()
    final = _checkpoint(tmp_path, 4)
    folder = tmp_path / "out" / "linear"
    for epoch in (3, 4):
        os.remove(folder / f"model.pth.tar-{epoch}")
    (folder / "checkpoint").write_text("model.pth.tar-2\n")

    resumed = _build(_cfg(tmp_path, **opts))
    resumed.train()
    assert "starting at epoch 3" in trainer_log()
    again = _checkpoint(tmp_path, 4)
    for key, value in final["state_dict"].items():
        assert torch.equal(again["state_dict"][key], value), key
    assert again["optimizer"]["state"][0]["momentum_buffer"].equal(
        final["optimizer"]["state"][0]["momentum_buffer"])
    assert again["rng"]["generators"]["train_loader_x"].equal(final["rng"]["generators"]["train_loader_x"])


def test_checkpoints_describe_their_run(tmp_path):
    _build(_cfg(tmp_path, **{"OPTIM.MAX_EPOCH": 2})).train()
    assert (tmp_path / "out" / "linear" / "model.pth.tar-1").is_file()  # every epoch by default
    run = _checkpoint(tmp_path, 2)["run"]
    assert run == {"trainer": "ToyLinear", "classnames": ["red", "green", "blue"],
                   "backbone": "RN50", "n_ctx": None, "csc": None}


def test_resume_dir_without_checkpoint_is_an_error_unless_it_is_the_fresh_output_dir(tmp_path, trainer_log):
    with pytest.raises(FileNotFoundError, match=r"RESUME \(--resume\) .*nowhere holds no checkpoint"):
        _build(_cfg(tmp_path, RESUME=str(tmp_path / "nowhere"))).before_train()
    fresh = _build(_cfg(tmp_path, RESUME=str(tmp_path / "out")))
    fresh.before_train()
    assert fresh.start_epoch == 0 and "training from scratch" in trainer_log()
    fresh.close_writer()
    _build(_cfg(tmp_path, **{"OPTIM.MAX_EPOCH": 1})).train()
    with pytest.raises(FileNotFoundError, match=r"looks like a model folder: give its parent .*out\."):
        _build(_cfg(tmp_path, RESUME=str(tmp_path / "out" / "linear"))).before_train()


def test_next_run_removes_what_a_killed_write_left(tmp_path, trainer_log):
    out = tmp_path / "out"
    (out / "linear").mkdir(parents=True)
    stale = [out / "linear" / f".model.pth.tar-2.{'a1' * 16}.tmp", out / f".results_test.json.{'0f' * 16}.tmp"]
    kept = [out / "linear" / ".notes.tmp", out / f".x.{'a1' * 15}.tmp", out / "mine.tmp"]
    for path in stale + kept:
        path.write_bytes(b"partial")
    trainer = _build(_cfg(tmp_path))
    trainer.before_train()
    trainer.close_writer()
    assert [p for p in stale + kept if p.exists()] == kept
    assert f"Removed {stale[0]}" in trainer_log()
    (out / "linear" / ".notes.tmp").unlink()
    stale[0].write_bytes(b"")  # a folder holding only a killed write's temp file goes too
    trainer = _build(_cfg(tmp_path))
    trainer.before_train()
    trainer.close_writer()
    assert not (out / "linear").exists()


def test_another_class_list_needs_the_flag_and_resume_refuses_it(tmp_path, trainer_log):
    _build(_cfg(tmp_path, **{"OPTIM.MAX_EPOCH": 1, "TRAINER.NAME": "ToyBuffered"})).train()
    renamed = {"DATASET.NAME": "ToyImagesRenamed", "TRAINER.NAME": "ToyBuffered"}
    other = _build(_cfg(tmp_path, OUTPUT_DIR=str(tmp_path / "eval"), **renamed))
    with pytest.raises(ValueError, match=r"trained on other classes .*checkpoint 3 classes \[red, "
                                         r"green, blue\], this run 3 classes \[rouge.*--allow-other-classes"):
        other.load_model(str(tmp_path / "out"))
    allowed = _build(_cfg(tmp_path, OUTPUT_DIR=str(tmp_path / "eval"), **renamed,
                          **{"MODEL.ALLOW_OTHER_CLASSES": True}))
    allowed.load_model(str(tmp_path / "out"))
    assert "loading it on this class list (MODEL.ALLOW_OTHER_CLASSES)" in trainer_log()
    assert allowed.model[2].names.tolist() == [5.0, 4.0, 4.0]  # this run's buffer, not the file's
    with pytest.raises(ValueError, match=r"Cannot resume from .*classnames: checkpoint 3 classes "
                                         r"\[red, green, blue\], this run 3 classes \[rouge, vert, bleu\] "
                                         r"\(first difference at 0: 'red' vs 'rouge'\)"):
        _build(_cfg(tmp_path, **renamed)).before_train()


def test_resume_drops_the_ignored_buffers(tmp_path):
    _build(_cfg(tmp_path, **{"OPTIM.MAX_EPOCH": 1, "TRAINER.NAME": "ToyBuffered"})).train()
    path = tmp_path / "out" / "linear" / "model.pth.tar-1"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["2.names"] = torch.zeros(3)
    torch.save(checkpoint, path)
    resumed = _build(_cfg(tmp_path, **{"TRAINER.NAME": "ToyBuffered"}))
    resumed.before_train()
    resumed.close_writer()
    assert resumed.start_epoch == 1 and resumed.model[2].names.tolist() == [3.0, 5.0, 4.0]


def test_checkpoints_without_metadata_still_load_and_resume(tmp_path, trainer_log):
    _build(_cfg(tmp_path, **{"OPTIM.MAX_EPOCH": 1})).train()
    path = tmp_path / "out" / "linear" / "model.pth.tar-1"
    checkpoint = torch.load(path, weights_only=True)
    old = {k: checkpoint[k] for k in ("state_dict", "epoch", "optimizer", "scheduler", "val_result")}
    torch.save(old, path)
    _build(_cfg(tmp_path)).load_model(str(tmp_path / "out"), epoch=1)
    assert "holds no run metadata" in trainer_log()
    resumed = _build(_cfg(tmp_path))
    resumed.before_train()
    resumed.close_writer()
    assert resumed.start_epoch == 1 and "holds no RNG state" in trainer_log()


def test_console_log_follows_a_replaced_stdout(monkeypatch):
    """A harness may swap and close sys.stdout after set-up: logs go to the current one."""
    import io
    import logging

    from taidpt.engine.utils import setup_logger

    first = io.StringIO()
    monkeypatch.setattr("sys.stdout", first)
    setup_logger("")
    second = io.StringIO()
    monkeypatch.setattr("sys.stdout", second)
    first.close()
    logging.getLogger("taidpt.test").info("after the swap")
    assert "after the swap" in second.getvalue()
