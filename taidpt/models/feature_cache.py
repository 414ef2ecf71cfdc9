"""Caption feature cache: the frozen CLIP text features of a caption corpus, computed once,
memory-mapped at training time (issue 13 item 1).

CLIP is frozen and in eval mode, so a caption's EOS feature and its per-token features (SPEC 2)
are a pure function of the text-side CLIP weights and its tokens. For caption ``i`` with
``n_i = argmax(tokens_i) + 1`` real tokens (SOS .. EOS, including '!' ids that the padding mask
hides) the cache holds its ``n_i x D`` projected token features, not normalised, back to back
(ragged, no padding; the EOS feature is the last row), located by ``N + 1`` offsets::

    MAGIC | header length (uint64 LE) | header JSON | zeros up to 4 KiB | offsets int64 (N + 1)
          | features (T x D, fp16 or fp32), T = sum_i n_i

The header holds the key (SHA-256 of the text weights, the tokens and the dtype), N, D, T, the
dtype and the file size. The file is named by the key and written atomically; on load its size,
key, shape and offsets are checked against the corpus, and a torn or stale file is rebuilt, never
used. Features are computed in batches of similar length (little padding) in corpus-order chunks,
written as they come.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from taidpt.clip import text_sequence_features
from taidpt.engine.distributed import barrier, is_main_process
from taidpt.io import atomic_write

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"TAIDPTCF"
HEADER_BYTES = 4096  # magic + header, zero-padded; the offsets follow
FEATURE_DTYPES = {"fp16": np.float16, "fp32": np.float32}
TEXT_MODULES = ("token_embedding", "positional_embedding", "transformer", "ln_final",
                "text_projection")
CHUNK = 4096  # captions encoded and written per step
BATCH = 256  # captions per text-encoder call


def real_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens ``N x L`` -> real token count (SOS .. EOS) ``N`` long."""
    return tokens.argmax(dim=-1).long() + 1


def text_weights_digest(clip_model: nn.Module) -> str:
    """SHA-256 of the text encoder's weights (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(clip_model.state_dict().items()):
        if name.split(".")[0] in TEXT_MODULES:
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(clip_model: nn.Module, tokens: torch.Tensor, dtype: str) -> str:
    """The cache key: SHA-256 of the format version, the text weights, the tokens and ``dtype``."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}:{dtype}:{tuple(tokens.shape)}".encode())
    digest.update(text_weights_digest(clip_model).encode())
    digest.update(tokens.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_dtype(dtype: str) -> None:
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"DATASET.CAPTIONS.FEATURE_CACHE_DTYPE must be one of "
                         f"{', '.join(FEATURE_DTYPES)}, got {dtype!r}")


def _layout(key: str, dtype: str, offsets: np.ndarray, width: int) -> Tuple[bytes, Dict]:
    """The file's first :data:`HEADER_BYTES` (magic, header length, header JSON, zero padding)
    and its header."""
    itemsize = np.dtype(FEATURE_DTYPES[dtype]).itemsize
    features_at = HEADER_BYTES + offsets.nbytes
    header = {"version": FORMAT_VERSION, "key": key, "dtype": dtype, "count": len(offsets) - 1,
              "width": width, "tokens": int(offsets[-1]), "offsets_at": HEADER_BYTES,
              "features_at": features_at, "size": features_at + int(offsets[-1]) * width * itemsize}
    text = json.dumps(header, sort_keys=True).encode()
    lead = MAGIC + struct.pack("<Q", len(text)) + text
    return lead + b"\0" * (HEADER_BYTES - len(lead)), header


