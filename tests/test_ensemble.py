"""Ensembles (SPEC 7): min-max normalisation, ``taidpt ensemble``, the DualCoOpTaIDPT trainer."""
import json
import os
import re

import numpy as np
import pytest
import torch

from fake_data import TOY_CLASSES as CLASSES, run_train_py, write_image_list
from taidpt.cli import main as taidpt_main
from taidpt.config import get_cfg_default, setup_cfg
from taidpt.engine import build_trainer
from taidpt.engine.ensemble import ensemble_scores, load_predictions, minmax_normalise
from taidpt.engine.evaluator import MLClassification

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_LIST = os.path.join(REPO, "configs/datasets/image_list.yaml")


def _average_precision(scores, targets):
    """SPEC 7's mAP written out: positives ``targets == 1``, everything else negative."""
    aps = []
    for c in range(scores.shape[1]):
        ranked = targets[np.argsort(-scores[:, c]), c] == 1
        hits = np.cumsum(ranked)
        aps.append(100 * np.mean(hits[ranked] / (np.flatnonzero(ranked) + 1)))
    return float(np.mean(aps))


def _direct_ensemble(a, b, rate):
    return (1 - rate) * (a - a.min()) / (a.max() - a.min()) + rate * (b - b.min()) / (b.max() - b.min())


def _write_run(run_dir, heads, targets, ids, classnames=CLASSES, trainer="DualCoOp", split="test"):
    """A predictions file as an evaluation writes it: heads as a pair (TaI-DPT) or a mapping."""
    ev = MLClassification(get_cfg_default(), lab2cname=dict(enumerate(classnames)))
    ev.process(heads, torch.as_tensor(targets))
    ev.save_predictions(os.path.join(run_dir, f"predictions_{split}.npz"), ids, trainer=trainer,
                        dataset="MultiLabelImageList", split=split, epoch=1)


def _two_runs(tmp_path, n=40, seed=0, split="test"):
    rng = np.random.default_rng(seed)
    targets = np.where(rng.random((n, 3)) < 0.4, 1.0, -1.0).astype(np.float32)
    targets[:3] = np.eye(3) * 2 - 1
    targets[5, 1] = 0.0  # a difficult entry: negative by default
    ids = [f"images/{i}.png" for i in range(n)]
    noisy = lambda scale: (targets + scale * rng.standard_normal((n, 3))).astype(np.float32)  # noqa: E731
    a = {"global": noisy(2.0), "local": 3 * noisy(2.0)}  # TaI-DPT: pair, headline merged
    b = {"local": 10 + noisy(1.5), "global": noisy(3.0)}  # DualCoOp: mapping, headline local
    _write_run(str(tmp_path / "A"), (torch.from_numpy(a["global"]), torch.from_numpy(a["local"])), targets,
               ids, trainer="TaIDPT", split=split)
    _write_run(str(tmp_path / "B"), {k: torch.from_numpy(v) for k, v in b.items()}, targets, ids, split=split)
    return a, b, targets


def test_minmax_uses_one_scalar_min_and_max():
    x = np.array([[0.0, 10.0], [5.0, 20.0]])
    assert np.array_equal(minmax_normalise(x), [[0.0, 0.5], [0.25, 1.0]])  # not per column
    assert np.allclose(ensemble_scores(x, -x, 0.25), 0.75 * x / 20 + 0.25 * (1 - x / 20))
    with pytest.raises(ValueError, match="constant"):
        minmax_normalise(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ensemble_scores(x, x, 1.5)


def test_cli_reproduces_the_formula_at_several_rates(tmp_path, capsys):
    a, b, targets = _two_runs(tmp_path)
    rates = [0.0, 0.3, 0.5, 0.9, 1.0]
    assert taidpt_main(["ensemble", str(tmp_path / "A"), str(tmp_path / "B"), "--rate",
                        *map(str, rates)]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "B" / "ensemble.json").read_text())
    merged = 0.5 * a["global"] + 0.5 * a["local"]
    expected = [_average_precision(_direct_ensemble(merged, b["local"], r), targets) for r in rates]
    assert [row["rate"] for row in record["rates"]] == rates
    assert [row["mAP"] for row in record["rates"]] == pytest.approx(expected, abs=1e-9)
    assert len(set(np.round(expected, 6))) >= 3  # the rates really differ
    assert record["mAP_a"] == pytest.approx(_average_precision(merged, targets), abs=1e-9)
    assert record["mAP_b"] == pytest.approx(_average_precision(b["local"], targets), abs=1e-9)
    assert record["rates"][0]["mAP"] == pytest.approx(record["mAP_a"])  # rate 0: run A alone
    assert record["rates"][-1]["mAP"] == pytest.approx(record["mAP_b"])  # rate 1: run B alone
    assert record["heads"] == {"a": "merged", "b": "local"}
    assert record["trainers"] == {"a": "TaIDPT", "b": "DualCoOp"}
    assert record["runs"] == {"a": str(tmp_path / "A"), "b": str(tmp_path / "B")}
    assert record["split"] == "test" and record["images"] == 40
    assert record["best_rate"] == rates[int(np.argmax(expected))] and record["best_mAP"] == max(expected)
    assert f"{expected[3]:.2f}" in out and "TaIDPT (merged)" in out and "DualCoOp (local)" in out
    assert sorted(os.listdir(tmp_path / "B")) == ["ensemble.json", "predictions_test.npz"]  # atomic


