"""scripts/paper/*.sh --synthetic end to end: every script's loops on a small synthetic world and
its tiny CLIP, then the report, which must have every row and column of the paper's table, filled."""
import csv
import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("table1", "table2", "table3", "table4", "fig6", "fig7")
# A small world (8 classes) and a CLIP pretrained for a few steps: the loops, not the numbers.
WORLD = ("DATASET.SYNTHETIC.NUM_CLASSES 8 DATASET.SYNTHETIC.NUM_PAIRS 600 DATASET.SYNTHETIC.NUM_CAPTIONS 600 "
         "DATASET.SYNTHETIC.NUM_TEST 120 DATASET.SYNTHETIC.NUM_VAL 60 DATASET.SYNTHETIC.NUM_TRAIN 120 "
         "DATASET.SYNTHETIC.PRETRAIN_STEPS 10")
DATASET_COLUMNS = ["VOC2007", "MS-COCO", "NUS-WIDE"]
PERCENT = [f"{p}0%" for p in range(1, 10)]
# The paper's rows and columns of each table / figure (Figure 7: the caption counts run here).
PAPER_CELLS = {
    "table1": (["ZSCLIP", "ZSCLIP+DPT", "TaI", "TaI-DPT"], DATASET_COLUMNS),
    "table2": (["ZSCLIP", "TaI-DPT"], ["MS-COCO (16 novel classes)"]),
    "table3": ([f"{d}: {m}" for d in ("MS-COCO", "VOC2007", "NUS-WIDE") for m in ("DualCoOp", "DualCoOp + TaI-DPT")],
               PERCENT + ["Avg."]),
    "table4": ([f"{m}, {loss}" for m in ("TaI", "TaI-DPT") for loss in ("BCE", "ASL", "ranking")], DATASET_COLUMNS),
    "fig6": ([f"{d}: {m}" for d in DATASET_COLUMNS for m in ("CoOp", "CoOp + TaI-DPT")], ["1", "2", "4", "8", "16"]),
    "fig7": ([f"{d}: TaI-DPT" for d in DATASET_COLUMNS], ["100", "200", "400", "800", "all"]),
}


def run_script(name, out, extra_env=None):
    env = dict(os.environ, OUTPUT=str(out), SEEDS="1", SYNTHETIC_WORLD=WORLD, VIRTUAL_ENV=sys.prefix,
               TAIDPT_OFFLINE="1", **(extra_env or {}))
    return subprocess.run(["bash", os.path.join(REPO, "scripts", "paper", f"{name}.sh"), "--synthetic"],
                          env=env, capture_output=True, text=True, timeout=3600)


def read_results(run_dir):
    with open(run_dir / "results_test.json") as f:
        return json.load(f)["results"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_every_script_synthetic_fills_the_papers_table(tmp_path):
    out = tmp_path / "paper"
    started, seconds = time.time(), {}
    for name in SCRIPTS:
        step = time.time()
        done = run_script(name, out)
        seconds[name] = time.time() - step
        assert done.returncode == 0, f"{name}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert f"[{name}] " in done.stdout and "command(s) to run" in done.stdout  # the plan is printed
        rows, columns = PAPER_CELLS[name]
        cells = read_csv(out / "report" / f"{name}.csv")
        assert {c["world"] for c in cells} == {"synthetic"}
        found = {(c["row"], c["column"]) for c in cells if c["seeds"] == "1" and c["mean"] != ""}
        assert found == {(r, c) for r in rows for c in columns}, name
        assert all(c["paper"] == "" and c["difference"] == "" for c in cells)  # never vs the paper
        markdown = (out / "report" / f"{name}.md").read_text()
        assert "SYNTHETIC WORLD" in markdown and all(f"| {r} " in markdown for r in rows)
        if name == "table1":  # the stand-ins share trainings: the same world, only NUS-WIDE's image temperature differs
            assert (out / "synthetic-coco2014").is_symlink()
            assert not list((out / "synthetic-nuswide").rglob("model.pth.tar*"))
            voc, nus = (read_results(out / f"synthetic-{d}" / "TaIDPT" / "seed1") for d in ("voc2007", "nuswide"))
            assert nus["mAP_global"] == voc["mAP_global"] and nus["mAP_local"] != voc["mAP_local"]
        if name == "table3":
            assert (out / "synthetic-nuswide" / "DualCoOp" / "p0.1" / "seed1").is_symlink()
        if name.startswith("fig"):
            image = Image.open(out / "report" / f"{name}_synthetic.png")
            assert image.size[0] > 0 and os.path.getsize(out / "report" / f"{name}_synthetic.png") > 10_000
    total = time.time() - started
    print(f"paper scripts --synthetic: {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})")
    # a rerun skips every finished run
    again = run_script("table1", out)
    assert again.returncode == 0 and "[table1] 0 command(s) to run" in again.stdout


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    out = tmp_path / "paper"
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "paper", "table3.sh"), "--dry-run"],
                          env=dict(os.environ, OUTPUT=str(out), DATA=str(tmp_path / "data"), SEEDS="1 2",
                                   DATASETS="voc2007", PS="0.1 0.5", VIRTUAL_ENV=sys.prefix),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("[table3]   taidpt ")]
    # per seed: TaI-DPT, its val evaluation, per P: DualCoOp + its val evaluation + 2 ensembles
    assert len(lines) == 2 * (2 + 2 * 4)
    assert "[table3] 20 command(s) to run" in done.stdout
    first = lines[0]
    assert "configs/datasets/paper/voc2007_caption.yaml" in first and "rn50_voc2007.yaml" in first
    assert f"--root {tmp_path / 'data'}" in first
    dualcoop = next(line for line in lines if "--trainer DualCoOp" in line)
    assert "voc2007_partial.yaml" in dualcoop and "rn101_voc2007.yaml" in dualcoop
    assert "DATASET.PARTIAL_PROB 0.1" in dualcoop
    assert any("--rate-from" in line and "DualCoOpTaIDPT/p0.5/seed2/ensemble_val.json" in line for line in lines)
    assert not out.joinpath("voc2007").exists()


def test_unknown_flag_and_missing_data_are_errors(tmp_path):
    script = os.path.join(REPO, "scripts", "paper", "table1.sh")
    env = {k: v for k, v in os.environ.items() if k != "DATA"}
    env.update(OUTPUT=str(tmp_path), VIRTUAL_ENV=sys.prefix)
    bad = subprocess.run(["bash", script, "--fast"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument '--fast'" in bad.stderr
    no_data = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert no_data.returncode != 0 and "set DATA to the datasets root" in no_data.stderr


@pytest.mark.slow  # ~5 s alone; 47 s measured on a loaded machine
def test_more_than_one_gpu_runs_each_training_under_torchrun(tmp_path):
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "torchrun"
    fake.write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "paper", "table1.sh")],
                          env=dict(os.environ, OUTPUT=str(tmp_path / "out"), DATA=str(tmp_path), SEEDS="1",
                                   GPUS="4", TORCHRUN=str(fake), VIRTUAL_ENV=sys.prefix),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 6 and all(line.startswith(f"--nproc_per_node 4 {REPO}/train.py --trainer ") for line in lines)
    assert "(0/0)" in done.stdout  # the report ran (no results: empty cells)
