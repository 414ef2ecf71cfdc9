"""``taidpt synthetic``: build (or reuse) the synthetic world and its tiny CLIP; print their paths.

    taidpt synthetic --seed 1            # world (< 1 min) + tiny CLIP (~4 min on 2 cores), cached
    taidpt synthetic --seed 1 --json     # the same paths as JSON, for scripts

The flags mirror ``DATASET.SYNTHETIC.*``; keep them equal to the training config's values.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields

from taidpt.datasets.synthetic.world import PRETRAIN_STEPS, WorldSpec, build_tiny_clip, build_world


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``synthetic`` subcommand (its handler is :func:`run`)."""
    parser = subparsers.add_parser("synthetic", help="build the synthetic world and its tiny CLIP",
                                   description=__doc__.split("\n")[0])
    for field in fields(WorldSpec):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=int, default=field.default,
                            help=f"DATASET.SYNTHETIC.{field.name.upper()} (default {field.default})")
    parser.add_argument("--steps", type=int, default=PRETRAIN_STEPS,
                        help=f"DATASET.SYNTHETIC.PRETRAIN_STEPS (default {PRETRAIN_STEPS})")
    parser.add_argument("--cache-dir", default="", help="DATASET.SYNTHETIC.CACHE_DIR (default $TAIDPT_CACHE "
                                                        "or ~/.cache/taidpt)")
    parser.add_argument("--no-clip", action="store_true", help="build the world only")
    parser.add_argument("--json", action="store_true", help="print the paths as one JSON object")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    spec = WorldSpec(**{field.name: getattr(args, field.name) for field in fields(WorldSpec)})
    root = build_world(spec, args.cache_dir)
    paths = {"world": root, "test_list": root / "test.txt", "train_list": root / "train.txt",
             "captions": root / "captions.txt", "pairs": root / "pairs.txt", "classes": root / "classes.txt"}
    if not args.no_clip:
        paths["tiny_clip"] = build_tiny_clip(spec, args.cache_dir, args.steps)
    if args.json:
        print(json.dumps({key: str(path) for key, path in paths.items()}))
    else:
        width = max(map(len, paths))
        print("\n".join(f"{key:<{width}}  {path}" for key, path in paths.items()))
    return 0
