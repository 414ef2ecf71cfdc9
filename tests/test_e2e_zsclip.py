"""Issue-2 acceptance: zero-shot CLIP through ``python train.py --eval-only`` on an image list."""
import json
import os

import pytest

from fake_data import run_train_py, write_image_list

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_zeroshot_clip_eval_only_on_image_list(tmp_path, tiny_clip_file):
    root = tmp_path / "data"
    write_image_list(str(root), ["cat", "dog", "car"], n=6, size=48)
    out = tmp_path / "out"
    run = run_train_py("--trainer", "ZeroshotCLIP_dense", "--eval-only", "--root", str(root),
                       "--dataset-config-file", os.path.join(REPO, "configs/datasets/image_list.yaml"),
                       "--config-file", os.path.join(REPO, "configs/trainers/ZeroshotCLIP/rn50.yaml"),
                       "--output-dir", str(out), "MODEL.BACKBONE.PATH", tiny_clip_file,
                       "INPUT.SIZE", "(64, 64)", "DATALOADER.NUM_WORKERS", "0", cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for key in ("mAP_global", "mAP_local", "mAP_merged"):
        assert key in run.stdout
    log = (out / "log.txt").read_text()
    assert "mAP_merged" in log and "Loaded CLIP from" in log
    record = json.loads((out / "results_test.json").read_text())
    assert set(record["results"]) == {"mAP_global", "mAP_local", "mAP_merged", "mAP"}
    assert all(0.0 < v <= 100.0 for v in record["results"].values())
    assert not list(tmp_path.glob("*.pth*"))
    from taidpt.config import setup_cfg
    saved = setup_cfg(str(out / "config.yaml"))  # the full config, re-loadable as is
    assert saved.MODEL.BACKBONE.PATH == tiny_clip_file and saved.TRAINER.NAME == "ZeroshotCLIP_dense"


def test_unknown_key_and_missing_clip_weights_fail_fast(tmp_path):
    root = tmp_path / "data"
    write_image_list(str(root), ["cat", "dog"], n=2)
    run = run_train_py("--trainer", "ZeroshotCLIP", "--eval-only", "--root", str(root),
                       "--dataset-config-file", os.path.join(REPO, "configs/datasets/image_list.yaml"),
                       "--output-dir", str(tmp_path / "out"), "MODEL.BACKBONE.NOT_A_KEY", "x",
                       cwd=tmp_path, check=False)
    assert run.returncode != 0 and "Unknown config key 'MODEL.BACKBONE.NOT_A_KEY'" in run.stderr
    run = run_train_py("--trainer", "ZeroshotCLIP", "--eval-only", "--root", str(root),
                       "--dataset-config-file", os.path.join(REPO, "configs/datasets/image_list.yaml"),
                       "--output-dir", str(tmp_path / "out"), "--backbone", "RN101", cwd=tmp_path,
                       check=False)
    assert run.returncode != 0
    assert "RN101.pt" in run.stderr and "MODEL.BACKBONE.PATH" in run.stderr


@pytest.mark.parametrize("corrupt", [True, False])
def test_bad_image_files_are_named(tmp_path, tiny_clip_file, corrupt):
    from taidpt.engine.data import read_image

    path = tmp_path / "img.png"
    if corrupt:
        path.write_bytes(b"\x89PNG garbage")
        with pytest.raises(RuntimeError, match="corrupt"):
            read_image(str(path))
    else:
        with pytest.raises(FileNotFoundError, match=str(path)):
            read_image(str(path))
