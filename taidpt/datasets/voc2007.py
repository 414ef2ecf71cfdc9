"""PASCAL VOC 2007 (20 classes): test (4,952 images) for evaluation, trainval for training.

Labels come from ``ImageSets/Main/<class>_<split>.txt`` and keep VOC's three values: 1 positive,
0 difficult (only difficult instances of the class), -1 negative, so both difficult modes of
the evaluation work (SPEC 6). ``val`` is the test split, as in the reference
(``DATASET.VAL_STRIDE`` N > 0: every N-th test image). Partial labels (``DATASET.PARTIAL_PROB`` p
< 1) replace the trainval labels by the rows of the reference's ``train_proportion_{p}.txt``
(``DATASET.PARTIAL_DIR``): one comma-separated row of 1/0/-1 per ``trainval.txt`` line.
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional

import numpy as np

from taidpt.datasets._common import (COCO_CAPTIONS, Layout, bad_line, load_label_set,
                                     wants_train_images)
from taidpt.datasets.base import DATASET_REGISTRY, DatasetBase, ImageItem
from taidpt.datasets.train_labels import (finalize_train_split, partial_prob, read_partial_rows,
                                          val_split)

logger = logging.getLogger(__name__)

LAYOUT = Layout(
    name="VOC2007",
    tree=("  VOCdevkit/VOC2007/\n"
          "    JPEGImages/000001.jpg ...\n"
          "    ImageSets/Main/aeroplane_test.txt ... (<class>_test.txt, <class>_trainval.txt)\n"
          "    ImageSets/Main/trainval.txt (training image order)\n"
          "    Annotations/000001.xml ... (not read)"),
    download=("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/ (VOCtest_06-Nov-2007.tar and "
              "VOCtrainval_06-Nov-2007.tar, both extracted into the same folder)"),
)


MAIN = os.path.join("VOCdevkit", "VOC2007", "ImageSets", "Main")


def read_image_ids(root: str, split: str) -> List[str]:
    """The image ids of ``ImageSets/Main/<split>.txt`` in file order."""
    relpath = os.path.join(MAIN, f"{split}.txt")
    ids = []
    for lineno, line in enumerate(LAYOUT.read_lines(root, relpath), start=1):
        if len(line.split()) != 1:
            raise bad_line(os.path.join(root, relpath), lineno,
                           f"expected one image id, got {line!r}",
                           f"Re-extract the file from {LAYOUT.download}.")
        ids.append(line.strip())
    return ids


def read_split(root: str, split: str, classes: List[str],
               ids: Optional[List[str]] = None) -> List[ImageItem]:
    """Items of ``split`` (``test`` / ``trainval``), labels ``N x C`` in {1, 0, -1}, in the order of
    ``ids`` (default: the order of ``<first class>_<split>.txt``)."""
    columns = []
    for cls in classes:
        relpath = os.path.join(MAIN, f"{cls}_{split}.txt")
        path = os.path.join(root, relpath)
        values = {}
        for lineno, line in enumerate(LAYOUT.read_lines(root, relpath), start=1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
                raise bad_line(path, lineno, f"expected '<image id> <1|0|-1>', got {line!r}",
                               f"Re-extract the file from {LAYOUT.download}.")
            values[parts[0]] = int(parts[1])
        ids = list(values) if ids is None else ids
        if len(values) != len(ids) or not all(image_id in values for image_id in ids):
            listed = f"{split}.txt" if split == "trainval" else f"{classes[0]}_{split}.txt"
            raise ValueError(f"VOC2007: {path} does not list the same images as {listed}; "
                             f"re-extract ImageSets/Main from {LAYOUT.download}.")
        columns.append([values[image_id] for image_id in ids])
    labels = np.asarray(columns, dtype=np.float32).T
    image_dir = os.path.join(root, "VOCdevkit", "VOC2007", "JPEGImages")
    items = [ImageItem(os.path.join(image_dir, f"{image_id}.jpg"), label)
             for image_id, label in zip(ids, labels)]
    return LAYOUT.check_images(items, os.path.join(root, MAIN, f"<class>_{split}.txt"))


def partial_file(cfg, root: str, p: float) -> str:
    """``DATASET.PARTIAL_DIR`` (relative to ``DATASET.ROOT`` unless absolute) /
    ``train_proportion_{p}.txt``, ``p`` spelt as Python prints it (``0.1``)."""
    directory = os.path.join(root, os.path.expanduser(cfg.DATASET.PARTIAL_DIR))
    return os.path.join(directory, f"train_proportion_{p}.txt")


@DATASET_REGISTRY.register(aliases=("VOC2007_distill", "VOC2007_partial"))
class VOC2007(DatasetBase):
    """VOC 2007 under ``DATASET.ROOT/VOCdevkit/VOC2007``; trainval (in ``trainval.txt`` order) is
    read only for methods that train on images (``DATASET.CAPTIONS.SOURCE`` empty), with partial
    labels from ``DATASET.PARTIAL_DIR`` when ``DATASET.PARTIAL_PROB`` < 1. Default captions: COCO
    2017."""

    dataset_dir = os.path.join("VOCdevkit", "VOC2007")

    def __init__(self, cfg) -> None:
        root = LAYOUT.root(cfg)
        label_set = load_label_set("voc2007")
        test = read_split(root, "test", label_set.labels)
        train, rows = [], None
        if wants_train_images(cfg):
            train = read_split(root, "trainval", label_set.labels,
                               read_image_ids(root, "trainval"))
            p = partial_prob(cfg)
            if p < 1:
                path = partial_file(cfg, root, p)
                rows = read_partial_rows(path, len(train), len(label_set.labels))
                logger.info("VOC2007 partial labels: %s", path)
        train = finalize_train_split(cfg, "VOC2007", train, voc_partial_rows=rows,
                                     classnames=label_set.classnames)
        super().__init__(label_set.classnames, test=test, train_x=train,
                         val=val_split(cfg, test, test), synonyms=label_set.synonyms)
        self.caption_path = os.path.join(root, COCO_CAPTIONS)