def test_cli_heads_split_and_output_dir(tmp_path, capsys):
    a, b, targets = _two_runs(tmp_path, seed=1, split="val")
    out_dir = tmp_path / "ens"
    assert taidpt_main(["ensemble", str(tmp_path / "A"), str(tmp_path / "B"), "--rate", "0.7", "--split",
                        "val", "--head-a", "global", "--head-b", "global", "--output-dir", str(out_dir)]) == 0
    record = json.loads((out_dir / "ensemble_val.json").read_text())
    assert record["split"] == "val" and record["heads"] == {"a": "global", "b": "global"}
    assert record["rates"][0]["mAP"] == pytest.approx(
        _average_precision(_direct_ensemble(a["global"], b["global"], 0.7), targets), abs=1e-9)
    capsys.readouterr()
    assert taidpt_main(["ensemble", str(tmp_path / "A"), str(tmp_path / "B"), "--split", "val",
                        "--head-b", "merged"]) == 2  # bad input: one error line
    assert "no head 'merged'; its heads: local, global" in capsys.readouterr().err
    assert taidpt_main(["ensemble", str(tmp_path / "A"), str(tmp_path / "B")]) == 2
    assert "predictions_test.npz" in capsys.readouterr().err


def test_missing_predictions_say_to_evaluate_the_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"predictions_val\.npz: evaluate the run"):
        load_predictions(str(tmp_path / "nowhere"), "val")


@pytest.mark.parametrize("what", ["image ids", "class names", "targets"])
def test_mismatched_runs_are_refused(tmp_path, what, capsys):
    _two_runs(tmp_path)
    b = load_predictions(str(tmp_path / "B"))
    ids, names, targets = list(b.image_ids), list(b.classnames), b.targets.copy()
    if what == "image ids":
        ids[7], ids[8] = ids[8], ids[7]  # same images, another order
    elif what == "class names":
        names[2] = "truck"
    else:
        targets[9, 0] = -targets[9, 0]
    _write_run(str(tmp_path / "B"), {"local": torch.from_numpy(b.scores["local"])}, targets, ids, names)
    pattern = {"image ids": "position 7: 'images/7.png' vs 'images/8.png'",
               "class names": "position 2: 'car' vs 'truck'", "targets": "position 9"}[what]
    assert taidpt_main(["ensemble", str(tmp_path / "A"), str(tmp_path / "B")]) == 2
    assert re.search(f"The {what} of run {tmp_path / 'A'} and run {tmp_path / 'B'} differ.*{pattern}",
                     capsys.readouterr().err)


def _fake_dataset(tmp_path, n=12):
    root = tmp_path / "data"
    return root, write_image_list(str(root), CLASSES, n=n, size=32)


def _ensemble_cfg(root, out, *opts):
    return setup_cfg(IMAGE_LIST, opts=["DATASET.ROOT", str(root), "OUTPUT_DIR", str(out), "TRAINER.NAME",
                                       "DualCoOpTaIDPT", "DATALOADER.NUM_WORKERS", "0", *opts])


def test_ensemble_trainer_errors_name_the_flag_or_key(tmp_path):
    root, _ = _fake_dataset(tmp_path)
    with pytest.raises(ValueError, match="TEST.SPLIT must be one of test, val, got 'bogus'"):
        build_trainer(_ensemble_cfg(root, tmp_path / "out", "TEST.SPLIT", "bogus"))
    with pytest.raises(ValueError, match="TRAINER.ENSEMBLE.RATE must lie in"):
        build_trainer(_ensemble_cfg(root, tmp_path / "out", "TRAINER.ENSEMBLE.RATE", "1.5"))
    trainer = build_trainer(_ensemble_cfg(root, tmp_path / "out"))
    with pytest.raises(ValueError, match="split must be one of test, val, got 'train'"):
        trainer.test("train")
    with pytest.raises(ValueError, match="needs --model-dir"):
        trainer.test()
    with pytest.raises(RuntimeError, match="nothing to train.*--eval-only"):
        trainer.train()
    with pytest.raises(ValueError, match="--load-epoch does not apply"):
        trainer.load_model(str(tmp_path / "B"), epoch=3)
    trainer.load_model(str(tmp_path / "B"))
    with pytest.raises(ValueError, match="TRAINER.ENSEMBLE.TAIDPT_DIR is empty"):
        trainer.test()


