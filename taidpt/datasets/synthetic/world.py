"""Build (or reuse) a synthetic world and its tiny CLIP in the cache directory.

Splits, each its own seeded stream of scenes (scene i of a split is a pure function of the world
seed, the split and i): (a) ``pairs``: image-caption pairs that pretrain the tiny CLIP, whose first
``num_train`` images are also written as labelled PNG files; (b) ``captions``: captions of other
scenes, the text TaI trains on; (c) ``test``: labelled PNG images; and ``val``: labelled PNG
images for choosing hyper-parameters (never tune on ``test``). A world directory holds
``classes.txt``; ``pairs.txt`` and ``captions.txt`` (one caption per line); ``train.txt``,
``val.txt`` and ``test.txt`` (``<png path> <positive class ids...>``) with ``train/``, ``val/`` and
``test/``; and ``tiny_clip-<N>steps.pt``. Pair images are rendered in memory to pretrain the CLIP, not stored.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, List, Sequence, Tuple, TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from taidpt.clip import random_clip, save_clip, tokenize
from taidpt.clip.pretrain import pretrain_clip

from taidpt.datasets._common import check_writable
from taidpt.datasets.synthetic.captions import write_caption
from taidpt.datasets.synthetic.scenes import Scene, load_vocabulary, render_scene, sample_scene

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when scenes, rendering or captions change: old caches stop matching
SPLIT_STREAMS = {"pairs": 0, "captions": 1, "test": 2, "val": 3}
PRETRAIN_STEPS = 400
CHUNK = 250  # scenes per worker task
T = TypeVar("T")


@dataclass(frozen=True)
class WorldSpec:
    """Everything the content of a world depends on (``num_classes=-1``: all classes)."""

    seed: int = 1
    num_classes: int = -1
    image_size: int = 64
    num_pairs: int = 40000
    num_captions: int = 20000
    num_test: int = 2000
    num_val: int = 1000
    num_train: int = 2000
    max_objects: int = 4

    @classmethod
    def from_cfg(cls, cfg) -> "WorldSpec":
        node = cfg.DATASET.SYNTHETIC
        return cls(node.SEED, node.NUM_CLASSES, node.IMAGE_SIZE, node.NUM_PAIRS, node.NUM_CAPTIONS,
                   node.NUM_TEST, node.NUM_VAL, node.NUM_TRAIN, node.MAX_OBJECTS)

    @property
    def key(self) -> str:
        classes = "all" if self.num_classes == -1 else self.num_classes
        return (f"seed{self.seed}-c{classes}-px{self.image_size}-pairs{self.num_pairs}"
                f"-cap{self.num_captions}-test{self.num_test}-val{self.num_val}-train{self.num_train}"
                f"-obj{self.max_objects}-v{GENERATOR_VERSION}")


def cache_root(cache_dir: str = "") -> Path:
    """``cache_dir``, else ``$TAIDPT_CACHE``, else ``~/.cache/taidpt``."""
    return Path(cache_dir or os.environ.get("TAIDPT_CACHE") or Path.home() / ".cache" / "taidpt").expanduser()


def world_dir(spec: WorldSpec, cache_dir: str = "") -> Path:
    return cache_root(cache_dir) / "synthetic" / spec.key


def tiny_clip_path(spec: WorldSpec, cache_dir: str = "", steps: int = PRETRAIN_STEPS) -> Path:
    return world_dir(spec, cache_dir) / f"tiny_clip-{steps}steps.pt"


def scene_at(spec: WorldSpec, split: str, index: int) -> Tuple[Scene, np.random.Generator]:
    """Scene ``index`` of a split and the generator that continues its stream (for its caption)."""
    rng = np.random.default_rng([spec.seed, SPLIT_STREAMS[split], index])
    return sample_scene(rng, load_vocabulary(spec.num_classes), spec.max_objects), rng


def _captions(spec: WorldSpec, split: str, indices: range) -> List[str]:
    vocab = load_vocabulary(spec.num_classes)
    return [write_caption(scene, vocab, rng) for scene, rng in (scene_at(spec, split, i) for i in indices)]


def _pair_images(spec: WorldSpec, indices: range) -> np.ndarray:
    vocab = load_vocabulary(spec.num_classes)
    return np.stack([render_scene(scene_at(spec, "pairs", i)[0], vocab, spec.image_size) for i in indices])


def _png_files(spec: WorldSpec, split: str, root: str, folder: str, indices: range) -> List[str]:
    """Write the images of a split as ``<root>/<folder>/<index>.png``; returns their list lines."""
    vocab = load_vocabulary(spec.num_classes)
    lines = []
    for i in indices:
        scene, _ = scene_at(spec, split, i)
        name = f"{folder}/{i:06d}.png"
        image = Image.fromarray(render_scene(scene, vocab, spec.image_size))
        image.save(os.path.join(root, name), compress_level=1)
        lines.append(" ".join([name, *(str(c) for c in sorted({obj.label for obj in scene.objects}))]))
    return lines


def _parallel_map(fn: Callable[[range], T], total: int, desc: str) -> List[T]:
    """``fn`` over chunks of ``range(total)`` in worker processes; results in chunk order."""
    chunks = [range(start, min(start + CHUNK, total)) for start in range(0, total, CHUNK)]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cpus, len(chunks))
    fork = "fork" in multiprocessing.get_all_start_methods()  # fast: workers inherit the imports
    context = multiprocessing.get_context("fork") if fork else None
    results: List[T] = []
    with tqdm(total=total, desc=desc, unit="scene") as bar, \
            (ProcessPoolExecutor(workers, mp_context=context) if workers > 1 else nullcontext()) as pool:
        for chunk, result in zip(chunks, pool.map(fn, chunks) if pool else map(fn, chunks)):
            results.append(result)
            bar.update(len(chunk))
    return results


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def build_world(spec: WorldSpec, cache_dir: str = "") -> Path:
    """The world directory of ``spec``: reused when present, else built in a temporary directory
    and moved into place in one step (readers never see a partial world)."""
    final = world_dir(spec, cache_dir)
    if final.is_dir():
        return final
    check_writable(str(final.parent), "The synthetic cache folder (DATASET.SYNTHETIC.CACHE_DIR, "
                                      "$TAIDPT_CACHE or ~/.cache/taidpt)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.key}.", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the world is a shared cache
    try:
        logger.info("Building the synthetic world %s", final)
        _write_lines(tmp / "classes.txt", [c.name for c in load_vocabulary(spec.num_classes).classes])
        for split, count in (("pairs", spec.num_pairs), ("captions", spec.num_captions)):
            chunks = _parallel_map(partial(_captions, spec, split), count, f"{split}.txt")
            _write_lines(tmp / f"{split}.txt", [caption for chunk in chunks for caption in chunk])
        for folder, split, count in (("train", "pairs", spec.num_train), ("val", "val", spec.num_val),
                                     ("test", "test", spec.num_test)):
            (tmp / folder).mkdir()
            chunks = _parallel_map(partial(_png_files, spec, split, str(tmp), folder), count,
                                   f"{folder} images")
            _write_lines(tmp / f"{folder}.txt", [line for chunk in chunks for line in chunk])
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # otherwise another process finished the same world first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def render_pairs(spec: WorldSpec, cache_dir: str = "") -> Tuple[np.ndarray, List[str]]:
    """Split (a): images ``N x H x W x 3`` uint8 (rendered now) and their captions (from the world)."""
    lines = (build_world(spec, cache_dir) / "pairs.txt").read_text(encoding="utf-8").splitlines()
    chunks = _parallel_map(partial(_pair_images, spec), spec.num_pairs, "pair images (in memory)")
    return np.concatenate(chunks), lines


def build_tiny_clip(spec: WorldSpec, cache_dir: str = "", steps: int = PRETRAIN_STEPS) -> Path:
    """Path of the world's tiny CLIP (state dict for ``load_clip``): reused, else pretrained on
    split (a) for ``steps`` batches (seeded by the world seed) and saved atomically."""
    path = tiny_clip_path(spec, cache_dir, steps)
    if path.is_file():
        return path
    images, captions = render_pairs(spec, cache_dir)
    model = random_clip("tiny", seed=spec.seed)
    tokens = tokenize(captions, context_length=model.context_length)
    pretrain_clip(model, torch.from_numpy(images).permute(0, 3, 1, 2), tokens, steps, seed=spec.seed)
    save_clip(model, str(path))
    return path