class CaptionFeatures:
    """An opened, verified cache: ``offsets`` (``N + 1`` int64) and the memory-mapped
    ``features`` (``T x D``)."""

    def __init__(self, path: str, header: Dict, offsets: np.ndarray) -> None:
        self.path, self.header, self.offsets = path, header, offsets
        self.features = np.memmap(path, dtype=FEATURE_DTYPES[header["dtype"]], mode="r",
                                  offset=header["features_at"], shape=(header["tokens"], header["width"]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return int(self.header["size"])

    def gather(self, index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Captions ``B`` -> (EOS features ``B x D``, token features ``B x L' x D``) in the stored
        dtype, ``L'`` = the longest caption's length; positions past a caption's EOS hold zeros
        (the padding mask hides them, as it hides the uncached path's padding features)."""
        index = index.numpy()
        starts, ends = self.offsets[index], self.offsets[index + 1]
        lengths = ends - starts
        positions = np.arange(int(lengths.max()))
        real = positions[None, :] < lengths[:, None]
        rows = np.where(real, starts[:, None] + positions[None, :], 0)
        sequence = np.where(real[..., None], self.features[rows.ravel()].reshape(*rows.shape, -1), 0)
        return torch.from_numpy(np.ascontiguousarray(self.features[ends - 1])), torch.from_numpy(sequence)


def _open(path: str, key: str, dtype: str, offsets: np.ndarray, width: int) -> CaptionFeatures:
    """Open ``path`` if it is the complete cache for ``key``; else ``ValueError`` saying why."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a caption feature cache")
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length).decode())
    expected = _layout(key, dtype, offsets, width)[1]
    wrong = [name for name, value in expected.items() if header.get(name) != value]
    if wrong:
        raise ValueError(f"its header differs in {', '.join(wrong)}")
    size = os.path.getsize(path)
    if size != header["size"]:
        raise ValueError(f"{size} bytes instead of {header['size']} (torn write)")
    stored = np.fromfile(path, dtype=np.int64, count=len(offsets), offset=header["offsets_at"])
    if not np.array_equal(stored, offsets):
        raise ValueError("its offsets differ from the corpus' token counts")
    return CaptionFeatures(path, header, offsets)


@torch.no_grad()
def _encode_chunk(clip_model: nn.Module, tokens: torch.Tensor, lengths: torch.Tensor,
                  device: torch.device, batch_size: int, dtype: np.dtype) -> np.ndarray:
    """Tokens ``n x L`` -> their real tokens' features ``sum(lengths) x D`` in corpus order."""
    starts = torch.cumsum(lengths, 0) - lengths
    out = np.empty((int(lengths.sum()), clip_model.text_projection.shape[1]), dtype=dtype)
    order = torch.argsort(lengths, stable=True)
    for batch in order.split(batch_size):
        width = int(lengths[batch].max())
        sequence = text_sequence_features(clip_model, tokens[batch, :width].to(device)).float().cpu()
        real = torch.arange(width)[None, :] < lengths[batch, None]
        rows = (starts[batch, None] + torch.arange(width)[None, :])[real]
        out[rows.numpy()] = sequence[real].numpy().astype(dtype)
    return out


def build_caption_features(clip_model: nn.Module, tokens: torch.Tensor, path: str,
                           dtype: str = "fp16", device: Optional[torch.device] = None,
                           key: str = "", progress: bool = True) -> CaptionFeatures:
    """Encode ``tokens`` (``N x L``) with ``clip_model``'s text encoder and write the cache to
    ``path`` atomically (see the module docstring); returns it opened."""
    _check_dtype(dtype)
    device = device or torch.device("cpu")
    key = key or cache_key(clip_model, tokens, dtype)
    lengths = real_lengths(tokens)
    offsets = np.concatenate([[0], np.cumsum(lengths.numpy())]).astype(np.int64)
    lead, header = _layout(key, dtype, offsets, clip_model.text_projection.shape[1])

    def write(file) -> None:
        file.write(lead)
        file.write(offsets.tobytes())
        with tqdm(total=len(tokens), desc="caption features", unit="caption",
                  disable=not progress) as bar:
            for start in range(0, len(tokens), CHUNK):
                part = slice(start, start + CHUNK)
                file.write(_encode_chunk(clip_model, tokens[part], lengths[part], device, BATCH,
                                         FEATURE_DTYPES[dtype]).tobytes())
                bar.update(len(tokens[part]))

    atomic_write(path, write)
    logger.info("Caption features: wrote %s (%d captions, %d tokens, %s, %.1f MB)", path,
                len(tokens), header["tokens"], dtype, header["size"] / 2 ** 20)
    return CaptionFeatures(path, header, offsets)


def load_or_build_caption_features(clip_model: nn.Module, tokens: torch.Tensor, directory: str,
                                   dtype: str = "fp16", device: Optional[torch.device] = None,
                                   progress: bool = True, force: bool = False) -> CaptionFeatures:
    """The verified cache of ``tokens`` under ``directory`` (named by its key), built when
    missing, torn or stale, or with ``force``."""
    _check_dtype(dtype)
    key = cache_key(clip_model, tokens, dtype)
    path = os.path.join(directory, f"{key[:32]}.feat")
    offsets = np.concatenate([[0], np.cumsum(real_lengths(tokens).numpy())]).astype(np.int64)
    if os.path.isfile(path) and not force:
        try:
            features = _open(path, key, dtype, offsets, clip_model.text_projection.shape[1])
            logger.info("Caption features: reusing %s (%.1f MB)", path, features.nbytes / 2 ** 20)
            return features
        except (OSError, ValueError, UnicodeDecodeError, struct.error) as err:
            logger.warning("Caption feature cache %s is unusable (%s); rebuilding it.", path, err)
    return build_caption_features(clip_model, tokens, path, dtype, device, key, progress)


def caption_feature_cache(cfg, clip_model: nn.Module, tokens: torch.Tensor, cache_root: str,
                          device: Optional[torch.device] = None, force: bool = False) -> CaptionFeatures:
    """The features of a corpus' ``tokens`` (``N x L``) in ``cache_root/caption_features``, in
    ``DATASET.CAPTIONS.FEATURE_CACHE_DTYPE`` (:func:`load_or_build_caption_features`). Under
    torchrun rank 0 builds it while the other ranks wait, then they read it."""
    def load(rebuild: bool) -> CaptionFeatures:
        return load_or_build_caption_features(clip_model, tokens, os.path.join(cache_root, "caption_features"),
                                              cfg.DATASET.CAPTIONS.FEATURE_CACHE_DTYPE, device, force=rebuild)

    if not is_main_process():
        barrier()
        return load(False)
    features = load(force)
    barrier()
    return features


class CaptionFeatureDataset(Dataset):
    """Captions read from a :class:`CaptionFeatures` cache: items are indices; :meth:`collate`
    turns a list of them into the batch ``{"tokens": B x L' long (cut after the batch's last
    EOS), "label": B x C, "eos": B x D, "sequence": B x L' x D}``."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, features: CaptionFeatures) -> None:
        if not len(tokens) == len(labels) == len(features):
            raise ValueError(f"CaptionFeatureDataset: {len(tokens)} token rows, {len(labels)} label "
                             f"rows and {len(features)} cached captions must match")
        self.tokens, self.labels, self.features = tokens, labels, features

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: List[int]) -> Dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        eos, sequence = self.features.gather(index)
        return {"tokens": self.tokens[index, :sequence.shape[1]], "label": self.labels[index],
                "eos": eos, "sequence": sequence}
