"""Issue-3 acceptance: TaI-DPT through ``python train.py`` on a caption file + an image list."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from fake_data import TOY_CAPTIONS as CAPTIONS, TOY_CLASSES as CLASSES, TOY_SYNONYMS as SYNONYMS
from fake_data import child_env, epoch_losses, run_train_py, write_image_list

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_train_then_eval_only_reproduces_the_maps(tmp_path, tiny_clip_file):
    root = tmp_path / "data"
    write_image_list(str(root), CLASSES, n=8, synonyms=SYNONYMS, size=64)
    (root / "captions.txt").write_text("\n".join(CAPTIONS * 6) + "\n")
    common = ["--trainer", "TaIDPT", "--root", str(root), "--seed", "1",
              "--dataset-config-file", os.path.join(REPO, "configs/datasets/image_list.yaml"),
              "--config-file", os.path.join(REPO, "configs/trainers/TaIDPT/rn50_voc2007_debug.yaml")]
    opts = ["MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(64, 64)",
            "DATASET.CAPTIONS.SOURCE", "text", "DATASET.CAPTIONS.PATH", "captions.txt",
            "DATALOADER.NUM_WORKERS", "0", "OPTIM.LR", "0.002", "OPTIM.WARMUP_EPOCH", "-1",
            "TRAIN.PRINT_FREQ", "1", "TRAINER.TAIDPT.N_CTX", "4"]
    out = tmp_path / "out"
    run_train_py(*common, "--output-dir", str(out), *opts, cwd=tmp_path)
    losses = epoch_losses((out / "log.txt").read_text())
    assert len(losses) == 2 and losses[1] < losses[0], losses
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()
    trained = json.loads((out / "results_test.json").read_text())["results"]

    evaluated = tmp_path / "eval"
    run_train_py(*common, "--output-dir", str(evaluated), "--eval-only", "--model-dir", str(out),
                 "--load-epoch", "2", *opts, "DATASET.CAPTIONS.PATH", "missing.txt", cwd=tmp_path)
    again = json.loads((evaluated / "results_test.json").read_text())["results"]
    assert set(again) == {"mAP", "mAP_global", "mAP_local", "mAP_merged"}
    assert again == pytest.approx(trained, abs=1e-6)

    retrained = tmp_path / "retrained"  # the same seed trains the same prompts
    run_train_py(*common, "--output-dir", str(retrained), *opts, cwd=tmp_path)
    assert json.loads((retrained / "results_test.json").read_text())["results"] == trained
    weights = [torch.load(run / "prompt_learner" / "model.pth.tar-2", map_location="cpu")["state_dict"]
               for run in (out, retrained)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


@pytest.mark.slow
def test_prepare_then_train_on_fake_voc_with_coco_captions(tmp_path, tiny_clip_file):
    """Issue-5 acceptance: ``taidpt prepare`` builds the cache that ``train.py`` then reuses."""
    from fake_data import write_coco_captions, write_fake_voc

    root = tmp_path / "data"
    write_fake_voc(str(root), n_test=8, n_trainval=2)
    captions = [(i, text) for i in range(40) for text in
                ("A man riding a motorbike past a parked car.", "A cat and a dog on a sofa.",
                 "Two people on a train platform next to a bus.")]
    write_coco_captions(str(root), captions)
    env = child_env()
    dataset_cfg = os.path.join(REPO, "configs/datasets/voc2007_caption.yaml")
    method_cfg = os.path.join(REPO, "configs/trainers/TaIDPT/rn50_voc2007_debug.yaml")
    prepare = subprocess.run(
        [sys.executable, "-m", "taidpt.cli", "prepare", "--dataset-config-file", dataset_cfg,
         "--config-file", method_cfg, "--root", str(root), "MODEL.BACKBONE.PATH", tiny_clip_file,
         "SEED", "1"],  # the seed picks the MAX_CAPTIONS subset, so it is part of the cache key
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert prepare.returncode == 0, prepare.stdout[-2000:] + prepare.stderr[-2000:]
    assert "Caption cache (built)" in prepare.stdout
    assert re.search(r"^captions kept +40$", prepare.stdout, re.MULTILINE)  # one per image

    out = tmp_path / "out"
    run_train_py("--trainer", "Caption_distill_double", "--root", str(root), "--seed", "1",
                 "--dataset-config-file", dataset_cfg, "--config-file", method_cfg,
                 "--output-dir", str(out), "MODEL.BACKBONE.PATH", tiny_clip_file,
                 "INPUT.SIZE", "(64, 64)", "DATALOADER.NUM_WORKERS", "0", cwd=tmp_path)
    log = (out / "log.txt").read_text()
    assert "Caption corpus: reusing" in log and "Training on" in log
    results = json.loads((out / "results_test.json").read_text())
    assert results["dataset"] == "VOC2007" and results["epoch"] == 2
    assert set(results["results"]) == {"mAP", "mAP_global", "mAP_local", "mAP_merged"}
