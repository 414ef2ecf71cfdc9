"""Labelled training images shared by every dataset: few-shot subsets, partial labels, val stride.

``DATASET.NUM_SHOTS`` K (< 1: off) keeps a seeded subset of ``train_x`` in which every class has
at least K positive images; ``DATASET.PARTIAL_PROB`` p (0 < p <= 1; 1: every label known) then
turns labels into unknowns (0). VOC2007 reads the reference's ``train_proportion_{p}.txt`` rows;
every other dataset uses the reference's rule ``label * (U < p)``, ``U`` an ``N x C`` draw of
``np.random.RandomState(seed).random_sample`` over the whole ``train_x`` (so an image's known
labels do not depend on K). ``seed`` is ``cfg.SEED`` when >= 0, else 1 (the reference's). Masks
and subsets are saved under ``partial/`` and ``fewshot/`` of the cache root (atomically) and
reused when they fit the data. ``DATASET.VAL_STRIDE`` N > 0 makes ``val`` every N-th test image.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Callable, List, Optional, Sequence

import numpy as np

from taidpt.datasets._common import cache_root
from taidpt.datasets.base import ImageItem, label_matrix
from taidpt.io import atomic_write

logger = logging.getLogger(__name__)

REFERENCE_SEED = 1  # the reference calls np.random.seed(1) before drawing its masks


def run_seed(cfg) -> int:
    """``cfg.SEED`` when >= 0, else the reference's seed 1."""
    return int(cfg.SEED) if cfg.SEED >= 0 else REFERENCE_SEED


def partial_prob(cfg) -> float:
    """``DATASET.PARTIAL_PROB``, checked to lie in (0, 1]."""
    p = cfg.DATASET.PARTIAL_PROB
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"DATASET.PARTIAL_PROB must be a number in (0, 1] (the fraction of "
                         f"training labels kept; 1.0 keeps all, the paper uses 0.1 ... 0.9), "
                         f"got {p!r}.")
    return float(p)


def val_split(cfg, test: List[ImageItem], default: List[ImageItem]) -> List[ImageItem]:
    """``test[::DATASET.VAL_STRIDE]`` when the stride is > 0, else the dataset's ``default``."""
    stride = cfg.DATASET.VAL_STRIDE
    if stride > 0:
        return test[::stride]
    if stride != -1:
        raise ValueError(f"DATASET.VAL_STRIDE must be -1 (the dataset's own val split) or a "
                         f"positive stride N (val = test[::N]), got {stride}.")
    return default


def partial_mask(num_items: int, num_classes: int, p: float, seed: int) -> np.ndarray:
    """The reference's ``N x C`` bool mask of known labels: ``U < p``, ``U ~ RandomState(seed)``."""
    return np.random.RandomState(seed).random_sample((num_items, num_classes)) < p


