"""Caption sources and the prepared (labelled, tokenised) caption cache.

Sources (``DATASET.CAPTIONS.SOURCE``): ``text`` (one sentence per line), ``jsonl`` (a ``caption``
field per line), ``coco`` (``captions_train2017.json``) and ``openimages`` (localized narratives
JSONL). A built corpus is saved in the cache dir (``CACHE_DIR``, else ``$TAIDPT_CACHE``, else
``~/.cache/taidpt``; never the working directory) under a key that hashes the caption file
(path, size, mtime), the class list, the synonyms and every option, so any change rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib.metadata import version
from typing import Dict, List, Optional, Tuple

import torch

from taidpt.datasets._common import cache_root, check_writable
from taidpt.datasets.caption_corpus import CaptionCorpus
from taidpt.io import atomic_write

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when labelling or tokenising changes
SOURCES = ("text", "jsonl", "coco", "openimages")
_DOWNLOAD = {
    "coco": "annotations/captions_train2017.json from annotations_trainval2017.zip, "
            "https://cocodataset.org/#download",
    "openimages": "open_images_train_v6_captions.jsonl, "
                  "https://google.github.io/localized-narratives/",
    "text": "a text file you write, one sentence per line",
    "jsonl": "a JSON-lines file you write, one {\"caption\": ...} object per line",
}


def _corrupt(path: str, what: str) -> ValueError:
    return ValueError(f"Caption file {path} is unreadable: {what}. Re-download or regenerate it "
                      f"(DATA.md lists the expected formats).")


def _open_lines(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as err:
        raise _corrupt(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_text(path: str) -> List[str]:
    """One sentence per non-empty line."""
    return [line.strip() for line in _open_lines(path) if line.strip()]


def read_jsonl(path: str, field: str = "caption") -> List[str]:
    """The ``field`` string of every JSON object line (blank lines skipped)."""
    sentences = []
    for lineno, line in enumerate(_open_lines(path), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)[field]
        except (ValueError, KeyError, TypeError):
            reason = f"line {lineno} is not a JSON object with a {field!r} field"
            raise _corrupt(path, reason) from None
        if not isinstance(value, str):
            raise _corrupt(path, f"line {lineno}: {field!r} is not a string")
        sentences.append(value.strip())
    return sentences


def read_coco_captions(path: str, per_image: int = 1) -> List[str]:
    """COCO captions: the first ``per_image`` per image id in file order (-1: all)."""
    try:
        with open(path, encoding="utf-8") as f:
            annotations = json.load(f)["annotations"]
        pairs = [(a["image_id"], a["caption"]) for a in annotations]
    except (ValueError, KeyError, TypeError):
        reason = "not a COCO captions JSON with annotations[{image_id, caption}]"
        raise _corrupt(path, reason) from None
    seen: Dict[int, int] = {}
    sentences = []
    for image_id, caption in pairs:
        seen[image_id] = seen.get(image_id, 0) + 1
        if per_image < 0 or seen[image_id] <= per_image:
            sentences.append(caption.strip())
    logger.info("COCO captions %s: %d images, %d captions, %d kept (%s per image)", path,
                len(seen), len(pairs), len(sentences), "all" if per_image < 0 else per_image)
    return sentences


def _check_source(source: str, path: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"DATASET.CAPTIONS.SOURCE={source!r} is not supported; use one of "
                         f"{', '.join(SOURCES)}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Caption file {path} does not exist. Expected for SOURCE "
                                f"{source!r}: {_DOWNLOAD[source]}. Set DATASET.CAPTIONS.PATH "
                                f"(relative to DATASET.ROOT or absolute); see DATA.md.")


def read_captions(source: str, path: str, per_image: int = 1) -> List[str]:
    """Sentences of a caption file (``per_image`` applies to COCO only)."""
    _check_source(source, path)
    if source == "text":
        return read_text(path)
    if source == "coco":
        return read_coco_captions(path, per_image)
    return read_jsonl(path)


def caption_file(cfg, dataset) -> str:
    """``DATASET.CAPTIONS.PATH`` (relative to ``DATASET.ROOT``), else ``dataset.caption_path``."""
    path = cfg.DATASET.CAPTIONS.PATH or getattr(dataset, "caption_path", None)
    if not path:
        raise ValueError("No caption file: set DATASET.CAPTIONS.PATH (relative to DATASET.ROOT "
                         "or absolute), e.g. COCO/annotations/captions_train2017.json.")
    return os.path.join(os.path.expanduser(cfg.DATASET.ROOT), os.path.expanduser(path))


def cache_dir(cfg) -> str:
    """The caption cache folder: ``captions/`` under :func:`~taidpt.datasets._common.cache_root`."""
    return os.path.join(cache_root(cfg), "captions")


def _options(cfg, dataset, context_length: int) -> Tuple[str, Dict]:
    """The caption file and everything the prepared corpus depends on."""
    caps = cfg.DATASET.CAPTIONS
    if not caps.SOURCE:
        raise ValueError("DATASET.CAPTIONS.SOURCE is empty: set it to one of "
                         f"{', '.join(SOURCES)} (see configs/datasets/*_caption.yaml).")
    path = os.path.abspath(caption_file(cfg, dataset))
    _check_source(caps.SOURCE, path)
    stat = os.stat(path)
    synonyms = dataset.synonyms or [[name] for name in dataset.classnames]
    return path, {
        "version": CACHE_VERSION, "lemminflect": version("lemminflect"), "source": caps.SOURCE,
        "file": [path, stat.st_size, stat.st_mtime_ns], "synonyms": [list(s) for s in synonyms],
        "per_image": caps.PER_IMAGE if caps.SOURCE == "coco" else -1,
        "max_captions": caps.MAX_CAPTIONS, "limit_per_class": caps.LIMIT_PER_CLASS,
        "templates": bool(caps.TEMPLATES), "context_length": context_length,
        "seed": max(cfg.SEED, 0) if caps.MAX_CAPTIONS > 0 else 0,
    }


def _cache_file(cfg, file: str, options: Dict) -> str:
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:20]
    stem = os.path.splitext(os.path.basename(file))[0]
    return os.path.join(cache_dir(cfg), f"{options['source']}-{stem}-{key}.pt")


def cache_path(cfg, dataset, context_length: int = 77) -> str:
    """Where the prepared corpus for this config, class list and context length lives."""
    return _cache_file(cfg, *_options(cfg, dataset, context_length))


def _load(path: str) -> Optional[CaptionCorpus]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return CaptionCorpus.from_tensors(blob["tokens"], blob["labels"], blob["sentences"],
                                          blob["classnames"], blob["stats"])
    except Exception as err:  # a damaged cache is rebuilt, never trusted
        logger.warning("Ignoring unreadable caption cache %s (%s); rebuilding it.", path, err)
        return None


def _save(corpus: CaptionCorpus, path: str) -> None:
    blob = {"tokens": corpus.tokens.int(), "labels": corpus.labels.to(torch.uint8),
            "sentences": corpus.sentences, "classnames": corpus.classnames, "stats": corpus.stats}
    atomic_write(path, lambda f: torch.save(blob, f))


def _load_or_build(cfg, dataset, context_length: int, force: bool,
                   progress: bool) -> Tuple[CaptionCorpus, str]:
    file, options = _options(cfg, dataset, context_length)
    path = _cache_file(cfg, file, options)
    corpus = None if force or not os.path.isfile(path) else _load(path)
    if corpus is not None:
        corpus.stats = {**corpus.stats, "cache": "reused"}
        logger.info("Caption corpus: reusing %s", path)
        _check_captions(corpus.stats, file)
    else:
        sentences = read_captions(options["source"], file, options["per_image"])
        check_writable(os.path.dirname(path), "The caption cache folder (DATASET.CAPTIONS.CACHE_DIR, "
                                              "$TAIDPT_CACHE or ~/.cache/taidpt)")
        corpus = CaptionCorpus(sentences, options["synonyms"], context_length,
                               templates=options["templates"], max_captions=options["max_captions"],
                               limit_per_class=options["limit_per_class"], seed=options["seed"],
                               progress=progress)
        corpus.stats.update(source=options["source"], file=file)
        _check_captions(corpus.stats, file)
        _save(corpus, path)
        corpus.stats["cache"] = "built"
        logger.info("Caption corpus: wrote %s", path)
    _log_stats(corpus.stats)
    return corpus, path


def _check_captions(stats: Dict, file: str) -> None:
    """A corpus without a single caption of a class (an empty file, or no sentence naming a class)
    is an error naming ``file`` and its counts: it would train on template sentences only."""
    if stats["captions"] == 0:
        raise ValueError(
            f"Caption file {file} gives no caption naming a class: {stats['read']} sentences read, "
            f"{stats['labelled']} with a class, {stats['captions']} kept. Check "
            "DATASET.CAPTIONS.PATH / SOURCE, the class names (and synonyms) of the dataset, and "
            "DATASET.CAPTIONS.LIMIT_PER_CLASS / MAX_CAPTIONS.")


def _log_stats(stats: Dict) -> None:
    logger.info("Caption corpus %s: %d read, %d with a class, %d dropped, %d captions kept, "
                "%d template sentences, %d items", stats.get("file", ""), stats["read"],
                stats["labelled"], stats["dropped"], stats["captions"], stats["templates"],
                stats["total"])
    logger.info("Captions per class: %s",
                ", ".join(f"{name} {count}" for name, count in stats["per_class"].items()))


def build_caption_corpus(cfg, dataset, context_length: int = 77,
                         progress: bool = True) -> CaptionCorpus:
    """The training corpus for ``dataset``'s classes from ``cfg.DATASET.CAPTIONS``; uses the
    prepared cache when present and writes it when missing."""
    return _load_or_build(cfg, dataset, context_length, force=False, progress=progress)[0]


def prepare(cfg, dataset, context_length: int = 77, force: bool = False,
            progress: bool = True) -> Tuple[str, Dict]:
    """Build (or reuse, unless ``force``) the cache; returns its path and the corpus counts."""
    corpus, path = _load_or_build(cfg, dataset, context_length, force, progress)
    return path, corpus.stats