def test_ensemble_trainer_checks_the_runs_against_the_dataset(tmp_path):
    root, data = _fake_dataset(tmp_path)
    paths, labels = data["test_items"]
    scores = torch.randn(12, 3)
    _write_run(str(tmp_path / "A"), (scores, scores), labels, paths, trainer="TaIDPT")
    _write_run(str(tmp_path / "B"), {"local": scores}, labels, paths[::-1])
    trainer = build_trainer(_ensemble_cfg(root, tmp_path / "out", "TRAINER.ENSEMBLE.TAIDPT_DIR",
                                          str(tmp_path / "A")))
    trainer.load_model(str(tmp_path / "B"))
    with pytest.raises(ValueError, match="image ids of dataset MultiLabelImageList .test split. and run "
                                         f"{tmp_path / 'B'} differ.*position 0: 'images/test_0000.png'"):
        trainer.test()


@pytest.mark.slow
def test_taidpt_run_then_dualcoop_taidpt_through_train_py(tmp_path, tiny_clip_file, capsys):
    """A real TaI-DPT evaluation (initial prompts) + a DualCoOp-like predictions file: train.py's
    DualCoOpTaIDPT reports the same mAP as ``taidpt ensemble`` and the direct formula."""
    root, data = _fake_dataset(tmp_path, n=24)
    common = ["--root", str(root), "--dataset-config-file", IMAGE_LIST, "--eval-only", "--seed", "1",
              "MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0"]
    run_a = tmp_path / "taidpt"
    init = tmp_path / "init"  # the initial prompts as a checkpoint: --eval-only needs a --model-dir
    build_trainer(setup_cfg(IMAGE_LIST, opts=[
        "DATASET.ROOT", str(root), "OUTPUT_DIR", str(init), "TRAINER.NAME", "TaIDPT", "MODEL.BACKBONE.PATH",
        tiny_clip_file, "INPUT.SIZE", "(32, 32)", "TRAINER.TAIDPT.N_CTX", "4"])).save_model(0, str(init))
    run_train_py("--trainer", "TaIDPT", "--output-dir", str(run_a), "--model-dir", str(init), *common,
              "TRAINER.TAIDPT.N_CTX", "4",
                 cwd=tmp_path)
    a = load_predictions(str(run_a))
    paths, labels = data["test_items"]
    assert list(a.image_ids) == paths  # relative to DATASET.ROOT, in test-list order
    assert np.array_equal(a.targets, labels) and a.headline == "merged" and a.trainer == "TaIDPT"
    assert sorted(a.scores) == ["global", "local", "merged"]
    results_a = json.loads((run_a / "results_test.json").read_text())["results"]
    assert results_a["mAP"] == pytest.approx(_average_precision(a.scores["merged"], labels), abs=1e-6)

    noise = np.random.default_rng(0).standard_normal(labels.shape).astype(np.float32)
    local = torch.from_numpy(labels + noise)
    _write_run(str(tmp_path / "dualcoop"), {"local": local, "global": torch.randn(len(paths), 3)}, labels,
               paths)
    assert taidpt_main(["ensemble", str(run_a), str(tmp_path / "dualcoop"), "--rate", "0.9"]) == 0
    capsys.readouterr()
    cli_map = json.loads((tmp_path / "dualcoop" / "ensemble.json").read_text())["rates"][0]["mAP"]

    out = tmp_path / "ensemble"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    run_train_py("--trainer", "DualCoOpTaIDPT", "--output-dir", str(out), "--model-dir",
                 str(tmp_path / "dualcoop"), *common, "TRAINER.ENSEMBLE.TAIDPT_DIR", str(run_a),
                 "TRAINER.ENSEMBLE.RATE", "0.9", cwd=elsewhere)
    results = json.loads((out / "results_test.json").read_text())["results"]
    expected, flipped = (_average_precision(_direct_ensemble(a.scores["merged"], local.numpy(), r), labels)
                         for r in (0.9, 0.1))
    assert abs(expected - flipped) > 0.5  # the rate matters on this data
    assert results["mAP"] == results["mAP_ensemble"] == pytest.approx(cli_map, abs=1e-9)
    assert results["mAP"] == pytest.approx(expected, abs=1e-9)
    assert results["mAP_taidpt"] == pytest.approx(results_a["mAP"], abs=1e-6)
    saved = load_predictions(str(out))
    assert saved.headline == "ensemble" and sorted(saved.scores) == ["ensemble", "other", "taidpt"]
    assert list(saved.image_ids) == paths and saved.trainer == "DualCoOpTaIDPT"
