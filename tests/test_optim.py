import io
import math
import warnings

import pytest
import torch
from torch import nn

from taidpt.engine.defaults import get_engine_defaults
from taidpt.engine.optim import build_lr_scheduler, build_optimizer


def _optim_cfg(**overrides):
    cfg = get_engine_defaults().OPTIM.clone()
    cfg.merge_from_list([item for key, value in overrides.items() for item in (key, value)])
    return cfg


def _cosine(base_lr, epoch, max_epoch):
    return base_lr * (1 + math.cos(math.pi * epoch / max_epoch)) / 2


def _build(cfg, model=None):
    optimizer = build_optimizer(model or nn.Linear(3, 2), cfg)
    return optimizer, build_lr_scheduler(optimizer, cfg)


def _run(optimizer, scheduler, epochs):
    """LR used in each epoch, stepping as a trainer does; any warning fails the test."""
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(epochs):
            lr = optimizer.param_groups[0]["lr"]
            assert scheduler.get_last_lr() == [lr]
            lrs.append(lr)
            optimizer.step()
            scheduler.step()
    return lrs


# Each case: config overrides and the LR of every epoch from the closed-form formula.
SCHEDULE_CASES = {
    # the paper's setting: 1 constant warm-up epoch at 1e-5, then cosine over 20 successor epochs
    "reference": (
        dict(LR=1e-4, MAX_EPOCH=20, WARMUP_EPOCH=1, WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5),
        [1e-5] + [_cosine(1e-4, e - 1, 20) for e in range(1, 20)]),
    # Dassl's linear warm-up: min_lr at epoch 0, then LR * e / W
    "linear": (
        dict(LR=1e-3, MAX_EPOCH=10, WARMUP_EPOCH=3, WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-5),
        [1e-5, 1e-3 / 3, 2e-3 / 3] + [_cosine(1e-3, e - 3, 10) for e in range(3, 12)]),
    "no_recount": (
        dict(LR=1e-3, MAX_EPOCH=10, WARMUP_EPOCH=2, WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5,
             WARMUP_RECOUNT=False),
        [1e-5, 1e-5] + [_cosine(1e-3, e, 10) for e in range(2, 10)]),
    "cosine": (dict(LR=0.01, MAX_EPOCH=8), [_cosine(0.01, e, 8) for e in range(8)]),
    "single_step": (dict(LR=0.1, LR_SCHEDULER="single_step", STEPSIZE=(3,), GAMMA=0.5),
                    [0.1 * 0.5 ** (e // 3) for e in range(9)]),
    "multi_step_warmup": (
        dict(LR=0.1, LR_SCHEDULER="multi_step", STEPSIZE=(2, 5), WARMUP_EPOCH=1,
             WARMUP_TYPE="constant", WARMUP_CONS_LR=0.001),
        [0.001] + [0.1 * 0.1 ** sum(e - 1 >= m for m in (2, 5)) for e in range(1, 9)]),
}


@pytest.mark.parametrize("case", list(SCHEDULE_CASES))
def test_lr_per_epoch(case):
    overrides, expected = SCHEDULE_CASES[case]
    lrs = _run(*_build(_optim_cfg(**overrides)), len(expected))
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_reference_schedule_numbers():
    lrs = _run(*_build(_optim_cfg(**SCHEDULE_CASES["reference"][0])), 20)
    assert lrs[0] == 1e-5 and lrs[1] == pytest.approx(1e-4, rel=1e-12)
    assert lrs[11] == pytest.approx(5e-5, rel=1e-12)  # half way through the cosine
    assert lrs[19] == pytest.approx(2.4471741852423e-06, rel=1e-10)


@pytest.mark.parametrize("case", ["reference", "linear", "no_recount", "single_step",
                                  "multi_step_warmup"])
@pytest.mark.parametrize("stop", [1, 2, 4])
def test_state_dict_round_trip(case, stop):
    overrides, expected = SCHEDULE_CASES[case]
    cfg = _optim_cfg(**overrides)
    optimizer, scheduler = _build(cfg)
    _run(optimizer, scheduler, stop)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    optimizer, scheduler = _build(cfg)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    lrs = _run(optimizer, scheduler, len(expected) - stop)
    assert lrs == pytest.approx(expected[stop:], rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("name, cls, hyper", [
    ("sgd", torch.optim.SGD, dict(momentum=0.8, dampening=0.1, nesterov=False)),
    ("adam", torch.optim.Adam, dict(betas=(0.8, 0.99))),
    ("adamw", torch.optim.AdamW, dict(betas=(0.8, 0.99))),
])
def test_build_optimizer(name, cls, hyper):
    cfg = _optim_cfg(NAME=name, LR=0.05, WEIGHT_DECAY=1e-3, MOMENTUM=0.8, SGD_DAMPNING=0.1,
                     ADAM_BETA1=0.8, ADAM_BETA2=0.99)
    optimizer = build_optimizer(nn.Linear(3, 2), cfg)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 1e-3
    assert {key: group[key] for key in hyper} == hyper


def test_only_trainable_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    for params in (model, model.parameters(), [{"params": model[0].parameters()},
                                               {"params": model[1].parameters(), "lr": 0.5}]):
        optimizer = build_optimizer(params, _optim_cfg())
        trainable = [p for group in optimizer.param_groups for p in group["params"]]
        assert len(trainable) == 2 and all(p.requires_grad for p in trainable)
    assert optimizer.param_groups[0]["lr"] == 0.5  # a group's own lr is kept


def test_nothing_trainable():
    with pytest.raises(ValueError, match="requires grad"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False), _optim_cfg())


@pytest.mark.parametrize("overrides, match", [
    (dict(NAME="rmsprop"), "Unknown optimizer"),
    (dict(LR_SCHEDULER="exponential"), "Unknown OPTIM.LR_SCHEDULER"),
    (dict(WARMUP_EPOCH=1, WARMUP_TYPE="exp"), "Unknown OPTIM.WARMUP_TYPE"),
    (dict(LR_SCHEDULER="single_step"), "STEPSIZE"),
    (dict(LR_SCHEDULER="multi_step", STEPSIZE=(0, 4)), "STEPSIZE"),
])
def test_invalid_names(overrides, match):
    with pytest.raises(ValueError, match=match):
        _build(_optim_cfg(**overrides))
