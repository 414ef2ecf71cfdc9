"""``taidpt tag``: scores equal the evaluator's, thresholds, streamed outputs, skipped files, errors."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fake_data import TOY_CLASSES as CLASSES, TOY_SYNONYMS as SYNONYMS, write_image, write_image_list
from taidpt.cli import main as taidpt_main
from taidpt.engine.calibration import f1_per_class, f1_thresholds, minmax, score_range
from taidpt.engine.tagging import ThresholdRule, find_images, read_class_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ["a cat sleeping on a sofa", "two dogs playing in a park", "a red car parked outside",
            "a kitten and a puppy", "a dog chasing a car", "an automobile near a house"]


# --- thresholds and calibration -------------------------------------------------------------
def _brute_force_threshold(scores, positive):
    """The threshold among the candidate cuts with the best F1 (highest on ties)."""
    best, best_f1 = None, -1.0
    for t in sorted(set(scores), reverse=True):
        pred = scores >= t
        tp = (pred & positive).sum()
        f1 = 2 * tp / (pred.sum() + positive.sum())
        if f1 > best_f1:
            best, best_f1 = t, f1
    return best, best_f1


def test_f1_thresholds_match_a_brute_force_search():
    rng = np.random.RandomState(0)
    targets = np.where(rng.rand(60, 5) > 0.7, 1.0, -1.0)
    targets[0] = 1.0
    scores = np.round(rng.rand(60, 5) + 0.5 * targets, 1)  # rounded: ties
    thresholds = f1_thresholds(scores, targets)
    f1 = f1_per_class(scores >= thresholds, targets)
    for c in range(5):
        cut, best_f1 = _brute_force_threshold(scores[:, c], targets[:, c] > 0)
        assert f1[c] == pytest.approx(best_f1)
        below = scores[:, c][scores[:, c] < cut]
        assert thresholds[c] == pytest.approx((cut + below.max()) / 2 if below.size else cut)


def test_f1_thresholds_difficult_and_no_positive():
    scores = np.array([[0.9, 0.3], [0.8, 0.2], [0.1, 0.1]])
    targets = np.array([[1.0, -1.0], [0.0, -1.0], [-1.0, -1.0]])
    assert f1_thresholds(scores, targets, "negative")[0] == pytest.approx(0.85)  # 0 = negative
    assert f1_thresholds(scores, targets, "ignore")[0] == pytest.approx(0.5)  # 0 dropped
    assert f1_thresholds(scores, targets)[1] == np.inf  # no positive: never labelled
    assert np.isnan(f1_per_class(scores > 0.5, targets)[1])


def test_calibrated_thresholds_beat_one_global_threshold_when_classes_differ():
    """Classes whose scores sit at different levels (as prompts' do): per-class thresholds chosen
    on a val draw give a higher mean F1 on a test draw than 0.5 on min-max scores."""
    rng = np.random.RandomState(1)

    def draw(n):
        targets = np.where(rng.rand(n, 4) > 0.6, 1.0, -1.0)
        return np.array([0.0, 1.0, 2.0, 3.0]) + 0.6 * targets + 0.3 * rng.randn(n, 4), targets

    (val, val_t), (test, test_t) = draw(400), draw(400)
    lo, hi = score_range(val)
    thresholds = f1_thresholds(minmax(val, lo, hi), val_t)
    calibrated = np.nanmean(f1_per_class(minmax(test, lo, hi) >= thresholds, test_t))
    single = np.nanmean(f1_per_class(minmax(test, lo, hi) >= 0.5, test_t))
    assert calibrated > single + 0.2


def test_threshold_rule_forms():
    scores = np.array([[0.1, 0.7, 0.4], [0.9, 0.2, 0.3]])
    assert ThresholdRule.parse("topk:2").predict(scores).tolist() == [[False, True, True], [True, False, True]]
    assert ThresholdRule.parse("0.35").predict(scores).tolist() == [[False, True, True], [True, False, False]]
    assert ThresholdRule.parse("calibrated").predict(scores, np.array([0.0, 0.8, np.inf])).tolist() == \
        [[True, False, False], [True, False, False]]
    assert ThresholdRule.parse("topk:9").predict(scores).all()
    for bad in ("topk:0", "topk:x", "high", "nan", ""):
        with pytest.raises(ValueError, match="calibrated.*topk:K"):
            ThresholdRule.parse(bad)


# --- inputs ---------------------------------------------------------------------------------
def test_find_images_walks_folders_in_order_and_names_missing_paths(tmp_path):
    for name in ("b/2.png", "b/1.JPG", "a.png", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert find_images([str(tmp_path)]) == [str(tmp_path / n) for n in ("a.png", "b/1.JPG", "b/2.png")]
    assert find_images([str(tmp_path / "notes.txt")]) == [str(tmp_path / "notes.txt")]  # a file as given
    with pytest.raises(FileNotFoundError, match="nowhere.png does not exist"):
        find_images([str(tmp_path), str(tmp_path / "nowhere.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No image files"):
        find_images([str(tmp_path / "empty")])


def test_read_class_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# wanted\ndog|puppy\n\ncar\n")
    assert read_class_file(str(path)) == ["dog", "car"]
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        read_class_file(str(tmp_path / "missing.txt"))


# --- end to end: a small trained TaI-DPT run (slow: 5-40 s to train on 2 busy cores) --------
@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_clip_file):
    """A TaI-DPT run (1 epoch on captions, tiny CLIP) evaluated on test and on val (= the test
    list here), as ``train.py`` leaves it; returns (run dir, the test images' folder)."""
    from taidpt.cli.train import main as train_main

    base = tmp_path_factory.mktemp("tag")
    root = base / "data"
    write_image_list(str(root), CLASSES, n=10, synonyms=SYNONYMS, size=32)
    for i in range(10):  # images of their own, so that scores differ between images
        Image.fromarray(np.random.RandomState(i).randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            root / "images" / f"test_{i:04d}.png")
    (root / "captions.txt").write_text("\n".join(CAPTIONS * 4) + "\n")
    out = base / "run"
    common = ["--trainer", "TaIDPT", "--root", str(root), "--seed", "1", "--output-dir", str(out),
              "--dataset-config-file", os.path.join(REPO, "configs/datasets/image_list.yaml"),
              "--config-file", os.path.join(REPO, "configs/trainers/TaIDPT/rn50_voc2007_debug.yaml")]
    opts = ["MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(64, 64)", "DATASET.CAPTIONS.SOURCE",
            "text", "DATASET.CAPTIONS.PATH", "captions.txt", "DATALOADER.NUM_WORKERS", "0",
            "OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "-1", "OPTIM.LR", "0.002",
            "TRAINER.TAIDPT.N_CTX", "4"]
    assert train_main(common + opts) == 0
    assert train_main(common + ["--eval-only", "--model-dir", str(out)] + opts + ["TEST.SPLIT", "val"]) == 0
    test_dir = base / "to_tag"
    test_dir.mkdir()
    for i in range(10):
        os.symlink(root / "images" / f"test_{i:04d}.png", test_dir / f"test_{i:04d}.png")
    return out, test_dir


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _evaluated(run_dir, split):
    data = np.load(run_dir / f"predictions_{split}.npz")
    return {key: data[key] for key in data.files}


@pytest.mark.slow
def test_tag_scores_equal_the_evaluators(run, tmp_path, capsys):
    run_dir, folder = run
    test, val = _evaluated(run_dir, "test"), _evaluated(run_dir, "val")
    assert [os.path.basename(p) for p in test["image_paths"]] == [f"test_{i:04d}.png" for i in range(10)]
    assert all(os.path.isabs(p) for p in test["image_paths"])

    out = tmp_path / "tags.csv"
    assert taidpt_main(["tag", str(folder), "--model-dir", str(run_dir), "--out", str(out),
                        "--batch-size", "3"]) == 0
    header, rows = _read_csv(out)
    assert header == ["path", "labels", *CLASSES]
    assert [os.path.basename(r[0]) for r in rows] == [f"test_{i:04d}.png" for i in range(10)]
    scores = np.array([[float(v) for v in r[2:]] for r in rows])
    lo, hi = val["range_merged"]
    expected = minmax(test["scores_merged"], lo, hi)
    assert np.abs(scores - expected).max() < 1e-6
    assert np.ptp(expected) > 1e-3  # the images are told apart
    labels = [r[1].split("|") if r[1] else [] for r in rows]
    for tags, row in zip(labels, expected):  # a score within 1e-6 of its threshold may go either way
        for c, s, t in zip(CLASSES, row, val["thresholds_merged"]):
            assert abs(s - t) <= 1e-6 or (c in tags) == (s >= t), (c, s, t, tags)
    assert sum(map(len, labels)) > 0 and sum(map(len, labels)) < len(labels) * len(CLASSES)

    record = json.loads(out.with_suffix(".json").read_text())
    assert record["head"] == "merged" and record["score"] == "minmax_val"
    assert record["threshold"] == "calibrated" and record["classes"] == CLASSES
    assert record["score_range"] == pytest.approx([lo, hi]) and record["skipped"] == []
    assert [img["labels"] for img in record["images"]] == labels
    assert np.allclose([[img["scores"][c] for c in CLASSES] for img in record["images"]], scores, atol=1e-8)
    assert "Tagged 10 images with TaIDPT (merged head" in capsys.readouterr().out


@pytest.mark.slow
def test_tag_a_zero_shot_run_equals_its_evaluation(run, tmp_path, tiny_clip_file):
    """Any trainer's run: ZeroshotCLIP (no checkpoint) through its global head."""
    from taidpt.cli.train import main as train_main

    run_dir, folder = run
    out = tmp_path / "zeroshot"
    args = ["--trainer", "ZeroshotCLIP", "--eval-only", "--root", str(run_dir.parent / "data"),
            "--output-dir", str(out), "--dataset-config-file",
            os.path.join(REPO, "configs/datasets/image_list.yaml"), "MODEL.BACKBONE.PATH", tiny_clip_file,
            "INPUT.SIZE", "(64, 64)", "DATALOADER.NUM_WORKERS", "0"]
    for split in ("test", "val"):
        assert train_main(args + ["TEST.SPLIT", split]) == 0
    test, val = _evaluated(out, "test"), _evaluated(out, "val")
    assert taidpt_main(["tag", str(folder), "--model-dir", str(out), "--out", str(tmp_path / "zs.csv"),
                        "--head", "global"]) == 0
    _, rows = _read_csv(tmp_path / "zs.csv")
    scores = np.array([[float(v) for v in r[2:]] for r in rows])
    assert np.abs(scores - minmax(test["scores_global"], *val["range_global"])).max() < 1e-6


@pytest.mark.slow
def test_tag_topk_raw_scores_without_calibration_other_head_and_class_subset(run, tmp_path):
    run_dir, folder = run
    test = _evaluated(run_dir, "test")
    out = tmp_path / "raw.csv"
    classes = tmp_path / "wanted.txt"
    classes.write_text("car\ncat|kitten\n")
    assert taidpt_main(["tag", str(folder), "--model-dir", str(run_dir), "--out", str(out),
                        "--threshold", "topk:1", "--head", "global", "--classes", str(classes),
                        "--calibration", str(tmp_path / "none.npz")]) == 0
    header, rows = _read_csv(out)
    assert header == ["path", "labels", "car", "cat"]
    scores = np.array([[float(v) for v in r[2:]] for r in rows])
    assert np.abs(scores - test["scores_global"][:, [2, 0]]).max() < 1e-6  # raw scores
    assert [r[1] for r in rows] == [["car", "cat"][int(np.argmax(s))] for s in scores]
    assert json.loads(out.with_suffix(".json").read_text())["score"] == "raw"


@pytest.mark.slow
def test_tag_skips_corrupt_files_and_draws_a_contact_sheet(run, tmp_path, capsys):
    run_dir, folder = run
    images = tmp_path / "mixed"
    images.mkdir()
    write_image(str(images / "good.png"), size=40, seed=3)
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    sheet = tmp_path / "sheet.png"
    out = tmp_path / "mixed.csv"
    assert taidpt_main(["tag", str(images), str(folder / "test_0001.png"), "--model-dir", str(run_dir),
                        "--out", str(out), "--threshold", "0.5", "--contact-sheet", str(sheet),
                        "--batch-size", "1"]) == 0
    _, rows = _read_csv(out)
    assert [os.path.basename(r[0]) for r in rows] == ["good.png", "test_0001.png"]
    record = json.loads(out.with_suffix(".json").read_text())
    assert [os.path.basename(s["path"]) for s in record["skipped"]] == ["broken.jpg"]
    assert "corrupt" in record["skipped"][0]["error"]
    assert "Skipped 1 unreadable images" in capsys.readouterr().out
    with Image.open(sheet) as png:
        assert png.width > 2 * 192 and png.height > 192
    assert sorted(os.listdir(tmp_path)) == sorted(["mixed", "mixed.csv", "mixed.json", "sheet.png"])


@pytest.mark.slow
def test_tag_errors_name_the_path_and_the_fix(run, tmp_path, capsys):
    run_dir, folder = run

    def error(*args):
        assert taidpt_main(["tag", str(folder), "--out", str(tmp_path / "t.csv"), *args]) == 2
        return capsys.readouterr().err

    assert "--model-dir /nowhere does not exist" in error("--model-dir", "/nowhere")
    assert f"{tmp_path}/config.yaml does not exist" in error("--model-dir", str(tmp_path))
    assert "missing.txt does not exist" in error("--model-dir", str(run_dir), "--classes", "missing.txt")
    message = error("--model-dir", str(run_dir), "--calibration", str(tmp_path / "none.npz"))
    assert "No calibration at" in message and "--eval-only" in message and "TEST.SPLIT val" in message
    assert "--threshold 'soon'" in error("--model-dir", str(run_dir), "--threshold", "soon")
    assert "no thresholds for head 'nothere'" in error("--model-dir", str(run_dir), "--head", "nothere")
    assert "Head 'nothere' is not among TaIDPT's heads" in error(
        "--model-dir", str(run_dir), "--head", "nothere", "--threshold", "topk:1",
        "--calibration", str(tmp_path / "none.npz"))
    wanted = tmp_path / "wanted.txt"
    wanted.write_text("bird\n")
    assert "['bird'] are not classes of the run" in error("--model-dir", str(run_dir), "--classes", str(wanted))
    untrained = tmp_path / "untrained"  # a TaI-DPT run killed before its first checkpoint
    untrained.mkdir()
    shutil.copy(run_dir / "config.yaml", untrained / "config.yaml")
    shutil.copy(run_dir / "predictions_val.npz", untrained / "predictions_val.npz")
    assert "No checkpoint at" in error("--model-dir", str(untrained))
    assert not (tmp_path / "t.csv").exists()
