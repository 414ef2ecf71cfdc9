"""Optimisers and epoch-wise learning-rate schedulers built from Dassl's ``OPTIM`` config keys.

Schedulers step once per epoch, after the epoch's last ``optimizer.step()``. With
``WARMUP_EPOCH = W > 0`` epochs ``0 .. W-1`` run at the warm-up rate and epoch ``e >= W`` at the
rate the successor scheduler (cosine / single_step / multi_step) gives for its epoch ``e - W``
(``WARMUP_RECOUNT=True``, Dassl's default) or ``e`` (``WARMUP_RECOUNT=False``).
The paper's setting (SGD, LR 1e-4, 20 epochs, cosine, 1 constant warm-up epoch at 1e-5) gives
1e-5 for epoch 0 and ``1e-4 * (1 + cos(pi * (e - 1) / 20)) / 2`` for epoch ``e >= 1``.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Union

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, StepLR
from yacs.config import CfgNode

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULERS = ("cosine", "single_step", "multi_step")
WARMUP_TYPES = ("constant", "linear")

ParamsOrModule = Union[nn.Module, Iterable[torch.Tensor], Iterable[Dict[str, Any]]]


def _trainable_param_groups(params_or_module: ParamsOrModule) -> List[Dict[str, Any]]:
    """Parameter groups holding only tensors with ``requires_grad``; empty groups are dropped."""
    items = list(params_or_module.parameters() if isinstance(params_or_module, nn.Module)
                 else params_or_module)
    if items and isinstance(items[0], dict):
        groups = [dict(item) for item in items]
    else:
        groups = [{"params": items}]
    for group in groups:
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        group["params"] = [param for param in params if param.requires_grad]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError("No parameter to optimise: none of the given parameters requires grad. "
                         "Pass the trainable module (e.g. the prompt learner) and make sure it is "
                         "not frozen.")
    return groups


def build_optimizer(params_or_module: ParamsOrModule, optim_cfg: CfgNode) -> Optimizer:
    """SGD / Adam / AdamW over the trainable parameters (a module, tensors or param-group dicts)."""
    groups = _trainable_param_groups(params_or_module)
    name = optim_cfg.NAME
    if name == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg.LR, momentum=optim_cfg.MOMENTUM,
                               weight_decay=optim_cfg.WEIGHT_DECAY,
                               dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV)
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name == "adam":
        return torch.optim.Adam(groups, lr=optim_cfg.LR, betas=betas,
                                weight_decay=optim_cfg.WEIGHT_DECAY)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=optim_cfg.LR, betas=betas,
                                 weight_decay=optim_cfg.WEIGHT_DECAY)
    raise ValueError(f"Unknown optimizer OPTIM.NAME={name!r}; choose one of "
                     f"{', '.join(OPTIMIZERS)}.")


class WarmupScheduler(LRScheduler):
    """Runs ``warmup_epoch`` warm-up epochs, then hands the learning rate to ``successor``.

    ``recount=True`` starts the successor at its epoch 0 after warm-up; ``recount=False`` fast-
    forwards it over the warm-up epochs. Subclasses define the warm-up rates in ``get_lr``.
    ``state_dict()`` nests the successor's own state dict, so it holds plain data only.
    """

    def __init__(self, optimizer: Optimizer, successor: LRScheduler, warmup_epoch: int,
                 recount: bool = True) -> None:
        if warmup_epoch < 1:
            raise ValueError(f"warmup_epoch must be >= 1, got {warmup_epoch}.")
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.recount = recount
        super().__init__(optimizer)

    def step(self) -> None:  # type: ignore[override]
        epoch = self.last_epoch + 1
        if epoch < self.warmup_epoch:
            super().step()
            return
        if epoch == self.warmup_epoch:
            # Restore the successor's rate (its updates are relative to the current one).
            for group, lr in zip(self.optimizer.param_groups, self.successor.get_last_lr()):
                group["lr"] = lr
            for _ in range(0 if self.recount else self.warmup_epoch):
                self.successor.step()
        else:
            self.successor.step()
        self.last_epoch = epoch
        self._last_lr = self.successor.get_last_lr()

    def state_dict(self) -> Dict[str, Any]:
        state = {key: value for key, value in self.__dict__.items()
                 if key not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state = dict(state_dict)
        self.successor.load_state_dict(state.pop("successor"))
        super().load_state_dict(state)


class ConstantWarmupScheduler(WarmupScheduler):
    """Warm-up at the constant rate ``cons_lr``."""

    def __init__(self, optimizer: Optimizer, successor: LRScheduler, warmup_epoch: int,
                 cons_lr: float, recount: bool = True) -> None:
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, recount)

    def get_lr(self) -> List[float]:
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(WarmupScheduler):
    """Dassl's linear warm-up: ``min_lr`` at epoch 0, then ``base_lr * epoch / warmup_epoch``."""

    def __init__(self, optimizer: Optimizer, successor: LRScheduler, warmup_epoch: int,
                 min_lr: float, recount: bool = True) -> None:
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch, recount)

    def get_lr(self) -> List[float]:
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [base_lr * self.last_epoch / self.warmup_epoch for base_lr in self.base_lrs]


