"""Score ensembles of two runs from their saved predictions (SPEC 7, reference ``ensemble_score.py``).

Run A is the TaI-DPT run, run B the image-prompt run (DualCoOp, CoOp). Each run's chosen head is
min-max normalised with one scalar min and max over its whole ``N x C`` matrix; the ensemble is
``(1 - rate) * A + rate * B`` (the rate weighs run B).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np

from taidpt.engine.evaluator import SPLITS
from taidpt.io import atomic_write
from taidpt.metrics import mean_average_precision


def predictions_path(run_dir: str, split: str = "test") -> str:
    """Where a run's evaluation on ``split`` saved its scores."""
    return os.path.join(run_dir, f"predictions_{split}.npz")


def ensemble_json_name(split: str) -> str:
    """``ensemble.json`` for the test split, ``ensemble_<split>.json`` otherwise."""
    return "ensemble.json" if split == "test" else f"ensemble_{split}.json"


@dataclass
class EvalData:
    """What two sources must share: ``image_ids`` (N), ``classnames`` (C), ``targets`` (N x C)."""

    source: str
    image_ids: np.ndarray
    classnames: np.ndarray
    targets: np.ndarray


@dataclass
class Predictions(EvalData):
    """One run's ``predictions_<split>.npz``: ``scores`` maps head name -> ``N x C``."""

    scores: Dict[str, np.ndarray] = field(default_factory=dict)
    headline: str = ""
    trainer: str = ""
    dataset: str = ""
    split: str = ""
    epoch: int = 0

    def resolve_head(self, name: str = "") -> str:
        """``name``, or the run's headline when empty; a KeyError lists the run's heads."""
        name = name or self.headline
        if name not in self.scores:
            raise KeyError(f"{self.source} has no head {name!r}; its heads: {', '.join(self.scores)}")
        return name


def load_predictions(run_dir: str, split: str = "test") -> Predictions:
    """Read ``run_dir/predictions_<split>.npz`` (written by every evaluation of a run)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = predictions_path(run_dir, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No predictions file {path}: evaluate the run on the {split} split first (train.py "
            f"--eval-only --model-dir {run_dir} --output-dir {run_dir} ... TEST.SPLIT {split}).")
    with np.load(path) as data:
        scores = {key[len("scores_"):]: data[key] for key in data.files if key.startswith("scores_")}
        return Predictions(source=f"run {run_dir}", image_ids=data["image_ids"],
                           classnames=data["classnames"], targets=data["targets"], scores=scores,
                           headline=str(data["headline"]), trainer=str(data["trainer"]),
                           dataset=str(data["dataset"]), split=str(data["split"]),
                           epoch=int(data["epoch"]))


def _first_mismatch(a: np.ndarray, b: np.ndarray) -> int:
    """Index of the first differing row (``len`` of the shorter one when one is a prefix)."""
    n = min(len(a), len(b))
    rows = np.flatnonzero([not np.array_equal(x, y) for x, y in zip(a[:n], b[:n])])
    return int(rows[0]) if rows.size else n


def check_same_data(a: EvalData, b: EvalData) -> None:
    """Class names, image ids (in the same order) and targets of ``a`` and ``b`` must agree;
    else a ValueError naming both sources and the first mismatch."""
    for what, x, y in (("class names", a.classnames, b.classnames),
                       ("image ids", a.image_ids, b.image_ids), ("targets", a.targets, b.targets)):
        if len(x) == len(y) and np.array_equal(x, y):
            continue
        i = _first_mismatch(x, y)
        show = (lambda v: repr(v[i].tolist()) if i < len(v) else "nothing")
        raise ValueError(
            f"The {what} of {a.source} and {b.source} differ ({len(x)} vs {len(y)} entries): first "
            f"at position {i}: {show(x)} vs {show(y)}. Both must be evaluated on the same dataset, "
            "split and class list.")


def minmax_normalise(x: np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min)`` with one scalar min and max over the whole ``N x C`` matrix
    (float64)."""
    x = np.asarray(x, dtype=np.float64)
    low, high = x.min(), x.max()
    if high == low:
        raise ValueError(f"All scores equal {low}: a constant score matrix cannot be min-max "
                         "normalised (check the run's predictions).")
    return (x - low) / (high - low)


def ensemble_scores(a: np.ndarray, b: np.ndarray, rate: float) -> np.ndarray:
    """``(1 - rate) * minmax(a) + rate * minmax(b)``, ``N x C`` float64."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"The ensemble rate must lie in [0, 1], got {rate}")
    return (1.0 - rate) * minmax_normalise(a) + rate * minmax_normalise(b)


def ensemble_report(run_a: str, run_b: str, rates: Sequence[float], split: str = "test",
                    head_a: str = "", head_b: str = "", difficult: str = "negative") -> dict:
    """mAP of run A's head, run B's head and their ensemble at each rate on ``split``.

    Heads default to each run's headline. Returns the record ``taidpt ensemble`` writes: ``runs``,
    ``trainers``, ``heads``, ``split``, ``difficult``, ``mAP_a``, ``mAP_b``, ``rates`` (a list of
    ``{"rate", "mAP"}``), ``best_rate`` and ``best_mAP`` (on this split).
    """
    a, b = load_predictions(run_a, split), load_predictions(run_b, split)
    check_same_data(a, b)
    heads = {"a": a.resolve_head(head_a), "b": b.resolve_head(head_b)}
    sa, sb = a.scores[heads["a"]], b.scores[heads["b"]]

    def score(x: np.ndarray) -> float:
        return mean_average_precision(x, a.targets, difficult=difficult)

    per_rate: List[dict] = [{"rate": float(r), "mAP": score(ensemble_scores(sa, sb, r))} for r in rates]
    best = max(per_rate, key=lambda row: row["mAP"])
    return {"runs": {"a": run_a, "b": run_b}, "trainers": {"a": a.trainer, "b": b.trainer},
            "heads": heads, "split": split, "difficult": difficult, "images": int(len(a.image_ids)),
            "mAP_a": score(sa), "mAP_b": score(sb), "rates": per_rate,
            "best_rate": best["rate"], "best_mAP": best["mAP"]}


def write_report(record: dict, output_dir: str) -> str:
    """Write ``record`` atomically as ``output_dir/ensemble[_<split>].json``; return the path."""
    path = os.path.join(output_dir, ensemble_json_name(record["split"]))
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=2).encode()))
    return path
