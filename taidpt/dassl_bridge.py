"""Run taidpt's trainers inside a real Dassl / CoOp checkout (the machinery behind
:mod:`taidpt.dassl_plugin`, whose import calls :func:`install`).

A host script (CoOp's ``train.py``, Dassl's ``tools/train.py``) does, in this order::

    cfg = get_cfg_default(); extend_cfg(cfg)        # Dassl's defaults (+ CoOp's nodes)
    cfg.merge_from_file(...); reset_cfg(cfg, args)  # YAMLs, --root/--trainer/... flags
    cfg.merge_from_list(args.opts)
    clean_cfg(cfg, args.trainer)                    # tools/train.py only: keeps TRAINER.<NAME.upper()>
    setup_logger(cfg.OUTPUT_DIR)                    # sys.stdout becomes a tee into log.txt
    trainer = build_trainer(cfg)                    # TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)
    trainer.load_model(args.model_dir, ...)         # --eval-only, also with an empty --model-dir

:func:`install` hooks that flow at two points only, so where the import line sits among the
host's imports does not matter:

- **Dassl's default node** (``dassl.config.defaults._C``, which ``get_cfg_default()`` clones at
  call time) gains every taidpt key it lacks (Dassl's own values are kept), so YAMLs and opts
  naming our keys merge. Each trainer name or alias whose upper-case spelling differs from the
  trainer's node gets an entry that *is* that node (one object under two names): YAML / opts
  values set under either spelling land in both, and ``clean_cfg`` keeping only
  ``TRAINER.CAPTION_DISTILL_DOUBLE`` still keeps what was set as ``TRAINER.TAIDPT.*``.
- **Dassl's trainer registry** gets, for every taidpt trainer name and alias, a
  :class:`HostedTrainer` subclass of the trainer. Built by Dassl, it turns the host config into
  the taidpt config our own ``train.py`` would build from the same inputs (:func:`taidpt_cfg`),
  shows our logs on the host's stdout (hence in ``log.txt``), writes ``config.yaml`` like our
  ``train.py``, and skips ``load_model("")`` as Dassl's trainers do.

The trainers keep building their own data loaders (Dassl's ``Datum`` needs integer labels and an
existing image file, which caption training and multi-label data do not have).
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

from yacs.config import CfgNode as CN

logger = logging.getLogger(__name__)

# Keys whose Dassl default is wrong for CLIP-based trainers: when the host config still holds
# Dassl's default value, the trainer gets taidpt's (CLIP's preprocessing, a multi-label
# evaluator, a CLIP backbone name). A value that differs from Dassl's default is the user's, kept.
CLIP_DEFAULT_KEYS = ("TEST.EVALUATOR", "INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD",
                     "INPUT.INTERPOLATION", "MODEL.BACKBONE.NAME")
# Names a stock host registers itself (CoOp's trainers/zsclip.py): never taken, whatever the
# import order; our zero-shot trainer is ``ZeroshotCLIP_dense`` there.
HOST_TRAINER_NAMES = ("ZeroshotCLIP",)

_HOST_DEFAULTS: Dict[str, Any] = {}  # Dassl's stock defaults (dotted key -> value), set by install()


def _dassl(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"taidpt's Dassl plugin needs Dassl (github.com/KaiyangZhou/Dassl.pytorch) "
                          f"importable in this environment ({err}): `pip install -e Dassl.pytorch`. "
                          "Without Dassl, use taidpt's own `python train.py` (same flags).") from err


def _leaves(node: CN, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of a config tree."""
    for key, value in node.items():
        if isinstance(value, CN):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def trainer_nodes() -> Dict[str, str]:
    """Every taidpt trainer name and alias, upper-cased -> the ``TRAINER`` node its trainer reads
    (``CAPTION_DISTILL_DOUBLE`` -> ``TAIDPT``, ``DUALCOOPTAIDPT`` -> ``ENSEMBLE``); names whose
    spelling already is the node, and trainers without a node, are left out."""
    from taidpt.engine.registry import TRAINER_REGISTRY

    spellings = {}
    for name in TRAINER_REGISTRY.registered_names() + sorted(TRAINER_REGISTRY.aliases()):
        probe = CN()
        probe.TRAINER = CN()
        TRAINER_REGISTRY.get(name).extend_cfg(probe)
        for node in probe.TRAINER:
            if name.upper() != node:
                spellings[name.upper()] = node
    return spellings


def _merge_missing(target: CN, source: CN) -> None:
    for key, value in source.items():
        if key not in target:
            target[key] = value
        elif isinstance(value, CN) and isinstance(target[key], CN):
            _merge_missing(target[key], value)


def extend_cfg(cfg: CN) -> None:
    """Add taidpt's keys that a Dassl config lacks (its own values are kept), and each trainer
    name's spelling of its node (``cfg.TRAINER.CAPTION_DISTILL_DOUBLE is cfg.TRAINER.TAIDPT``)."""
    from taidpt.config import get_cfg_default

    was_frozen = cfg.is_frozen()
    cfg.defrost()
    _merge_missing(cfg, get_cfg_default())
    for spelling, node in trainer_nodes().items():
        if spelling not in cfg.TRAINER:
            cfg.TRAINER[spelling] = cfg.TRAINER[node]
    if was_frozen:
        cfg.freeze()


