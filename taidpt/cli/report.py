"""``taidpt report OUTPUT --table NAME``: the paper's table (or figure) from the runs under OUTPUT.

    taidpt report output/paper --table table1            # prints Markdown; writes OUTPUT/report/
    taidpt report output/paper --table fig6 --seeds 1 2 3

Reads every ``results_test.json`` / ``ensemble.json`` in ``OUTPUT/<dataset>/<run>/seed<S>/`` (the
layout of scripts/paper/); each cell is mean ± std over seeds with the seeds found / expected, the
paper's number and the difference (real runs only; synthetic-world runs get a table of their
own). Writes ``NAME.md``, ``NAME.csv`` and, for figures, ``NAME.png`` (+ ``_points.json``).

    taidpt report output/beyond --table beyond               # issue 15's add-ons (docs/BEYOND.md)

``beyond`` reads ``scripts/beyond_sweep.sh``'s ``OUTPUT/<dataset>/<variant>/seed<S>`` instead
(:mod:`taidpt.engine.beyond`: per seed, every weight and std chosen on val) and writes
``beyond.md``.
"""
from __future__ import annotations

import argparse
import os

from taidpt.engine import beyond
from taidpt.engine.report import LAYOUTS, scan_runs, write_report

BEYOND = "beyond"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``report`` subcommand (its handler is :func:`run`)."""
    parser = subparsers.add_parser("report", help="the paper's tables and figures from run folders",
                                   description=__doc__.split("\n")[0])
    parser.add_argument("output", metavar="OUTPUT", help="the OUTPUT folder of scripts/paper/")
    parser.add_argument("--table", required=True, choices=sorted([*LAYOUTS, BEYOND]),
                        help="which table or figure")
    parser.add_argument("--seeds", type=int, nargs="+", default=[],
                        help="the seeds expected in every cell (default: every seed found; "
                             "not for beyond, whose rows hold every seed found)")
    parser.add_argument("--out-dir", default="", help="where the files go (default OUTPUT/report)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    out_dir = args.out_dir or os.path.join(args.output, "report")
    if args.table == BEYOND:
        if args.seeds:
            raise ValueError("--seeds does not apply to --table beyond (its rows hold every seed "
                             "found): leave it out.")
        text, paths = beyond.write_report(args.output, out_dir)
    else:
        text, paths = write_report(scan_runs(args.output), args.table, out_dir, args.seeds)
    print(text)
    print("\nWritten: " + ", ".join(paths))
    return 0