def fewshot_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted indices of a greedy subset of the ``N x C`` labels with >= K positives per class.

    Classes are visited from rarest to most frequent (ties by class index); each gets random
    not-yet-chosen images positive for it (``RandomState(seed)``) until it has K, or all its
    positives when it has fewer than K.
    """
    positive = labels > 0
    counts = positive.sum(axis=0)
    rng = np.random.RandomState(seed)
    chosen = np.zeros(len(labels), dtype=bool)
    for c in np.argsort(counts, kind="stable"):
        need = min(k, counts[c]) - positive[chosen, c].sum()
        if need > 0:
            candidates = np.flatnonzero(positive[:, c] & ~chosen)
            chosen[rng.choice(candidates, size=need, replace=False)] = True
    return np.flatnonzero(chosen)


def read_partial_rows(path: str, num_rows: int, num_classes: int) -> np.ndarray:
    """An ``N x C`` float32 matrix in {1, 0, -1} from comma-separated rows (VOC's proportion files)."""
    fix = ("Use the reference's file (one row per line of ImageSets/Main/trainval.txt, one column "
           "per VOC class) or set DATASET.PARTIAL_DIR to the folder that holds it.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Partial-label file {path} does not exist. {fix} "
                                f"DATASET.PARTIAL_PROB 1.0 needs no file.")
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if len(lines) != num_rows:
        raise ValueError(f"Partial-label file {path} has {len(lines)} rows, expected {num_rows} "
                         f"(one per training image). {fix}")
    rows = np.empty((num_rows, num_classes), dtype=np.float32)
    for lineno, line in enumerate(lines, start=1):
        try:
            values = [float(v) for v in line.split(",")]
        except ValueError:
            values = []
        if len(values) != num_classes or not set(values) <= {1.0, 0.0, -1.0}:
            raise ValueError(f"Partial-label file {path}, line {lineno}: expected {num_classes} "
                             f"comma-separated values in 1/0/-1, got {line[:80]!r}. {fix}")
        rows[lineno - 1] = values
    return rows


def _data_key(items: Sequence[ImageItem], labels: np.ndarray) -> str:
    """A short hash of the images (last two path parts, so moving DATASET.ROOT keeps it) and labels."""
    digest = hashlib.sha1()
    for item in items:
        digest.update("/".join(item.impath.replace("\\", "/").split("/")[-2:]).encode() + b"\n")
    digest.update(str(labels.shape).encode() + labels.astype(np.int8).tobytes())
    return digest.hexdigest()[:12]


def _cached(path: str, what: str, build: Callable[[], np.ndarray],
            fits: Callable[[np.ndarray], bool]) -> np.ndarray:
    """The array saved at ``path`` when it loads and ``fits``, else ``build()`` saved atomically."""
    if os.path.isfile(path):
        try:
            array = np.load(path, allow_pickle=False)
            problem = "" if fits(array) else f"shape {array.shape} / {array.dtype} does not fit"
        except (OSError, ValueError, EOFError) as err:
            problem = f"unreadable ({err})"
        if not problem:
            logger.info("%s (reused): %s", what, path)
            return array
        logger.warning("Rebuilding %s %s: %s.", what, path, problem)
    array = build()
    atomic_write(path, lambda f: np.save(f, array))
    logger.info("%s (built): %s", what, path)
    return array


def _log_counts(name: str, k: int, seed: int, labels: np.ndarray, subset: np.ndarray,
                classnames: Optional[Sequence[str]]) -> None:
    names = list(classnames) if classnames else [str(c) for c in range(labels.shape[1])]
    totals = (labels > 0).sum(axis=0)
    for c in np.flatnonzero(totals < k):
        logger.warning("%s few-shot: class %s has %d positive training images, fewer than "
                       "NUM_SHOTS %d; all of them are used.", name, names[c], totals[c], k)
    counts = (labels[subset] > 0).sum(axis=0)
    cells = [f"{n[:16]:<16}{int(v):>5}" for n, v in zip(names, counts)]
    table = "\n".join("  " + "  ".join(cells[i:i + 4]) for i in range(0, len(cells), 4))
    logger.info("%s few-shot subset (NUM_SHOTS %d, seed %d): %d of %d images; positives per "
                "class:\n%s", name, k, seed, len(subset), len(labels), table)


def finalize_train_split(cfg, dataset_name: str, items: List[ImageItem],
                         voc_partial_rows: Optional[np.ndarray] = None,
                         classnames: Optional[Sequence[str]] = None) -> List[ImageItem]:
    """``train_x`` after ``DATASET.NUM_SHOTS`` and then ``DATASET.PARTIAL_PROB`` (see the module).

    ``voc_partial_rows``: ``N x C`` labels that replace the items' labels when p < 1 (VOC's files,
    rows in item order); None draws the random mask. ``classnames`` label the logged counts.
    """
    p, k = partial_prob(cfg), int(cfg.DATASET.NUM_SHOTS)
    if not items:
        if p < 1 or k >= 1:
            logger.warning("%s: DATASET.PARTIAL_PROB / NUM_SHOTS apply to training images, and "
                           "none are read (DATASET.CAPTIONS.SOURCE is set); ignored.", dataset_name)
        return []
    labels, seed = label_matrix(items), run_seed(cfg)
    key = f"{dataset_name}-{_data_key(items, labels)}"
    subset = np.arange(len(items))
    if k >= 1:
        need = np.minimum((labels > 0).sum(axis=0), k)
        subset = _cached(
            os.path.join(cache_root(cfg), "fewshot", f"{key}-k{k}-seed{seed}.npy"),
            f"{dataset_name} few-shot subset", lambda: fewshot_indices(labels, k, seed),
            lambda a: (a.ndim == 1 and a.dtype.kind == "i" and len(a) > 0
                       and bool(np.all(np.diff(a) > 0)) and 0 <= a[0] and a[-1] < len(items)
                       and bool(np.all((labels[a] > 0).sum(axis=0) >= need))))
        _log_counts(dataset_name, k, seed, labels, subset, classnames)
    new_labels = labels[subset]
    if p < 1:
        if voc_partial_rows is not None:
            new_labels = voc_partial_rows[subset].astype(np.float32)
        else:
            shape = labels.shape
            mask = _cached(
                os.path.join(cache_root(cfg), "partial", f"{key}-p{p}-seed{seed}.npy"),
                f"{dataset_name} partial-label mask", lambda: partial_mask(*shape, p, seed),
                lambda a: a.shape == shape and a.dtype == np.bool_)
            new_labels = np.where(mask[subset], new_labels, 0).astype(np.float32)
        logger.info("%s partial labels (PARTIAL_PROB %s, seed %d): %.2f%% of the %d x %d "
                    "training labels are known.", dataset_name, p, seed,
                    100.0 * float(np.mean(new_labels != 0)), *new_labels.shape)
    return [ImageItem(items[i].impath, label) for i, label in zip(subset, new_labels)]
