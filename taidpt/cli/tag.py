"""``taidpt tag``: label image files or folders with a trained run's prompts.

    taidpt tag photos/ more/*.jpg --model-dir output/voc2007/seed1 --out tags.csv
    taidpt tag photos/ --model-dir RUN --threshold topk:3 --contact-sheet sheet.png
    taidpt tag photos/ --model-dir RUN --threshold 0.6 --classes wanted.txt

The run is rebuilt as ``train.py --eval-only --model-dir RUN`` rebuilds it, from
``RUN/config.yaml`` and its checkpoints (a trainer that trains nothing, ZeroshotCLIP, needs none;
for the others a missing checkpoint is an error), so the run's dataset and CLIP must be
readable; ``--opts KEY VALUE ...`` overrides the config (e.g. ``DATASET.ROOT``). Writes ``--out``
(CSV: path, labels, one score column per class) and the same rows as JSON beside it
(``tags.json``). Scores are the head's raw scores min-max normalised with the min and max of that
head on the run's val split (TaI-DPT: the merged head). ``--threshold calibrated`` (default)
labels a class when its score reaches the class's F1-maximising threshold on val; a number
thresholds the same min-max scores; ``topk:K`` labels each image's K best classes. Both
calibration and min-max come from ``RUN/predictions_val.npz`` (an evaluation on val writes it);
``topk:K`` works without it, on raw scores. Unreadable or corrupt images are skipped with a
warning and listed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from taidpt.cli import train as train_cli
from taidpt.engine import build_trainer
from taidpt.engine.tagging import ThresholdRule, find_images, load_calibration, read_class_file, tag_images

logger = logging.getLogger("taidpt.tag")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``tag`` subcommand (its handler is :func:`run`)."""
    parser = subparsers.add_parser("tag", help="label image files / folders with a trained run",
                                   description=__doc__.replace("``", ""),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", metavar="IMAGES_OR_DIRS", nargs="+",
                        help="image files, or folders searched recursively for images")
    parser.add_argument("--model-dir", required=True, metavar="RUN",
                        help="OUTPUT_DIR of a training run (config.yaml + checkpoints)")
    parser.add_argument("--load-epoch", type=int, help="checkpoint epoch (default: best, else latest)")
    parser.add_argument("--threshold", default="calibrated",
                        help="calibrated (default: per-class thresholds chosen on val), a number "
                             "(on the min-max scores), or topk:K")
    parser.add_argument("--head", default="", help="score head (default: the trainer's headline, "
                                                   "TaI-DPT: merged); needs a calibration for it")
    parser.add_argument("--classes", metavar="FILE", default="",
                        help="write only these classes of the run (one name per line)")
    parser.add_argument("--calibration", metavar="NPZ", default="",
                        help="predictions of a val evaluation (default RUN/predictions_val.npz)")
    parser.add_argument("--out", default="tags.csv", help="CSV to write; the JSON goes beside it "
                                                          "(default tags.csv, tags.json)")
    parser.add_argument("--contact-sheet", metavar="PNG", default="",
                        help="also write a grid of thumbnails with their top classes")
    parser.add_argument("--sheet-size", type=int, default=48, help="images on the contact sheet (first N)")
    parser.add_argument("--batch-size", type=int, default=0, help="default DATALOADER.TEST.BATCH_SIZE")
    parser.add_argument("--num-workers", type=int, default=-1, help="default DATALOADER.NUM_WORKERS")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides of the run (e.g. DATASET.ROOT data USE_CUDA False)")
    parser.set_defaults(func=run)
    return parser


def _fail(message: str) -> int:
    print(f"taidpt tag: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    run_dir = args.model_dir
    config = os.path.join(run_dir, "config.yaml")
    if not os.path.isdir(run_dir):
        return _fail(f"--model-dir {run_dir} does not exist: give the OUTPUT_DIR of a training run.")
    if not os.path.isfile(config):
        return _fail(f"{config} does not exist: --model-dir must be the OUTPUT_DIR of a train.py run "
                     "(it writes config.yaml there).")
    try:
        rule = ThresholdRule.parse(args.threshold)
        classes = read_class_file(args.classes) if args.classes else None
        paths = find_images(args.images)
        calibration_path = args.calibration or os.path.join(run_dir, "predictions_val.npz")
        calibration = None
        if rule.kind != "topk" or os.path.isfile(calibration_path):
            calibration = load_calibration(calibration_path, run_dir, head=args.head)
    except (FileNotFoundError, ValueError) as err:
        return _fail(str(err))
    train_args = train_cli.build_parser().parse_args(
        ["--config-file", config, "--eval-only", "--model-dir", run_dir, *args.opts])
    trainer = build_trainer(train_cli.cfg_from_args(train_args))
    if getattr(trainer, "model", None) is None:
        return _fail(f"{trainer.cfg.TRAINER.NAME} scores saved predictions, not images: tag with each "
                     "of its runs instead.")
    if trainer.trained_model_names():
        try:
            trainer.load_model(run_dir, epoch=args.load_epoch)
        except (FileNotFoundError, ValueError) as err:
            return _fail(str(err))
    else:
        logger.info("%s trains nothing: tagging with its model as built from %s",
                    trainer.cfg.TRAINER.NAME, config)
    json_path = os.path.splitext(args.out)[0] + ".json"
    try:
        summary = tag_images(trainer, paths, rule, args.out, json_path, calibration=calibration,
                             head=args.head, classes=classes, batch_size=args.batch_size,
                             num_workers=args.num_workers, contact_sheet=args.contact_sheet,
                             sheet_size=args.sheet_size, header={"run": os.path.abspath(run_dir)})
    except ValueError as err:
        return _fail(str(err))
    print(f"Tagged {summary.images} images with {trainer.cfg.TRAINER.NAME} ({summary.head} head, "
          f"{summary.score} scores, threshold {rule})")
    for name, count in summary.counts.items():
        print(f"  {name}: {count}")
    if summary.skipped:
        print(f"Skipped {len(summary.skipped)} unreadable images:")
        for path, reason in summary.skipped:
            print(f"  {path}: {reason}")
    print("Written: " + ", ".join(summary.outputs))
    return 0
