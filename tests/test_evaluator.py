"""MLClassification: the three output forms, headline, mAP per head, saved predictions."""
import logging
import os
import re

import numpy as np
import pytest
import torch

from taidpt.config import get_cfg_default
from taidpt.engine.calibration import f1_thresholds, minmax
from taidpt.engine.evaluator import MLClassification, build_evaluator, relative_image_id
from taidpt.metrics import average_precision_per_class, mean_average_precision


def _cfg(tmp_path, **extra):
    cfg = get_cfg_default()
    cfg.OUTPUT_DIR = str(tmp_path)
    for key, value in extra.items():
        cfg.merge_from_list([key, value])
    return cfg


def _data(seed=0, n=30, c=4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.where(torch.rand(n, c, generator=g) > 0.6, 1.0, -1.0)
    labels[0] = 1.0
    return torch.randn(n, c, generator=g), torch.randn(n, c, generator=g), labels


def _map(scores, labels):
    return mean_average_precision(np.asarray(scores), np.asarray(labels))


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.9])
def test_pair_merged_map_uses_the_merge_rate(tmp_path, rate):
    glob, loc, labels = _data()
    ev = MLClassification(_cfg(tmp_path), merge_rate=rate)
    for sl in (slice(0, 10), slice(10, 30)):
        ev.process((glob[sl], loc[sl]), labels[sl])
    res = ev.evaluate()
    assert list(res) == ["mAP_global", "mAP_local", "mAP_merged", "mAP"]
    assert res["mAP_global"] == pytest.approx(_map(glob, labels))
    assert res["mAP_local"] == pytest.approx(_map(loc, labels))
    assert res["mAP_merged"] == pytest.approx(_map(rate * glob + (1 - rate) * loc, labels))
    assert res["mAP"] == res["mAP_merged"]
    assert ev.headline_name(list(ev.score_matrices())) == "merged"


def test_single_score_matrix_and_reset(tmp_path):
    glob, _, labels = _data(1)
    ev = build_evaluator(_cfg(tmp_path), lab2cname={0: "a"})
    ev.process(glob, labels)
    res = ev.evaluate()
    assert list(res) == ["mAP"] and res["mAP"] == pytest.approx(_map(glob, labels))
    assert list(ev.score_matrices()) == ["logits"]
    ev.reset()
    with pytest.raises(RuntimeError, match="empty"):
        ev.evaluate()


def test_mapping_heads_and_headline(tmp_path):
    glob, loc, labels = _data(3)
    first = build_evaluator(_cfg(tmp_path))  # default headline: the first head
    chosen = build_evaluator(_cfg(tmp_path), headline="global")
    for ev in (first, chosen):
        ev.process({"local": loc[:12], "global": glob[:12]}, labels[:12])
        ev.process({"local": loc[12:], "global": glob[12:]}, labels[12:])
    res = first.evaluate()
    assert list(res) == ["mAP_local", "mAP_global", "mAP"]  # no merged head for a mapping
    assert res["mAP_local"] == pytest.approx(_map(loc, labels))
    assert res["mAP_global"] == pytest.approx(_map(glob, labels))
    assert res["mAP_local"] != res["mAP_global"]
    assert res["mAP"] == res["mAP_local"]
    assert chosen.evaluate()["mAP"] == res["mAP_global"]
    with pytest.raises(ValueError, match="same heads"):
        first.process({"local": loc}, labels)
    bad = build_evaluator(_cfg(tmp_path), headline="merged")
    bad.process({"local": loc}, labels)
    with pytest.raises(KeyError, match="'merged'.*headline"):
        bad.evaluate()


def test_difficult_mode_comes_from_config(tmp_path):
    labels = torch.tensor([[1.0], [0.0], [-1.0]])
    scores = torch.tensor([[0.1], [0.9], [0.0]])
    neg = MLClassification(_cfg(tmp_path, **{"DATASET.DIFFICULT": "negative"}))
    ign = MLClassification(_cfg(tmp_path, **{"DATASET.DIFFICULT": "ignore"}))
    for ev in (neg, ign):
        ev.process(scores, labels)
    assert neg.evaluate()["mAP"] == pytest.approx(50.0)
    assert ign.evaluate()["mAP"] == pytest.approx(100.0)


