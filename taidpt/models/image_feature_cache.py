"""The frozen image encoder's features of an evaluation split, computed once (``TEST.FEATURE_CACHE``).

CLIP is frozen and in eval mode, so an image's (global ``D``, dense ``HW x D``) features are a
pure function of the CLIP weights, the image file and the test transform. They are stored in
``$TAIDPT_CACHE/image_features/<key>/`` (``global.npy`` ``N x D``, ``dense.npy`` ``N x HW x D``
in the extractor's dtype, memory-mapped on load, and ``meta.json``, written last), keyed by a hash
of the CLIP weights, the image list (absolute paths, sizes, mtimes, in split order), the transform
and the extractor (:func:`feature_cache_key`). Every file is written through a temp file and
``os.replace``; on load the key, the shapes and the file sizes are checked against ``meta.json``
and a stale or torn cache is rebuilt (logged), never used. Any later evaluation of any prompts on
the same split and transform (each epoch's val, ``--eval-only`` sweeps, other seeds) reads them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from taidpt.engine.distributed import barrier, is_main_process, rank, shard_bounds, world_size
from taidpt.io import atomic_write

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILES = ("global.npy", "dense.npy")
Extractor = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ImageFeatures:
    """One split's cached features: ``global_features`` ``N x D`` and ``dense`` ``N x HW x D``
    (read-only memory maps) in split order; ``built`` when this call computed them."""

    global_features: np.ndarray
    dense: np.ndarray
    folder: str
    built: bool

    def batch(self, start: int, stop: int,
              device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Items ``[start, stop)`` as (global ``B x D``, dense ``HW x B x D``) on ``device``."""
        global_feat = torch.from_numpy(np.array(self.global_features[start:stop]))
        dense = torch.from_numpy(np.array(self.dense[start:stop])).permute(1, 0, 2)
        return global_feat.to(device), dense.to(device)


