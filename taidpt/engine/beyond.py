"""The "beyond the paper" table (issue 15): TaI-DPT and its add-ons, every choice made on val.

Input: one folder per training variant of one dataset (``scripts/beyond_sweep.sh``), each with
``seed<S>/predictions_test.npz`` and ``seed<S>/val/predictions_val.npz`` holding the heads
``global``, ``local`` and ``prototype`` (``PROTOTYPES.ENABLED``): ``plain`` (TaI-DPT),
``noise<STD>`` (``NOISE_STD``), ``meanshift`` (``MEAN_SHIFT``). Rows, per seed:

- ``TaI-DPT``: ``merged = r global + (1 - r) local`` of ``plain`` (``r`` = ``merge_rate``);
- ``+ prototypes``: ``(1 - w) merged + w prototype``, ``w`` in ``weights`` chosen on val;
- ``+ noise``: the ``noise<STD>`` run whose val mAP is best (the chosen std);
- ``+ mean shift``: ``meanshift``;
- ``+ debiasing (val statistics)``: ``global`` and ``local`` standardised per class with their
  val statistics, then merged (:mod:`taidpt.engine.debias`; on the merged head alone it cannot
  change mAP); ``+ debiasing (transductive)``: with the test split's own statistics;
- ``best combination``: the best val mAP over every variant x debiasing (off / val) x ``w``;
- ``ZSCLIP`` and ``ZSCLIP + prototypes`` (``w`` on val) from a ``zsclip`` folder (zero-shot CLIP
  with ``TRAINER.ZEROSHOTCLIP.PROTOTYPES.ENABLED``), outside the combination.

Ties on val keep the first candidate (variants in folder order, smaller ``w``, debiasing off).
"""
from __future__ import annotations

import glob
import os
import re
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from taidpt.engine.debias import debias
from taidpt.engine.ensemble import Predictions, check_same_data, load_predictions
from taidpt.engine.run_records import mean_std, train_seconds
from taidpt.io import atomic_write
from taidpt.metrics import mean_average_precision

PLAIN = "plain"
MEAN_SHIFT = "meanshift"
ZSCLIP = "zsclip"
NOISE = re.compile(r"noise(\d+(?:\.\d+)?)$")
SEED = re.compile(r"seed(\d+)$")
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
ROWS = ("TaI-DPT", "+ prototypes", "+ noise", "+ mean shift", "+ debiasing (val statistics)",
        "+ debiasing (transductive)", "best combination", "ZSCLIP", "ZSCLIP + prototypes")
BASES = {"TaI-DPT": None, "ZSCLIP": None, "ZSCLIP + prototypes": "ZSCLIP"}  # others: TaI-DPT


@dataclass
class Run:
    """One variant and seed: val and test predictions, training seconds (None when not trained
    in this folder)."""

    val: Predictions
    test: Predictions
    seconds: Optional[float] = None


@dataclass
class Cell:
    """One row and seed: test mAP, the choice made on val (text) and that choice's val mAP."""

    test_map: float
    choice: str = ""
    val_map: float = float("nan")


@dataclass
class Table:
    rows: Dict[str, Dict[int, Cell]] = field(default_factory=dict)
    seconds: Dict[str, List[float]] = field(default_factory=dict)


def load_runs(root: str) -> Dict[str, Dict[int, Run]]:
    """``{variant: {seed: Run}}`` for every ``root/<variant>/seed<S>`` with both splits' predictions."""
    runs: Dict[str, Dict[int, Run]] = {}
    for seed_dir in sorted(glob.glob(os.path.join(root, "*", "seed*"))):
        match = SEED.search(seed_dir)
        val_dir = os.path.join(seed_dir, "val")
        if not (match and os.path.isfile(os.path.join(seed_dir, "predictions_test.npz"))
                and os.path.isfile(os.path.join(val_dir, "predictions_val.npz"))):
            continue
        variant = os.path.basename(os.path.dirname(seed_dir))
        runs.setdefault(variant, {})[int(match.group(1))] = Run(
            load_predictions(val_dir, "val"), load_predictions(seed_dir, "test"),
            train_seconds(seed_dir))
    if PLAIN not in runs:
        raise FileNotFoundError(f"No {os.path.join(root, PLAIN, 'seed<S>')} with predictions_test.npz "
                                "and val/predictions_val.npz: run scripts/beyond_sweep.sh first.")
    return runs


