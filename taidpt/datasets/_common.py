"""Helpers shared by the image datasets: label-set files, layouts, path checks and errors."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import List, Sequence

from taidpt.datasets.base import ImageItem

logger = logging.getLogger(__name__)

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
# The caption file VOC and COCO train on by default (SPEC 5), relative to DATASET.ROOT.
COCO_CAPTIONS = os.path.join("COCO", "annotations", "captions_train2017.json")


@dataclass(frozen=True)
class LabelSet:
    """A benchmark's classes: official ``labels``, caption ``synonyms`` (first = prompt name)
    and, for COCO, the category ``ids``."""

    labels: List[str]
    synonyms: List[List[str]]
    ids: List[int]

    @property
    def classnames(self) -> List[str]:
        return [entries[0] for entries in self.synonyms]


def load_label_set(name: str) -> LabelSet:
    """Read ``taidpt/datasets/data/<name>.json`` (``voc2007``, ``coco2014``, ``nuswide``)."""
    with open(os.path.join(DATA_DIR, f"{name}.json"), encoding="utf-8") as f:
        classes = json.load(f)["classes"]
    return LabelSet(labels=[c["label"] for c in classes],
                    synonyms=[list(c["synonyms"]) for c in classes],
                    ids=[c.get("id", i) for i, c in enumerate(classes)])


def cache_root(cfg) -> str:
    """``DATASET.CAPTIONS.CACHE_DIR`` (relative to ``DATASET.ROOT``), else ``$TAIDPT_CACHE``, else
    ``~/.cache/taidpt``, as an absolute path; caption, partial-label and few-shot caches live in
    its ``captions/``, ``partial/`` and ``fewshot/`` folders."""
    if cfg.DATASET.CAPTIONS.CACHE_DIR:
        root = os.path.join(os.path.expanduser(cfg.DATASET.ROOT),
                            os.path.expanduser(cfg.DATASET.CAPTIONS.CACHE_DIR))
    else:
        root = os.path.expanduser(os.environ.get("TAIDPT_CACHE") or "~/.cache/taidpt")
    return os.path.abspath(root)


def check_writable(path: str, what: str) -> None:
    """Create folder ``path`` if needed and write (then drop) an unnamed file in it; else the OS
    error naming ``what`` and the path. Nothing is left behind."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise type(err)(err.errno, f"{what} is not writable ({err.strerror})",
                        os.path.abspath(path)) from err


def wants_train_images(cfg) -> bool:
    """Training images are read only when the method does not train on captions."""
    return not cfg.DATASET.CAPTIONS.SOURCE


def bad_line(path: str, lineno: int, problem: str, fix: str) -> ValueError:
    """A malformed line of a list or label file."""
    return ValueError(f"{path}, line {lineno}: {problem}. {fix}")


@dataclass(frozen=True)
class Layout:
    """Where a dataset lives under ``DATASET.ROOT``: its ``name``, the expected ``tree``
    (shown in errors) and the ``download`` page."""

    name: str
    tree: str
    download: str

    def _missing(self, what: str, path: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"{self.name}: {what} {path} does not exist. Expected under DATASET.ROOT:\n"
            f"{self.tree}\nDownload: {self.download} (DATA.md has the details).")

    def root(self, cfg) -> str:
        """The absolute ``DATASET.ROOT``; it must exist."""
        if not cfg.DATASET.ROOT:
            raise FileNotFoundError(
                f"{self.name}: DATASET.ROOT is not set: give --root DATA, the folder holding:\n"
                f"{self.tree}\nDownload: {self.download} (DATA.md has the details).")
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        if not os.path.isdir(root):
            raise self._missing("DATASET.ROOT (set it with --root)", root)
        return root

    def require(self, root: str, relpath: str) -> str:
        """``root/relpath``; it must be an existing file."""
        path = os.path.join(root, relpath)
        if not os.path.isfile(path):
            raise self._missing("file", path)
        return path

    def read_lines(self, root: str, relpath: str) -> List[str]:
        """The lines of a required text file (trailing blank lines dropped)."""
        path = self.require(root, relpath)
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError:
            raise ValueError(f"{self.name}: {path} is not a UTF-8 text file; re-download it "
                             f"from {self.download}.") from None
        while lines and not lines[-1].strip():
            lines.pop()
        return lines

    def check_images(self, items: Sequence[ImageItem], listed_in: str,
                     skip_missing: bool = False) -> List[ImageItem]:
        """Every item's image must exist; with ``skip_missing`` missing ones are dropped."""
        missing = [item.impath for item in items if not os.path.isfile(item.impath)]
        if not missing:
            return list(items)
        if skip_missing:
            logger.warning("%s: skipping %d of %d images listed in %s that are missing (e.g. %s)",
                           self.name, len(missing), len(items), listed_in, missing[0])
            absent = set(missing)
            return [item for item in items if item.impath not in absent]
        examples = ", ".join(missing[:3])
        raise FileNotFoundError(
            f"{self.name}: {len(missing)} of {len(items)} images listed in {listed_in} are "
            f"missing, e.g. {examples}. Expected under DATASET.ROOT:\n{self.tree}\n"
            f"Download: {self.download} (DATA.md has the details).")
