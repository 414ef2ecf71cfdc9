"""The main job on the embedded default: Table 1 of the paper, reproduced on the synthetic world.

For each seed: build (or reuse) the synthetic world and pretrain (or reuse) its tiny CLIP, then run
through ``train.py``: zero-shot CLIP (global and +DPT), TaI-DPT trained on the world's captions
only, and a linear probe that uses labelled images (a reference ceiling). Prints one table and
saves it as Markdown and CSV with a bar chart under ``--output-dir``.

    python scripts/quickstart.py                 # seed 1: ~7-14 min on 2 CPU cores, ~2 min cached
    python scripts/quickstart.py --seeds 1 2 3   # mean and std over three worlds
    python scripts/quickstart.py --quick         # a small world (8 classes) and short runs (CI)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tabulate import tabulate  # noqa: E402

from taidpt.config import setup_cfg  # noqa: E402
from taidpt.datasets import build_dataset, label_matrix  # noqa: E402
from taidpt.datasets.synthetic import WorldSpec, build_tiny_clip  # noqa: E402
from taidpt.engine.utils import setup_logger  # noqa: E402
from taidpt.extras import require  # noqa: E402

DATASET_CFG = os.path.join(REPO, "configs", "datasets", "synthetic.yaml")
TRAINER_CFG = {
    "TaIDPT": os.path.join(REPO, "configs", "trainers", "TaIDPT", "tiny_synthetic.yaml"),
    "LinearProbe": os.path.join(REPO, "configs", "trainers", "LinearProbe", "tiny_synthetic.yaml"),
}
QUICK_WORLD = ["DATASET.SYNTHETIC.NUM_PAIRS", "6000", "DATASET.SYNTHETIC.NUM_CAPTIONS", "3000",
               "DATASET.SYNTHETIC.NUM_TEST", "400", "DATASET.SYNTHETIC.NUM_VAL", "100",
               "DATASET.SYNTHETIC.NUM_TRAIN", "400", "DATASET.SYNTHETIC.PRETRAIN_STEPS", "160",
               "DATASET.SYNTHETIC.NUM_CLASSES", "8"]
QUICK_RUNS = {"TaIDPT": ["OPTIM.MAX_EPOCH", "3"], "LinearProbe": ["OPTIM.MAX_EPOCH", "20"]}
# (table row, run, result key, training data, uses image labels)
ROWS = [
    ("ZSCLIP", "ZeroshotCLIP", "mAP_global", "none (hand-written prompt)", "no"),
    ("ZSCLIP+DPT", "ZeroshotCLIP", "mAP_merged", "none (hand-written prompt)", "no"),
    ("TaI", "TaIDPT", "mAP_global", "captions only", "no"),
    ("TaI-DPT", "TaIDPT", "mAP_merged", "captions only", "no"),
    ("Linear probe (reference)", "LinearProbe", "mAP", "labelled images", "YES"),
]


def log(message: str) -> None:
    print(f"[quickstart] {message}", flush=True)


def prepare_world(seed: int, world_opts: List[str]) -> Dict[str, object]:
    """Build / reuse the world and its tiny CLIP; returns the CLIP path and the chance mAP."""
    cfg = setup_cfg(DATASET_CFG, opts=["DATASET.SYNTHETIC.SEED", str(seed), *world_opts])
    dataset = build_dataset(cfg)
    node = cfg.DATASET.SYNTHETIC
    clip_path = build_tiny_clip(WorldSpec.from_cfg(cfg), node.CACHE_DIR, node.PRETRAIN_STEPS)
    positive_rate = (label_matrix(dataset.test) > 0).mean(axis=0)
    return {"clip": str(clip_path), "chance": float(100 * positive_rate.mean())}


def run_train(trainer: str, seed: int, clip: str, out_dir: str, world_opts: List[str],
              extra: Sequence[str]) -> Dict[str, float]:
    """One ``train.py`` run; its log is ``out_dir/log.txt``; returns the test results."""
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--trainer", trainer, "--seed", str(seed),
           "--dataset-config-file", DATASET_CFG, "--output-dir", out_dir]
    if trainer in TRAINER_CFG:
        cmd += ["--config-file", TRAINER_CFG[trainer]]
    else:
        cmd += ["--eval-only"]
    cmd += ["DATASET.SYNTHETIC.SEED", str(seed), "MODEL.BACKBONE.PATH", clip, *world_opts, *extra]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, env=env)
    if done.returncode != 0:
        log_file = os.path.join(out_dir, "log.txt")
        tail = open(log_file).read()[-3000:] if os.path.isfile(log_file) else ""
        raise SystemExit(f"{trainer} failed (exit {done.returncode}); command: {' '.join(cmd)}\n{tail}")
    with open(os.path.join(out_dir, "results_test.json")) as f:
        return json.load(f)["results"]


def build_table(per_seed: Dict[int, Dict[str, Dict[str, float]]]) -> List[List[object]]:
    seeds = sorted(per_seed)
    table = []
    for name, run, key, data, labels in ROWS:
        values = [per_seed[s][run][key] for s in seeds]
        cells: List[object] = [name, data, labels]
        if len(seeds) > 1:
            cells += [f"{v:.1f}" for v in values]
            cells.append(f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}")
        else:
            cells.append(f"{values[0]:.1f}")
        table.append(cells)
    return table


def save_outputs(out: str, headers: List[str], table: List[List[object]],
                 per_seed: Dict[int, Dict[str, Dict[str, float]]], chance: Dict[int, float]) -> None:
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(tabulate(table, headers=headers, tablefmt="github") + "\n")
    with open(os.path.join(out, "table.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        writer.writerows(table)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"per_seed": per_seed, "chance": chance}, f, indent=2)
    matplotlib = require("matplotlib", "The quickstart's figure (map.png)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(per_seed)
    means = [statistics.mean(per_seed[s][run][key] for s in seeds) for _, run, key, _, _ in ROWS]
    errors = [statistics.stdev(per_seed[s][run][key] for s in seeds) if len(seeds) > 1 else 0.0
              for _, run, key, _, _ in ROWS]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    colours = ["#9e9e9e", "#bdbdbd", "#64b5f6", "#1565c0", "#ffb74d"]
    ax.bar([r[0] for r in ROWS], means, yerr=errors, color=colours, capsize=4)
    ax.axhline(statistics.mean(chance.values()), color="k", ls="--", lw=1, label="chance (positive rate)")
    for i, m in enumerate(means):
        ax.text(i, m + 1, f"{m:.1f}", ha="center", fontsize=9)
    ax.set_ylabel("mAP (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Synthetic world, tiny CLIP ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
    ax.legend(loc="lower right", fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "map.png"), dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output", "quickstart"))
    parser.add_argument("--quick", action="store_true", help="small world (8 classes), short runs (CI)")
    args = parser.parse_args(argv)
    setup_logger()
    world_opts = QUICK_WORLD if args.quick else []
    os.makedirs(args.output_dir, exist_ok=True)
    per_seed: Dict[int, Dict[str, Dict[str, float]]] = {}
    chance: Dict[int, float] = {}
    start = time.time()
    for seed in args.seeds:
        step = time.time()
        log(f"seed {seed}: synthetic world and tiny CLIP (built once, then cached)")
        world = prepare_world(seed, world_opts)
        chance[seed] = world["chance"]
        log(f"seed {seed}: ready in {time.time() - step:.0f}s; tiny CLIP {world['clip']}")
        per_seed[seed] = {}
        for trainer in ("ZeroshotCLIP", "TaIDPT", "LinearProbe"):
            step = time.time()
            log(f"seed {seed}: {trainer} ...")
            out_dir = os.path.join(args.output_dir, f"seed{seed}", trainer)
            extra = QUICK_RUNS.get(trainer, []) if args.quick else []
            per_seed[seed][trainer] = run_train(trainer, seed, world["clip"], out_dir, world_opts, extra)
            log(f"seed {seed}: {trainer} done in {time.time() - step:.0f}s: "
                + ", ".join(f"{k} {v:.2f}" for k, v in per_seed[seed][trainer].items()))
    seeds = sorted(per_seed)
    headers = ["Method", "Training data", "Image labels"]
    headers += [f"seed {s}" for s in seeds] + ["mAP (mean ± std)"] if len(seeds) > 1 else ["mAP"]
    table = build_table(per_seed)
    save_outputs(args.output_dir, headers, table, per_seed, chance)
    print()
    print("TaI-DPT on the synthetic world (mAP %, test images; cf. the paper's Table 1)")
    print(tabulate(table, headers=headers, tablefmt="github"))
    print(f"chance level (mean positive rate): {statistics.mean(chance.values()):.1f}; "
          f"total time {time.time() - start:.0f}s")
    print(f"saved: {os.path.join(args.output_dir, 'table.md')}, table.csv, map.png, results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
