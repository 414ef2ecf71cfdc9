"""MS-COCO 2014 (80 classes): val2014 (40,504 images) for evaluation, train2014 for training.

Labels come from ``annotations/instances_<split>.json`` through pycocotools: class ``c`` is the
``c``-th category in category-id order (the ids run 1..90 with gaps). Every image of the file is
kept; an image without annotations has only negatives. In train2014, as in the reference, a box
of width or height < 1 does not make its class positive (val2014 keeps every annotation). ``val``
is every 10th test image, the TaI-DPT reference's best-val split (SPEC 6; DualCoOp's is every
20th: ``DATASET.VAL_STRIDE 20``). Partial labels and few-shot subsets of train2014:
:mod:`taidpt.datasets.train_labels`. ``DATASET.COCO2014.CLASSES`` restricts every split to a class
subset (:data:`CLASS_SUBSETS`): ``novel16``, the LaSO split's 16 novel classes of the paper's
Table 2 (SPEC 7), or ``base64``, the other 64.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import TYPE_CHECKING, List

import numpy as np
from yacs.config import CfgNode as CN

from taidpt.datasets._common import (COCO_CAPTIONS, Layout, LabelSet, load_label_set,
                                     wants_train_images)
from taidpt.datasets.base import DATASET_REGISTRY, DatasetBase, ImageItem
from taidpt.datasets.train_labels import finalize_train_split, val_split
from taidpt.extras import require

if TYPE_CHECKING:
    from pycocotools.coco import COCO

logger = logging.getLogger(__name__)

LAYOUT = Layout(
    name="COCO2014",
    tree=("  COCO/\n"
          "    annotations/instances_val2014.json, instances_train2014.json\n"
          "    annotations/captions_train2017.json (caption training)\n"
          "    val2014/COCO_val2014_000000000042.jpg ...\n"
          "    train2014/COCO_train2014_000000000009.jpg ..."),
    download=("https://cocodataset.org/#download (2014 Train/Val annotations, 2014 Val images, "
              "2014 Train images; 2017 Train/Val annotations for the captions)"),
)


# SPEC 7: the LaSO split's 16 novel classes (COCO category names), Table 2's evaluation classes.
NOVEL_CLASSES = ("bicycle", "boat", "stop sign", "bird", "backpack", "frisbee", "snowboard",
                 "surfboard", "cup", "fork", "spoon", "broccoli", "chair", "keyboard", "microwave",
                 "vase")
CLASS_SUBSETS = ("all", "novel16", "base64")  # DATASET.COCO2014.CLASSES


def subset_classnames(label_set: LabelSet, subset: str) -> List[str]:
    """The prompt class names of ``DATASET.COCO2014.CLASSES`` ``subset`` in category-id order:
    all 80, the 16 :data:`NOVEL_CLASSES` or the other 64."""
    if subset not in CLASS_SUBSETS:
        raise ValueError(f"DATASET.COCO2014.CLASSES must be one of {', '.join(CLASS_SUBSETS)}, got "
                         f"{subset!r}.")
    if subset == "all":
        return label_set.classnames
    return [name for label, name in zip(label_set.labels, label_set.classnames)
            if (label in NOVEL_CLASSES) == (subset == "novel16")]


def load_instances(path: str) -> COCO:
    """A pycocotools index of an instances file (its progress prints go to the log)."""
    coco_api = require("pycocotools.coco", "COCO2014 (its instances annotations)")
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            coco = coco_api.COCO(path)
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise ValueError(f"COCO2014: {path} is not a valid COCO instances JSON ({err}); "
                         f"re-download it from {LAYOUT.download}.") from None
    logger.debug(buffer.getvalue().strip())
    return coco


def read_split(root: str, split: str, label_set: LabelSet,
               min_box_side: float = 0.0) -> List[ImageItem]:
    """Items of ``split`` (``val2014`` / ``train2014``) in image-id order, labels ``N x 80`` 1 / -1;
    annotations whose box width or height is below ``min_box_side`` are skipped."""
    path = LAYOUT.require(root, os.path.join("COCO", "annotations", f"instances_{split}.json"))
    coco = load_instances(path)
    category_ids = sorted(coco.getCatIds())
    names = [coco.cats[i]["name"] for i in category_ids]
    if names != label_set.labels:
        raise ValueError(f"COCO2014: {path} has {len(names)} categories that are not the 80 COCO "
                         f"categories in category-id order (got {names[:5]}...); use the "
                         f"official file from {LAYOUT.download}.")
    column = {category_id: c for c, category_id in enumerate(category_ids)}
    image_dir = os.path.join(root, "COCO", split)
    items = []
    for image_id in sorted(coco.imgs):
        label = np.full(len(names), -1.0, dtype=np.float32)
        for annotation in coco.imgToAnns.get(image_id, []):
            box = annotation.get("bbox") or [0, 0, min_box_side, min_box_side]
            if min(box[2], box[3]) >= min_box_side:
                label[column[annotation["category_id"]]] = 1.0
        items.append(ImageItem(os.path.join(image_dir, coco.imgs[image_id]["file_name"]), label))
    return LAYOUT.check_images(items, path)


@DATASET_REGISTRY.register(aliases=("COCO2014_distill", "COCO2014_partial"))
class COCO2014(DatasetBase):
    """COCO 2014 under ``DATASET.ROOT/COCO``; train2014 is read only for methods that train on
    images (``DATASET.CAPTIONS.SOURCE`` empty). Default captions: COCO 2017."""

    dataset_dir = "COCO"

    def __init__(self, cfg) -> None:
        root = LAYOUT.root(cfg)
        label_set = load_label_set("coco2014")
        test = read_split(root, "val2014", label_set)
        train = read_split(root, "train2014", label_set, 1.0) if wants_train_images(cfg) else []
        train = finalize_train_split(cfg, "COCO2014", train, classnames=label_set.classnames)
        super().__init__(label_set.classnames, test=test, train_x=train,
                         val=val_split(cfg, test, test[::10]), synonyms=label_set.synonyms)
        self.caption_path = os.path.join(root, COCO_CAPTIONS)
        subset = cfg.DATASET.COCO2014.CLASSES
        if subset != "all":
            self.keep_classes(subset_classnames(label_set, subset), "DATASET.COCO2014.CLASSES")
            logger.info("COCO2014: classes %s (%d)", subset, self.num_classes)

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.DATASET.COCO2014 = CN()
        cfg.DATASET.COCO2014.CLASSES = "all"  # all 80, novel16 (Table 2's, SPEC 7) or base64
