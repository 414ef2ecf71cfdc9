import os

import pytest
import torch
from torch import nn

from taidpt.engine.checkpoint import (UnsafeCheckpointError, load_checkpoint,
                                      load_pretrained_weights, resume_from_checkpoint,
                                      save_checkpoint, strip_module_prefix)
from taidpt.engine.defaults import get_engine_defaults
from taidpt.engine.optim import build_lr_scheduler, build_optimizer
from taidpt.io import atomic_write


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    cfg = get_engine_defaults().OPTIM.clone()
    cfg.merge_from_list(["LR", 0.1, "MAX_EPOCH", 6, "WARMUP_EPOCH", 1, "WARMUP_TYPE", "constant",
                         "WARMUP_CONS_LR", 0.01])
    optimizer = build_optimizer(model, cfg)
    return model, optimizer, build_lr_scheduler(optimizer, cfg)


def _train(model, optimizer, scheduler, epochs):
    inputs = torch.linspace(-1, 1, 20).reshape(5, 4)
    for _ in range(epochs):
        optimizer.zero_grad()
        model(inputs).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()


def _state(model, optimizer, scheduler, epoch):
    return {"state_dict": model.state_dict(), "epoch": epoch,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def test_save_writes_files_atomically(tmp_path):
    model, optimizer, scheduler = _setup()
    path = save_checkpoint(_state(model, optimizer, scheduler, 3), tmp_path / "run", is_best=True)
    run = tmp_path / "run"
    assert path == str(run / "model.pth.tar-3")
    assert sorted(os.listdir(run)) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-3"]
    assert (run / "checkpoint").read_text() == "model.pth.tar-3\n"
    assert (run / "model-best.pth.tar").read_bytes() == (run / "model.pth.tar-3").read_bytes()

    save_checkpoint(_state(model, optimizer, scheduler, 4), run)
    assert (run / "checkpoint").read_text() == "model.pth.tar-4\n"
    assert sorted(os.listdir(run)) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-3",
                                       "model.pth.tar-4"]


def test_save_strips_module_prefix_without_touching_the_input(tmp_path):
    weight = torch.ones(2)
    state = {"state_dict": {"module.ctx": weight, "temperature": torch.tensor(3.0)}, "epoch": 1}
    save_checkpoint(state, tmp_path, model_name="model-best.pth.tar")
    assert list(state["state_dict"]) == ["module.ctx", "temperature"]
    loaded = load_checkpoint(tmp_path / "model-best.pth.tar")
    assert list(loaded["state_dict"]) == ["ctx", "temperature"] and loaded["epoch"] == 1
    assert (tmp_path / "checkpoint").read_text() == "model-best.pth.tar\n"


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "model.pth.tar-1"
    target.write_bytes(b"previous")

    def failing_writer(file):
        file.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(str(target), failing_writer)
    assert os.listdir(tmp_path) == ["model.pth.tar-1"] and target.read_bytes() == b"previous"


def test_resume_round_trip(tmp_path):
    model, optimizer, scheduler = _setup()
    _train(model, optimizer, scheduler, 3)
    save_checkpoint(_state(model, optimizer, scheduler, 3), tmp_path)
    _train(model, optimizer, scheduler, 3)

    resumed = _setup(seed=1)
    assert resume_from_checkpoint(tmp_path, *resumed) == 3
    _train(*resumed, 3)
    assert torch.equal(resumed[0].weight, model.weight) and torch.equal(resumed[0].bias, model.bias)
    assert resumed[1].param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert resumed[2].state_dict() == scheduler.state_dict()


def test_resume_model_only(tmp_path):
    model, optimizer, scheduler = _setup()
    save_checkpoint(_state(model, optimizer, scheduler, 2), tmp_path)
    other = nn.Linear(4, 3)
    assert resume_from_checkpoint(tmp_path, other) == 2
    assert torch.equal(other.weight, model.weight)


def test_resume_skips_missing_optimizer_state(tmp_path):
    model, optimizer, scheduler = _setup()
    lr = optimizer.param_groups[0]["lr"]
    save_checkpoint({"state_dict": model.state_dict(), "epoch": 2, "optimizer": None,
                     "scheduler": None}, tmp_path)
    assert resume_from_checkpoint(tmp_path, model, optimizer, scheduler) == 2
    assert optimizer.param_groups[0]["lr"] == lr and scheduler.last_epoch == 0


def test_missing_files_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No checkpoint file at .*model-best\.pth\.tar"):
        load_checkpoint(tmp_path / "model-best.pth.tar")
    with pytest.raises(FileNotFoundError, match="has no 'checkpoint' file"):
        resume_from_checkpoint(tmp_path, nn.Linear(2, 2))