def noise_variants(runs: Dict[str, Dict[int, Run]]) -> List[Tuple[float, str]]:
    """``(std, variant)`` of every ``noise<STD>`` folder, by std."""
    return sorted((float(NOISE.match(v).group(1)), v) for v in runs if NOISE.match(v))


def _heads(pred: Predictions, reference: Predictions, debiased: bool) -> Dict[str, np.ndarray]:
    """``global``, ``local``, ``prototype`` (when present) of ``pred``; standardised per class with
    the statistics of ``reference`` (the same run's val split) when ``debiased``."""
    names = [n for n in ("global", "local", "prototype") if n in pred.scores]
    return {n: debias(pred.scores[n], "val", reference.scores[n]) if debiased
            else pred.scores[n].astype(np.float64) for n in names}


def combined(heads: Dict[str, np.ndarray], merge_rate: float, weight: float) -> np.ndarray:
    """``(1 - w) (r global + (1 - r) local) + w prototype`` (``w`` = 0: no prototype head needed)."""
    merged = merge_rate * heads["global"] + (1.0 - merge_rate) * heads["local"]
    return merged if weight == 0 else (1.0 - weight) * merged + weight * heads["prototype"]


def _map(scores: np.ndarray, pred: Predictions, difficult: str) -> float:
    return mean_average_precision(scores, pred.targets, difficult=difficult)


def _evaluate(run: Run, merge_rate: float, weight: float, debiased: bool, difficult: str,
              transductive: bool = False) -> Tuple[float, float]:
    """(val mAP, test mAP) of one setting; ``transductive`` debiases test with its own statistics."""
    val = combined(_heads(run.val, run.val, debiased), merge_rate, weight)
    test = combined(_heads(run.test, run.test if transductive else run.val, debiased), merge_rate,
                    weight)
    return _map(val, run.val, difficult), _map(test, run.test, difficult)


def _best(candidates: Sequence[Tuple[str, Run, float, bool]], merge_rate: float,
          difficult: str) -> Cell:
    """The candidate ``(label, run, weight, debiased)`` with the best val mAP (first on ties)."""
    best: Optional[Cell] = None
    for label, run, weight, debiased in candidates:
        val_map, test_map = _evaluate(run, merge_rate, weight, debiased, difficult)
        if best is None or val_map > best.val_map:
            best = Cell(test_map, label, val_map)
    return best


def build_table(root: str, merge_rate: float = 0.5, weights: Sequence[float] = WEIGHTS,
                difficult: str = "negative") -> Table:
    """Every row of the module docstring, per seed of the ``plain`` runs."""
    runs = load_runs(root)
    zsclip = runs.pop(ZSCLIP, {})
    table = Table()
    noises = noise_variants(runs)
    for seed, plain in sorted(runs[PLAIN].items()):
        for variant in runs:
            if seed in runs[variant]:
                check_same_data(plain.test, runs[variant][seed].test)
                check_same_data(plain.val, runs[variant][seed].val)
        val_map, test_map = _evaluate(plain, merge_rate, 0.0, False, difficult)
        rows = {"TaI-DPT": Cell(test_map, "", val_map)}
        if "prototype" in plain.test.scores:
            rows["+ prototypes"] = _best([(f"w={w:g}", plain, w, False) for w in weights],
                                         merge_rate, difficult)
        seeded_noise = [(std, runs[v][seed]) for std, v in noises if seed in runs[v]]
        if seeded_noise:
            rows["+ noise"] = _best([(f"std={std:g}", run, 0.0, False) for std, run in seeded_noise],
                                    merge_rate, difficult)
        if seed in runs.get(MEAN_SHIFT, {}):
            rows["+ mean shift"] = _best([("", runs[MEAN_SHIFT][seed], 0.0, False)], merge_rate,
                                         difficult)
        rows["+ debiasing (val statistics)"] = _best([("", plain, 0.0, True)], merge_rate, difficult)
        val_map, test_map = _evaluate(plain, merge_rate, 0.0, True, difficult, transductive=True)
        rows["+ debiasing (transductive)"] = Cell(test_map, "test statistics", val_map)
        variants = [(PLAIN, plain)] + [(f"noise std={std:g}", run) for std, run in seeded_noise]
        if seed in runs.get(MEAN_SHIFT, {}):
            variants.append(("mean shift", runs[MEAN_SHIFT][seed]))
        candidates = []
        for name, run in variants:
            for debiased in (False, True):
                for w in (weights if "prototype" in run.test.scores else (0.0,)):
                    parts = [name] + (["debiased"] if debiased else []) + (
                        [f"prototypes w={w:g}"] if w else [])
                    candidates.append((" + ".join(parts), run, w, debiased))
        rows["best combination"] = _best(candidates, merge_rate, difficult)
        if seed in zsclip:
            check_same_data(plain.test, zsclip[seed].test)
            val_map, test_map = _evaluate(zsclip[seed], merge_rate, 0.0, False, difficult)
            rows["ZSCLIP"] = Cell(test_map, "", val_map)
            rows["ZSCLIP + prototypes"] = _best([(f"w={w:g}", zsclip[seed], w, False)
                                                 for w in weights], merge_rate, difficult)
        for name, cell in rows.items():
            table.rows.setdefault(name, {})[seed] = cell
    for variant, seeded in runs.items():
        seconds = [run.seconds for run in seeded.values() if run.seconds is not None]
        if seconds:
            table.seconds[variant] = seconds
    return table


