"""Issue-13 item 3: evaluation on cached frozen image features (TEST.FEATURE_CACHE) equals direct
evaluation, for any prompts; a cache of another CLIP, image list or transform is another key; a
torn or tampered cache is rebuilt, never used."""
import logging
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T

from fake_data import REPO, TOY_CLASSES, TOY_SYNONYMS, write_image_list
from taidpt.clip import random_clip, save_clip
from taidpt.config import setup_cfg
from taidpt.engine import build_trainer
from taidpt.engine.data import ImageDataset
from taidpt.models.image_feature_cache import (cached_image_features, clip_weights_digest,
                                               image_feature_dir)

CONFIGS = {"TaIDPT": "TaIDPT/rn50_voc2007_debug.yaml", "ZeroshotCLIP": "ZeroshotCLIP/rn50.yaml",
           "DualCoOp": "DualCoOp/tiny_synthetic.yaml"}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_image_list(str(root), TOY_CLASSES, n=7, synonyms=TOY_SYNONYMS, size=40)
    return root


def _trainer(root, out, clip_file, name, cache, *opts):
    cfg = setup_cfg(os.path.join(REPO, "configs/datasets/image_list.yaml"),
                    os.path.join(REPO, "configs/trainers", CONFIGS[name]),
                    {"DATASET.ROOT": str(root), "OUTPUT_DIR": str(out), "TRAINER.NAME": name},
                    ["MODEL.BACKBONE.PATH", clip_file, "INPUT.SIZE", "(64, 64)",
                     "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "3",
                     "DATASET.CAPTIONS.SOURCE", "", "TEST.FEATURE_CACHE", str(cache), *opts])
    return build_trainer(cfg)


def _scores(out):
    with np.load(out / "predictions_test.npz") as npz:
        return {k: npz[k] for k in npz.files if k.startswith("scores_")}, list(npz["image_ids"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_evaluation_equals_direct_evaluation(tmp_path, image_root, tiny_clip_file, name, caplog):
    direct = _trainer(image_root, tmp_path / "direct", tiny_clip_file, name, False)
    cached = _trainer(image_root, tmp_path / "cached", tiny_clip_file, name, True)
    if name != "ZeroshotCLIP":  # the same (randomly initialised) prompts in both
        cached.model.prompt_learner.load_state_dict(direct.model.prompt_learner.state_dict())
    for round_ in range(2):  # the second round: other prompts, features read back from the cache
        if round_ and name != "ZeroshotCLIP":
            for trainer in (direct, cached):
                with torch.no_grad():
                    trainer.model.prompt_learner.ctx.add_(0.5)
        with caplog.at_level(logging.INFO, logger="taidpt"):
            caplog.clear()
            results = direct.test(), cached.test()
        assert results[0] == pytest.approx(results[1], abs=1e-4)
        expected, ids = _scores(tmp_path / "direct")
        got, cached_ids = _scores(tmp_path / "cached")
        assert cached_ids == ids and expected.keys() == got.keys() and len(ids) == 7
        for head, values in expected.items():
            np.testing.assert_allclose(got[head], values, rtol=0, atol=1e-5, err_msg=head)
        built = "Cached the image features of 7 images" in caplog.text
        assert built == (round_ == 0), caplog.text
        assert ("from the cache" in caplog.text) == (round_ == 1)


def test_unsupported_trainer_refuses_the_key(tmp_path, image_root, tiny_clip_file):
    with pytest.raises(ValueError, match="TEST.FEATURE_CACHE"):
        cfg = setup_cfg(os.path.join(REPO, "configs/datasets/image_list.yaml"),
                        os.path.join(REPO, "configs/trainers/CoOpML/tiny_synthetic.yaml"),
                        {"DATASET.ROOT": str(image_root), "OUTPUT_DIR": str(tmp_path),
                         "TRAINER.NAME": "CoOpML"},
                        ["MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(64, 64)",
                         "DATASET.CAPTIONS.SOURCE", "", "TEST.FEATURE_CACHE", "True"])
        build_trainer(cfg)


def test_changed_clip_images_or_transform_and_torn_caches_are_rebuilt(tmp_path, image_root,
                                                                       tiny_clip_file, caplog):
    trainer = _trainer(image_root, tmp_path / "out", tiny_clip_file, "TaIDPT", True)
    loader, clip_model = trainer.test_loader, trainer.clip_model

    def features(model=clip_model, loader=loader):
        extract = lambda images: trainer.model.image_features(images)  # noqa: E731
        return cached_image_features(loader, extract, clip_weights_digest(model), "kind",
                                     trainer.device)

    first = features()
    assert first.built and first.global_features.shape[0] == 7 and first.dense.shape[0] == 7
    assert not features().built  # same key: read back
    other = random_clip("tiny", seed=1)
    assert clip_weights_digest(other) != clip_weights_digest(clip_model)
    assert features(model=other).folder != first.folder  # another CLIP: another cache

    resized = ImageDataset(loader.dataset.items, T.Compose([T.Resize(32), loader.dataset.transform]))
    assert features(loader=DataLoader(resized, batch_size=3)).folder != first.folder  # transform

    image = image_root / "images" / "test_0003.png"
    stat = os.stat(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert features().folder != first.folder  # a changed image file: another key
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    expected = np.array(first.dense)
    dense = os.path.join(first.folder, "dense.npy")
    with open(dense, "r+b") as f:
        f.truncate(os.path.getsize(dense) - 64)
    with caplog.at_level(logging.WARNING, logger="taidpt"):
        rebuilt = features()
    assert rebuilt.built and rebuilt.folder == first.folder and "torn write" in caplog.text
    np.testing.assert_array_equal(rebuilt.dense, expected)

    meta = os.path.join(first.folder, "meta.json")
    text = open(meta).read()
    with open(meta, "w") as f:
        f.write(text.replace(os.path.basename(first.folder), "0" * 32))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="taidpt"):
        assert features().built and "is not" in caplog.text
    assert not [n for n in os.listdir(first.folder) if n.endswith(".tmp")]
    assert os.path.dirname(first.folder) == image_feature_dir()
