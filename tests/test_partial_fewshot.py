"""Partial labels, few-shot subsets and val strides of the training images (SPEC 7)."""
import logging
import os

import numpy as np
import pytest

import fake_data
from taidpt.datasets import train_labels
from taidpt.datasets.base import ImageItem, build_dataset, label_matrix
from taidpt.datasets.coco2014 import COCO2014
from taidpt.datasets.nuswide import NUSWIDE
from taidpt.datasets.synthetic import Synthetic
from taidpt.datasets.train_labels import (finalize_train_split, fewshot_indices, partial_mask,
                                          run_seed)
from taidpt.engine.defaults import get_engine_defaults


def make_cfg(root="", name="", **dataset_keys):
    cfg = get_engine_defaults()
    NUSWIDE.extend_cfg(cfg)
    COCO2014.extend_cfg(cfg)
    Synthetic.extend_cfg(cfg)
    cfg.DATASET.ROOT, cfg.DATASET.NAME = str(root), name
    for key, value in dataset_keys.items():
        if key == "SEED":
            cfg.SEED = value
        else:
            cfg.DATASET[key] = value
    return cfg


def random_items(n=300, c=12, seed=0):
    """``n`` items with 1 / -1 labels; class c is positive with probability ~ (c + 1) / (3 c)."""
    rates = (np.arange(c) + 1) / (3.0 * c)
    labels = np.where(np.random.RandomState(seed).random_sample((n, c)) < rates, 1.0, -1.0)
    return [ImageItem(f"/data/images/{i:05d}.jpg", row.astype(np.float32))
            for i, row in enumerate(labels)]


def cache_files(kind):
    folder = os.path.join(os.environ["TAIDPT_CACHE"], kind)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# ---------------------------------------------------------------- the mask rule
def test_mask_equals_the_reference_draw_for_seed_1():
    np.random.seed(1)
    reference = np.random.random((500, 80)) < 0.3
    np.testing.assert_array_equal(partial_mask(500, 80, 0.3, seed=1), reference)
    assert run_seed(make_cfg()) == 1 and run_seed(make_cfg(SEED=7)) == 7


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_is_p(p):
    mask = partial_mask(20000, 80, p, seed=3)
    assert mask.shape == (20000, 80) and mask.dtype == np.bool_
    assert abs(mask.mean() - p) < 0.01 * p
    assert abs(mask.mean(axis=0) - p).max() < 0.05  # every class, not just the total


def test_unknown_labels_are_zero_and_known_ones_unchanged(caplog):
    items = random_items()
    with caplog.at_level(logging.INFO, logger="taidpt.datasets.train_labels"):
        out = finalize_train_split(make_cfg(PARTIAL_PROB=0.4, SEED=5), "Fake", items)
    full, partial = label_matrix(items), label_matrix(out)
    mask = partial_mask(*full.shape, 0.4, seed=5)
    np.testing.assert_array_equal(partial[mask], full[mask])
    assert (partial[~mask] == 0).all() and not np.signbit(partial[~mask]).any()  # no -0.0
    assert [i.impath for i in out] == [i.impath for i in items]
    assert f"{100 * mask.mean():.2f}% of the 300 x 12 training labels are known" in caplog.text


def test_mask_file_same_seed_same_bytes_other_seed_differs(tmp_path):
    items = random_items()
    paths = []
    for cache, seed in (("a", 2), ("b", 2), ("c", 3)):
        cfg = make_cfg(tmp_path, PARTIAL_PROB=0.5, SEED=seed)
        cfg.DATASET.CAPTIONS.CACHE_DIR = cache  # relative to DATASET.ROOT: separate caches
        finalize_train_split(cfg, "Fake", items)
        (name,) = os.listdir(tmp_path / cache / "partial")
        assert name.startswith("Fake-") and name.endswith(f"-p0.5-seed{seed}.npy")
        paths.append(tmp_path / cache / "partial" / name)
    assert paths[0].name == paths[1].name and paths[0].read_bytes() == paths[1].read_bytes()
    assert not np.array_equal(np.load(paths[0]), np.load(paths[2]))
    np.testing.assert_array_equal(np.load(paths[0]), partial_mask(300, 12, 0.5, seed=2))


