"""The Dassl bridge against a stand-in ``dassl`` package with Dassl's registry and default-config
interface (the real Dassl and CoOp run in tests/test_upstream_coop.py)."""
import logging
import sys
import textwrap

import pytest
from yacs.config import CfgNode as CN

from taidpt import dassl_bridge
from taidpt.engine.registry import TRAINER_REGISTRY

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
''')
FAKE_DASSL_DEFAULTS = textwrap.dedent('''
    from yacs.config import CfgNode as CN
    _C = CN()
    _C.OUTPUT_DIR = "./output"
    _C.INPUT = CN()
    _C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
    _C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
    _C.INPUT.INTERPOLATION = "bilinear"
    _C.MODEL = CN()
    _C.MODEL.BACKBONE = CN()
    _C.MODEL.BACKBONE.NAME = ""
    _C.OPTIM = CN()
    _C.OPTIM.NAME = "adam"
    _C.DATALOADER = CN()
    _C.DATALOADER.TRAIN_U = CN()
    _C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
    _C.TEST = CN()
    _C.TEST.EVALUATOR = "Classification"
    _C.TRAINER = CN()
    _C.TRAINER.NAME = ""
''')


def clean_cfg(cfg, trainer):
    """Dassl's ``tools/train.py`` clean-up: keeps only ``TRAINER.NAME`` and ``TRAINER.<NAME>``."""
    for key in list(cfg.TRAINER.keys()):
        if key not in ("NAME", trainer.upper()):
            cfg.TRAINER.pop(key, None)


@pytest.fixture
def fake_dassl(tmp_path, monkeypatch):
    for package, files in (("dassl", {"__init__.py": ""}),
                           ("dassl/engine", {"__init__.py": FAKE_DASSL_REGISTRY}),
                           ("dassl/config", {"__init__.py": "", "defaults.py": FAKE_DASSL_DEFAULTS})):
        (tmp_path / package).mkdir()
        for name, text in files.items():
            (tmp_path / package / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("dassl", "dassl.engine", "dassl.config", "dassl.config.defaults"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.setattr(dassl_bridge, "_HOST_DEFAULTS", {})
    import dassl.config.defaults
    import dassl.engine
    return dassl


def host_cfg(dassl, *opts):
    """What a host script builds: Dassl's defaults, then opts."""
    cfg = dassl.config.defaults._C.clone()
    cfg.merge_from_list(list(opts))
    return cfg


def test_install_registers_hosted_trainers_and_leaves_hosts_names(fake_dassl):
    added = dassl_bridge.install()
    registry = fake_dassl.engine.TRAINER_REGISTRY
    assert registry.get("CoOp") is object and "ZeroshotCLIP" not in added  # CoOp registers its own
    assert {"TaIDPT", "Caption_distill_double", "ZeroshotCLIP_dense", "DualCoOp"} <= set(added)
    hosted = registry.get("Caption_distill_double")
    assert hosted is registry.get("TaIDPT") and issubclass(hosted, TRAINER_REGISTRY.get("TaIDPT"))
    assert issubclass(hosted, dassl_bridge.HostedTrainer) and hosted.__name__ == "TaIDPT"
    assert dassl_bridge.install() == []  # idempotent


def test_alias_nodes_survive_dassls_clean_cfg(fake_dassl):
    dassl_bridge.install()
    cfg = host_cfg(fake_dassl, "TRAINER.NAME", "Caption_distill_double",
                   "TRAINER.TAIDPT.N_CTX", 4, "TRAINER.CAPTION_DUAL.N_CTX", 8)
    assert cfg.TRAINER.CAPTION_DISTILL_DOUBLE is cfg.TRAINER.TAIDPT  # one node, two names
    clean_cfg(cfg, "Caption_distill_double")
    assert "TAIDPT" not in cfg.TRAINER
    ours = dassl_bridge.taidpt_cfg(cfg)
    assert ours.TRAINER.TAIDPT.N_CTX == 4 and ours.TRAINER.NAME == "Caption_distill_double"
    dual = host_cfg(fake_dassl, "TRAINER.NAME", "Caption_dual", "TRAINER.CAPTION_DUAL.N_CTX", 8)
    clean_cfg(dual, "Caption_dual")
    assert dassl_bridge.taidpt_cfg(dual).TRAINER.DUALCOOP.N_CTX == 8


def test_taidpt_cfg_replaces_dassls_clip_defaults_only(fake_dassl):
    from taidpt.config import get_cfg_default

    dassl_bridge.install()
    ours = dassl_bridge.taidpt_cfg(host_cfg(fake_dassl, "TRAINER.NAME", "TaIDPT"))
    defaults = get_cfg_default()
    for key in ("PIXEL_MEAN", "PIXEL_STD", "INTERPOLATION"):
        assert ours.INPUT[key] == defaults.INPUT[key]
    assert ours.TEST.EVALUATOR == "MLClassification" and ours.MODEL.BACKBONE.NAME == "RN50"
    assert ours.OPTIM.NAME == "adam" and ours.OUTPUT_DIR == "./output"  # the host's values
    assert "TRAIN_U" not in ours.DATALOADER and ours.is_frozen()
    user = dassl_bridge.taidpt_cfg(host_cfg(fake_dassl, "INPUT.PIXEL_MEAN", [0.5, 0.5, 0.5],
                                            "MODEL.BACKBONE.NAME", "RN101"))
    assert user.INPUT.PIXEL_MEAN == [0.5, 0.5, 0.5] and user.MODEL.BACKBONE.NAME == "RN101"


def test_taidpt_cfg_checks_values_as_our_train_py_does(fake_dassl):
    from taidpt.config import ConfigValueError

    dassl_bridge.install()
    with pytest.raises(ConfigValueError, match=r"TRAINER.TAIDPT.GL_MERGE_RATE must lie in \[0, 1\]"):
        dassl_bridge.taidpt_cfg(host_cfg(fake_dassl, "TRAINER.NAME", "Caption_distill_double",
                                         "TRAINER.CAPTION_DISTILL_DOUBLE.GL_MERGE_RATE", 7.0))


class Recorder:
    """A trainer stand-in recording what it is given."""

    def __init__(self, cfg):
        self.cfg, self.loaded = cfg, None
        logging.getLogger("taidpt.test").info("built %s", cfg.TEST.EVALUATOR)

    def load_model(self, directory, epoch=None):
        self.loaded = (directory, epoch)


def test_hosted_trainer_logs_to_stdout_writes_config_and_skips_empty_model_dir(
        fake_dassl, tmp_path, monkeypatch, capsys):
    dassl_bridge.install()
    taidpt_logger = logging.getLogger("taidpt")
    for attribute, value in (("handlers", []), ("propagate", taidpt_logger.propagate),
                             ("level", taidpt_logger.level)):
        monkeypatch.setattr(taidpt_logger, attribute, value)  # restored after the test
    logging.disable(logging.WARNING)  # as importing Dassl's wilds datasets does
    try:
        trainer = dassl_bridge.hosted(Recorder)(host_cfg(fake_dassl, "OUTPUT_DIR", str(tmp_path)))
    finally:
        logging.disable(logging.NOTSET)
    assert "taidpt.test] built MLClassification" in capsys.readouterr().out
    assert "EVALUATOR: MLClassification" in (tmp_path / "config.yaml").read_text()
    trainer.load_model("")
    assert trainer.loaded is None
    trainer.load_model("run", epoch=2)
    assert trainer.loaded == ("run", 2)


def test_extend_cfg_adds_missing_keys_only():
    cfg = CN()
    cfg.OPTIM = CN()
    cfg.OPTIM.LR = 0.123
    cfg.freeze()
    dassl_bridge.extend_cfg(cfg)
    assert cfg.OPTIM.LR == 0.123 and cfg.OPTIM.MAX_EPOCH == 10
    assert cfg.TRAINER.ZEROSHOTCLIP.TEMPLATE == "a photo of a {}." and cfg.is_frozen()
    assert cfg.TRAINER.ZEROSHOTCLIP_DENSE is cfg.TRAINER.ZEROSHOTCLIP
    assert cfg.TRAINER.DUALCOOPTAIDPT is cfg.TRAINER.ENSEMBLE


def test_missing_dassl_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "dassl", None)
    monkeypatch.setitem(sys.modules, "dassl.engine", None)
    with pytest.raises(ImportError, match="pip install -e Dassl.pytorch"):
        dassl_bridge.register_trainers()
