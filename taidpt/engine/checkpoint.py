"""Checkpoints in Dassl's layout: ``<dir>/model.pth.tar-<epoch>``, ``model-best.pth.tar`` and a
``checkpoint`` text file naming the latest file. Every file is written atomically.

A checkpoint is a dict with ``state_dict``, ``epoch`` (the epoch to resume from), and optionally
``optimizer``, ``scheduler`` and ``val_result``; a trainer's also holds ``run`` (what describes
the run: trainer, class names, backbone, N_CTX, CSC), ``rng`` (:func:`rng_state`) and
``best_result``; a mid-epoch one (``model.pth.tar-<epoch>-batch<k>``) also ``batch`` (``k``
batches of epoch ``epoch + 1`` done) and ``epoch_generators`` (the loader generators' states at
that epoch's start).
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import logging
import os
import pickle
import random
import re
import shutil
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler, Optimizer
from torch.optim.lr_scheduler import LRScheduler

from taidpt.io import atomic_write

logger = logging.getLogger(__name__)

POINTER_FILE = "checkpoint"
BEST_FILE = "model-best.pth.tar"
# The temp name of taidpt.io.atomic_write: ".<name>.<uuid4 hex>.tmp".
TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
MID_EPOCH_FILE = re.compile(r"^model\.pth\.tar-\d+-batch\d+$")

# What a Dassl checkpoint pickles beyond tensors: its warm-up scheduler's state holds the successor
# scheduler object, which holds its optimiser (state: a defaultdict of dicts). Rebuilding these
# classes runs only their own __setstate__, never a callable named by the file.
DASSL_CHECKPOINT_CLASSES = (
    collections.defaultdict, dict,
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
    lr_scheduler.CosineAnnealingLR, lr_scheduler.StepLR, lr_scheduler.MultiStepLR,
    lr_scheduler.ExponentialLR, lr_scheduler.LinearLR, lr_scheduler.ConstantLR,
)
_PLAIN_GLOBALS = (collections.OrderedDict, collections.Counter, set, frozenset, list, tuple,
                  complex, bytearray, codecs.encode, torch.Size)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that would run code (or build objects beyond the allowed ones) when loaded."""


def _allowed_global(module: str, name: str) -> Any:
    """The object a checkpoint may name: tensor and storage rebuilding, dtypes, plain containers
    and :data:`DASSL_CHECKPOINT_CLASSES`; None for anything else."""
    for obj in (*DASSL_CHECKPOINT_CLASSES, *_PLAIN_GLOBALS):
        if (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)) == (module, name):
            return obj
    if module == "_codecs" and name == "encode":
        return codecs.encode
    if module == "torch._utils" and name.startswith(("_rebuild_tensor", "_rebuild_parameter")):
        return getattr(torch._utils, name, None)
    if module == "torch":
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype) or (name.endswith("Storage") and isinstance(obj, type)):
            return obj
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Python's "restricting globals" unpickler: only :func:`_allowed_global` objects resolve."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names of protocol 2
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = _allowed_global(module, name)
        if obj is None:
            raise UnsafeCheckpointError(f"Unsupported GLOBAL {module}.{name}")
        return obj


class _RestrictedPickle:
    """The ``pickle_module`` handed to ``torch.load`` for files that pickle Dassl's objects."""

    Unpickler = _RestrictedUnpickler
    load = staticmethod(lambda file, **kwargs: _RestrictedUnpickler(file, **kwargs).load())


