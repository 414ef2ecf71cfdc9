"""Dataset containers shared by every dataset: items, the dataset base class and its registry.

Labels are stored in the ternary convention of VOC: ``1`` positive, ``-1`` negative, ``0``
difficult (VOC) or unknown (partial labels). Datasets without such entries use only 1 / -1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from taidpt.engine.registry import DATASET_REGISTRY

__all__ = ["DATASET_REGISTRY", "DatasetBase", "ImageItem", "build_dataset", "label_matrix"]


@dataclass(frozen=True)
class ImageItem:
    """One labelled image: ``label`` is a length-C float32 vector in {1, 0, -1}."""

    impath: str
    label: np.ndarray = field(repr=False)


def label_matrix(items: Sequence[ImageItem]) -> np.ndarray:
    """Stack item labels into an ``N x C`` float32 matrix."""
    return np.stack([item.label for item in items]).astype(np.float32)


class DatasetBase:
    """What a registered dataset provides (Dassl's ``DatasetBase`` shape, multi-label labels).

    ``classnames``: C names used in prompts. ``synonyms``: per class, the words that mark it in a
    caption (first entry = prompt name), or None when the dataset has no caption labelling.
    ``train_x`` / ``val`` / ``test``: lists of :class:`ImageItem` (``train_x`` may be empty for
    methods that train on captions). ``caption_path``: a caption file the dataset supplies itself
    (used when ``DATASET.CAPTIONS.PATH`` is empty), or None.
    """

    dataset_dir = ""

    def __init__(self, classnames: List[str], test: List[ImageItem],
                 train_x: Optional[List[ImageItem]] = None, val: Optional[List[ImageItem]] = None,
                 synonyms: Optional[List[List[str]]] = None) -> None:
        self.classnames = list(classnames)
        self.test = test
        self.train_x = train_x or []
        self.val = val if val is not None else test
        self.synonyms = synonyms
        self.caption_path: Optional[str] = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def lab2cname(self) -> Dict[int, str]:
        return dict(enumerate(self.classnames))

    def keep_classes(self, names: Sequence[str], key: str) -> None:
        """Restrict the dataset to the classes ``names`` (in this order): class names, synonyms and
        every split's label columns (items without a positive left stay, with negatives only).
        ``key`` is the config key that asked for it (named when a class is not in the dataset)."""
        missing = [name for name in names if name not in self.classnames]
        if missing:
            raise ValueError(f"{key}: classes {missing} are not among this dataset's classes "
                             f"({', '.join(self.classnames)}).")
        columns = [self.classnames.index(name) for name in names]

        def cut(items: List[ImageItem]) -> List[ImageItem]:
            return [ImageItem(item.impath, item.label[columns]) for item in items]

        same_val = self.val is self.test
        self.test, self.train_x = cut(self.test), cut(self.train_x)
        self.val = self.test if same_val else cut(self.val)
        self.classnames = list(names)
        if self.synonyms is not None:
            self.synonyms = [self.synonyms[c] for c in columns]

    @staticmethod
    def extend_cfg(cfg) -> None:
        """Add dataset-specific config keys (``cfg.DATASET.<NAME>``); default: none."""


def build_dataset(cfg) -> DatasetBase:
    """Instantiate ``cfg.DATASET.NAME`` (aliases accepted) with the config."""
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
