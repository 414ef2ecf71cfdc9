"""MLClassification: global / local / merged mAP and saved predictions."""
import numpy as np
import pytest
import torch

from taidpt.config import get_cfg_default
from taidpt.engine.evaluator import MLClassification, build_evaluator
from taidpt.metrics import mean_average_precision


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


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.9])
def test_merged_map_uses_the_merge_rate(tmp_path, rate):
    glob, loc, labels = _data()
    ev = MLClassification(_cfg(tmp_path), merge_rate=rate)
    for sl in (slice(0, 10), slice(10, 30)):
        ev.process((glob[sl], loc[sl]), labels[sl])
    res = ev.evaluate()
    assert res["mAP_global"] == pytest.approx(mean_average_precision(glob.numpy(), labels.numpy()))
    assert res["mAP_local"] == pytest.approx(mean_average_precision(loc.numpy(), labels.numpy()))
    merged = rate * glob + (1 - rate) * loc
    assert res["mAP_merged"] == pytest.approx(mean_average_precision(merged.numpy(), labels.numpy()))
    assert res["mAP"] == res["mAP_merged"]


def test_single_score_matrix_and_reset(tmp_path):
    glob, _, labels = _data(1)
    ev = build_evaluator(_cfg(tmp_path), lab2cname={0: "a"})
    ev.process(glob, labels)
    assert set(ev.evaluate()) == {"mAP"}
    ev.reset()
    with pytest.raises(RuntimeError, match="empty"):
        ev.evaluate()


def test_difficult_mode_comes_from_config(tmp_path):
    labels = torch.tensor([[1.0], [0.0], [-1.0]])
    scores = torch.tensor([[0.1], [0.9], [0.0]])
    neg = MLClassification(_cfg(tmp_path, **{"DATASET.DIFFICULT": "negative"}))
    ign = MLClassification(_cfg(tmp_path, **{"DATASET.DIFFICULT": "ignore"}))
    for ev in (neg, ign):
        ev.process(scores, labels)
    assert neg.evaluate()["mAP"] == pytest.approx(50.0)
    assert ign.evaluate()["mAP"] == pytest.approx(100.0)


def test_predictions_are_saved(tmp_path):
    glob, loc, labels = _data(2)
    ev = MLClassification(_cfg(tmp_path, **{"TEST.SAVE_PREDS": True}), lab2cname={i: f"c{i}" for i in range(4)})
    ev.process((glob, loc), labels)
    ev.evaluate()
    saved = np.load(tmp_path / "predictions.npz")
    assert np.allclose(saved["global"], glob.numpy()) and np.allclose(saved["local"], loc.numpy())
    assert list(saved["classnames"]) == ["c0", "c1", "c2", "c3"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")]