def test_mask_is_reused_and_a_misfit_file_rebuilt(monkeypatch, caplog):
    items, cfg = random_items(seed=1), make_cfg(PARTIAL_PROB=0.3, SEED=11)
    first = label_matrix(finalize_train_split(cfg, "Reuse", items))
    (name,) = [n for n in cache_files("partial") if n.startswith("Reuse-")]
    path = os.path.join(os.environ["TAIDPT_CACHE"], "partial", name)
    with monkeypatch.context() as patch, \
            caplog.at_level(logging.INFO, logger="taidpt.datasets.train_labels"):
        patch.setattr(train_labels, "partial_mask", lambda *a: pytest.fail("mask redrawn"))
        np.testing.assert_array_equal(label_matrix(finalize_train_split(cfg, "Reuse", items)),
                                      first)
    assert "partial-label mask (reused)" in caplog.text
    np.save(path, np.ones((5, 12), dtype=bool))
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(label_matrix(finalize_train_split(cfg, "Reuse", items)),
                                      first)
    assert f"Rebuilding Reuse partial-label mask {path}: shape (5, 12)" in caplog.text
    assert np.load(path).shape == (300, 12)


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, "half"])
def test_bad_partial_prob_names_the_key(p):
    with pytest.raises(ValueError, match=r"DATASET.PARTIAL_PROB must be a number in \(0, 1\]"):
        finalize_train_split(make_cfg(PARTIAL_PROB=p), "Fake", random_items(n=4))


def test_full_labels_write_nothing():
    items = random_items(n=20)
    out = finalize_train_split(make_cfg(), "Full", items)
    np.testing.assert_array_equal(label_matrix(out), label_matrix(items))
    assert not [n for n in cache_files("partial") + cache_files("fewshot") if "Full" in n]


# ---------------------------------------------------------------- few-shot
def test_fewshot_visits_the_rarest_class_first():
    labels = -np.ones((4, 3), dtype=np.float32)
    labels[0, 0] = labels[1, [0, 1]] = labels[2, 1] = labels[3, :] = 1  # counts 3, 3, 1
    for seed in range(5):  # class 2 goes first: its only image covers all three classes
        assert fewshot_indices(labels, 1, seed).tolist() == [3]


@pytest.mark.parametrize("k", [1, 4, 16])
def test_fewshot_every_class_has_k_positives(k):
    labels = label_matrix(random_items(n=2000, c=20, seed=4))
    subset = fewshot_indices(labels, k, seed=9)
    counts = (labels[subset] > 0).sum(axis=0)
    assert counts.min() >= k and len(np.unique(subset)) == len(subset) == len(set(subset))
    assert counts[np.argmin((labels > 0).sum(axis=0))] == k  # the rarest class gets exactly K
    assert len(subset) <= 20 * k  # never more than one new image per missing positive
    assert np.array_equal(subset, fewshot_indices(labels, k, seed=9))
    assert not np.array_equal(subset, fewshot_indices(labels, k, seed=10))


def test_fewshot_rare_class_takes_all_and_warns(caplog):
    items = random_items(n=200, c=6, seed=2)
    labels = label_matrix(items)
    labels[:, 0] = -1
    labels[[7, 50], 0] = 1  # two positives, K = 3
    items = [ImageItem(item.impath, row) for item, row in zip(items, labels)]
    names = ["ant", "bee", "cat", "dog", "eel", "fox"]
    with caplog.at_level(logging.INFO, logger="taidpt.datasets.train_labels"):
        out = finalize_train_split(make_cfg(NUM_SHOTS=3, SEED=0), "Few", items, classnames=names)
    counts = (label_matrix(out) > 0).sum(axis=0)
    assert counts[0] == 2 and counts[1:].min() >= 3
    assert {"/data/images/00007.jpg", "/data/images/00050.jpg"} <= {i.impath for i in out}
    assert "class ant has 2 positive training images, fewer than NUM_SHOTS 3" in caplog.text
    assert f"(NUM_SHOTS 3, seed 0): {len(out)} of 200 images" in caplog.text
    assert f"ant{2:>18}" in caplog.text and f"bee{counts[1]:>18}" in caplog.text
    full = {i.impath: i.label for i in items}
    for item in out:  # labels of chosen images stay full
        np.testing.assert_array_equal(item.label, full[item.impath])


