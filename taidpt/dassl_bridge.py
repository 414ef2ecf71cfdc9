"""Run taidpt's trainers from a real Dassl/CoOp checkout.

In CoOp's ``train.py``::

    from taidpt import dassl_bridge
    dassl_bridge.register_trainers()   # after `from dassl.engine import build_trainer`
    ...
    def extend_cfg(cfg):
        dassl_bridge.extend_cfg(cfg)   # taidpt's extra keys and TRAINER.<NAME> nodes

The trainers keep building their own data loaders (Dassl's ``Datum`` needs integer labels and an
existing image file, which caption training and multi-label data do not have).
"""
from __future__ import annotations

import logging
from typing import List

from yacs.config import CfgNode as CN

logger = logging.getLogger(__name__)


def _dassl_registry():
    try:
        from dassl.engine import TRAINER_REGISTRY
    except ImportError as err:
        raise ImportError("taidpt.dassl_bridge needs Dassl (github.com/KaiyangZhou/Dassl.pytorch) "
                          "installed in this environment: `pip install -e Dassl.pytorch`. Without "
                          "Dassl, use taidpt's own `python train.py` (same flags).") from err
    return TRAINER_REGISTRY


def register_trainers() -> List[str]:
    """Register every taidpt trainer and alias into Dassl's ``TRAINER_REGISTRY``; returns the
    names added (names Dassl already has are left alone)."""
    from taidpt.config import get_cfg_default  # noqa: F401 - imports and registers the trainers
    from taidpt.engine.registry import TRAINER_REGISTRY

    dassl = _dassl_registry()
    added = []
    names = TRAINER_REGISTRY.registered_names() + sorted(TRAINER_REGISTRY.aliases())
    for name in names:
        if name in dassl.registered_names():
            logger.info("Dassl already has a trainer %r: keeping Dassl's", name)
            continue
        dassl._do_register(name, TRAINER_REGISTRY.get(name))
        added.append(name)
    return added


def _merge_missing(target: CN, source: CN) -> None:
    for key, value in source.items():
        if key not in target:
            target[key] = value
        elif isinstance(value, CN) and isinstance(target[key], CN):
            _merge_missing(target[key], value)


def extend_cfg(cfg: CN) -> None:
    """Add taidpt's keys that a Dassl config lacks (its own values are kept)."""
    from taidpt.config import get_cfg_default

    was_frozen = cfg.is_frozen()
    cfg.defrost()
    _merge_missing(cfg, get_cfg_default())
    if was_frozen:
        cfg.freeze()
