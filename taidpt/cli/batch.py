"""``taidpt batch FILE``: run ``taidpt`` commands listed in FILE in this one process, in order.

    taidpt batch runs.txt      # lines like: train --trainer TaIDPT ... / ensemble RUN_A RUN_B ...

One command per line, shell-quoted, without the leading ``taidpt`` (``train`` takes train.py's
flags); blank lines and ``#`` comments are skipped. The first command that fails stops the batch
with its exit code. The paper scripts (``scripts/paper/``) use it so that a table's many short
runs pay Python's and torch's start-up once.
"""
from __future__ import annotations

import argparse
import logging
import shlex
from typing import List

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``batch`` subcommand (its handler is :func:`run`)."""
    parser = subparsers.add_parser("batch", help="run a file of taidpt commands in one process",
                                   description=__doc__.split("\n")[0])
    parser.add_argument("file", metavar="FILE", help="one taidpt command per line ('-': stdin)")
    parser.set_defaults(func=run)
    return parser


def read_commands(path: str) -> List[List[str]]:
    """The argv of each command line of ``path`` (blank lines and ``#`` comments skipped)."""
    if path == "-":
        import sys
        lines = sys.stdin.read().splitlines()
    else:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    commands = []
    for lineno, line in enumerate(lines, start=1):
        try:
            argv = shlex.split(line, comments=True)
        except ValueError as err:
            raise ValueError(f"{path}, line {lineno}: {err} in {line!r}; quote it as a shell would.") from None
        if argv:
            commands.append(argv)
    return commands


def run(args: argparse.Namespace) -> int:
    from taidpt.cli import main

    commands = read_commands(args.file)
    for number, argv in enumerate(commands, start=1):
        logger.info("batch %d/%d: taidpt %s", number, len(commands), shlex.join(argv))
        try:
            code = main(argv)
        except SystemExit as done:  # argparse's usage errors
            code = done.code if isinstance(done.code, int) else 2
        if code:
            raise RuntimeError(f"batch command {number}/{len(commands)} of {args.file} failed "
                               f"(exit {code}): taidpt {shlex.join(argv)}")
    return 0