def _successor(optimizer: Optimizer, optim_cfg: CfgNode) -> LRScheduler:
    name = optim_cfg.LR_SCHEDULER
    stepsize = optim_cfg.STEPSIZE
    if name == "cosine":
        if optim_cfg.MAX_EPOCH < 1:
            raise ValueError("The cosine schedule needs OPTIM.MAX_EPOCH >= 1, got "
                             f"{optim_cfg.MAX_EPOCH}.")
        return CosineAnnealingLR(optimizer, T_max=float(optim_cfg.MAX_EPOCH))
    if name == "single_step":
        step = stepsize[-1] if isinstance(stepsize, (list, tuple)) else stepsize
        if step < 1:
            raise ValueError(f"single_step needs OPTIM.STEPSIZE >= 1 (epochs between decays), "
                             f"got {stepsize}; set e.g. OPTIM.STEPSIZE (10,).")
        return StepLR(optimizer, step_size=int(step), gamma=optim_cfg.GAMMA)
    if name == "multi_step":
        milestones = list(stepsize) if isinstance(stepsize, (list, tuple)) else [stepsize]
        if any(milestone < 1 for milestone in milestones):
            raise ValueError(f"multi_step needs OPTIM.STEPSIZE milestone epochs >= 1, got "
                             f"{stepsize}; set e.g. OPTIM.STEPSIZE (10, 15).")
        return MultiStepLR(optimizer, milestones=[int(m) for m in milestones],
                           gamma=optim_cfg.GAMMA)
    raise ValueError(f"Unknown OPTIM.LR_SCHEDULER={name!r}; choose one of "
                     f"{', '.join(LR_SCHEDULERS)}.")


def build_lr_scheduler(optimizer: Optimizer, optim_cfg: CfgNode) -> LRScheduler:
    """The epoch-wise ``OPTIM.LR_SCHEDULER``, wrapped in a warm-up when ``WARMUP_EPOCH > 0``."""
    successor = _successor(optimizer, optim_cfg)
    warmup_epoch = optim_cfg.WARMUP_EPOCH
    if warmup_epoch <= 0:
        return successor
    warmup_type = optim_cfg.WARMUP_TYPE
    recount = optim_cfg.WARMUP_RECOUNT
    if warmup_type == "constant":
        return ConstantWarmupScheduler(optimizer, successor, warmup_epoch,
                                       optim_cfg.WARMUP_CONS_LR, recount)
    if warmup_type == "linear":
        return LinearWarmupScheduler(optimizer, successor, warmup_epoch,
                                     optim_cfg.WARMUP_MIN_LR, recount)
    raise ValueError(f"Unknown OPTIM.WARMUP_TYPE={warmup_type!r}; choose one of "
                     f"{', '.join(WARMUP_TYPES)}.")
