"""``MODEL.INIT_WEIGHTS`` initialises the prompt learner from a checkpoint file (issue 11, item 3)."""
import os

import pytest
import torch

from fake_data import write_image_list
from taidpt.config import setup_cfg
from taidpt.engine import build_trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trainer(tmp_path, tiny_clip_file, *opts, trainer="TaIDPT", seed=1):
    root = tmp_path / "data"
    if not root.is_dir():
        write_image_list(str(root), ["cat", "dog", "car"], n=4, size=32)
    cfg = setup_cfg(os.path.join(REPO, "configs/datasets/image_list.yaml"), opts=[
        "TRAINER.NAME", trainer, "DATASET.ROOT", str(root), "OUTPUT_DIR", str(tmp_path / "out"),
        "MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(32, 32)", "USE_CUDA", "False",
        "DATALOADER.NUM_WORKERS", "0", "TRAINER.TAIDPT.N_CTX", "4", "SEED", str(seed), *opts])
    torch.manual_seed(seed)
    return build_trainer(cfg)


def test_init_weights_loads_the_prompt_learner(tmp_path, tiny_clip_file):
    source = _trainer(tmp_path, tiny_clip_file, seed=1)
    with torch.no_grad():
        source.model.prompt_learner.ctx.add_(1.0)  # not what any seed draws
    source.save_model(4, str(tmp_path / "run"))
    path = tmp_path / "run" / "prompt_learner" / "model.pth.tar-5"
    target = _trainer(tmp_path, tiny_clip_file, "MODEL.INIT_WEIGHTS", str(path), seed=2)
    for key in ("ctx", "ctx_double", "temperature", "spatial_T", "ranking_scale"):
        assert torch.equal(getattr(target.model.prompt_learner, key),
                           getattr(source.model.prompt_learner, key)), key
    assert target.start_epoch == 0  # initialised, not resumed
    fresh = _trainer(tmp_path, tiny_clip_file, seed=2)
    assert not torch.equal(fresh.model.prompt_learner.ctx, target.model.prompt_learner.ctx)


def test_init_weights_errors_name_the_key_and_fix(tmp_path, tiny_clip_file):
    source = _trainer(tmp_path, tiny_clip_file)
    source.save_model(0, str(tmp_path / "run"))
    path = str(tmp_path / "run" / "prompt_learner" / "model.pth.tar-1")
    with pytest.raises(FileNotFoundError, match="MODEL.INIT_WEIGHTS: no file at .*missing.pth.*"
                                                "prompt_learner/model.pth.tar-<epoch>"):
        _trainer(tmp_path, tiny_clip_file, "MODEL.INIT_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match=r"MODEL.INIT_WEIGHTS checkpoint .* has ctx of shape \(4, .*N_CTX"):
        _trainer(tmp_path, tiny_clip_file, "MODEL.INIT_WEIGHTS", path, "TRAINER.TAIDPT.N_CTX", "8")
    torch.save({"ctx": torch.zeros(4, 8)}, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="is not a trainer checkpoint"):
        _trainer(tmp_path, tiny_clip_file, "MODEL.INIT_WEIGHTS", str(tmp_path / "bare.pth"))
    with pytest.raises(ValueError, match="trainer ZeroshotCLIP trains no model.*unset MODEL.INIT_WEIGHTS"):
        _trainer(tmp_path, tiny_clip_file, "MODEL.INIT_WEIGHTS", path, trainer="ZeroshotCLIP")
