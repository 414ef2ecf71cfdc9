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


TEST_RESIZES = ("crop", "square")


def build_test_transform(cfg) -> Callable:
    """Test / val images, ``INPUT.TEST_RESIZE``: ``crop`` (SPEC 6: resize the shorter side, center
    crop to ``INPUT.SIZE``) or ``square`` (resize to ``INPUT.SIZE``, no crop: DualCoOp, SPEC 7);
    ``INPUT.INTERPOLATION``, then CLIP mean/std."""
    size = tuple(cfg.INPUT.SIZE)
    mode = cfg.INPUT.TEST_RESIZE
    if mode == "crop":
        resize = [T.Resize(min(size), interpolation=_interpolation(cfg)), T.CenterCrop(size)]
    elif mode == "square":
        resize = [T.Resize(size, interpolation=_interpolation(cfg))]
    else:
        raise ValueError(f"INPUT.TEST_RESIZE must be one of {', '.join(TEST_RESIZES)}, "
                         f"got {mode!r}")
    return T.Compose([*resize, T.ToTensor(), _normalize(cfg)])


class RandomColourCutout:
    """One rectangle of ``factor`` x each side (a square on a square image) centred at a uniformly
    drawn pixel, clipped at the borders, filled with a uniformly drawn RGB colour. PIL image in,
    PIL image out; draws from torch's RNG."""

    def __init__(self, factor: float) -> None:
        if not 0 < factor <= 1:
            raise ValueError(f"INPUT.CUTOUT_FACTOR must be in (0, 1] (the cutout side as a "
                             f"fraction of the image side), got {factor}")
        self.factor = factor

    def __call__(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        cut_w, cut_h = int(self.factor * width + 0.5), int(self.factor * height + 0.5)
        cx, cy = int(torch.randint(width, ())), int(torch.randint(height, ()))
        colour = tuple(int(v) for v in torch.randint(256, (3,)))
        x0, y0 = max(cx - cut_w // 2, 0), max(cy - cut_h // 2, 0)
        x1, y1 = min(cx - cut_w // 2 + cut_w, width), min(cy - cut_h // 2 + cut_h, height)
        img = img.copy()
        img.paste(colour, (x0, y0, x1, y1))
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(factor={self.factor})"


class EitherOr:
    """``first(img)`` with probability ``p``, else ``second(img)`` (torch's RNG, so seeded loaders
    stay deterministic; torchvision's ``RandomChoice`` uses Python's ``random``)."""

    def __init__(self, first: Callable, second: Callable, p: float = 0.5) -> None:
        self.first, self.second, self.p = first, second, p

    def __call__(self, img):
        return self.first(img) if float(torch.rand(())) < self.p else self.second(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p},\n  {self.first},\n  {self.second})"


# INPUT.TRANSFORMS names (Dassl's where Dassl has one). They apply in this order, whatever the
# order of the list: the geometric step, then the photometric ones, ToTensor + CLIP normalisation,
# then the tensor step.
TRAIN_TRANSFORMS = {
    "random_resized_crop": "RandomResizedCrop to INPUT.SIZE, scale INPUT.RRCROP_SCALE, "
                           "INPUT.INTERPOLATION",
    "random_crop_or_cutout": "with probability 1/2 random_resized_crop, else Resize to "
                             "INPUT.SIZE (bilinear) + one cutout of INPUT.CUTOUT_FACTOR x the "
                             "side in a random colour (DualCoOp, SPEC 7)",
    "imagenet_policy": "AutoAugment: one of torchvision's ImageNet sub-policies, chosen uniformly",
    "random_flip": "horizontal flip with probability 1/2",
    "randaugment": "torchvision's RandAugment",
    "normalize": "CLIP mean / std (INPUT.PIXEL_MEAN, INPUT.PIXEL_STD; always applied)",
    "cutout": "RandomErasing of 2-20% of the normalised tensor with zeros",
}
GEOMETRIC = ("random_resized_crop", "random_crop_or_cutout")
CUTOUT_RESIZE_INTERPOLATION = T.InterpolationMode.BILINEAR  # random_crop_or_cutout's (reference)


def build_train_transform(cfg) -> Callable:
    """Training images: the ``INPUT.TRANSFORMS`` steps of :data:`TRAIN_TRANSFORMS` (in that order;
    without a geometric step, resize the shorter side + center crop). Unknown names, or both
    geometric steps, are errors naming the key."""
    size = tuple(cfg.INPUT.SIZE)
    names = list(cfg.INPUT.TRANSFORMS)
    unknown = [n for n in names if n not in TRAIN_TRANSFORMS]
    if unknown:
        raise ValueError(f"Unknown INPUT.TRANSFORMS {unknown}; supported: "
                         f"{', '.join(TRAIN_TRANSFORMS)}")
    geometric = [n for n in GEOMETRIC if n in names]
    if len(geometric) > 1:
        raise ValueError(f"INPUT.TRANSFORMS may hold only one of {', '.join(GEOMETRIC)}, got both")
    crop = T.RandomResizedCrop(size, scale=tuple(cfg.INPUT.RRCROP_SCALE),
                               interpolation=_interpolation(cfg))
    steps: List[Callable] = []
    if "random_crop_or_cutout" in names:
        cutout = T.Compose([T.Resize(size, interpolation=CUTOUT_RESIZE_INTERPOLATION),
                            RandomColourCutout(cfg.INPUT.CUTOUT_FACTOR)])
        steps.append(EitherOr(crop, cutout))
    elif "random_resized_crop" in names:
        steps.append(crop)
    else:
        steps += [T.Resize(min(size), interpolation=_interpolation(cfg)), T.CenterCrop(size)]
    if "imagenet_policy" in names:
        steps.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
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


def check_images(items: Sequence, what: str) -> None:
    """Every item's image opens and its header decodes (PIL ``open`` + ``verify``: no pixels are
    decoded); else a ValueError listing every bad file, naming ``what`` (e.g. the split)."""
    bad = []
    for item in items:
        try:
            with Image.open(item.impath) as img:
                img.verify()
        except (OSError, SyntaxError, ValueError) as err:  # PIL: SyntaxError for broken chunks
            bad.append(f"{item.impath}: {err}")
    if bad:
        raise ValueError(f"{len(bad)} of {len(items)} {what} images are missing, corrupt or not "
                         "images:\n  " + "\n  ".join(bad) + "\nReplace them with valid copies "
                         "or remove them from the image list.")


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
    """``DATALOADER.NUM_WORKERS`` workers, each ``PREFETCH_FACTOR`` batches ahead, pinned memory
    on CUDA; evaluation loaders (``shuffle`` False) keep their workers between evaluations."""
    workers = cfg.DATALOADER.NUM_WORKERS
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False,
                      num_workers=workers, generator=seeded_generator(cfg),
                      pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
                      prefetch_factor=cfg.DATALOADER.PREFETCH_FACTOR if workers else None,
                      persistent_workers=workers > 0 and not shuffle)


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
