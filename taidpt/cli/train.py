"""Train or evaluate a taidpt trainer: the same command line as CoOp's ``train.py``
(``python train.py``, ``taidpt-train`` and ``taidpt train`` all run this).

Example: ``python train.py --trainer TaIDPT --root DATA --dataset-config-file
configs/datasets/voc2007_caption.yaml --config-file configs/trainers/TaIDPT/rn50_voc2007.yaml
--output-dir output/voc``.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import List, Optional

import torch

from taidpt.config import setup_cfg
from taidpt.engine import build_trainer
from taidpt.engine.utils import held_log_records, replay_log_records, set_random_seed, setup_logger
from taidpt.io import atomic_write

logger = logging.getLogger("taidpt.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=str, default="", help="path to the dataset root (DATASET.ROOT)")
    p.add_argument("--output-dir", type=str, default="", help="output directory (OUTPUT_DIR)")
    p.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from")
    p.add_argument("--seed", type=int, default=-1, help="only a positive value enables a fixed seed")
    p.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    p.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    p.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    p.add_argument("--config-file", type=str, default="", help="path to the method config file")
    p.add_argument("--dataset-config-file", type=str, default="", help="path to the dataset config file")
    p.add_argument("--trainer", type=str, default="", help="name of trainer (aliases accepted)")
    p.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    p.add_argument("--head", type=str, default="", help="name of head")
    p.add_argument("--eval-only", action="store_true", help="evaluation only")
    p.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    p.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    p.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="DANGEROUS: load checkpoints with full unpickling, which runs any code a "
                        "file holds (MODEL.TRUST_CHECKPOINT); only for files you trust")
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                   help="modify config options using the command-line (KEY VALUE pairs)")
    return p


def cfg_from_args(args: argparse.Namespace):
    flags = {
        "DATASET.ROOT": args.root, "OUTPUT_DIR": args.output_dir, "RESUME": args.resume,
        "DATASET.SOURCE_DOMAINS": args.source_domains, "DATASET.TARGET_DOMAINS": args.target_domains,
        "INPUT.TRANSFORMS": args.transforms, "TRAINER.NAME": args.trainer,
        "MODEL.BACKBONE.NAME": args.backbone, "MODEL.HEAD.NAME": args.head,
        "SEED": args.seed if args.seed >= 0 else None,
        "MODEL.TRUST_CHECKPOINT": True if args.trust_checkpoint else None,
    }
    return setup_cfg(args.dataset_config_file, args.config_file, flags, args.opts or [])


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with held_log_records() as config_records:  # e.g. reference keys ignored: into log.txt too
        cfg = cfg_from_args(args)
    setup_logger(cfg.OUTPUT_DIR)
    replay_log_records(config_records)
    if cfg.SEED >= 0:
        logger.info("Setting fixed seed: %d", cfg.SEED)
        set_random_seed(cfg.SEED)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    logger.info("** Arguments **\n%s", "\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())))
    logger.info("** Config **\n%s", cfg)
    if cfg.OUTPUT_DIR:
        atomic_write(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), lambda f: f.write(cfg.dump().encode()))
    logger.info("PyTorch %s, CUDA available: %s", torch.__version__, torch.cuda.is_available())
    trainer = build_trainer(cfg)
    if args.eval_only:
        if args.model_dir:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
        else:
            logger.info("No --model-dir given: evaluating the trainer's initial model")
        trainer.test()
        return 0
    if not args.no_train:
        trainer.train()
    return 0