def markdown(tables: Dict[str, Table]) -> str:
    """Rows: the add-ons; columns: each dataset's test mAP, mean ± std over seeds. Then, per dataset,
    the per-seed test mAP with the choice made on val, the gain over TaI-DPT per seed, whether it
    holds on every seed, and the training time of each variant."""
    names = [name for name in ROWS if any(name in table.rows for table in tables.values())]
    lines = ["| row | " + " | ".join(f"{d} test mAP" for d in tables) + " |",
             "|---|" + "---|" * len(tables)]
    for name in names:
        cells = [table.rows.get(name, {}) for table in tables.values()]
        lines.append(f"| {name} | " + " | ".join(
            mean_std([c[s].test_map for s in sorted(c)]) for c in cells) + " |")
    for dataset, table in tables.items():
        lines += ["", f"### {dataset}", "", "| row | per seed: test mAP (choice on val) | gain per "
                  "seed over TaI-DPT (ZSCLIP + prototypes: over ZSCLIP) | better on every seed |",
                  "|---|---|---|---|"]
        for name in [n for n in ROWS if n in table.rows]:
            cells, base_name = table.rows[name], BASES.get(name, "TaI-DPT")
            seeds = sorted(cells)
            per_seed = ", ".join(f"s{s}: {cells[s].test_map:.2f}" + (
                f" ({cells[s].choice})" if cells[s].choice else "") for s in seeds)
            base = table.rows.get(base_name, {}) if base_name else {}
            gains = [cells[s].test_map - base[s].test_map for s in seeds if s in base]
            if not base_name:
                gain_text = wins = "-"
            else:
                gain_text = ", ".join(f"{g:+.2f}" for g in gains)
                won = sum(g > 0 for g in gains)
                wins = f"{'yes' if won == len(gains) else 'no'} ({won}/{len(gains)})"
            lines.append(f"| {name} | {per_seed} | {gain_text} | {wins} |")
        if table.seconds:
            lines += ["", "| training variant | training time (s, mean over seeds) |", "|---|---|"]
            lines += [f"| {v} | {statistics.mean(t):.0f} |" for v, t in sorted(table.seconds.items())]
    return "\n".join(lines)


def dataset_roots(output: str) -> Dict[str, str]:
    """``{dataset: folder}`` of the sweep folders under ``output``: ``output`` itself when it holds
    a ``plain`` folder (one dataset), else each subfolder that does (``scripts/beyond_sweep.sh``'s
    ``OUTPUT``, one folder per dataset)."""
    if os.path.isdir(os.path.join(output, PLAIN)):
        return {os.path.basename(os.path.normpath(output)): output}
    roots = {name: os.path.join(output, name) for name in sorted(os.listdir(output))
             if os.path.isdir(os.path.join(output, name, PLAIN))} if os.path.isdir(output) else {}
    if not roots:
        raise FileNotFoundError(f"No sweep runs under {output}: expected {output}/<dataset>/{PLAIN}/"
                                "seed<S> (scripts/beyond_sweep.sh DATASET SEED...).")
    return roots


def write_report(output: str, out_dir: str) -> Tuple[str, List[str]]:
    """``taidpt report OUTPUT --table beyond``: the Markdown of every dataset's table (columns) and
    the file written into ``out_dir`` (atomically), ``beyond.md``."""
    text = markdown({name: build_table(root) for name, root in dataset_roots(output).items()})
    path = os.path.join(out_dir, "beyond.md")
    atomic_write(path, lambda f: f.write((text + "\n").encode()))
    return text, [path]