def strip_module_prefix(state_dict: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """Drop the ``module.`` prefix that ``nn.DataParallel`` adds to parameter names."""
    return OrderedDict((key[len("module."):] if key.startswith("module.") else key, value)
                       for key, value in state_dict.items())


def save_checkpoint(state: Dict[str, Any], save_dir: str, is_best: bool = False,
                    remove_module_from_keys: bool = True, model_name: str = "") -> str:
    """Save ``state`` as ``save_dir/<model_name or model.pth.tar-<epoch>>``; returns its path.

    Also points ``save_dir/checkpoint`` at the new file and, if ``is_best``, copies it to
    ``model-best.pth.tar``. ``state`` itself is not modified.
    """
    save_dir = os.fspath(save_dir)
    os.makedirs(save_dir, exist_ok=True)
    state = dict(state)
    if remove_module_from_keys:
        state["state_dict"] = strip_module_prefix(state["state_dict"])
    fpath = os.path.join(save_dir, model_name or f"model.pth.tar-{state['epoch']}")
    atomic_write(fpath, lambda file: torch.save(state, file))
    atomic_write(os.path.join(save_dir, POINTER_FILE),
                 lambda file: file.write(f"{os.path.basename(fpath)}\n".encode()))
    logger.info("Checkpoint saved to %s", fpath)
    if is_best:
        with open(fpath, "rb") as source:
            atomic_write(os.path.join(save_dir, BEST_FILE),
                         lambda file: shutil.copyfileobj(source, file))
    return fpath


def load_checkpoint(path: str, trust: bool = False) -> Dict[str, Any]:
    """Load a checkpoint on the CPU without running code from it.

    Loads with ``weights_only=True``; a file that needs more (the reference's Dassl checkpoints
    pickle their scheduler) is read with a restricted unpickler that rebuilds tensors, plain data
    and :data:`DASSL_CHECKPOINT_CLASSES` only. Anything else is refused with
    :class:`UnsafeCheckpointError`, unless ``trust`` (``--trust-checkpoint``: full unpickling,
    which runs whatever the file holds).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No checkpoint file at '{path}'. Check the path: a trainer writes "
            "'<OUTPUT_DIR>/<model name>/model.pth.tar-<epoch>' and 'model-best.pth.tar' (e.g. "
            "'output/prompt_learner/model-best.pth.tar'); train first or point to an existing "
            "file.")
    if trust:
        logger.warning("Loading %s with full unpickling (--trust-checkpoint): it can run code.", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # e.g. a Dassl checkpoint: its scheduler state pickles the successor scheduler
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f"Refused to load {path}: it names {str(err).split()[-1]}, which is not a tensor, plain "
            "data or a Dassl optimiser / scheduler, and loading it could run code from the file. "
            "If you made the file or trust its source, pass --trust-checkpoint (dangerous: full "
            "unpickling runs whatever the file contains).") from None


def latest_checkpoint(fdir: str) -> str:
    """The checkpoint file named by ``fdir/checkpoint`` (the latest one saved)."""
    pointer = os.path.join(os.fspath(fdir), POINTER_FILE)
    if not os.path.isfile(pointer):
        raise FileNotFoundError(
            f"Cannot resume from '{fdir}': it has no '{POINTER_FILE}' file naming the latest "
            "checkpoint. Point RESUME at a directory written by save_checkpoint (e.g. "
            "'<OUTPUT_DIR>/prompt_learner'), or leave RESUME empty to start from scratch.")
    with open(pointer, encoding="utf-8") as file:
        return os.path.join(os.fspath(fdir), file.readline().strip())


def resume_from_checkpoint(fdir: str, model: nn.Module, optimizer: Optional[Optimizer] = None,
                           scheduler: Optional[LRScheduler] = None, trust: bool = False) -> int:
    """Restore the latest checkpoint of ``fdir`` (named by its ``checkpoint`` file); returns the
    epoch to start from. Model keys must match exactly; optimizer / scheduler are restored if given.
    ``trust``: see :func:`load_checkpoint`. (Dassl's function; trainers resume with
    ``TrainerBase.resume_model_if_exist``, which also restores the RNGs.)
    """
    fpath = latest_checkpoint(fdir)
    checkpoint = load_checkpoint(fpath, trust=trust)
    model.load_state_dict(checkpoint["state_dict"])
    restore_optimisation(checkpoint, optimizer, scheduler)
    start_epoch = int(checkpoint["epoch"])
    logger.info("Resumed from %s: starting at epoch %d", fpath, start_epoch)
    return start_epoch


def restore_optimisation(checkpoint: Mapping[str, Any], optimizer: Optional[Optimizer],
                         scheduler: Optional[LRScheduler]) -> None:
    """Load the checkpoint's optimiser / scheduler state into those given (when both exist)."""
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])


def rng_state(generators: Mapping[str, torch.Generator]) -> Dict[str, Any]:
    """Every RNG a run draws from, as plain data and tensors (``weights_only`` loads it): Python's,
    NumPy's, torch's CPU and CUDA ones, and ``generators`` (e.g. each data loader's shuffle
    generator) by name."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generators": {n: g.get_state() for n, g in generators.items()}}


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    """Set every RNG back to :func:`rng_state`'s ``state``; a generator or CUDA state the
    checkpoint lacks is logged (the run then continues, not bit for bit)."""
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            logger.warning("The checkpoint holds %d CUDA RNG states for %d devices: CUDA draws "
                           "are not restored", len(state["cuda"]), torch.cuda.device_count())
    for n, generator in generators.items():
        if n in state["generators"]:
            generator.set_state(state["generators"][n])
        else:
            logger.warning("The checkpoint holds no state of the %s generator: its draws restart "
                           "from the seed", n)


def remove_stale_temp_files(directory: str) -> List[str]:
    """Remove the temp files a killed :func:`taidpt.io.atomic_write` left in ``directory`` (only
    names of its ``.<name>.<uuid>.tmp`` pattern, not recursive), and the directory itself when
    that leaves it empty; returns the removed paths."""
    if not os.path.isdir(directory):
        return []
    removed = [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if TEMP_FILE.match(n)]
    for path in removed:
        os.remove(path)
    if removed and not os.listdir(directory):
        os.rmdir(directory)
        removed.append(directory)
    return removed


def remove_mid_epoch_checkpoints(directory: str, keep: str = "") -> List[str]:
    """Remove the mid-epoch checkpoints ``model.pth.tar-<epoch>-batch<k>`` of ``directory`` other
    than ``keep`` (superseded by a later checkpoint); returns the removed paths."""
    keep = os.path.basename(keep)
    removed = [os.path.join(directory, n) for n in sorted(os.listdir(directory))
               if MID_EPOCH_FILE.match(n) and n != keep]
    for path in removed:
        os.remove(path)
    return removed


def load_pretrained_weights(model: nn.Module, path: str,
                            trust: bool = False) -> Tuple[List[str], List[str]]:
    """Load the entries of a checkpoint (or bare state dict) whose names and shapes match ``model``.

    Returns ``(loaded, discarded)`` key lists; warns when nothing matched. ``trust``: see
    :func:`load_checkpoint`.
    """
    checkpoint = load_checkpoint(path, trust=trust)
    state_dict = strip_module_prefix(checkpoint.get("state_dict", checkpoint))
    model_state = model.state_dict()
    matched = {key: value for key, value in state_dict.items()
               if key in model_state and model_state[key].shape == value.shape}
    loaded = list(matched)
    discarded = [key for key in state_dict if key not in matched]
    model_state.update(matched)
    model.load_state_dict(model_state)
    if not loaded:
        logger.warning("No weight of %s matches the model by name and shape; nothing was loaded. "
                       "Check the key names (e.g. a prefix other than 'module.').", path)
    else:
        logger.info("Loaded %d tensors from %s", len(loaded), path)
        if discarded:
            logger.info("Skipped (name or shape mismatch): %s", ", ".join(discarded))
    return loaded, discarded
