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

from taidpt.cli.errors import run_guarded
from taidpt.config import check_output_dir, setup_cfg
from taidpt.engine import build_trainer
from taidpt.engine.data import check_images
from taidpt.engine.distributed import init_distributed, is_main_process, shutdown_distributed, world_size
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
    p.add_argument("--eval-only", action="store_true",
                   help="evaluation only; a trainer that learns needs --model-dir (ZeroshotCLIP "
                        "needs none)")
    p.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    p.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    p.add_argument("--no-train", action="store_true",
                   help="build the trainer (config, data, model) and stop: no training, no evaluation")
    p.add_argument("--debug", action="store_true",
                   help="on failure, print the traceback to stderr too (log.txt always has it)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="DANGEROUS: load checkpoints with full unpickling, which runs any code a "
                        "file holds (MODEL.TRUST_CHECKPOINT); only for files you trust")
    p.add_argument("--allow-other-classes", action="store_true",
                   help="load a checkpoint trained on another class list (MODEL.ALLOW_OTHER_CLASSES)")
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
        "MODEL.ALLOW_OTHER_CLASSES": True if args.allow_other_classes else None,
    }
    return setup_cfg(args.dataset_config_file, args.config_file, flags, args.opts or [])


def evaluated_splits(cfg, eval_only: bool) -> List[str]:
    """The splits this run evaluates: ``TEST.SPLIT`` (unless ``TEST.NO_TEST`` when training), and
    ``val`` every epoch with ``TEST.FINAL_MODEL best_val``."""
    if eval_only:
        return [cfg.TEST.SPLIT]
    if cfg.TEST.NO_TEST:
        return []
    return sorted({cfg.TEST.SPLIT, "val" if cfg.TEST.FINAL_MODEL == "best_val" else cfg.TEST.SPLIT})


def check_run(trainer, args: argparse.Namespace) -> None:
    """Before any training or evaluation: ``--eval-only`` of a trainer that learns needs
    ``--model-dir``; the images of every evaluated split open (all bad files listed)."""
    learned = trainer.trained_model_names()
    if args.eval_only and not args.model_dir and learned:
        raise ValueError(f"--eval-only without --model-dir would evaluate the untrained "
                         f"{', '.join(learned)} of {trainer.cfg.TRAINER.NAME}: give --model-dir, the "
                         "OUTPUT_DIR of its training run (ZeroshotCLIP needs none).")
    if args.no_train or getattr(trainer, "model", None) is None:  # ensembles read predictions only
        return
    for split in evaluated_splits(trainer.cfg, args.eval_only):
        check_images(trainer.split_items(split), f"{split} split (TEST.SPLIT / TEST.FINAL_MODEL)")


def run(args: argparse.Namespace) -> int:
    """Train and / or evaluate as the parsed flags say (errors propagate; see :func:`main`).
    Under ``torchrun`` every rank runs this; only rank 0 logs (others: errors only) and writes."""
    with held_log_records() as config_records:  # e.g. reference keys ignored: into log.txt too
        cfg = cfg_from_args(args)
    check_output_dir(cfg)
    backend = init_distributed(cfg.USE_CUDA)
    try:
        return _run(args, cfg, config_records, backend)
    finally:
        shutdown_distributed()


def _run(args: argparse.Namespace, cfg, config_records, backend: str) -> int:
    main_process = is_main_process()
    if main_process:
        setup_logger(cfg.OUTPUT_DIR)
        replay_log_records(config_records)
    else:
        setup_logger(level=logging.ERROR)
    if backend:
        logger.info("torchrun: %d processes, backend %s", world_size(), backend)
    if cfg.SEED >= 0:
        logger.info("Setting fixed seed: %d", cfg.SEED)
        set_random_seed(cfg.SEED)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    logger.info("** Arguments **\n%s", "\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())))
    logger.info("** Config **\n%s", cfg)
    if cfg.OUTPUT_DIR and main_process:
        atomic_write(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), lambda f: f.write(cfg.dump().encode()))
    logger.info("PyTorch %s, CUDA available: %s", torch.__version__, torch.cuda.is_available())
    trainer = build_trainer(cfg)
    check_run(trainer, args)
    if args.eval_only:
        if args.model_dir:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
        else:
            logger.info("%s trains nothing: evaluating its model as built", cfg.TRAINER.NAME)
        trainer.test()
        return 0
    if not args.no_train:
        trainer.train()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """train.py: exit 0; 2 for bad input or config, 1 for a runtime failure, with one message on
    stderr and in log.txt (:func:`taidpt.cli.errors.run_guarded`)."""
    args = build_parser().parse_args(argv)
    return run_guarded("train.py", lambda: run(args), debug=args.debug)
