"""``taidpt prepare``: label and tokenise a dataset's caption corpus once, into the cache.

    taidpt prepare --dataset-config-file configs/datasets/coco2014_caption.yaml --root DATA

``train.py`` finds the result by itself (same config, class list and context length).
``--features`` also computes the caption feature cache (``DATASET.CAPTIONS.FEATURE_CACHE``) with
the configured CLIP (``MODEL.BACKBONE``, ``TRAINER.TAIDPT.PREC``), so training starts at once.
"""
from __future__ import annotations

import argparse
from typing import Dict

import torch
from tabulate import tabulate

from taidpt.config import setup_cfg
from taidpt.datasets.base import build_dataset
from taidpt.datasets._common import cache_root
from taidpt.datasets.captions import build_caption_corpus, prepare
from taidpt.models import backbone_context_length, load_backbone
from taidpt.models.feature_cache import caption_feature_cache


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``prepare`` subcommand (its handler is :func:`run`)."""
    parser = subparsers.add_parser(
        "prepare", help="label and tokenise a caption corpus into the cache",
        description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="", help="DATASET.ROOT (the data folder, see DATA.md)")
    parser.add_argument("--dataset-config-file", required=True,
                        help="dataset YAML naming the caption source, e.g. "
                             "configs/datasets/coco2014_caption.yaml")
    parser.add_argument("--config-file", default="", help="method YAML (optional)")
    parser.add_argument("--context-length", type=int, default=0,
                        help="token length of the CLIP text encoder (default: read from "
                             "MODEL.BACKBONE.PATH / NAME; 77 for OpenAI CLIPs)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the caches exist")
    parser.add_argument("--features", action="store_true",
                        help="also build the caption feature cache with the configured CLIP "
                             "(DATASET.CAPTIONS.FEATURE_CACHE_DTYPE)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    parser.set_defaults(func=run)
    return parser


def format_stats(path: str, stats: Dict) -> str:
    """The summary ``taidpt prepare`` prints: cache path, counts and captions per class."""
    counts = [("read", stats["read"]), ("with a class", stats["labelled"]),
              ("dropped (no class)", stats["dropped"])]
    counts += [(name, stats[key]) for name, key in (("after limit per class", "after_limit"),
                                                    ("after random subset", "after_subsample"))
               if key in stats]
    counts += [("captions kept", stats["captions"]), ("template sentences", stats["templates"]),
               ("items", stats["total"])]
    return "\n".join([
        f"Caption cache ({stats.get('cache', 'built')}): {path}",
        f"Source: {stats.get('source', '?')} {stats.get('file', '')}",
        tabulate(counts, headers=["corpus", "count"]),
        tabulate(stats["per_class"].items(), headers=["class", "captions"]),
    ])


def run(args: argparse.Namespace) -> int:
    """Build the config like train.py, then prepare the dataset's caption cache."""
    cfg = setup_cfg(args.dataset_config_file, args.config_file,
                    flags={"DATASET.ROOT": args.root}, opts=args.opts)
    length = args.context_length or backbone_context_length(cfg)
    dataset = build_dataset(cfg)
    path, stats = prepare(cfg, dataset, length, force=args.force)
    print(format_stats(path, stats))
    if args.features:
        device = torch.device("cuda" if cfg.USE_CUDA and torch.cuda.is_available() else "cpu")
        clip_model = load_backbone(cfg, cfg.TRAINER.TAIDPT.PREC).to(device)
        tokens = build_caption_corpus(cfg, dataset, length, progress=False).tokens
        features = caption_feature_cache(cfg, clip_model, tokens, cache_root(cfg), device, args.force)
        print(f"Caption features ({features.header['dtype']}, {features.header['tokens']} tokens, "
              f"{features.nbytes / 2 ** 20:.1f} MB): {features.path}")
    return 0