def _plain(value: Any) -> Any:
    """Tuples as lists, so ``(224, 224)`` from opts equals ``[224, 224]`` from a YAML."""
    return list(value) if isinstance(value, tuple) else value


def _set(cfg: CN, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        cfg = cfg[part]
    cfg[leaf] = value


def taidpt_cfg(host_cfg: CN, host_defaults: Optional[Dict[str, Any]] = None) -> CN:
    """The frozen taidpt config for a host (Dassl) config: taidpt's defaults, then every host
    value of a key taidpt knows (``TRAINER.<ALIAS>.*`` read as the trainer's own node), except the
    :data:`CLIP_DEFAULT_KEYS` still at Dassl's default (``host_defaults``: dotted key -> Dassl's
    stock value; default: those :func:`install` recorded), checked by
    :func:`taidpt.config.check_values`. Host-only keys (Dassl's semi-supervised
    settings, CoOp's ``TRAINER.COOP``) do not reach our trainers."""
    from taidpt.config import check_values, get_cfg_default

    host_defaults = _HOST_DEFAULTS if host_defaults is None else host_defaults
    cfg = get_cfg_default()
    known = dict(_leaves(cfg))
    spellings = {f"TRAINER.{s}.": f"TRAINER.{n}." for s, n in trainer_nodes().items()}
    for key, value in _leaves(host_cfg):
        prefix = next((p for p in spellings if key.startswith(p)), None)
        if prefix:
            key = spellings[prefix] + key[len(prefix):]
        if key not in known or _plain(value) == _plain(known[key]):
            continue
        if key in CLIP_DEFAULT_KEYS and _plain(value) == _plain(host_defaults.get(key)):
            logger.info("%s: Dassl's default %r replaced by taidpt's %r (set it to override)",
                        key, value, known[key])
            continue
        _set(cfg, key, value)
    check_values(cfg)  # the ranges and fixed sets our own train.py checks
    cfg.freeze()
    return cfg


class HostedTrainer:
    """Mixin placed before a taidpt trainer class when Dassl builds it (see the module docstring);
    ``cfg`` is the host's config."""

    def __init__(self, cfg: CN) -> None:
        from taidpt.engine.utils import setup_logger
        from taidpt.io import atomic_write

        if not logging.getLogger("taidpt").handlers:
            setup_logger()  # on sys.stdout as it is now: Dassl's tee into OUTPUT_DIR/log.txt
        if logging.root.manager.disable >= logging.INFO:
            logging.disable(logging.NOTSET)  # Dassl's wilds datasets disable WARNING and below
            logger.info("Re-enabled logging, which importing Dassl had disabled")
        cfg = taidpt_cfg(cfg)
        if cfg.OUTPUT_DIR:
            atomic_write(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), lambda f: f.write(cfg.dump().encode()))
        super().__init__(cfg)

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """As the trainer's, but an empty ``directory`` (CoOp's ``--eval-only`` without
        ``--model-dir``) is skipped, as Dassl's trainers do."""
        if not directory:
            logger.info("No --model-dir given: load_model() skipped, evaluating the initial model")
            return
        super().load_model(directory, epoch=epoch)


_HOSTED: Dict[type, type] = {}


def hosted(cls: type) -> type:
    """The :class:`HostedTrainer` subclass of trainer class ``cls`` (one per class, same name)."""
    if cls not in _HOSTED:
        _HOSTED[cls] = type(cls.__name__, (HostedTrainer, cls),
                            {"__module__": cls.__module__, "__doc__": cls.__doc__})
    return _HOSTED[cls]


def register_trainers(registry: Any = None) -> List[str]:
    """Register every taidpt trainer and alias into Dassl's ``TRAINER_REGISTRY`` (or ``registry``)
    as its :func:`hosted` class; returns the names added. Names the registry already has and
    :data:`HOST_TRAINER_NAMES` are left to the host."""
    import taidpt.config  # noqa: F401 - imports and registers the trainers
    from taidpt.engine.registry import TRAINER_REGISTRY

    registry = _dassl("dassl.engine").TRAINER_REGISTRY if registry is None else registry
    added = []
    for name in TRAINER_REGISTRY.registered_names() + sorted(TRAINER_REGISTRY.aliases()):
        if name in HOST_TRAINER_NAMES or name in registry.registered_names():
            logger.debug("Dassl has or registers its own trainer %r: keeping the host's", name)
            continue
        registry._do_register(name, hosted(TRAINER_REGISTRY.get(name)))
        added.append(name)
    return added


def install() -> List[str]:
    """Hook taidpt into the imported Dassl (idempotent): record Dassl's stock defaults, extend
    Dassl's default node in place (:func:`extend_cfg`) and register the trainers
    (:func:`register_trainers`); returns the trainer names added by this call."""
    defaults = getattr(_dassl("dassl.config.defaults"), "_C", None)
    if not isinstance(defaults, CN):
        raise ImportError("taidpt's Dassl plugin expects Dassl's default config as the yacs node "
                          "dassl.config.defaults._C (Dassl.pytorch as CoOp uses it); this Dassl has "
                          "none: install Dassl.pytorch from github.com/KaiyangZhou/Dassl.pytorch.")
    if not _HOST_DEFAULTS:
        _HOST_DEFAULTS.update(_leaves(defaults))
    extend_cfg(defaults)
    return register_trainers()
