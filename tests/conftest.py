"""Shared fixtures: no test touches the network; caches go to a per-session temp dir."""
import os
import sys

import pytest
import torch

from fake_data import NETBLOCK

os.environ.setdefault("TAIDPT_OFFLINE", "1")


# The network block (tests/netblock/sitecustomize.py): in this process from here on, and in every
# Python child, which imports it at start-up from PYTHONPATH (fake_data.child_env keeps it there).
sys.path.insert(0, NETBLOCK)
from sitecustomize import NetworkBlocked  # noqa: E402,F401  (installs the block)

os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (NETBLOCK, os.environ.get("PYTHONPATH")) if p)


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


UPSTREAM_ARCHIVES = {"coop": "CoOp-ff61507.tar.gz", "dassl": "Dassl.pytorch-c61a1b5.tar.gz"}


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    """``{"coop": dir, "dassl": dir}``: the pristine CoOp and Dassl.pytorch archives of
    ``../shared/upstream/`` (or ``$TAIDPT_UPSTREAM_DIR``) extracted once per session, unmodified.
    Skips when the archives are not there."""
    import tarfile

    source = os.environ.get("TAIDPT_UPSTREAM_DIR") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "upstream")
    paths = {name: os.path.join(source, archive) for name, archive in UPSTREAM_ARCHIVES.items()}
    missing = [path for path in paths.values() if not os.path.isfile(path)]
    if missing:
        pytest.skip(f"upstream archives not found: {', '.join(missing)} (set TAIDPT_UPSTREAM_DIR)")
    base = tmp_path_factory.mktemp("upstream")
    trees = {}
    for name, path in paths.items():
        with tarfile.open(path) as archive:
            archive.extractall(base / name, filter="data")
        trees[name] = str(base / name)
    return trees
