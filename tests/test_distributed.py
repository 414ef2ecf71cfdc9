"""Issue-13 item 5: DDP under torchrun. Sharding arithmetic in-process; then 2 gloo processes on
the CPU against one process at the same global batch (losses, prompts, gathered evaluation), and
a DDP run resumed from its epoch-1 checkpoint."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from fake_data import REPO, TOY_CAPTIONS, TOY_CLASSES, TOY_SYNONYMS, write_image_list
from taidpt.engine.distributed import (ShardedBatchSampler, shard_bounds, shard_loader,
                                       shard_loss_weight)


@pytest.mark.parametrize("n, world", [(7, 2), (6, 3), (2, 4), (5, 1)])
def test_shards_partition_in_order(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_sharded_loader_splits_each_global_batch_and_weights_sum_to_world():
    data = list(range(11))
    batches = {}
    for r in range(2):
        loader = DataLoader(data, batch_size=4, shuffle=True, drop_last=False,
                            generator=torch.Generator().manual_seed(3))
        sharded = shard_loader(loader, r, 2)
        assert sharded.generator is loader.generator and len(sharded) == 3
        batches[r] = [b.tolist() for b in sharded]
    full = [b.tolist() for b in DataLoader(data, batch_size=4, shuffle=True,
                                           generator=torch.Generator().manual_seed(3))]
    assert [a + b for a, b in zip(batches[0], batches[1])] == full
    samplers = [ShardedBatchSampler(BatchSampler(RandomSampler(data), 4, False), r, 2) for r in range(2)]
    assert [samplers[0].global_batch_size(k) for k in range(3)] == [4, 4, 3]
    for k in range(3):  # last batch 3 = 2 + 1 samples: weights 4/3 and 2/3
        weights = [shard_loss_weight(s, k) for s in samplers]
        assert sum(weights) == pytest.approx(2.0)
    assert [shard_loss_weight(s, 2) for s in samplers] == pytest.approx([4 / 3, 2 / 3])


# Runs train.py's main recording each step's (global) losses on rank 0 (test-side patch only).
CHILD = r"""
import json, os, sys
from taidpt.engine.trainer import SimpleTrainer
from taidpt.engine.distributed import is_main_process
record, original = sys.argv[1], SimpleTrainer.global_losses
def global_losses(self, values):
    values = original(self, values)
    if is_main_process():
        with open(record, "a") as f:
            f.write(json.dumps(values) + "\n")
    return values
