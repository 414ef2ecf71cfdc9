"""Bad input is refused up front with one clear message (issue 12 items 4-5): one case per row
of the issue's catalogue, through ``taidpt.cli.train.main`` (once through a real subprocess)."""
import errno
import os
import subprocess
import sys
import tempfile

import pytest

from fake_data import write_image_list
from taidpt.cli import errors
from taidpt.cli.train import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["cat", "dog"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A MultiLabelImageList root with captions, an empty and a class-less caption file, and a
    second root whose test list holds two corrupt images."""
    root = tmp_path_factory.mktemp("bad_input") / "data"
    write_image_list(str(root), CLASSES, n=4)
    (root / "captions.txt").write_text("a cat on a mat\na dog in the park\na cat and a dog\n" * 4)
    (root / "empty.txt").write_text("")
    (root / "classless.txt").write_text("the sky is blue\na red car\n")
    corrupt = root.parent / "corrupt"
    write_image_list(str(corrupt), CLASSES, n=4)
    (corrupt / "captions.txt").write_text((root / "captions.txt").read_text())
    (corrupt / "images" / "test_0001.png").write_bytes(b"not an image")
    png = (corrupt / "images" / "test_0002.png").read_bytes()
    (corrupt / "images" / "test_0002.png").write_bytes(png[:20])  # a cut header
    return root


def _read_only_dir(tmp_path):
    """A folder this process cannot write into (root ignores permission bits: /sys/kernel)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return str(folder)
    if os.path.isdir("/sys/kernel") and not _writable("/sys/kernel"):
        return "/sys/kernel"
    pytest.skip("no read-only folder available")


def _writable(path):
    try:
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def _argv(root, out, clip, *extra, opts=()):
    return ["--trainer", "TaIDPT", *(["--root", str(root)] if root else []), "--seed", "1",
            "--output-dir", str(out), *extra,
            "--dataset-config-file", os.path.join(REPO, "configs/datasets/image_list.yaml"),
            "MODEL.BACKBONE.PATH", clip, "INPUT.SIZE", "(64, 64)", "DATASET.CAPTIONS.SOURCE",
            "text", "DATASET.CAPTIONS.PATH", "captions.txt", "DATALOADER.NUM_WORKERS", "0",
            "USE_CUDA", "False", "OPTIM.MAX_EPOCH", "1", "TRAINER.TAIDPT.N_CTX", "4", *opts]


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, names in os.walk(folder) for f in names) if os.path.isdir(folder) else []


# id -> (extra flags, opts, fragments the message must hold: the key or path, and the fix)
CASES = {
    "bad split": ((), ("TEST.SPLIT", "train"), ["TEST.SPLIT", "'train'", "test, val"]),
    "bestval final model": ((), ("TEST.FINAL_MODEL", "bestval"),
                            ["TEST.FINAL_MODEL", "'bestval'", "last_step, best_val"]),
    "merge rate 7": ((), ("TRAINER.TAIDPT.GL_MERGE_RATE", "7"),
                     ["TRAINER.TAIDPT.GL_MERGE_RATE", "[0, 1]", "got 7.0"]),
    "negative lr": ((), ("OPTIM.LR", "-1"), ["OPTIM.LR", "(0, inf)", "got -1.0"]),
    "batch size 0": ((), ("DATALOADER.TRAIN_X.BATCH_SIZE", "0"),
                     ["DATALOADER.TRAIN_X.BATCH_SIZE", "[1, inf)", "got 0"]),
    "empty caption file": ((), ("DATASET.CAPTIONS.PATH", "empty.txt"),
                           ["empty.txt", "0 sentences read", "DATASET.CAPTIONS.PATH"]),
    "class-less caption file": ((), ("DATASET.CAPTIONS.PATH", "classless.txt"),
                                ["classless.txt", "2 sentences read, 0 with a class",
                                 "class names"]),
    "corrupt test image": ((), (), ["2 of 4 test split", "test_0001.png", "test_0002.png",
                                    "Replace them"]),
    "read-only output dir": ((), (), ["OUTPUT_DIR (--output-dir) is not writable",
                                      "use a folder"]),
    "missing --root": ((), (), ["DATASET.ROOT is not set", "give --root"]),
    "eval-only without model dir": (("--eval-only",), (), ["--eval-only without --model-dir",
                                                           "give --model-dir"]),
}


