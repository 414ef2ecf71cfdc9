"""Markdown table of an image-prompt sweep (scripts/image_prompts_sweep.sh) from its run folders.

    python scripts/image_prompts_table.py OUTPUT/DATASET [--output FILE]

Reads ``TaIDPT/seedS``, ``ZeroshotCLIP/seedS``, ``DualCoOp/pP/seedS`` with
``DualCoOpTaIDPT/pP/seedS/ensemble.json``, and ``<METHOD>/kK/seedS`` with
``<METHOD>+TaIDPT/kK/seedS/ensemble.json``: test mAPs, the rate chosen on val, and the training
time each run's ``log.txt`` reports.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
from typing import Dict, List, Optional

from taidpt.engine.run_records import mean_std, train_seconds

SEED_DIR = re.compile(r"seed(\d+)$")


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def seeds_of(parent: str) -> Dict[int, str]:
    """``{seed: dir}`` for the ``seedS`` folders of ``parent`` that hold test results."""
    out = {}
    for path in glob.glob(os.path.join(parent, "seed*")):
        match = SEED_DIR.search(path)
        if match and os.path.isfile(os.path.join(path, "results_test.json")):
            out[int(match.group(1))] = path
    return out


def mean_seconds(times: List[float]) -> str:
    return f"{statistics.mean(times):.0f}" if times else "-"


def wins(pairs: List[tuple]) -> str:
    """``yes (n/n)`` when the first of every pair beats the second."""
    won = sum(a > b for a, b in pairs)
    return f"{'yes' if won == len(pairs) else 'no'} ({won}/{len(pairs)})"


def test_map(run_dir: str, key: str = "mAP") -> float:
    return read_json(os.path.join(run_dir, "results_test.json"))["results"][key]


REFERENCE_RUNS = (("ZeroshotCLIP", "mAP_global", "ZSCLIP (global head)"),
                  ("ZeroshotCLIP", "mAP_merged", "ZSCLIP+DPT (merged head)"),
                  ("TaIDPT", "mAP", "TaI-DPT (merged head)"))


def reference_rows(root: str) -> List[str]:
    rows = ["| run | test mAP per seed | mean ± std | training time (s, mean) |", "|---|---|---|---|"]
    for name, key, label in REFERENCE_RUNS:
        runs = seeds_of(os.path.join(root, name))
        if not runs:
            continue
        maps = [test_map(runs[s], key) for s in sorted(runs)]
        times = [t for t in (train_seconds(runs[s]) for s in sorted(runs)) if t is not None]
        per_seed = ", ".join(f"s{s}: {m:.2f}" for s, m in zip(sorted(runs), maps))
        rows.append(f"| {label} | {per_seed} | {mean_std(maps)} | {mean_seconds(times)} |")
    return rows


def cell_rows(root: str, method: str, ensemble: str, prefix: str, label: str) -> List[str]:
    """One row per setting (``pP`` or ``kK`` folder) of ``method`` with its ensemble."""
    rows = [f"| {label} | {method} alone | TaI-DPT alone | ensemble | rate (val) per seed | "
            f"ensemble > {method}, every seed | ensemble > TaI-DPT, every seed | "
            f"{method} training time (s, mean) |", "|---|---|---|---|---|---|---|---|"]
    settings = sorted(glob.glob(os.path.join(root, method, prefix + "*")),
                      key=lambda p: float(os.path.basename(p)[len(prefix):]))
    for setting_dir in settings:
        setting = os.path.basename(setting_dir)
        alone, text, merged, rates, times = [], [], [], [], []
        for seed, run in sorted(seeds_of(setting_dir).items()):
            path = os.path.join(root, ensemble, setting, f"seed{seed}", "ensemble.json")
            if not os.path.isfile(path):
                continue
            result = read_json(path)
            alone.append(result["mAP_b"])
            text.append(result["mAP_a"])
            merged.append(result["best_mAP"])
            rates.append(f"s{seed}: {result['best_rate']:g}")
            seconds = train_seconds(run)
            if seconds is not None:
                times.append(seconds)
        if not alone:
            continue
        rows.append(f"| {setting[len(prefix):]} | {mean_std(alone)} | {mean_std(text)} | "
                    f"{mean_std(merged)} | {', '.join(rates)} | {wins(list(zip(merged, alone)))} | "
                    f"{wins(list(zip(merged, text)))} | {mean_seconds(times)} |")
    return rows


def build_table(root: str) -> str:
    parts = ["## Reference runs", "", *reference_rows(root), "",
             "## Partial labels (DualCoOp, local head)", "",
             *cell_rows(root, "DualCoOp", "DualCoOpTaIDPT", "p", "known labels"), ""]
    for method in ("CoOpML", "CoCoOpML"):
        if os.path.isdir(os.path.join(root, method)):
            parts += [f"## Few-shot ({method})", "",
                      *cell_rows(root, method, method + "+TaIDPT", "k", "shots"), ""]
    return "\n".join(parts)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="OUTPUT/DATASET of the sweep")
    parser.add_argument("--output", help="write the markdown here (default: print it)")
    args = parser.parse_args(argv)
    table = build_table(args.root)
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            f.write(table + "\n")
        os.replace(tmp, args.output)
    print(table)


if __name__ == "__main__":
    main()
