"""Issue 11, item 6: prompts for your own labels from a class file and captions, no test list.

Runs docs/CUSTOM.md's walkthrough with its own files and commands (in a temporary folder, with
the tests' tiny CLIP and the debug trainer config the document suggests for a first try).
"""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from fake_data import child_env, write_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "CUSTOM.md")
DEBUG_CONFIG = os.path.join(REPO, "configs/trainers/TaIDPT/rn50_voc2007_debug.yaml")


def _doc():
    """The document's files (code blocks titled with a file name) and its shell commands."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    files = dict(re.findall(r"```\w+ (\S+)\n(.*?)```", text, re.S))
    commands = [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
                for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return files, commands


def _command(commands, start):
    """The document's command that starts with ``start``, as an argument list."""
    return shlex.split(next(command for command in commands if command.startswith(start)))


def _run(args, cwd, tiny_clip_file, check=True):
    env = child_env()
    opts = ["MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "TRAIN.PRINT_FREQ", "1"]
    run = subprocess.run([sys.executable, *args, *opts], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    if check:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_custom_labels_walkthrough_without_a_test_list(tmp_path, tiny_clip_file):
    files, commands = _doc()
    assert set(files) == {"classnames.txt", "captions.txt", "my_labels.yaml"}
    root = tmp_path / "my_labels"
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
    num_classes, num_captions = (len(files[name].splitlines()) for name in ("classnames.txt", "captions.txt"))

    prepare = _command(commands, "taidpt prepare")
    run = _run(["-m", "taidpt.cli", *prepare[1:]], tmp_path, tiny_clip_file)
    assert re.search(rf"^captions kept +{num_captions}$", run.stdout, re.M), run.stdout
    assert re.search(r"^traffic light +2$", run.stdout, re.M), run.stdout  # 'stoplight' counts

    train = _command(commands, "python train.py --trainer TaIDPT")
    assert "TEST.NO_TEST" not in " ".join(train) and not (root / "test.csv").exists()
    _run([os.path.join(REPO, "train.py"), *train[2:], "--config-file", DEBUG_CONFIG,
          "TRAINER.TAIDPT.N_CTX", "4", "OPTIM.LR", "0.002",
          "DATASET.CAPTIONS.MAX_CAPTIONS", "-1"], tmp_path, tiny_clip_file)  # as prepared
    out = tmp_path / "runs" / "my_labels"
    log = (out / "log.txt").read_text()
    assert "Caption corpus: reusing" in log  # what taidpt prepare built
    assert f"Training on {num_captions + 89 * num_classes} captions" in log
    assert re.search(r"epoch \[2/2\] batch \[\d+/\d+\] loss", log)
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()
    assert not list(out.glob("results_*.json")) and not list(out.glob("predictions_*.npz"))

    # Evaluating needs labelled images: a short error, not a crash in the evaluator.
    evaluate = _run([os.path.join(REPO, "train.py"), "--config-file", str(out / "config.yaml"),
                     "--eval-only", "--model-dir", str(out), "--output-dir", str(tmp_path / "eval")],
                    tmp_path, tiny_clip_file, check=False)
    assert evaluate.returncode != 0
    assert "Nothing to evaluate: dataset MultiLabelImageList has no test images" in evaluate.stderr
    assert "DATASET.TEST_LIST" in evaluate.stderr

    # A few labelled val images give the calibration `taidpt tag` reads (the document's command).
    (root / "images").mkdir()
    lines = []
    for i, labels in enumerate(["dog", "bicycle|traffic light", "cat|umbrella", "dog|cat"]):
        write_image(str(root / "images" / f"{i}.png"), size=32, seed=i)
        lines.append(f"images/{i}.png,{labels}")
    (root / "val.csv").write_text("\n".join(lines) + "\n")
    calibrate = _command(commands, "python train.py --config-file runs/my_labels/config.yaml")
    _run([os.path.join(REPO, "train.py"), *calibrate[2:]], tmp_path, tiny_clip_file)
    results = json.loads((out / "results_val.json").read_text())
    assert results["split"] == "val" and set(results["results"]) >= {"mAP", "mAP_merged"}
    assert (out / "predictions_val.npz").is_file()


def test_no_test_list_needs_no_test(tmp_path):
    """Without ``TEST.NO_TEST True`` the missing test list is an error naming both keys."""
    from taidpt.config import setup_cfg
    from taidpt.datasets.base import build_dataset

    files, _ = _doc()
    (tmp_path / "classnames.txt").write_text(files["classnames.txt"])
    (tmp_path / "my_labels.yaml").write_text(files["my_labels.yaml"])
    cfg = setup_cfg(str(tmp_path / "my_labels.yaml"), opts=["DATASET.ROOT", str(tmp_path)])
    dataset = build_dataset(cfg)
    assert dataset.test == [] and dataset.val == [] and dataset.train_x == []
    assert dataset.classnames[3] == "traffic light" and dataset.synonyms[0] == ["bicycle", "bike", "cyclist"]
    cfg = setup_cfg(str(tmp_path / "my_labels.yaml"), opts=["DATASET.ROOT", str(tmp_path), "TEST.NO_TEST", "False"])
    with pytest.raises(ValueError, match=r"needs DATASET.TEST_LIST .*TEST.NO_TEST True trains without"):
        build_dataset(cfg)