# Refused once the run is set up (its log.txt open); the others when the config is frozen.
AFTER_CONFIG = ("empty caption file", "class-less caption file", "corrupt test image",
                "missing --root", "eval-only without model dir")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_error(case, data, tmp_path, tiny_clip_file, capsys):
    extra, opts, fragments = CASES[case]
    root = data.parent / "corrupt" if case == "corrupt test image" else data
    out = _read_only_dir(tmp_path) if case == "read-only output dir" else tmp_path / "out"
    cache = os.environ["TAIDPT_CACHE"]
    listing = os.listdir if case == "read-only output dir" else _files  # not all of /sys/kernel
    cache_before, out_before = _files(cache), listing(out)
    root_arg = None if case == "missing --root" else root
    assert main(_argv(root_arg, out, tiny_clip_file, *extra, opts=opts)) == 2
    err = capsys.readouterr().err  # progress bars aside, one error line
    lines = [line for line in err.splitlines() if line.startswith("train.py: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    if case == "read-only output dir":
        assert out in err
    if case == "missing --root":
        assert os.getcwd() not in err
    # Nothing partial: no new cache file, and the output holds at most the run's log and config
    # (nothing at all for a config value: refused when the config is frozen).
    assert _files(cache) == cache_before
    left = set(listing(out)) - set(out_before)
    assert left <= ({"log.txt", "config.yaml"} if case in AFTER_CONFIG else set()), left
    if "log.txt" in left:  # a log was open: the message and the traceback are in it
        log = open(os.path.join(out, "log.txt")).read()
        message = lines[0].split("error: ", 1)[1].replace(errors.DEBUG_HINT, "")
        assert message in log and "Traceback" in log


def test_debug_prints_the_traceback(data, tmp_path, tiny_clip_file, capsys):
    assert main(_argv(data, tmp_path / "out", tiny_clip_file, "--debug",
                      opts=("OPTIM.LR", "-1"))) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("train.py: error: OPTIM.LR")


def test_exit_codes_and_os_errors_name_the_path():
    full = OSError(errno.ENOSPC, "No space left on device", "/out/model.pth.tar-1")
    assert errors.exit_code(full) == 1
    assert errors.describe(full) == ("No space left on device: /out/model.pth.tar-1 (the disk is "
                                     "full: free some space there or use a folder on another disk)")
    assert errors.exit_code(OSError(errno.EROFS, "Read-only file system", "/out")) == 2
    assert errors.exit_code(ValueError("bad")) == 2 and errors.exit_code(RuntimeError("x")) == 1
    assert errors.describe(RuntimeError("boom")) == "RuntimeError: boom"


@pytest.mark.slow  # 45 s on 2 busy cores: the imports of a fresh interpreter
def test_exit_code_and_stderr_through_a_subprocess(data, tmp_path, tiny_clip_file):
    """The real command line: exit 2 and one line on stderr, nothing else."""
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"),
         *_argv(data, tmp_path / "out", tiny_clip_file, opts=("TRAINER.TAIDPT.GL_MERGE_RATE", "7"))],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=600)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "train.py: error: TRAINER.TAIDPT.GL_MERGE_RATE must lie in [0, 1], got 7.0: fix it in the "
        "config file or the command-line opts." + errors.DEBUG_HINT]


def test_the_synthetic_world_folder_is_0755(tmp_path):
    from taidpt.datasets.synthetic.world import WorldSpec, build_world

    spec = WorldSpec(num_classes=3, image_size=16, num_pairs=2, num_captions=2, num_test=2,
                     num_val=2, num_train=2)
    assert build_world(spec, str(tmp_path)).stat().st_mode & 0o777 == 0o755