def clip_weights_digest(model: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``model``'s state dict."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def feature_cache_key(weights_digest: str, impaths: Sequence[str], transform: str, kind: str) -> str:
    """Hash of the CLIP weights' digest, each image's absolute path, size and mtime (in order),
    the transform's description and the extractor's (``kind``)."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}|{weights_digest}|{kind}|{transform}|".encode())
    for path in impaths:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def image_feature_dir(cache_root: str = "") -> str:
    """``cache_root``, else ``$TAIDPT_CACHE``, else ``~/.cache/taidpt``; then ``image_features/``."""
    root = cache_root or os.environ.get("TAIDPT_CACHE") or "~/.cache/taidpt"
    return os.path.join(os.path.abspath(os.path.expanduser(root)), "image_features")


def _file_sizes(folder: str) -> dict:
    return {name: os.path.getsize(os.path.join(folder, name)) for name in FILES}


def load_image_features(folder: str, key: str, n: int) -> Tuple[Optional[ImageFeatures], str]:
    """The cache in ``folder`` if complete and of ``key`` with ``n`` items, else (None, why)."""
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None, "not built yet"
    except (OSError, ValueError) as err:
        return None, f"meta.json unreadable ({err})"
    if meta.get("key") != key or meta.get("version") != FORMAT_VERSION:
        return None, f"key {meta.get('key')} is not {key}"
    try:
        sizes = _file_sizes(folder)
        if sizes != meta["sizes"]:
            return None, f"file sizes {sizes} are not the recorded {meta['sizes']} (torn write)"
        arrays = [np.load(os.path.join(folder, name), mmap_mode="r") for name in FILES]
    except (OSError, ValueError, KeyError) as err:
        return None, f"unreadable ({err})"
    if [list(a.shape) for a in arrays] != meta["shapes"] or len(arrays[0]) != n:
        return None, f"shapes {[a.shape for a in arrays]} are not the recorded {meta['shapes']}"
    return ImageFeatures(arrays[0], arrays[1], folder, built=False), ""


def _open_temp_array(path: str, shape: Tuple[int, ...], dtype: np.dtype) -> Tuple[str, np.memmap]:
    """A ``.npy`` memory map at a temp name beside ``path`` (``atomic_write``'s pattern)."""
    temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    return temp, np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=shape)


def _publish(temp: str, array: np.memmap, path: str) -> None:
    array.flush()
    with open(temp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temp, path)


@torch.no_grad()
def build_image_features(folder: str, key: str, loader: DataLoader, extract: Extractor,
                         device: torch.device, description: str = "") -> ImageFeatures:
    """Encode every image of ``loader`` (batches ``{"img"}`` in split order) with ``extract``
    (images -> (global ``B x D``, dense ``HW x B x D``)) into ``folder``; ``meta.json`` last."""
    os.makedirs(folder, exist_ok=True)
    meta_path = os.path.join(folder, "meta.json")
    if os.path.exists(meta_path):  # a rebuild: no meta may vouch for files being replaced
        os.remove(meta_path)
    n = len(loader.dataset)
    temps: List[Tuple[str, np.memmap]] = []
    done = 0
    try:
        for batch in tqdm(loader, desc="image features", leave=False, disable=None):
            global_feat, dense = extract(batch["img"].to(device, non_blocking=True))
            arrays = (global_feat.cpu().numpy(), dense.permute(1, 0, 2).cpu().numpy())
            if not temps:
                temps = [_open_temp_array(os.path.join(folder, name), (n, *a.shape[1:]), a.dtype)
                         for name, a in zip(FILES, arrays)]
            for (_, target), values in zip(temps, arrays):
                target[done:done + len(values)] = values
            done += len(arrays[0])
        if done != n:
            raise RuntimeError(f"the loader gave {done} images for a split of {n}")
        for (temp, array), name in zip(temps, FILES):
            _publish(temp, array, os.path.join(folder, name))
    finally:
        for temp, _ in temps:
            if os.path.exists(temp):
                os.remove(temp)
    shapes = [list(np.load(os.path.join(folder, name), mmap_mode="r").shape) for name in FILES]
    meta = {"version": FORMAT_VERSION, "key": key, "shapes": shapes, "sizes": _file_sizes(folder),
            "description": description}
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    features, why = load_image_features(folder, key, n)
    if features is None:
        raise RuntimeError(f"the image feature cache just written to {folder} does not verify: {why}")
    features.built = True
    logger.info("Cached the image features of %d images in %s", n, folder)
    return features


def cached_image_features(loader: DataLoader, extract: Extractor, weights_digest: str, kind: str,
                          device: torch.device, cache_root: str = "") -> ImageFeatures:
    """The public entry point: (global ``N x D``, dense ``N x HW x D``) of ``loader``'s images
    (an ``ImageDataset`` of the split, in order), read from the cache or built into it. ``kind``
    names the extractor (what else than the weights decides the features); ``weights_digest`` is
    :func:`clip_weights_digest` of its CLIP."""
    dataset = loader.dataset
    transform = repr(dataset.transform)
    key = feature_cache_key(weights_digest, [item.impath for item in dataset.items], transform, kind)
    folder = os.path.join(image_feature_dir(cache_root), key)
    features, why = load_image_features(folder, key, len(dataset))
    if features is not None:
        logger.info("Image features of %d images from the cache %s", len(dataset), folder)
        return features
    if why != "not built yet":
        logger.warning("Rebuilding the image feature cache %s: %s", folder, why)
    return build_image_features(folder, key, loader, extract, device,
                                description=f"{kind}; {len(dataset)} images; {transform}")


class FeatureCacheEvaluation:
    """Mixin (before ``SimpleTrainer``) for a trainer whose evaluation scores are a function of
    the frozen CLIP's image features: :meth:`image_features` (images -> (global ``B x D``, dense
    ``HW x B x D``); default ``self.model.image_features``), :meth:`features_inference` ((global,
    dense) -> scores, the trainer's) and ``image_feature_kind``. ``model_inference(images)`` chains the two; with
    ``TEST.FEATURE_CACHE`` evaluation reads each split's cached features instead (built by rank 0
    under torchrun, then read by every rank for its shard)."""

    caches_image_features = True
    image_feature_kind = "dense_image_features"

    def image_features(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model.image_features(images)

    def features_inference(self, global_feat: torch.Tensor, dense: torch.Tensor):
        raise NotImplementedError

    def model_inference(self, images: torch.Tensor):
        return self.features_inference(*self.feature_extractor(images))

    @functools.cached_property
    def feature_extractor(self) -> Extractor:
        """:meth:`image_features`, through ``torch.compile`` with ``MODEL.COMPILE``."""
        if self.cfg.MODEL.COMPILE:
            return torch.compile(self.image_features)
        return self.image_features

    def feature_cache_kind(self) -> str:
        """The extractor, device and weight layout (channels_last changes the float rounding)."""
        weight = self.clip_model.visual.conv1.weight
        layout = ("channels_last" if weight.is_contiguous(memory_format=torch.channels_last)
                  and not weight.is_contiguous() else "contiguous")
        return f"{self.image_feature_kind}|{self.device.type}|{layout}"

    def split_image_features(self, split: str) -> ImageFeatures:
        """The cached features of ``split`` (``val`` / ``test``): built once, by rank 0."""
        loader = self.val_loader if split == "val" else self.test_loader
        digest = getattr(self, "_clip_digest", None) or clip_weights_digest(self.clip_model)
        self._clip_digest = digest
        build = lambda: cached_image_features(loader, self.feature_extractor, digest,  # noqa: E731
                                              self.feature_cache_kind(), self.device)
        if is_main_process():
            features = build()
        barrier()
        return features if is_main_process() else build()

    def evaluation_outputs(self, split: str) -> Iterator[Tuple[object, torch.Tensor, List[int]]]:
        if not self.cfg.TEST.FEATURE_CACHE:
            yield from super().evaluation_outputs(split)
            return
        features = self.split_image_features(split)
        items = self.split_items(split)
        start, stop = shard_bounds(len(items), rank(), world_size())
        size = self.cfg.DATALOADER.TEST.BATCH_SIZE
        for first in range(start, stop, size):
            last = min(first + size, stop)
            labels = torch.as_tensor(np.stack([items[i].label for i in range(first, last)]),
                                     dtype=torch.float32)
            yield (self.features_inference(*features.batch(first, last, self.device)), labels,
                   list(range(first, last)))
