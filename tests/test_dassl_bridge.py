"""The Dassl bridge against a stand-in ``dassl`` package with Dassl's registry interface."""
import sys
import textwrap

import pytest
from yacs.config import CfgNode as CN

from taidpt import dassl_bridge

FAKE_DASSL_REGISTRY = textwrap.dedent('''
    class Registry:
        def __init__(self, name):
            self._name, self._obj_map = name, {}
        def _do_register(self, name, obj):
            assert name not in self._obj_map
            self._obj_map[name] = obj
        def get(self, name):
            return self._obj_map[name]
        def registered_names(self):
            return list(self._obj_map.keys())
    TRAINER_REGISTRY = Registry("TRAINER")
    TRAINER_REGISTRY._do_register("CoOp", object)
    TRAINER_REGISTRY._do_register("ZeroshotCLIP", object)
''')


@pytest.fixture
def fake_dassl(tmp_path, monkeypatch):
    pkg = tmp_path / "dassl" / "engine"
    pkg.mkdir(parents=True)
    (tmp_path / "dassl" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(FAKE_DASSL_REGISTRY)
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("dassl", "dassl.engine"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    import dassl.engine
    return dassl.engine.TRAINER_REGISTRY


def test_register_trainers_adds_ours_and_keeps_dassls(fake_dassl):
    from taidpt.engine.registry import TRAINER_REGISTRY

    added = dassl_bridge.register_trainers()
    assert "ZeroshotCLIP" not in added and fake_dassl.get("ZeroshotCLIP") is object
    assert "ZeroshotCLIP_dense" in added
    assert fake_dassl.get("ZeroshotCLIP_dense") is TRAINER_REGISTRY.get("ZeroshotCLIP")
    assert fake_dassl.get("LinearProbe") is TRAINER_REGISTRY.get("LinearProbe")


def test_extend_cfg_adds_missing_keys_only():
    cfg = CN()
    cfg.OPTIM = CN()
    cfg.OPTIM.LR = 0.123
    cfg.freeze()
    dassl_bridge.extend_cfg(cfg)
    assert cfg.OPTIM.LR == 0.123 and cfg.OPTIM.MAX_EPOCH == 10
    assert cfg.TRAINER.ZEROSHOTCLIP.TEMPLATE == "a photo of a {}." and cfg.is_frozen()


def test_missing_dassl_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "dassl", None)
    monkeypatch.setitem(sys.modules, "dassl.engine", None)
    with pytest.raises(ImportError, match="pip install -e Dassl.pytorch"):
        dassl_bridge.register_trainers()
