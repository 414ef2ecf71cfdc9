"""Shared fixtures: no test touches the network; caches go to a per-session temp dir."""
import os

import pytest
import torch

os.environ.setdefault("TAIDPT_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TAIDPT_OFFLINE", "1")
    monkeypatch.setenv("TAIDPT_CACHE", str(tmp_path_factory.getbasetemp() / "taidpt_cache"))


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory):
    """A random tiny CLIP of the real RN architecture saved as a state-dict file."""
    from taidpt.clip import random_clip, save_clip

    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    save_clip(random_clip("tiny", seed=0), str(path))
    return str(path)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s (still run in CI)")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
