"""Trainer life cycle with Dassl's method names (``TrainerBase`` -> ``SimpleTrainer``)."""
from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from taidpt.engine.checkpoint import (POINTER_FILE, latest_checkpoint, load_checkpoint,
                                      remove_mid_epoch_checkpoints, remove_stale_temp_files,
                                      restore_optimisation, restore_rng_state, rng_state,
                                      save_checkpoint)
from taidpt.engine.data import DataManager
from taidpt.engine.distributed import (average_gradients, average_scalars, barrier,
                                       gather_objects, is_main_process, rank, shard_bounds,
                                       shard_loader, shard_loss_weight, world_size)
from taidpt.engine.evaluator import SPLITS, build_evaluator, relative_image_id
from taidpt.engine.utils import MetricMeter
from taidpt.io import atomic_write

logger = logging.getLogger(__name__)


def _describe(value) -> str:
    """A metadata value for a message: class lists by count and first names."""
    if isinstance(value, list) and len(value) > 6:
        return f"{len(value)} classes [{', '.join(map(str, value[:5]))}, ...]"
    if isinstance(value, list):
        return f"{len(value)} classes [{', '.join(map(str, value))}]"
    return repr(value)


def _difference(key: str, theirs, ours) -> str:
    """``key: checkpoint <value>, this run <value>``; for lists also the first differing entry."""
    text = f"{key}: checkpoint {_describe(theirs)}, this run {_describe(ours)}"
    if isinstance(theirs, list) and isinstance(ours, list):
        first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), None)
        if first is not None:
            text += f" (first difference at {first}: {theirs[first]!r} vs {ours[first]!r})"
    return text


def _to_cpu(scores):
    """A score tensor, pair or mapping (``model_inference``'s forms) with its tensors on the CPU."""
    if isinstance(scores, torch.Tensor):
        return scores.detach().cpu()
    if isinstance(scores, dict):
        return type(scores)((k, _to_cpu(v)) for k, v in scores.items())
    return type(scores)(_to_cpu(v) for v in scores)


