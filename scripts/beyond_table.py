"""Markdown table of TaI-DPT's add-ons (issue 15) from scripts/beyond_sweep.sh's run folders.

    python scripts/beyond_table.py OUTPUT/DATASET [OUTPUT/DATASET2 ...] [--output FILE]

Columns: one per folder (named after it); rows and val choices: taidpt.engine.beyond.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

from taidpt.engine.beyond import WEIGHTS, build_table, markdown
from taidpt.io import atomic_write


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", help="OUTPUT/DATASET folders of the sweep")
    parser.add_argument("--output", help="write the markdown here too (default: print only)")
    parser.add_argument("--merge-rate", type=float, default=0.5,
                        help="TaI-DPT's global / local rate (TRAINER.TAIDPT.GL_MERGE_RATE)")
    parser.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS),
                        help="prototype weights tried on val (default 0, 0.1, ..., 1)")
    parser.add_argument("--difficult", default="negative", help="DATASET.DIFFICULT of the runs")
    args = parser.parse_args(argv)
    tables = {os.path.basename(os.path.normpath(root)): build_table(
        root, args.merge_rate, args.weights, args.difficult) for root in args.roots}
    text = markdown(tables)
    if args.output:
        atomic_write(args.output, lambda f: f.write((text + "\n").encode()))
    print(text)


if __name__ == "__main__":
    main()
