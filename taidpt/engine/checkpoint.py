"""Checkpoints in Dassl's layout: ``<dir>/model.pth.tar-<epoch>``, ``model-best.pth.tar`` and a
``checkpoint`` text file naming the latest file. Every file is written atomically.

A checkpoint is a dict with ``state_dict``, ``epoch`` (the epoch to resume from), and optionally
``optimizer``, ``scheduler`` and ``val_result``.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from taidpt.io import atomic_write

logger = logging.getLogger(__name__)

POINTER_FILE = "checkpoint"
BEST_FILE = "model-best.pth.tar"


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


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint on the CPU.

    Plain-data files (ours) load with ``weights_only=True``. Files that pickle Python objects, such
    as the reference's Dassl checkpoints (their ``scheduler`` entry holds the successor scheduler
    object), are loaded with full unpickling after a warning: only load files you trust.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No checkpoint file at '{path}'. Check the path: a trainer writes "
            "'<OUTPUT_DIR>/<model name>/model.pth.tar-<epoch>' and 'model-best.pth.tar' (e.g. "
            "'output/prompt_learner/model-best.pth.tar'); train first or point to an existing "
            "file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        warnings.warn(f"{path} pickles Python objects (e.g. a Dassl scheduler); loading it with "
                      "full unpickling, which runs code from the file: only do this for trusted "
                      "files.", stacklevel=2)
        return torch.load(path, map_location="cpu", weights_only=False)


def resume_from_checkpoint(fdir: str, model: nn.Module, optimizer: Optional[Optimizer] = None,
                           scheduler: Optional[LRScheduler] = None) -> int:
    """Restore the latest checkpoint of ``fdir`` (named by its ``checkpoint`` file); returns the
    epoch to start from. Model keys must match exactly; optimizer / scheduler are restored if given.
    """
    pointer = os.path.join(os.fspath(fdir), POINTER_FILE)
    if not os.path.isfile(pointer):
        raise FileNotFoundError(
            f"Cannot resume from '{fdir}': it has no '{POINTER_FILE}' file naming the latest "
            "checkpoint. Point RESUME at a directory written by save_checkpoint (e.g. "
            "'<OUTPUT_DIR>/prompt_learner'), or leave RESUME empty to start from scratch.")
    with open(pointer, encoding="utf-8") as file:
        fpath = os.path.join(os.fspath(fdir), file.readline().strip())
    checkpoint = load_checkpoint(fpath)
    model.load_state_dict(checkpoint["state_dict"])
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    start_epoch = int(checkpoint["epoch"])
    logger.info("Resumed from %s: starting at epoch %d", fpath, start_epoch)
    return start_epoch


def load_pretrained_weights(model: nn.Module, path: str) -> Tuple[List[str], List[str]]:
    """Load the entries of a checkpoint (or bare state dict) whose names and shapes match ``model``.

    Returns ``(loaded, discarded)`` key lists; warns when nothing matched.
    """
    checkpoint = load_checkpoint(path)
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