class TrainerBase:
    """Registered models with their optimisers and schedulers, checkpoints, the epoch loop."""

    ignored_checkpoint_keys: Tuple[str, ...] = ()
    caches_image_features = False  # evaluates from cached image features (TEST.FEATURE_CACHE)

    def __init__(self) -> None:
        self._models: "OrderedDict[str, nn.Module]" = OrderedDict()
        self._optims: "OrderedDict[str, Optional[torch.optim.Optimizer]]" = OrderedDict()
        self._scheds: "OrderedDict[str, Optional[object]]" = OrderedDict()
        self._writer = None
        self.epoch = 0
        self.start_epoch = 0
        self.max_epoch = 0
        self.best_result = -float("inf")
        self._resume_batches = 0  # batches of the resumed epoch done before a mid-epoch checkpoint
        self._resume_rng: Optional[dict] = None  # that checkpoint's RNG state, set after skipping
        self._epoch_generator_states: Dict[str, torch.Tensor] = {}
        self.trust_checkpoint = False  # MODEL.TRUST_CHECKPOINT: full unpickling (runs code)
        self.allow_other_classes = False  # MODEL.ALLOW_OTHER_CLASSES: load another class list

    # --- models -------------------------------------------------------------------------
    def register_model(self, name: str, model: nn.Module, optim=None, sched=None) -> None:
        if name in self._models:
            raise KeyError(f"Model {name!r} is already registered")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names: Optional[Sequence[str]] = None) -> List[str]:
        if names is None:
            return list(self._models)
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in self._models:
                raise KeyError(f"No registered model {name!r}; registered: {list(self._models)}")
        return names

    def trained_model_names(self) -> List[str]:
        """The registered models that have an optimiser (empty for ZeroshotCLIP)."""
        return [name for name in self._models if self._optims[name] is not None]

    def set_model_mode(self, mode: str = "train", names=None) -> None:
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    def update_lr(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def get_current_lr(self, names=None) -> float:
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]

    def detect_anomaly(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise FloatingPointError(f"Loss is {loss.item()} at epoch {self.epoch + 1}: lower OPTIM.LR "
                                     "or check the inputs")

    def model_zero_grad(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names=None) -> None:
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    # --- checkpoints ----------------------------------------------------------------------
    def run_metadata(self) -> Dict[str, object]:
        """What a checkpoint records of its run, checked on load and on resume."""
        return {"trainer": type(self).__name__}

    def rng_generators(self) -> Dict[str, torch.Generator]:
        """The named generators (beyond the global RNGs) a checkpoint saves and resume restores."""
        return {}

    def save_model(self, epoch: int, directory: str, is_best: bool = False,
                   val_result: Optional[float] = None, batches_done: int = 0) -> None:
        """One checkpoint per model: its state, optimiser and scheduler, and what resuming needs
        to continue bit for bit (``epoch + 1``, every RNG, the best val result).

        ``batches_done`` > 0: a mid-epoch checkpoint ``model.pth.tar-<epoch + 1>-batch<k>`` of
        epoch ``epoch`` after ``k`` batches (``TRAIN.CHECKPOINT_ITER_FREQ``), which also holds the
        loader generators' states at the start of the epoch (``epoch_generators``) so that resume
        replays the epoch's order; it replaces the previous mid-epoch file."""
        run, rng = self.run_metadata(), rng_state(self.rng_generators())
        extra: Dict[str, object] = {"epoch": epoch + 1}
        if batches_done:
            extra = {"epoch": epoch, "batch": batches_done,
                     "epoch_generators": self._epoch_generator_states}
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            folder = os.path.join(directory, name)
            path = save_checkpoint(
                {"state_dict": self._models[name].state_dict(), **extra,
                 "optimizer": optim.state_dict() if optim is not None else None,
                 "scheduler": sched.state_dict() if sched is not None else None,
                 "val_result": val_result, "run": run, "rng": rng, "best_result": self.best_result},
                folder, is_best=is_best,
                model_name=f"model.pth.tar-{epoch + 1}-batch{batches_done}" if batches_done else "")
            for older in remove_mid_epoch_checkpoints(folder, keep=path):
                logger.debug("Removed %s, superseded by %s", older, path)

    def resume_model_if_exist(self, directory: str) -> int:
        """Resume every model from its latest checkpoint in ``directory/<name>/``; returns the
        epoch to start from (0: no checkpoint there). A run setting that differs from the
        checkpoint's is an error; the RNGs continue where the checkpoint left them."""
        names = self.get_model_names()
        found = [n for n in names if os.path.isfile(os.path.join(directory, n, POINTER_FILE))]
        if not found:
            return 0
        if len(found) < len(names):
            raise FileNotFoundError(
                f"Cannot resume from {directory}: it holds checkpoints of {found} but not of "
                f"{[n for n in names if n not in found]}; give the OUTPUT_DIR of a complete run.")
        logger.info("Found checkpoints in %s: resuming", directory)
        for name in names:
            path = latest_checkpoint(os.path.join(directory, name))
            checkpoint = self._read_checkpoint(path, "Checkpoint", resume=True)
            self._load_state(name, checkpoint, path, "Checkpoint")
            restore_optimisation(checkpoint, self._optims[name], self._scheds[name])
        if checkpoint.get("rng") is None:
            logger.warning("%s holds no RNG state (an older or Dassl checkpoint): the resumed run "
                           "is not bit for bit the uninterrupted one", path)
        else:
            restore_rng_state(checkpoint["rng"], self.rng_generators())
        self.best_result = checkpoint.get("best_result", self.best_result)
        start = int(checkpoint["epoch"])
        self._resume_batches = int(checkpoint.get("batch", 0))
        if self._resume_batches:
            self._resume_rng = checkpoint["rng"]
            restore_rng_state({**checkpoint["rng"], "generators": checkpoint["epoch_generators"]},
                              self.rng_generators())
            logger.info("Resumed from %s: continuing epoch %d after batch %d", path, start + 1,
                        self._resume_batches)
        else:
            logger.info("Resumed from %s: starting at epoch %d", path, start + 1)
        return start

    def _checkpoint_path(self, directory: str, name: str, epoch: Optional[int]) -> str:
        folder = os.path.join(directory, name)
        if epoch is not None:
            return os.path.join(folder, f"model.pth.tar-{epoch}")
        best = os.path.join(folder, "model-best.pth.tar")
        pointer = os.path.join(folder, "checkpoint")
        if not os.path.isfile(best) and os.path.isfile(pointer):
            with open(pointer) as f:
                latest = os.path.join(folder, f.read().strip())
            logger.info("No model-best.pth.tar in %s: loading the latest checkpoint %s", folder, latest)
            return latest
        return best

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load every registered model from ``directory/<name>/`` (``model-best.pth.tar``, else the
        latest checkpoint; or ``model.pth.tar-<epoch>``), dropping ``ignored_checkpoint_keys``."""
        for name in self.get_model_names():
            path = self._checkpoint_path(directory, name, epoch)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"No checkpoint at {path}. --model-dir must be the OUTPUT_DIR of a training run "
                    f"(holding {name}/model.pth.tar-<epoch>); pass --load-epoch to pick an epoch.")
            checkpoint = self._read_checkpoint(path, "Checkpoint")
            self._load_state(name, checkpoint, path, "Checkpoint")

    def init_weights(self, path: str) -> None:
        """``MODEL.INIT_WEIGHTS``: initialise the trained model (the first registered one with an
        optimiser: ``prompt_learner`` for the prompt trainers, as CoOp does) from a checkpoint file
        of the same trainer and class count, before training (``RESUME`` still wins)."""
        trained = self.trained_model_names()
        if not trained:
            raise ValueError(f"MODEL.INIT_WEIGHTS is {path!r} but trainer {type(self).__name__} "
                             "trains no model to initialise: unset MODEL.INIT_WEIGHTS.")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"MODEL.INIT_WEIGHTS: no file at {path}; give a checkpoint file of a training run, "
                f"e.g. OUTPUT_DIR/{trained[0]}/model.pth.tar-<epoch> or model-best.pth.tar.")
        what = "MODEL.INIT_WEIGHTS checkpoint"
        self._load_state(trained[0], self._read_checkpoint(path, what), path, what)

    def _read_checkpoint(self, path: str, what: str, resume: bool = False) -> dict:
        """The trainer checkpoint at ``path``, its run metadata checked against this run's: on
        resume any difference is an error; otherwise another class list needs
        ``MODEL.ALLOW_OTHER_CLASSES`` and other differences are logged."""
        checkpoint = load_checkpoint(path, trust=self.trust_checkpoint)
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise ValueError(f"{what} {path} is not a trainer checkpoint (a dict with a "
                             "'state_dict'): give a model.pth.tar-<epoch> or model-best.pth.tar file.")
        theirs = checkpoint.get("run")
        if theirs is None:
            logger.info("%s %s holds no run metadata (an older taidpt or a Dassl checkpoint): its "
                        "trainer, class names, backbone, N_CTX and CSC are not checked", what, path)
            return checkpoint
        ours = self.run_metadata()
        differences = {key: (theirs[key], value) for key, value in ours.items()
                       if key in theirs and theirs[key] != value}
        described = "; ".join(_difference(key, a, b) for key, (a, b) in differences.items())
        if resume and differences:
            raise ValueError(f"Cannot resume from {path}: the run differs from the checkpoint's "
                             f"({described}). Resume with the checkpoint's settings, or train into "
                             "another --output-dir.")
        if "classnames" in differences and not self.allow_other_classes:
            raise ValueError(f"{what} {path} was trained on other classes ({described}). To use "
                             "its prompts on this class list anyway, pass --allow-other-classes "
                             "(MODEL.ALLOW_OTHER_CLASSES True).")
        if differences:
            logger.warning("%s %s comes from another run setting (%s)%s", what, path, described,
                           ": loading it on this class list (MODEL.ALLOW_OTHER_CLASSES)"
                           if "classnames" in differences else "")
        return checkpoint

    def _load_state(self, name: str, checkpoint: dict, path: str, what: str) -> None:
        """Load model ``name`` from ``checkpoint`` (read from ``path``): strict, bar the ignored
        keys (the token buffers, rebuilt from this run's class names)."""
        state = {k: v for k, v in checkpoint["state_dict"].items()
                 if k not in self.ignored_checkpoint_keys}
        own = self._models[name].state_dict()
        for key, value in state.items():
            if key in own and own[key].shape != value.shape:
                raise ValueError(
                    f"{what} {path} has {key} of shape {tuple(value.shape)} but the model "
                    f"expects {tuple(own[key].shape)}: the checkpoint was trained with another "
                    "context size / class-specific setting (N_CTX, CSC) or class count.")
        missing, unexpected = self._models[name].load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in self.ignored_checkpoint_keys]
        if missing or unexpected:
            raise KeyError(f"{what} {path} does not match model {name!r}: missing {missing}, "
                           f"unexpected {unexpected}")
        logger.info("Loaded %s from %s (epoch %s)", name, path, checkpoint.get("epoch"))

    # --- TensorBoard ----------------------------------------------------------------------
    def init_writer(self, log_dir: str) -> None:
        """TensorBoard into ``log_dir``: on rank 0 only under torchrun."""
        if not is_main_process():
            return
        from torch.utils.tensorboard import SummaryWriter
        self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    # --- loop -----------------------------------------------------------------------------
    def train(self, start_epoch: int, max_epoch: int) -> None:
        self.start_epoch, self.max_epoch = start_epoch, max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self) -> None: ...
    def after_train(self) -> None: ...
    def before_epoch(self) -> None: ...
    def after_epoch(self) -> None: ...

    def run_epoch(self) -> None:
        raise NotImplementedError

    def forward_backward(self, batch) -> Dict[str, float]:
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def model_inference(self, inputs):
        raise NotImplementedError

    def test(self, split: Optional[str] = None):
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """Dassl's ``SimpleTrainer``: config, data, model, evaluator; one train loader."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.check_split(cfg.TEST.SPLIT, "TEST.SPLIT")
        self.check_cfg(cfg)
        self.cfg = cfg
        self.device = torch.device("cuda" if cfg.USE_CUDA and torch.cuda.is_available() else "cpu")
        self.output_dir = cfg.OUTPUT_DIR
        self.trust_checkpoint = cfg.MODEL.TRUST_CHECKPOINT
        self.allow_other_classes = cfg.MODEL.ALLOW_OTHER_CLASSES
        self.start_epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        if cfg.MODEL.COMPILE and not self.caches_image_features:
            raise ValueError(f"MODEL.COMPILE is True but trainer {type(self).__name__} has no "
                             "compiled image-feature extractor (TaIDPT, ZeroshotCLIP and DualCoOp "
                             "have one): set MODEL.COMPILE False.")
        if cfg.TEST.FEATURE_CACHE and not self.caches_image_features:
            raise ValueError(f"TEST.FEATURE_CACHE is True but trainer {type(self).__name__} does not "
                             "score images from cached CLIP features (TaIDPT, ZeroshotCLIP and "
                             "DualCoOp do): set TEST.FEATURE_CACHE False.")
        self.build_data_loader()
        self.build_model()
        if cfg.MODEL.INIT_WEIGHTS:
            self.init_weights(cfg.MODEL.INIT_WEIGHTS)
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname, merge_rate=self.merge_rate(),
                                         headline=self.headline())

    @staticmethod
    def extend_cfg(cfg) -> None:
        """Add ``cfg.TRAINER.<NAME_UPPER>``; default: nothing."""

    def check_cfg(self, cfg) -> None:
        """Validate the config before anything is built; default: nothing."""

    @staticmethod
    def check_split(split: str, source: str = "split") -> str:
        """``split`` if it is ``test`` or ``val``; else a ValueError naming ``source``."""
        if split not in SPLITS:
            raise ValueError(f"{source} must be one of {', '.join(SPLITS)}, got {split!r}")
        return split

    def merge_rate(self) -> float:
        """Weight of the global scores in ``merged`` for a (global, local) pair."""
        return 0.5

    def headline(self) -> Optional[str]:
        """The head reported as ``mAP``; None: ``merged`` for a pair, the first head of a mapping."""
        return None

    def build_data_loader(self) -> None:
        self.dm = DataManager(self.cfg)
        self.dataset = self.dm.dataset
        self.train_loader_x = self.dm.train_loader_x
        self.val_loader = self.dm.val_loader
        self.test_loader = self.dm.test_loader
        self.num_classes = self.dm.num_classes
        self.classnames = self.dm.classnames
        self.lab2cname = self.dm.lab2cname

    def build_model(self) -> None:
        raise NotImplementedError

    def run_metadata(self) -> Dict[str, object]:
        """Trainer, class names, backbone (``MODEL.BACKBONE.PATH`` or ``NAME``) and the trainer
        node's ``N_CTX`` / ``CSC`` (None where it has none)."""
        node = self.cfg.TRAINER.get(type(self).__name__.upper()) or {}
        backbone = self.cfg.MODEL.BACKBONE
        return {"trainer": type(self).__name__, "classnames": list(self.classnames),
                "backbone": backbone.PATH or backbone.NAME, "n_ctx": node.get("N_CTX"),
                "csc": node.get("CSC")}

    def rng_generators(self) -> Dict[str, torch.Generator]:
        """The shuffle / worker-seed generators of the train, val and test loaders (those seeded
        by ``SEED``; unseeded loaders draw from torch's global RNG, saved anyway)."""
        loaders = {"train_loader_x": self.train_loader_x, "val_loader": self.val_loader,
                   "test_loader": self.test_loader}
        return {name: loader.generator for name, loader in loaders.items()
                if getattr(loader, "generator", None) is not None}

    def train(self) -> None:  # noqa: D102 - Dassl signature
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self) -> None:
        """Remove what a killed write left in OUTPUT_DIR, then resume: from ``RESUME`` (a
        directory without checkpoints is an error unless it is OUTPUT_DIR), else from OUTPUT_DIR
        when it holds checkpoints (Dassl's resume-if-exists)."""
        names = self.get_model_names()
        for folder in (self.output_dir, *(os.path.join(self.output_dir, n) for n in names)):
            for path in remove_stale_temp_files(folder) if is_main_process() else ():
                logger.warning("Removed %s, left by an interrupted write", path)
        barrier()  # under torchrun the other ranks wait for rank 0's clean-up
        resume = self.cfg.RESUME
        own = not resume or os.path.realpath(resume) == os.path.realpath(self.output_dir)
        self.start_epoch = self.resume_model_if_exist(resume or self.output_dir)
        if self.start_epoch == 0 and not own:
            expected = ", ".join(os.path.join(resume, n, POINTER_FILE) for n in names)
            hint = (f" {resume} looks like a model folder: give its parent "
                    f"{os.path.dirname(os.path.abspath(resume))}."
                    if os.path.isfile(os.path.join(resume, POINTER_FILE)) else "")
            raise FileNotFoundError(
                f"RESUME (--resume) {resume} holds no checkpoint ({expected} missing): give the "
                f"OUTPUT_DIR of an earlier run, or leave --resume empty to train from scratch."
                f"{hint}")
        if self.start_epoch == 0 and self.trained_model_names():
            logger.info("No checkpoint in %s: training from scratch", resume or self.output_dir)
        if world_size() > 1 and self.train_loader_x is not None:
            self.train_loader_x = shard_loader(self.train_loader_x, rank(), world_size())
            logger.info("torchrun: %d ranks, each training on its shard of the global batch of %d",
                        world_size(), self.train_loader_x.batch_sampler.batch_sampler.batch_size)
        self.init_writer(os.path.join(self.output_dir, "tensorboard"))
        self.time_start = time.time()

    def after_train(self) -> None:
        logger.info("Finished training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                logger.info("Deploying the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                logger.info("Deploying the last-epoch model")
            self.test()
        elapsed = datetime.timedelta(seconds=round(time.time() - self.time_start))
        logger.info("Elapsed: %s", elapsed)
        self.close_writer()

    def after_epoch(self) -> None:
        last_epoch = self.epoch + 1 == self.max_epoch
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        if not self.cfg.TEST.NO_TEST and self.cfg.TEST.FINAL_MODEL == "best_val":
            result = self.test(split="val")["mAP"]
            if result > self.best_result:
                self.best_result = result
                self.save_model(self.epoch, self.output_dir, is_best=True, val_result=result)
        if last_epoch or (freq > 0 and (self.epoch + 1) % freq == 0):
            self.save_model(self.epoch, self.output_dir)

    def run_epoch(self) -> None:
        self.set_model_mode("train")
        meter = MetricMeter()
        loader = self.train_loader_x
        if loader is None:
            raise RuntimeError(f"Dataset {self.cfg.DATASET.NAME} has no training data for trainer "
                               f"{self.cfg.TRAINER.NAME}")
        num_batches = len(loader)
        batches, done = self._epoch_batches(loader)
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}/{self.max_epoch}", total=num_batches,
                   initial=done, leave=False, disable=None if is_main_process() else True)
        start = time.time()
        iter_freq = self.cfg.TRAIN.CHECKPOINT_ITER_FREQ
        for self.batch_idx, batch in enumerate(bar, start=done):
            meter.update(self.global_losses(self.forward_backward(batch)))
            if iter_freq and (self.batch_idx + 1) % iter_freq == 0 and self.batch_idx + 1 < num_batches:
                self.save_model(self.epoch, self.output_dir, batches_done=self.batch_idx + 1)
            step = self.epoch * num_batches + self.batch_idx
            for name, m in meter.meters.items():
                self.write_scalar(f"train/{name}", m.val, step)
            self.write_scalar("train/lr", self.get_current_lr(), step)
            if (self.batch_idx + 1) % self.cfg.TRAIN.PRINT_FREQ == 0 or self.batch_idx + 1 == num_batches:
                left = (num_batches - self.batch_idx - 1) + (self.max_epoch - self.epoch - 1) * num_batches
                eta = datetime.timedelta(seconds=int((time.time() - start) / (self.batch_idx + 1 - done) * left))
                logger.info("epoch [%d/%d] batch [%d/%d] %s lr %.4e eta %s", self.epoch + 1,
                            self.max_epoch, self.batch_idx + 1, num_batches, meter,
                            self.get_current_lr(), eta)
        self.update_lr()

    def _epoch_batches(self, loader) -> Tuple[Iterator, int]:
        """The epoch's batch iterator and the number of batches already done: after a mid-epoch
        resume the loader replays the epoch's order from its start state, the done batches are
        drawn and dropped, then every RNG is set to the checkpoint's (bit for bit)."""
        self._epoch_generator_states = {n: g.get_state() for n, g in self.rng_generators().items()}
        batches, done = iter(loader), self._resume_batches
        if done:
            for _ in range(done):
                next(batches)
            restore_rng_state(self._resume_rng, self.rng_generators())
            self._resume_batches, self._resume_rng = 0, None
        return batches, done

    def save_model(self, *args, **kwargs) -> None:
        """:meth:`TrainerBase.save_model` on rank 0 only; under torchrun the other ranks wait
        until the checkpoint is written."""
        if is_main_process():
            super().save_model(*args, **kwargs)
        barrier()

    def model_backward(self, loss: torch.Tensor) -> None:
        """Under torchrun: this shard's loss weighted by ``shard_loss_weight``, then the gradients
        of the trained models averaged over the ranks (the global batch's gradient)."""
        if world_size() == 1:
            super().model_backward(loss)
            return
        super().model_backward(loss * shard_loss_weight(self.train_loader_x.batch_sampler,
                                                        self.batch_idx))
        average_gradients([p for name in self.trained_model_names()
                           for p in self._models[name].parameters() if p.requires_grad])

    def global_losses(self, values: Dict[str, float]) -> Dict[str, float]:
        """``forward_backward``'s batch means of this shard -> the global batch's (torchrun)."""
        if world_size() == 1:
            return values
        return average_scalars(values, shard_loss_weight(self.train_loader_x.batch_sampler,
                                                         self.batch_idx))

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def parse_batch_test(self, batch):
        return (batch["img"].to(self.device, non_blocking=True),
                batch["label"].to(self.device, non_blocking=True))

    def model_inference(self, inputs):
        return self.model(inputs)

    def split_items(self, split: str) -> list:
        """The dataset's ``ImageItem`` list of ``split`` (``val`` or ``test``)."""
        return self.dataset.val if self.check_split(split) == "val" else self.dataset.test

    def image_ids(self, items: Sequence) -> List[str]:
        """Ids of ``items`` in predictions files (see ``relative_image_id``)."""
        root, dataset_dir = self.cfg.DATASET.ROOT, getattr(self.dataset, "dataset_dir", "")
        return [relative_image_id(item.impath, root, dataset_dir) for item in items]

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> Dict[str, float]:
        """Evaluate on ``split`` (default ``TEST.SPLIT``): ``val`` or ``test``; see
        :meth:`report_results` for what is written."""
        split = self.check_split(split or self.cfg.TEST.SPLIT)
        items = self.split_items(split)
        if not items:
            raise ValueError(f"Nothing to evaluate: dataset {self.cfg.DATASET.NAME} has no {split} "
                             "images (TEST.NO_TEST True trains without them); give it a labelled "
                             f"{split} split (MultiLabelImageList: DATASET.TEST_LIST / VAL_LIST).")
        self.set_model_mode("eval")
        self.evaluator.reset()
        logger.info("Evaluate on the *%s* set", split)
        local = [(_to_cpu(scores), labels.cpu(), indices)
                 for scores, labels, indices in self.evaluation_outputs(split)]
        indices: List[int] = []
        for part in gather_objects(local):  # the ranks' contiguous shards, in rank order
            for scores, labels, batch_indices in part:
                self.evaluator.process(scores, labels)
                indices += batch_indices
        return self.report_results(split, self.image_ids([items[i] for i in indices]))

    def evaluation_outputs(self, split: str) -> Iterator[Tuple[object, torch.Tensor, List[int]]]:
        """(scores, labels ``B x C``, item indices) of each batch of ``split``: the split's loader
        through ``parse_batch_test`` and ``model_inference``; under torchrun this rank's
        contiguous shard of the split."""
        loader = self.val_loader if split == "val" else self.test_loader
        if world_size() > 1:
            start, stop = shard_bounds(len(loader.dataset), rank(), world_size())
            loader = DataLoader(loader.dataset, batch_size=loader.batch_size,
                                sampler=range(start, stop), num_workers=loader.num_workers,
                                pin_memory=loader.pin_memory)
        for batch in tqdm(loader, desc=f"test ({split})", leave=False,
                          disable=None if is_main_process() else True):
            inputs, labels = self.parse_batch_test(batch)
            yield self.model_inference(inputs), labels, [int(i) for i in batch["index"]]

    def report_results(self, split: str, image_ids: Sequence[str]) -> Dict[str, float]:
        """Evaluate what the evaluator collected for ``image_ids`` (N, in order); write the mAPs to
        TensorBoard and ``OUTPUT_DIR/results_<split>.json`` (what the table scripts read) and
        every head's scores to ``OUTPUT_DIR/predictions_<split>.npz`` (what ensembles read), with
        each image's absolute path (``image_paths``, from the split's items) and the calibration
        that ``taidpt tag`` reads."""
        results = self.evaluator.evaluate()
        for key, value in results.items():
            self.write_scalar(f"{split}/{key}", value, self.epoch)
        meta = {"split": split, "epoch": self.epoch + 1, "trainer": self.cfg.TRAINER.NAME,
                "dataset": self.cfg.DATASET.NAME}
        if not is_main_process():  # every rank holds the gathered results; rank 0 writes them
            return results
        atomic_write(os.path.join(self.output_dir, f"results_{split}.json"),
                     lambda f: f.write(json.dumps({**meta, "results": dict(results)}, indent=2).encode()))
        items = self.split_items(split)
        paths = dict(zip(self.image_ids(items), (os.path.abspath(item.impath) for item in items)))
        self.evaluator.save_predictions(os.path.join(self.output_dir, f"predictions_{split}.npz"),
                                        image_ids, image_paths=[paths.get(i, i) for i in image_ids],
                                        **meta)
        return results
