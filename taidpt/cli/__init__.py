"""The ``taidpt`` command: ``train`` (= train.py), ``prepare`` (caption caches), ``synthetic``
(the embedded synthetic world and its tiny CLIP), ``ensemble`` (two runs' saved predictions
combined), ``tag`` (label image files with a trained run), ``report`` (the paper's tables from
run folders), ``batch`` (a file of commands in one process) and ``list`` (registered names).

One module per subcommand (``taidpt/cli/<name>.py``, each with ``add_parser(subparsers)`` and
``run(args)``); ``train`` keeps train.py's own parser (``taidpt.cli.train``).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from taidpt.cli.errors import run_guarded
from taidpt.engine.utils import setup_logger


def _run_list(args: argparse.Namespace) -> int:
    import taidpt.config  # noqa: F401 - registers trainers and datasets
    from taidpt.engine.registry import DATASET_REGISTRY, EVALUATOR_REGISTRY, TRAINER_REGISTRY

    for registry in (TRAINER_REGISTRY, DATASET_REGISTRY, EVALUATOR_REGISTRY):
        aliases = registry.aliases()
        print(f"{registry.name.lower()}s:")
        for name in registry.registered_names():
            extra = sorted(a for a, target in aliases.items() if target == name)
            print(f"  {name}" + (f"  (aliases: {', '.join(extra)})" if extra else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from taidpt.cli import batch, ensemble, prepare, report, synthetic, tag

    parser = argparse.ArgumentParser(prog="taidpt", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true",
                        help="on failure, print the traceback too (exit 2: bad input, 1: runtime)")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train / evaluate (same flags as train.py)", add_help=False)
    train.set_defaults(func=None)
    prepare.add_parser(sub)
    synthetic.add_parser(sub)
    ensemble.add_parser(sub)
    tag.add_parser(sub)
    report.add_parser(sub)
    batch.add_parser(sub)
    sub.add_parser("list", help="list registered trainers, datasets and evaluators").set_defaults(func=_run_list)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from taidpt.cli.train import main as train_main
        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logger()
    return run_guarded(f"taidpt {args.command}", lambda: args.func(args), debug=args.debug)
