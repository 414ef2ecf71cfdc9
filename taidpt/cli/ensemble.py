"""``taidpt ensemble``: combine a TaI-DPT run with an image-prompt run (DualCoOp, CoOp) (SPEC 7).

    taidpt ensemble output/taidpt output/dualcoop --rate 0.5 0.7 0.9 --split val
    taidpt ensemble output/taidpt output/dualcoop --rate 0.9
    taidpt ensemble output/taidpt output/dualcoop --rate-from output/dualcoop/ensemble_val.json

Reads each run's ``predictions_<split>.npz``; prints the mAP of A, of B and of
``(1 - r) * minmax(A) + r * minmax(B)`` at each rate r; writes ``ensemble.json`` (test) or
``ensemble_val.json`` (val). Choose the rate on val, then apply it on test (``--rate-from``: the
best rate of an ``ensemble_val.json``).
"""
from __future__ import annotations

import argparse
import json

from tabulate import tabulate

from taidpt.engine.ensemble import ensemble_report, write_report
from taidpt.engine.evaluator import SPLITS
from taidpt.metrics import DIFFICULT_MODES


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``ensemble`` subcommand (its handler is :func:`run`)."""
    parser = subparsers.add_parser("ensemble", help="ensemble a TaI-DPT run with an image-prompt run",
                                   description=__doc__.split("\n")[0])
    parser.add_argument("run_a", metavar="RUN_A", help="OUTPUT_DIR of the TaI-DPT run")
    parser.add_argument("run_b", metavar="RUN_B", help="OUTPUT_DIR of the image-prompt run (DualCoOp, CoOp)")
    parser.add_argument("--rate", type=float, nargs="+", default=[0.5],
                        help="weight(s) of run B in [0, 1] (default 0.5)")
    parser.add_argument("--rate-from", default="", metavar="JSON",
                        help="use the best_rate of this ensemble_val.json (instead of --rate)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="predictions to read (default test)")
    parser.add_argument("--head-a", default="", help="score head of run A (default: its headline, "
                                                     "TaI-DPT: merged)")
    parser.add_argument("--head-b", default="", help="score head of run B (default: its headline, "
                                                     "DualCoOp: local, CoOp: logits)")
    parser.add_argument("--difficult", choices=DIFFICULT_MODES, default="negative",
                        help="targets equal to 0: counted as negatives (default, the reference) or ignored")
    parser.add_argument("--output-dir", default="", help="where ensemble[_val].json goes (default RUN_B)")
    parser.set_defaults(func=run)
    return parser


def format_report(record: dict) -> str:
    """The table ``taidpt ensemble`` prints: mAP of A, of B and of the ensemble at each rate."""
    heads, trainers = record["heads"], record["trainers"]
    rows = [(f"A: {trainers['a']} ({heads['a']})", "", record["mAP_a"]),
            (f"B: {trainers['b']} ({heads['b']})", "", record["mAP_b"])]
    rows += [("ensemble", row["rate"], row["mAP"]) for row in record["rates"]]
    return "\n".join([
        f"{record['split']} split, {record['images']} images; A = {record['runs']['a']}, "
        f"B = {record['runs']['b']}",
        tabulate(rows, headers=["scores", "rate", "mAP"], floatfmt=".2f"),
        f"best rate on {record['split']}: {record['best_rate']:g} ({record['best_mAP']:.2f} mAP)",
    ])


def chosen_rate(path: str) -> float:
    """The ``best_rate`` of an ``ensemble_val.json`` that ``taidpt ensemble --split val`` wrote."""
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if record.get("split") != "val" or "best_rate" not in record:
        raise ValueError(f"--rate-from {path}: not an ensemble_val.json (split val, best_rate); write "
                         "it with taidpt ensemble RUN_A RUN_B --split val --rate ...")
    return float(record["best_rate"])


def run(args: argparse.Namespace) -> int:
    rates = [chosen_rate(args.rate_from)] if args.rate_from else args.rate
    record = ensemble_report(args.run_a, args.run_b, rates, split=args.split, head_a=args.head_a,
                             head_b=args.head_b, difficult=args.difficult)
    print(format_report(record))
    print(f"Written: {write_report(record, args.output_dir or args.run_b)}")
    return 0