def test_fewshot_subset_is_cached_and_verified(monkeypatch, caplog):
    items, cfg = random_items(n=400, seed=5), make_cfg(NUM_SHOTS=2, SEED=4)
    first = [i.impath for i in finalize_train_split(cfg, "Shots", items)]
    (name,) = [n for n in cache_files("fewshot") if n.startswith("Shots-")]
    assert name.endswith("-k2-seed4.npy")
    path = os.path.join(os.environ["TAIDPT_CACHE"], "fewshot", name)
    with monkeypatch.context() as patch, \
            caplog.at_level(logging.INFO, logger="taidpt.datasets.train_labels"):
        patch.setattr(train_labels, "fewshot_indices", lambda *a: pytest.fail("re-sampled"))
        assert [i.impath for i in finalize_train_split(cfg, "Shots", items)] == first
    assert "few-shot subset (reused)" in caplog.text
    np.save(path, np.array([0, 1]))  # fits the shape rules but misses classes
    with caplog.at_level(logging.WARNING):
        assert [i.impath for i in finalize_train_split(cfg, "Shots", items)] == first
    assert f"Rebuilding Shots few-shot subset {path}" in caplog.text


def test_fewshot_then_partial_labels():
    items = random_items(n=500, seed=6)
    cfg = make_cfg(NUM_SHOTS=3, PARTIAL_PROB=0.5, SEED=2)
    out = finalize_train_split(cfg, "Both", items)
    subset = fewshot_indices(label_matrix(items), 3, seed=2)
    mask = partial_mask(500, 12, 0.5, seed=2)  # drawn for all of train_x, rows of the subset
    assert [i.impath for i in out] == [items[i].impath for i in subset]
    np.testing.assert_array_equal(label_matrix(out),
                                  np.where(mask[subset], label_matrix(items)[subset], 0))


def test_keys_are_ignored_with_a_warning_without_training_images(caplog):
    with caplog.at_level(logging.WARNING):
        assert finalize_train_split(make_cfg(NUM_SHOTS=4), "Captions", []) == []
    assert "apply to training images, and none are read" in caplog.text


# ---------------------------------------------------------------- VOC 2007 files
@pytest.fixture
def voc(tmp_path):
    return tmp_path, fake_data.write_fake_voc(str(tmp_path), n_trainval=6)


def test_voc_rows_follow_trainval_txt_order(voc):
    root, expected = voc
    ids, labels = expected["trainval"]
    assert ids != sorted(ids)
    rows = fake_data.write_voc_partial(str(root), labels, 0.3)
    assert (rows == 0).sum() > (labels == 0).sum()
    dataset = build_dataset(make_cfg(root, "VOC2007_partial", PARTIAL_PROB=0.3))
    assert [os.path.basename(i.impath) for i in dataset.train_x] == [f"{i}.jpg" for i in ids]
    np.testing.assert_array_equal(label_matrix(dataset.train_x), rows)
    full = build_dataset(make_cfg(root, "VOC2007"))  # p = 1.0: ImageSets labels, no file read
    np.testing.assert_array_equal(label_matrix(full.train_x), labels)


def test_voc_partial_dir_may_be_absolute(voc, tmp_path_factory):
    root, expected = voc
    elsewhere = tmp_path_factory.mktemp("authors") / "partial-labels"
    rows = fake_data.write_voc_partial(str(root), expected["trainval"][1], 0.7, seed=1,
                                       directory=str(elsewhere))
    cfg = make_cfg(root, "VOC2007", PARTIAL_PROB=0.7, PARTIAL_DIR=str(elsewhere))
    np.testing.assert_array_equal(label_matrix(build_dataset(cfg).train_x), rows)


def test_voc_fewshot_takes_rows_of_the_subset(voc):
    root, expected = voc
    rows = fake_data.write_voc_partial(str(root), expected["trainval"][1], 0.5)
    dataset = build_dataset(make_cfg(root, "VOC2007", PARTIAL_PROB=0.5, NUM_SHOTS=1))
    subset = fewshot_indices(expected["trainval"][1], 1, seed=1)
    np.testing.assert_array_equal(label_matrix(dataset.train_x), rows[subset])


@pytest.mark.parametrize("problem,error,message", [
    ("missing", FileNotFoundError, "does not exist"),
    ("short", ValueError, "has 5 rows, expected 6"),
    ("columns", ValueError, "line 2: expected 20 comma-separated values"),
    ("value", ValueError, "line 1: expected 20 comma-separated values in 1/0/-1"),
])
def test_voc_bad_partial_file_is_named(voc, problem, error, message):
    root, expected = voc
    fake_data.write_voc_partial(str(root), expected["trainval"][1], 0.2)
    path = root / "partial" / "VOC2007" / "partial-labels" / "train_proportion_0.2.txt"
    lines = path.read_text().splitlines()
    if problem == "missing":
        path.unlink()
    elif problem == "short":
        path.write_text("\n".join(lines[:-1]) + "\n")
    elif problem == "columns":
        path.write_text("\n".join([lines[0], lines[1] + ",1"] + lines[2:]) + "\n")
    else:
        path.write_text("\n".join(["2" + lines[0][1:]] + lines[1:]) + "\n")
    with pytest.raises(error, match=message) as err:
        build_dataset(make_cfg(root, "VOC2007", PARTIAL_PROB=0.2))
    assert str(path) in str(err.value) and "DATASET.PARTIAL_DIR" in str(err.value)