SimpleTrainer.global_losses = global_losses
from taidpt.cli.train import main
sys.exit(main(sys.argv[2:]))
"""


def _run(nproc, out, args, cwd):
    env = dict(os.environ, TAIDPT_OFFLINE="1", PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    script = cwd / "child.py"
    script.write_text(CHILD)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable])
    run = subprocess.run([*launcher, str(script), str(out) + ".losses", "--output-dir", str(out), *args],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    losses = str(out) + ".losses"
    return [json.loads(line)["loss"] for line in open(losses)] if os.path.exists(losses) else [], run


def _prompts(out, epoch):
    state = torch.load(out / "prompt_learner" / f"model.pth.tar-{epoch}", weights_only=True)
    return state["state_dict"]


def _predictions(out):
    with np.load(out / "predictions_test.npz") as npz:
        return list(npz["image_ids"]), {k: npz[k] for k in npz.files if k.startswith("scores_")}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, tiny_clip_file):
    root = tmp_path / "data"
    write_image_list(str(root), TOY_CLASSES, n=7, synonyms=TOY_SYNONYMS, size=40)
    more = ["a kitten on a car", "a puppy and a cat", "an automobile and a dog", "two cats",
            "a dog in a car", "a car and a kitten"]
    (root / "captions.txt").write_text("\n".join(TOY_CAPTIONS + more) + "\n")  # 15 with a class
    args = ["--trainer", "TaIDPT", "--root", str(root), "--seed", "1",
            "--dataset-config-file", os.path.join(REPO, "configs/datasets/image_list.yaml"),
            "--config-file", os.path.join(REPO, "configs/trainers/TaIDPT/rn50_voc2007_debug.yaml"),
            "MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(64, 64)",
            "DATASET.CAPTIONS.SOURCE", "text", "DATASET.CAPTIONS.PATH", "captions.txt",
            "DATASET.CAPTIONS.TEMPLATES", "False",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "3",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "5", "OPTIM.LR", "0.05", "OPTIM.MAX_EPOCH", "2",
            "TRAIN.PRINT_FREQ", "1", "TRAINER.TAIDPT.N_CTX", "4"]
    single, _ = _run(1, tmp_path / "single", args, tmp_path)
    ddp, run = _run(2, tmp_path / "ddp", args, tmp_path)
    assert len(single) == len(ddp) == 6  # 15 captions / 5 per step x 2 epochs; shards of 3 + 2
    np.testing.assert_allclose(ddp, single, rtol=0, atol=1e-5)
    for epoch in (1, 2):
        for key, value in _prompts(tmp_path / "single", epoch).items():
            torch.testing.assert_close(_prompts(tmp_path / "ddp", epoch)[key], value, rtol=0, atol=1e-5)
    ids, scores = _predictions(tmp_path / "single")
    ddp_ids, ddp_scores = _predictions(tmp_path / "ddp")  # 7 test images: shards of 4 + 3
    assert ddp_ids == ids and len(ids) == 7 and scores.keys() == ddp_scores.keys()
    for head, values in scores.items():
        np.testing.assert_allclose(ddp_scores[head], values, rtol=0, atol=1e-5, err_msg=head)
    log = (tmp_path / "ddp" / "log.txt").read_text()
    assert "torchrun: 2 processes, backend gloo" in log
    assert log.count("epoch [1/2] batch [1/3]") == 1  # rank 0 alone logs
    assert len(os.listdir(tmp_path / "ddp" / "tensorboard")) == 1

    # --resume under DDP: the run stopped after epoch 1 (its pointer back at epoch 1)
    out = tmp_path / "ddp"
    (out / "prompt_learner" / "model.pth.tar-2").unlink()
    (out / "prompt_learner" / "checkpoint").write_text("model.pth.tar-1\n")
    resumed, run = _run(2, out, ["--resume", str(out), *args], tmp_path)
    assert "starting at epoch 2" in (out / "log.txt").read_text()
    np.testing.assert_allclose(resumed[-3:], ddp[3:], rtol=0, atol=1e-6)
    for key, value in _prompts(tmp_path / "single", 2).items():
        torch.testing.assert_close(_prompts(out, 2)[key], value, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_ddp_evaluation_from_the_image_feature_cache_equals_direct(tmp_path, tiny_clip_file):
    root = tmp_path / "data"
    write_image_list(str(root), TOY_CLASSES, n=7, synonyms=TOY_SYNONYMS, size=40)
    args = ["--trainer", "ZeroshotCLIP", "--eval-only", "--root", str(root),
            "--dataset-config-file", os.path.join(REPO, "configs/datasets/image_list.yaml"),
            "--config-file", os.path.join(REPO, "configs/trainers/ZeroshotCLIP/rn50.yaml"),
            "MODEL.BACKBONE.PATH", tiny_clip_file, "INPUT.SIZE", "(64, 64)",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "3"]
    _run(1, tmp_path / "direct", args, tmp_path)
    _run(2, tmp_path / "cached", [*args, "TEST.FEATURE_CACHE", "True"], tmp_path)
    ids, scores = _predictions(tmp_path / "direct")
    cached_ids, cached = _predictions(tmp_path / "cached")
    assert cached_ids == ids and len(ids) == 7 and scores.keys() == cached.keys()
    for head, values in scores.items():
        np.testing.assert_allclose(cached[head], values, rtol=0, atol=1e-5, err_msg=head)
    log = (tmp_path / "cached" / "log.txt").read_text()
    assert log.count("Cached the image features of 7 images") == 1  # rank 0 built it
