"""Image data: transforms, an image dataset over labelled items, and Dassl's ``DataManager``.

Dassl's ``Datum`` needs integer labels, so the engine keeps its own multi-label loaders: every
batch is a dict ``{"img": B x 3 x H x W, "label": B x C (1 / 0 / -1), "index": B}``.
"""
from __future__ import annotations

import logging
from typing import Callable, List, Optional, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from taidpt.engine.registry import DATASET_REGISTRY

logger = logging.getLogger(__name__)

INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def _interpolation(cfg) -> T.InterpolationMode:
    try:
        return INTERPOLATION[cfg.INPUT.INTERPOLATION]
    except KeyError:
        raise ValueError(f"INPUT.INTERPOLATION must be one of {sorted(INTERPOLATION)}, "
                         f"got {cfg.INPUT.INTERPOLATION!r}") from None


def _normalize(cfg) -> T.Normalize:
    return T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)


def build_test_transform(cfg) -> Callable:
    """SPEC 6: resize the shorter side, center crop to ``INPUT.SIZE``, CLIP mean/std."""
    size = tuple(cfg.INPUT.SIZE)
    return T.Compose([T.Resize(min(size), interpolation=_interpolation(cfg)), T.CenterCrop(size),
                      T.ToTensor(), _normalize(cfg)])


def build_train_transform(cfg) -> Callable:
    """Training images: ``INPUT.TRANSFORMS`` of random_resized_crop / random_flip / cutout
    (Dassl names); anything else is an error naming the transform."""
    size = tuple(cfg.INPUT.SIZE)
    steps: List[Callable] = []
    names = list(cfg.INPUT.TRANSFORMS)
    known = {"random_resized_crop", "random_flip", "normalize", "cutout", "randaugment"}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"Unknown INPUT.TRANSFORMS {unknown}; supported: {sorted(known)}")
    if "random_resized_crop" in names:
        steps.append(T.RandomResizedCrop(size, scale=tuple(cfg.INPUT.RRCROP_SCALE),
                                         interpolation=_interpolation(cfg)))
    else:
        steps += [T.Resize(min(size), interpolation=_interpolation(cfg)), T.CenterCrop(size)]
    if "random_flip" in names:
        steps.append(T.RandomHorizontalFlip())
    if "randaugment" in names:
        steps.append(T.RandAugment())
    steps += [T.ToTensor(), _normalize(cfg)]
    if "cutout" in names:
        steps.append(T.RandomErasing(p=1.0, scale=(0.02, 0.2), value=0))
    return T.Compose(steps)


def read_image(path: str) -> Image.Image:
    """Open an image as RGB; a missing or corrupt file raises one paragraph naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file {path} does not exist. Check DATASET.ROOT and the "
                                "dataset layout (see DATA.md).") from None
    except (UnidentifiedImageError, OSError) as err:
        raise RuntimeError(f"Image file {path} is corrupt or not an image ({err}). Replace it with "
                           "a valid copy or remove it from the image list.") from err


class ImageDataset(Dataset):
    """Labelled images: items with ``impath`` and ``label`` (length-C, 1 / 0 / -1)."""

    def __init__(self, items: Sequence, transform: Callable) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        return {"img": self.transform(read_image(item.impath)),
                "label": torch.as_tensor(item.label, dtype=torch.float32), "index": index}


def seeded_generator(cfg) -> Optional[torch.Generator]:
    """A generator for shuffling that follows ``cfg.SEED`` (None when the seed is negative)."""
    if cfg.SEED < 0:
        return None
    return torch.Generator().manual_seed(cfg.SEED)


def build_loader(cfg, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False,
                      num_workers=cfg.DATALOADER.NUM_WORKERS, generator=seeded_generator(cfg),
                      pin_memory=torch.cuda.is_available() and cfg.USE_CUDA)


class DataManager:
    """Builds ``cfg.DATASET.NAME`` and its loaders (Dassl's ``DataManager`` shape).

    ``train_loader_x`` is None when the dataset has no training images (caption-trained methods
    build their own loader).
    """

    def __init__(self, cfg, dataset=None) -> None:
        self.dataset = dataset if dataset is not None else DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
        test_tf = build_test_transform(cfg)
        bs_test = cfg.DATALOADER.TEST.BATCH_SIZE
        self.train_loader_x = None
        if self.dataset.train_x:
            self.train_loader_x = build_loader(
                cfg, ImageDataset(self.dataset.train_x, build_train_transform(cfg)),
                cfg.DATALOADER.TRAIN_X.BATCH_SIZE, shuffle=True)
        self.val_loader = build_loader(cfg, ImageDataset(self.dataset.val, test_tf), bs_test, False)
        self.test_loader = build_loader(cfg, ImageDataset(self.dataset.test, test_tf), bs_test, False)
        logger.info("Dataset %s: %d classes, %d train images, %d val, %d test", cfg.DATASET.NAME,
                    self.num_classes, len(self.dataset.train_x), len(self.dataset.val),
                    len(self.dataset.test))

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def lab2cname(self) -> dict:
        return self.dataset.lab2cname

    @property
    def classnames(self) -> List[str]:
        return self.dataset.classnames
