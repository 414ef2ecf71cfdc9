"""PASCAL VOC 2007 (20 classes): test (4,952 images) for evaluation, trainval for training.

Labels come from ``ImageSets/Main/<class>_<split>.txt`` and keep VOC's three values: 1 positive,
0 difficult (only difficult instances of the class), -1 negative, so both difficult modes of
the evaluation work (SPEC 6). ``val`` is the test split, as in the reference.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np

from taidpt.datasets._common import (COCO_CAPTIONS, Layout, bad_line, load_label_set,
                                     wants_train_images)
from taidpt.datasets.base import DATASET_REGISTRY, DatasetBase, ImageItem

LAYOUT = Layout(
    name="VOC2007",
    tree=("  VOCdevkit/VOC2007/\n"
          "    JPEGImages/000001.jpg ...\n"
          "    ImageSets/Main/aeroplane_test.txt ... (<class>_test.txt, <class>_trainval.txt)\n"
          "    Annotations/000001.xml ... (not read)"),
    download=("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/ (VOCtest_06-Nov-2007.tar and "
              "VOCtrainval_06-Nov-2007.tar, both extracted into the same folder)"),
)


def read_split(root: str, split: str, classes: List[str]) -> List[ImageItem]:
    """Items of ``split`` (``test`` / ``trainval``) in file order, labels in {1, 0, -1}."""
    ids: List[str] = []
    columns = []
    for cls in classes:
        relpath = os.path.join("VOCdevkit", "VOC2007", "ImageSets", "Main", f"{cls}_{split}.txt")
        path = os.path.join(root, relpath)
        pairs = []
        for lineno, line in enumerate(LAYOUT.read_lines(root, relpath), start=1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
                raise bad_line(path, lineno, f"expected '<image id> <1|0|-1>', got {line!r}",
                               f"Re-extract the file from {LAYOUT.download}.")
            pairs.append((parts[0], int(parts[1])))
        if not ids:
            ids = [image_id for image_id, _ in pairs]
        elif [image_id for image_id, _ in pairs] != ids:
            raise ValueError(f"VOC2007: {path} does not list the same images, in the same order, "
                             f"as {classes[0]}_{split}.txt; re-extract ImageSets/Main from "
                             f"{LAYOUT.download}.")
        columns.append([value for _, value in pairs])
    labels = np.asarray(columns, dtype=np.float32).T
    image_dir = os.path.join(root, "VOCdevkit", "VOC2007", "JPEGImages")
    items = [ImageItem(os.path.join(image_dir, f"{image_id}.jpg"), label)
             for image_id, label in zip(ids, labels)]
    return LAYOUT.check_images(items, os.path.join(root, "VOCdevkit", "VOC2007", "ImageSets",
                                                   "Main", f"<class>_{split}.txt"))


@DATASET_REGISTRY.register(aliases=("VOC2007_distill", "VOC2007_partial"))
class VOC2007(DatasetBase):
    """VOC 2007 under ``DATASET.ROOT/VOCdevkit/VOC2007``; trainval is read only for methods that
    train on images (``DATASET.CAPTIONS.SOURCE`` empty). Default captions: COCO 2017."""

    dataset_dir = os.path.join("VOCdevkit", "VOC2007")

    def __init__(self, cfg) -> None:
        root = LAYOUT.root(cfg)
        label_set = load_label_set("voc2007")
        test = read_split(root, "test", label_set.labels)
        train = read_split(root, "trainval", label_set.labels) if wants_train_images(cfg) else []
        super().__init__(label_set.classnames, test=test, train_x=train, val=test,
                         synonyms=label_set.synonyms)
        self.caption_path = os.path.join(root, COCO_CAPTIONS)