def _dassl_style_checkpoint(path):
    """A checkpoint as Dassl's ``save_checkpoint`` writes it: its warm-up scheduler's state dict is
    the scheduler's ``__dict__`` less the optimiser, so it pickles the successor scheduler (and
    through it the optimiser, whose momentum state is a defaultdict)."""
    model, optimizer, _ = _setup()
    _train(model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1), 1)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)
    scheduler_state = {"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "last_epoch": 3,
                       "base_lrs": [0.1], "_step_count": 4, "verbose": False}
    torch.save({"state_dict": model.state_dict(), "epoch": 5, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler_state, "val_result": 71.2}, path)
    return model


def test_dassl_checkpoint_with_its_pickled_scheduler_loads_safely(tmp_path, recwarn):
    model = _dassl_style_checkpoint(tmp_path / "model.pth.tar-5")
    checkpoint = load_checkpoint(tmp_path / "model.pth.tar-5")
    assert torch.equal(checkpoint["state_dict"]["weight"], model.weight)
    successor = checkpoint["scheduler"]["successor"]
    assert isinstance(successor, torch.optim.lr_scheduler.CosineAnnealingLR) and successor.T_max == 5
    assert checkpoint["optimizer"]["state"][0]["momentum_buffer"].shape == (3, 4)
    assert not [w for w in recwarn if "unpickling" in str(w.message)]


class _Payload:
    """Pickles as a call of ``os.mkdir(marker)``: what a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("how", ["load", "resume"])
def test_checkpoint_with_a_pickled_callable_is_refused_and_does_not_run(tmp_path, how):
    marker = tmp_path / "payload-ran"
    model = nn.Linear(4, 3)
    save_checkpoint({"state_dict": model.state_dict(), "epoch": 1, "val_result": _Payload(marker)},
                    tmp_path / "run")
    with pytest.raises(UnsafeCheckpointError, match=r"mkdir.*--trust-checkpoint"):
        if how == "load":
            load_checkpoint(tmp_path / "run" / "model.pth.tar-1")
        else:
            resume_from_checkpoint(tmp_path / "run", model)
    assert not marker.exists()
    load_checkpoint(tmp_path / "run" / "model.pth.tar-1", trust=True)  # the payload is real
    assert marker.is_dir()


def test_trust_checkpoint_flag_sets_the_config_key():
    from taidpt.cli import train

    for argv, expected in ([], False), (["--trust-checkpoint"], True):
        args = train.build_parser().parse_args(argv)
        assert train.cfg_from_args(args).MODEL.TRUST_CHECKPOINT is expected


def test_load_pretrained_weights_matches_names_and_shapes(tmp_path):
    source = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}},
               tmp_path / "weights.pth")
    target = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))
    loaded, discarded = load_pretrained_weights(target, tmp_path / "weights.pth")
    assert loaded == ["0.weight", "0.bias"] and discarded == ["1.weight", "1.bias"]
    assert torch.equal(target[0].weight, source[0].weight)


def test_strip_module_prefix():
    assert list(strip_module_prefix({"module.a": 1, "b": 2, "x.module.c": 3})) == ["a", "b",
                                                                                  "x.module.c"]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from taidpt.engine.checkpoint import restore_rng_state, rng_state

    generator = torch.Generator().manual_seed(3)
    torch.randperm(5, generator=generator)
    save_checkpoint({"state_dict": {}, "epoch": 1, "rng": rng_state({"train": generator})}, tmp_path)
    expected = (random.random(), np.random.rand(), torch.rand(2), torch.randperm(9, generator=generator))
    state = torch.load(tmp_path / "model.pth.tar-1", weights_only=True)["rng"]  # plain data only
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    fresh = torch.Generator().manual_seed(3)
    restore_rng_state(state, {"train": fresh})
    got = (random.random(), np.random.rand(), torch.rand(2), torch.randperm(9, generator=fresh))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_remove_stale_temp_files_takes_only_atomic_write_names(tmp_path):
    from taidpt.engine.checkpoint import remove_stale_temp_files

    stale = tmp_path / f".model.pth.tar-3.{'ab' * 16}.tmp"
    user = [tmp_path / ".model.tmp", tmp_path / f"model.{'ab' * 16}.tmp", tmp_path / "notes.txt"]
    for path in [stale, *user]:
        path.write_text("x")
    assert remove_stale_temp_files(str(tmp_path)) == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in user)
    only = tmp_path / "prompt_learner"
    only.mkdir()
    (only / f".checkpoint.{'cd' * 16}.tmp").write_text("")
    assert remove_stale_temp_files(str(only))[-1] == str(only) and not only.exists()
    assert remove_stale_temp_files(str(tmp_path / "missing")) == []