def test_predictions_file_holds_every_head_and_is_atomic(tmp_path):
    glob, loc, labels = _data(2)
    labels[3, 1] = 0.0  # a difficult entry is kept as is
    ev = MLClassification(_cfg(tmp_path), lab2cname={i: f"c{i}" for i in range(4)}, merge_rate=0.25)
    ev.process((glob, loc), labels)
    ids = [f"img/{i}.png" for i in range(30)]
    path = tmp_path / "predictions_val.npz"
    paths = [f"/data/img/{i}.png" for i in range(30)]
    ev.save_predictions(str(path), ids, image_paths=paths, trainer="TaIDPT", dataset="Toy", split="val",
                        epoch=3)
    saved = np.load(path)
    heads = ("global", "local", "merged")
    assert sorted(saved.files) == sorted(["image_ids", "image_paths", "classnames", "targets", "headline",
                                          "trainer", "dataset", "split", "epoch",
                                          *(f"{kind}_{h}" for kind in ("scores", "range", "thresholds")
                                            for h in heads)])
    assert list(saved["image_paths"]) == paths
    assert saved["scores_global"].dtype == np.float32 and saved["targets"].dtype == np.float32
    assert np.array_equal(saved["scores_global"], glob.numpy())
    assert np.array_equal(saved["scores_local"], loc.numpy())
    assert np.allclose(saved["scores_merged"], 0.25 * glob.numpy() + 0.75 * loc.numpy())
    assert np.array_equal(saved["targets"], labels.numpy()) and saved["targets"][3, 1] == 0.0
    assert list(saved["image_ids"]) == ids and list(saved["classnames"]) == ["c0", "c1", "c2", "c3"]
    assert str(saved["headline"]) == "merged" and str(saved["trainer"]) == "TaIDPT"
    assert str(saved["split"]) == "val" and int(saved["epoch"]) == 3
    assert os.listdir(tmp_path) == ["predictions_val.npz"]  # no temp file left behind
    with pytest.raises(ValueError, match="2 image ids for 30"):
        ev.save_predictions(str(tmp_path / "other.npz"), ids[:2])
    with pytest.raises(ValueError, match="2 image paths for 30"):
        ev.save_predictions(str(tmp_path / "other.npz"), ids, image_paths=paths[:2])
    assert os.listdir(tmp_path) == ["predictions_val.npz"]


def test_fp64_scores_stay_fp64(tmp_path):
    glob, _, labels = _data(4)
    ev = MLClassification(_cfg(tmp_path))
    ev.process({"ensemble": glob.double()}, labels)
    assert ev.score_matrices()["ensemble"].dtype == np.float64


def test_image_ids_relative_to_root_then_dataset_dir(tmp_path):
    root = tmp_path / "data"
    assert relative_image_id(str(root / "VOC" / "a.jpg"), str(root)) == "VOC/a.jpg"
    assert relative_image_id(str(root / "VOC" / "a.jpg"), str(root) + "/") == "VOC/a.jpg"
    cache = tmp_path / "cache" / "world"
    assert relative_image_id(str(cache / "test" / "1.png"), str(root), str(cache)) == "test/1.png"
    assert relative_image_id(str(cache / "test" / "1.png"), "", str(cache)) == "test/1.png"
    assert relative_image_id("/elsewhere/x.png", str(root), str(cache)) == "/elsewhere/x.png"
    assert relative_image_id(str(tmp_path / "database" / "x.png"), str(tmp_path / "data")) == \
        str(tmp_path / "database" / "x.png")  # a sibling with a common prefix is not "under" root


def test_predictions_carry_the_calibration_of_every_head(tmp_path):
    """``range_<head>`` = (min, max) of the head's scores, ``thresholds_<head>`` = per-class
    F1-maximising thresholds on the min-max scores (what ``taidpt tag`` reads)."""
    glob, loc, labels = _data(5)
    labels[4, 2] = 0.0
    ev = MLClassification(_cfg(tmp_path, **{"DATASET.DIFFICULT": "ignore"}), merge_rate=0.5)
    ev.process((glob, loc), labels)
    ev.save_predictions(str(tmp_path / "p.npz"), [str(i) for i in range(30)])
    saved = np.load(tmp_path / "p.npz")
    for head in ("global", "local", "merged"):
        scores = saved[f"scores_{head}"]
        lo, hi = saved[f"range_{head}"]
        assert (lo, hi) == (scores.min(), scores.max())
        assert np.array_equal(saved[f"thresholds_{head}"],
                              f1_thresholds(minmax(scores, lo, hi), labels.numpy(), "ignore"))
    assert not np.array_equal(saved["thresholds_global"], saved["thresholds_local"])


def test_per_class_ap_is_logged_when_asked(tmp_path, caplog, monkeypatch):
    glob, _, labels = _data(6, c=3)
    monkeypatch.setattr(logging.getLogger("taidpt"), "propagate", True)  # setup_logger turns it off
    for flag in (False, True):
        caplog.clear()
        ev = MLClassification(_cfg(tmp_path, **{"TEST.PER_CLASS_RESULT": flag}),
                              lab2cname={0: "cat", 1: "dog", 2: "car"})
        ev.process({"logits_a": glob, "b": -glob}, labels)
        with caplog.at_level(logging.INFO, logger="taidpt.engine.evaluator"):
            ev.evaluate()
        logged = [r.getMessage() for r in caplog.records if "AP per class (logits_a)" in r.getMessage()]
        assert bool(logged) == flag
    ap = [float(v) for v in re.findall(r"\* (?:cat|dog|car): ([\d.]+)%", logged[-1])]
    assert ap == pytest.approx(average_precision_per_class(glob.numpy(), labels.numpy()), abs=0.01)
