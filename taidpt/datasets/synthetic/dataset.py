"""The synthetic world as a registered dataset: ``DATASET.NAME Synthetic`` (alias ``synthetic``).

``test``: the labelled test images (split c); ``val``: labelled images of their own (for choosing
hyper-parameters and best-val selection; ``DATASET.VAL_STRIDE`` does not apply: val is never cut
from test); ``train_x``: labelled images of the pretraining pairs (split a; for image-trained
references such as the linear probe), after ``DATASET.NUM_SHOTS`` and ``DATASET.PARTIAL_PROB``
(:mod:`taidpt.datasets.train_labels`; the world itself does not change); ``caption_path``: the
caption-only corpus (split b) that TaI-DPT trains on; ``clip_path``: where the world's tiny CLIP
is (or will be) cached, built by ``taidpt synthetic`` or :func:`build_tiny_clip`.
``DATASET.SYNTHETIC.CLASSES`` ``novel`` / ``base`` restricts every split to the last quarter of the
classes (rounded up) / the others: the stand-in of COCO's novel / base split (paper Table 2).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence

import numpy as np
from yacs.config import CfgNode as CN

from taidpt.datasets.base import DATASET_REGISTRY, DatasetBase, ImageItem
from taidpt.datasets.synthetic.scenes import load_vocabulary
from taidpt.datasets.train_labels import finalize_train_split
from taidpt.datasets.synthetic.world import PRETRAIN_STEPS, WorldSpec, build_world, tiny_clip_path


def read_image_list(root: Path, name: str, num_classes: int) -> List[ImageItem]:
    """Items of ``<root>/<name>`` (lines ``<png path> <positive class ids...>``), labels 1 / -1."""
    items = []
    for lineno, line in enumerate((root / name).read_text(encoding="utf-8").splitlines(), start=1):
        path, *positives = line.split()
        label = -np.ones(num_classes, dtype=np.float32)
        try:
            label[[int(c) for c in positives]] = 1.0
        except (ValueError, IndexError) as err:
            raise ValueError(f"{root / name}, line {lineno}: expected '<png path> <class ids below "
                             f"{num_classes}>', got {line!r}. Delete {root} to rebuild the synthetic "
                             "world.") from err
        items.append(ImageItem(str(root / path), label))
    return items


CLASS_SUBSETS = ("all", "novel", "base")  # DATASET.SYNTHETIC.CLASSES


def subset_classnames(names: Sequence[str], subset: str) -> List[str]:
    """``all`` names, the ``novel`` last quarter (rounded up) or the ``base`` rest."""
    first_novel = len(names) - math.ceil(len(names) / 4)
    return list({"all": names, "novel": names[first_novel:], "base": names[:first_novel]}[subset])


@DATASET_REGISTRY.register(aliases=("synthetic",))
class Synthetic(DatasetBase):
    """Generated on first use into ``$TAIDPT_CACHE/synthetic/<world key>`` and reused after."""

    def __init__(self, cfg) -> None:
        node = cfg.DATASET.SYNTHETIC
        spec = WorldSpec.from_cfg(cfg)
        root = build_world(spec, node.CACHE_DIR)
        classes = load_vocabulary(spec.num_classes).classes
        names = [c.name for c in classes]
        train = finalize_train_split(cfg, "Synthetic", read_image_list(root, "train.txt", len(classes)),
                                     classnames=names)
        super().__init__(names, test=read_image_list(root, "test.txt", len(classes)),
                         val=read_image_list(root, "val.txt", len(classes)), train_x=train,
                         synonyms=[list(c.synonyms) for c in classes])
        self.dataset_dir = str(root)
        self.caption_path = str(root / "captions.txt")
        self.clip_path = str(tiny_clip_path(spec, node.CACHE_DIR, node.PRETRAIN_STEPS))
        if node.CLASSES != "all":
            self.keep_classes(subset_classnames(names, node.CLASSES), "DATASET.SYNTHETIC.CLASSES")

    @staticmethod
    def extend_cfg(cfg) -> None:
        node = cfg.DATASET.SYNTHETIC = CN()
        defaults = WorldSpec()
        node.SEED = defaults.seed  # the world: scenes, captions and the tiny CLIP's initialisation
        node.NUM_CLASSES = defaults.num_classes  # the first N classes of classes.json; -1 all (14)
        node.IMAGE_SIZE = defaults.image_size
        node.NUM_PAIRS = defaults.num_pairs  # split (a): image-caption pairs that pretrain the tiny CLIP
        node.NUM_CAPTIONS = defaults.num_captions  # split (b): the caption-only TaI training corpus
        node.NUM_TEST = defaults.num_test  # split (c): labelled test images
        node.NUM_VAL = defaults.num_val  # labelled validation images (a stream of their own)
        node.NUM_TRAIN = defaults.num_train  # labelled PNGs of the first pairs (train_x)
        node.MAX_OBJECTS = defaults.max_objects
        node.PRETRAIN_STEPS = PRETRAIN_STEPS  # tiny CLIP pretraining batches
        node.CACHE_DIR = ""  # "" -> $TAIDPT_CACHE or ~/.cache/taidpt
        node.CLASSES = "all"  # all, novel (the last quarter) or base (the rest): Table 2's stand-in
