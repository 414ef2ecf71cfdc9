"""Issue-12 acceptance: a run SIGKILLed during a checkpoint write and again mid-epoch 3, then
resumed, ends bit for bit where the uninterrupted run ends; nothing of the killed writes remains.
With ``TRAIN.CHECKPOINT_ITER_FREQ`` the resume continues inside epoch 3, again bit for bit."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from fake_data import REPO, TOY_CAPTIONS, child_env, TOY_CLASSES, TOY_SYNONYMS, write_image_list
from taidpt.engine.checkpoint import TEMP_FILE

# Runs train.py's main in a child that SIGKILLs itself at a fixed point (test-side patches only):
# "write": inside the write of the epoch-2 checkpoint, once its bytes are in the temp file;
# "epoch3": when epoch 3 logs its second batch; "epoch3-5": its fifth; "none": runs to the end.
CHILD = r"""
import logging, os, signal, sys
import torch

def die():
    os.kill(os.getpid(), signal.SIGKILL)

mode = sys.argv[1]
if mode == "write":
    save = torch.save
    def save_then_die(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            f.flush()
            die()
    torch.save = save_then_die
elif mode.startswith("epoch3"):
    batch = mode.partition("-")[2] or "2"
    class KillOnEpoch3(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith(f"epoch [3/4] batch [{batch}/"):
                die()
    logging.getLogger("taidpt.engine.trainer").addHandler(KillOnEpoch3())
from taidpt.cli.train import main
sys.exit(main(sys.argv[2:]))
"""


def _run(mode, flags, opts, cwd):
    env = child_env()
    return subprocess.run([sys.executable, "-c", CHILD, mode, *flags, *opts], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _temp_files(folder):
    return [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names if TEMP_FILE.match(n)]


def _state(out, epoch):
    return torch.load(out / "prompt_learner" / f"model.pth.tar-{epoch}", weights_only=True)


ARGS = ["--trainer", "TaIDPT", "--seed", "1",
        "--dataset-config-file", os.path.join(REPO, "configs/datasets/image_list.yaml"),
        "--config-file", os.path.join(REPO, "configs/trainers/TaIDPT/rn50_voc2007_debug.yaml")]
OPTS = ["INPUT.SIZE", "(64, 64)", "DATASET.CAPTIONS.SOURCE", "text",
        "DATASET.CAPTIONS.PATH", "captions.txt", "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.LR", "0.01", "DATASET.CAPTIONS.TEMPLATES", "False",
        "OPTIM.MAX_EPOCH", "4", "TRAIN.PRINT_FREQ", "1", "TRAINER.TAIDPT.N_CTX", "4"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny_clip_file):
    """(data root, flags, opts, the uninterrupted run's OUTPUT_DIR)."""
    tmp = tmp_path_factory.mktemp("resume")
    root = tmp / "data"
    write_image_list(str(root), TOY_CLASSES, n=8, synonyms=TOY_SYNONYMS, size=64)
    (root / "captions.txt").write_text("\n".join(TOY_CAPTIONS * 4) + "\n")
    args, opts = [*ARGS, "--root", str(root)], ["MODEL.BACKBONE.PATH", tiny_clip_file, *OPTS]
    reference = tmp / "reference"
    done = _run("none", [*args, "--output-dir", str(reference)], opts, tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp, args, opts, reference


def _assert_same_run(reference, out, epochs):
    for epoch in epochs:
        expected, got = _state(reference, epoch), _state(out, epoch)
        for key, value in expected["state_dict"].items():
            assert torch.equal(got["state_dict"][key], value), (epoch, key)
        assert got["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()
        for index, buffers in expected["optimizer"]["state"].items():
            assert torch.equal(got["optimizer"]["state"][index]["momentum_buffer"],
                               buffers["momentum_buffer"]), epoch
    results = [json.loads((run / "results_test.json").read_text())["results"] for run in (reference, out)]
    assert results[0] == results[1]
    assert not _temp_files(out)


@pytest.mark.slow
def test_killed_twice_and_resumed_equals_the_uninterrupted_run(toy_run, tiny_clip_file):
    tmp_path, args, opts, reference = toy_run
    out = tmp_path / "out"
    killed = _run("write", [*args, "--output-dir", str(out)], opts, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    (left,) = _temp_files(out)  # the epoch-2 checkpoint, never renamed
    assert os.path.basename(left).startswith(".model.pth.tar-2.") and os.path.getsize(left) > 0
    assert (out / "prompt_learner" / "checkpoint").read_text() == "model.pth.tar-1\n"

    killed = _run("epoch3", [*args, "--output-dir", str(out)], opts, tmp_path)  # resume-if-exists
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert "Removed " in killed.stdout and "resuming" in killed.stdout
    assert (out / "prompt_learner" / "checkpoint").read_text() == "model.pth.tar-2\n"
    assert not _temp_files(out)

    resumed = _run("none", [*args, "--output-dir", str(out), "--resume", str(out)], opts,
                   tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "starting at epoch 3" in resumed.stdout
    assert _state(out, 4)["run"] == {"trainer": "TaIDPT", "classnames": TOY_CLASSES,
                                     "backbone": tiny_clip_file, "n_ctx": 4, "csc": False}
    _assert_same_run(reference, out, (2, 3, 4))


@pytest.mark.slow
def test_resumed_mid_epoch_equals_the_uninterrupted_run(toy_run):
    tmp_path, args, opts, reference = toy_run
    out, opts = tmp_path / "mid_epoch", [*opts, "TRAIN.CHECKPOINT_ITER_FREQ", "3"]
    killed = _run("epoch3-5", [*args, "--output-dir", str(out)], opts, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    folder = out / "prompt_learner"
    assert (folder / "checkpoint").read_text() == "model.pth.tar-3-batch3\n"
    assert not list(folder.glob("model.pth.tar-*-batch[!3]*"))  # superseded mid-epoch files go

    resumed = _run("none", [*args, "--output-dir", str(out)], opts, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "continuing epoch 3 after batch 3" in resumed.stdout
    assert "epoch [3/4] batch [4/" in resumed.stdout and "epoch [3/4] batch [3/" not in resumed.stdout
    assert not list(folder.glob("model.pth.tar-*-batch*"))
    _assert_same_run(reference, out, (3, 4))