def test_voc_trainval_txt_and_class_files_must_agree(voc):
    root, _ = voc
    main = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    (main / "trainval.txt").write_text("001000\n001001\n")
    with pytest.raises(ValueError, match="does not list the same images as trainval.txt") as err:
        build_dataset(make_cfg(root, "VOC2007"))
    assert str(main / "aeroplane_trainval.txt") in str(err.value)


# ---------------------------------------------------------------- COCO, NUS-WIDE, Synthetic
def test_coco_train_drops_thin_boxes_val_keeps_them(tmp_path):
    expected = fake_data.write_fake_coco(str(tmp_path), n_train=4)
    dataset = build_dataset(make_cfg(tmp_path, "COCO2014"))
    train, val = label_matrix(dataset.train_x), label_matrix(dataset.test)
    np.testing.assert_array_equal(train, expected["train2014"][1])
    np.testing.assert_array_equal(val, expected["val2014"][1])
    assert train[0].sum() == 2 - 78 and val[0].sum() == 3 - 77  # the 0.5 px box counts in val only


@pytest.mark.parametrize("name,stride,expected_val", [
    ("COCO2014", -1, slice(None, None, 10)), ("COCO2014", 2, slice(None, None, 2)),
    ("NUSWIDE", -1, slice(None)), ("NUSWIDE", 3, slice(None, None, 3)),
])
def test_val_stride(tmp_path, name, stride, expected_val):
    fake_data.write_fake_coco(str(tmp_path), n_val=7)
    fake_data.write_fake_nuswide(str(tmp_path), n_test=7)
    dataset = build_dataset(make_cfg(tmp_path, name, VAL_STRIDE=stride))
    assert [i.impath for i in dataset.val] == [i.impath for i in dataset.test[expected_val]]


def test_bad_val_stride_names_the_key(voc):
    root, _ = voc
    with pytest.raises(ValueError, match="DATASET.VAL_STRIDE must be -1 .* got 0"):
        build_dataset(make_cfg(root, "VOC2007", VAL_STRIDE=0))


@pytest.mark.parametrize("name", ["COCO2014_partial", "nuswide_partial"])
def test_random_partial_labels_on_the_benchmarks(tmp_path, name):
    expected = fake_data.write_fake_coco(str(tmp_path), n_train=6)["train2014"][1]
    if name == "nuswide_partial":
        expected = fake_data.write_fake_nuswide(str(tmp_path), n_train=6)["Train"][1]
    dataset = build_dataset(make_cfg(tmp_path, name, PARTIAL_PROB=0.5, SEED=3))
    mask = partial_mask(*expected.shape, 0.5, seed=3)
    np.testing.assert_array_equal(label_matrix(dataset.train_x), np.where(mask, expected, 0))


def test_synthetic_train_x_partial_and_fewshot(tmp_path):
    cfg = make_cfg("", "Synthetic", PARTIAL_PROB=0.5, NUM_SHOTS=2, SEED=0)
    node = cfg.DATASET.SYNTHETIC
    node.SEED, node.NUM_PAIRS, node.NUM_CAPTIONS, node.CACHE_DIR = 3, 60, 10, str(tmp_path)
    node.NUM_TEST, node.NUM_VAL, node.NUM_TRAIN = 4, 4, 60
    full = make_cfg("", "Synthetic", SEED=0)
    full.DATASET.SYNTHETIC = node.clone()
    items = build_dataset(full).train_x
    dataset = build_dataset(cfg)
    labels = label_matrix(items)
    subset = fewshot_indices(labels, 2, seed=0)
    assert len(items) == 60 and 0 < len(dataset.train_x) == len(subset) < 60
    mask = partial_mask(*labels.shape, 0.5, seed=0)
    np.testing.assert_array_equal(label_matrix(dataset.train_x),
                                  np.where(mask[subset], labels[subset], 0))
    assert len(dataset.val) == 4  # its own val split, never cut from test
