"""NUS-WIDE (81 concepts): the Test list for evaluation, the Train list for training.

Image lists are ``ImageList/<Split>Imagelist.txt`` with Windows paths relative to ``Flickr/``
(``actor\\0001_2124494179.jpg``); labels are one 0/1 line per image in
``TrainTestLabels/Labels_<concept>_<Split>.txt``. Many redistributed copies of NUS-WIDE lack some
Flickr images: ``DATASET.NUSWIDE.SKIP_MISSING True`` drops them (with a warning) instead of failing.
``val`` is the test split (DualCoOp's is every 60th test image: ``DATASET.VAL_STRIDE 60``).
Partial labels and few-shot subsets of Train: :mod:`taidpt.datasets.train_labels`.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np
from yacs.config import CfgNode as CN

from taidpt.datasets._common import Layout, bad_line, load_label_set, wants_train_images
from taidpt.datasets.base import DATASET_REGISTRY, DatasetBase, ImageItem
from taidpt.datasets.train_labels import finalize_train_split, val_split

LAYOUT = Layout(
    name="NUSWIDE",
    tree=("  NUSWIDE/\n"
          "    ImageList/TestImagelist.txt, TrainImagelist.txt\n"
          "      (one line per image: actor\\0001_2124494179.jpg)\n"
          "    TrainTestLabels/Labels_airport_Test.txt ... (Labels_<concept>_<Test|Train>.txt)\n"
          "    Flickr/actor/0001_2124494179.jpg ..."),
    download=("https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html "
              "(Groundtruth and image lists; the images are distributed on request)"),
)
OPENIMAGES_CAPTIONS = os.path.join("OpenImages", "open_images_train_v6_captions.jsonl")


def image_relpath(line: str) -> str:
    """``actor\\0001.jpg`` or ``C:\\ImageData\\Flickr\\actor\\0001.jpg`` -> ``actor/0001.jpg``."""
    path = line.strip().replace("\\", "/")
    return path.split("Flickr/", 1)[-1]


def read_split(root: str, split: str, concepts: List[str], skip_missing: bool) -> List[ImageItem]:
    """Items of ``split`` (``Test`` / ``Train``) in list order, labels ``N x 81`` 1 / -1."""
    list_relpath = os.path.join("NUSWIDE", "ImageList", f"{split}Imagelist.txt")
    paths = [image_relpath(line) for line in LAYOUT.read_lines(root, list_relpath)]
    labels = np.empty((len(paths), len(concepts)), dtype=np.float32)
    for c, concept in enumerate(concepts):
        relpath = os.path.join("NUSWIDE", "TrainTestLabels", f"Labels_{concept}_{split}.txt")
        values = np.asarray([line.strip() for line in LAYOUT.read_lines(root, relpath)])
        path = os.path.join(root, relpath)
        if len(values) != len(paths):
            raise ValueError(f"NUSWIDE: {path} has {len(values)} lines but {list_relpath} lists "
                             f"{len(paths)} images; re-download the ground truth from "
                             f"{LAYOUT.download}.")
        bad = np.flatnonzero((values != "0") & (values != "1"))
        if len(bad):
            raise bad_line(path, int(bad[0]) + 1, f"expected 0 or 1, got {str(values[bad[0]])!r}",
                           f"Re-download the ground truth from {LAYOUT.download}.")
        labels[:, c] = np.where(values == "1", 1.0, -1.0)
    image_dir = os.path.join(root, "NUSWIDE", "Flickr")
    items = [ImageItem(os.path.join(image_dir, p), label) for p, label in zip(paths, labels)]
    return LAYOUT.check_images(items, os.path.join(root, list_relpath), skip_missing)


@DATASET_REGISTRY.register(aliases=("nuswide_distill_limit", "nuswide_partial"))
class NUSWIDE(DatasetBase):
    """NUS-WIDE under ``DATASET.ROOT/NUSWIDE``; the Train list is read only for methods that
    train on images. Default captions: OpenImages V6 localized narratives."""

    dataset_dir = "NUSWIDE"

    @staticmethod
    def extend_cfg(cfg) -> None:
        cfg.DATASET.NUSWIDE = CN()
        cfg.DATASET.NUSWIDE.SKIP_MISSING = False  # drop listed images that are not on disk

    def __init__(self, cfg) -> None:
        root = LAYOUT.root(cfg)
        label_set = load_label_set("nuswide")
        skip = cfg.DATASET.NUSWIDE.SKIP_MISSING
        test = read_split(root, "Test", label_set.labels, skip)
        train = read_split(root, "Train", label_set.labels, skip) if wants_train_images(cfg) else []
        train = finalize_train_split(cfg, "NUSWIDE", train, classnames=label_set.classnames)
        super().__init__(label_set.classnames, test=test, train_x=train,
                         val=val_split(cfg, test, test), synonyms=label_set.synonyms)
        self.caption_path = os.path.join(root, OPENIMAGES_CAPTIONS)
