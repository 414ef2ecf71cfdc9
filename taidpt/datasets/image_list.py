"""Your own multi-label data: image lists plus a class-name file.

``DATASET.CLASSNAMES_FILE`` (relative to ``DATASET.ROOT``): one class per line, optionally
followed by caption synonyms after ``|``::

    person|people|man|woman
    dog|puppy

The first name is the class name used in prompts and in the lists. ``DATASET.TEST_LIST`` (needed
unless ``TEST.NO_TEST`` is True: prompts trained on captions need no labelled image),
``TRAIN_LIST`` and ``VAL_LIST`` (optional; ``val`` defaults to the test list) are CSV/TXT files
with one ``image_path,label|label|...`` line per image (path relative to ``DATASET.ROOT`` or
absolute; an empty label field means no positive). Listed labels are 1, all others -1. Blank
lines, ``#`` comments and an ``image_path,labels`` header are skipped. ``DATASET.NUM_SHOTS``,
``PARTIAL_PROB`` (random mask) and ``VAL_STRIDE`` (when no ``VAL_LIST``) apply as to the benchmarks.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np

from taidpt.datasets._common import Layout, bad_line
from taidpt.datasets.base import DATASET_REGISTRY, DatasetBase, ImageItem
from taidpt.datasets.train_labels import finalize_train_split, val_split

LAYOUT = Layout(
    name="MultiLabelImageList",
    tree=("  classnames.txt        (DATASET.CLASSNAMES_FILE: 'name' or 'name|synonym|...' lines)\n"
          "  test.csv              (DATASET.TEST_LIST: 'images/0001.png,dog|person' lines)\n"
          "  images/0001.png ..."),
    download="your own data; the format is described in DATA.md",
)


def _content_lines(root: str, relpath: str) -> List[Tuple[int, str]]:
    """(line number, text) of the non-blank, non-comment lines of a required file."""
    return [(n, line.strip()) for n, line in enumerate(LAYOUT.read_lines(root, relpath), start=1)
            if line.strip() and not line.lstrip().startswith("#")]


def read_classnames(root: str, relpath: str) -> List[List[str]]:
    """Per class, its name followed by its synonyms."""
    path = os.path.join(root, relpath)
    synonyms: List[List[str]] = []
    for lineno, line in _content_lines(root, relpath):
        entries = [entry.strip() for entry in line.split("|") if entry.strip()]
        if entries[0] in {s[0] for s in synonyms}:
            raise bad_line(path, lineno, f"class {entries[0]!r} is listed twice",
                           "Give every class one line.")
        synonyms.append(entries)
    if not synonyms:
        raise ValueError(f"MultiLabelImageList: {path} lists no class; write one class name "
                         "per line.")
    return synonyms


def read_list(root: str, relpath: str, classnames: List[str]) -> List[ImageItem]:
    """Items of one ``image_path,label|label`` list, labels 1 / -1."""
    path = os.path.join(root, relpath)
    column = {name: c for c, name in enumerate(classnames)}
    items = []
    for lineno, line in _content_lines(root, relpath):
        if "," not in line:
            raise bad_line(path, lineno, f"expected 'image_path,label|label|...', got {line!r}",
                           "Separate the path and the labels with a comma.")
        image, names = (part.strip() for part in line.rsplit(",", 1))
        if not items and image in ("image_path", "image"):
            continue
        label = np.full(len(classnames), -1.0, dtype=np.float32)
        for name in filter(None, (n.strip() for n in names.split("|"))):
            if name not in column:
                raise bad_line(path, lineno, f"unknown label {name!r}",
                               "Labels must be class names from DATASET.CLASSNAMES_FILE.")
            label[column[name]] = 1.0
        items.append(ImageItem(os.path.join(root, image), label))
    return LAYOUT.check_images(items, path)


@DATASET_REGISTRY.register()
class MultiLabelImageList(DatasetBase):
    """Image lists + class-name file under ``DATASET.ROOT`` (no caption file of its own)."""

    def __init__(self, cfg) -> None:
        root = LAYOUT.root(cfg)
        for key in ("CLASSNAMES_FILE",) + (() if cfg.TEST.NO_TEST else ("TEST_LIST",)):
            if not cfg.DATASET[key]:
                raise ValueError(f"MultiLabelImageList needs DATASET.{key} (a path relative to "
                                 f"DATASET.ROOT={root}; TEST.NO_TEST True trains without a test "
                                 "list); the format is described in DATA.md.")
        synonyms = read_classnames(root, cfg.DATASET.CLASSNAMES_FILE)
        classnames = [entries[0] for entries in synonyms]
        lists = {key: read_list(root, cfg.DATASET[key], classnames) if cfg.DATASET[key] else None
                 for key in ("TEST_LIST", "TRAIN_LIST", "VAL_LIST")}
        train = finalize_train_split(cfg, "MultiLabelImageList", lists["TRAIN_LIST"] or [],
                                     classnames=classnames)
        test = lists["TEST_LIST"] or []
        val = lists["VAL_LIST"] or val_split(cfg, test, test)
        super().__init__(classnames, test=test, train_x=train, val=val, synonyms=synonyms)
