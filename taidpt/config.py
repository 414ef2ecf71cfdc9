"""The full config tree and its assembly: defaults -> dataset YAML -> method YAML -> flags -> opts.

Every registered trainer and dataset adds its own node through ``extend_cfg``. Unknown keys are
errors that name the key and where it came from. The reference implementation's names
(``TRAINER.Caption.*`` and its ``TRAIN.*`` switches) are accepted as aliases of ``TRAINER.TAIDPT``.
"""
from __future__ import annotations

import ast
from typing import Any, Dict, List, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN

import taidpt.datasets  # noqa: F401 - registers the datasets
import taidpt.trainers  # noqa: F401 - registers the trainers
from taidpt.engine.defaults import get_engine_defaults
from taidpt.engine.registry import DATASET_REGISTRY, TRAINER_REGISTRY

# Reference (authors' code) key -> our key, applied to YAML files before merging.
REFERENCE_KEY_ALIASES: Dict[str, str] = {
    "TRAINER.Caption.N_CTX": "TRAINER.TAIDPT.N_CTX",
    "TRAINER.Caption.CSC": "TRAINER.TAIDPT.CSC",
    "TRAINER.Caption.CTX_INIT": "TRAINER.TAIDPT.CTX_INIT",
    "TRAINER.Caption.PREC": "TRAINER.TAIDPT.PREC",
    "TRAINER.Caption.CLASS_TOKEN_POSITION": "TRAINER.TAIDPT.CLASS_TOKEN_POSITION",
    "TRAINER.Caption.GL_merge_rate": "TRAINER.TAIDPT.GL_MERGE_RATE",
    "TRAIN.LOSSFUNC": "TRAINER.TAIDPT.LOSS",
    "TRAIN.IF_LEARN_SCALE": "TRAINER.TAIDPT.LEARN_SCALE",
    "TRAIN.IF_LEARN_spatial_SCALE": "TRAINER.TAIDPT.LEARN_SPATIAL_SCALE",
    "TRAIN.spatial_SCALE_text": "TRAINER.TAIDPT.SPATIAL_SCALE_TEXT",
    "TRAIN.spatial_SCALE_image": "TRAINER.TAIDPT.SPATIAL_SCALE_IMAGE",
}


class ConfigError(KeyError):
    """An unknown or mistyped config key; the message names the key and its source."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_cfg_default() -> CN:
    """Engine defaults plus every registered trainer's and dataset's own node."""
    cfg = get_engine_defaults()
    for registry in (TRAINER_REGISTRY, DATASET_REGISTRY):
        for name in registry.registered_names():
            registry.get(name).extend_cfg(cfg)
    return cfg


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def _check_key(cfg: CN, key: str, source: str) -> Any:
    """The current value of ``key``; an unknown key is a :class:`ConfigError` naming ``source``."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CN) or part not in node:
            raise ConfigError(
                f"Unknown config key {key!r} in {source}. Check its spelling against "
                f"taidpt.config.get_cfg_default() (trainer keys live under TRAINER.<NAME_UPPER>).")
        node = node[part]
    return node


def _int_as_float(value: Any) -> Any:
    """``20`` or ``"20"`` -> ``20.0`` (yacs would reject an int for a float key); else ``value``."""
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        return float(parsed) if type(parsed) is int else value
    return float(value) if type(value) is int else value


def _merge_pairs(cfg: CN, pairs: List[Any], source: str) -> None:
    for i in range(0, len(pairs), 2):
        if isinstance(_check_key(cfg, pairs[i], source), float):
            pairs[i + 1] = _int_as_float(pairs[i + 1])
    try:
        cfg.merge_from_list(pairs)
    except (ValueError, AssertionError, KeyError) as err:
        raise ConfigError(f"Bad value in {source}: {err}") from err


def merge_from_file(cfg: CN, path: str) -> None:
    """Merge a YAML file; reference key names are translated; unknown keys name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"Config file {path} does not exist (see configs/ for the shipped "
                                "dataset and trainer configs).") from None
    flat = {REFERENCE_KEY_ALIASES.get(k, k): v for k, v in _flatten(tree).items()}
    pairs: List[Any] = []
    for key, value in flat.items():
        pairs += [key, value]
    _merge_pairs(cfg, pairs, f"config file {path}")


def merge_from_opts(cfg: CN, opts: Sequence[str]) -> None:
    if len(opts) % 2:
        raise ConfigError(f"Command-line opts must be KEY VALUE pairs, got an odd list: {list(opts)}")
    pairs = list(opts)
    for i in range(0, len(pairs), 2):
        pairs[i] = REFERENCE_KEY_ALIASES.get(pairs[i], pairs[i])
    _merge_pairs(cfg, pairs, "the command-line opts")


def setup_cfg(dataset_config_file: str = "", config_file: str = "", flags: Optional[Dict[str, Any]] = None,
              opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """defaults -> dataset YAML -> method YAML -> flags (non-empty values only) -> opts -> freeze."""
    cfg = get_cfg_default()
    if dataset_config_file:
        merge_from_file(cfg, dataset_config_file)
    if config_file:
        merge_from_file(cfg, config_file)
    for key, value in (flags or {}).items():
        if value not in (None, "", [], ()):
            _merge_pairs(cfg, [key, value], "the command-line flags")
    merge_from_opts(cfg, opts)
    if freeze:
        cfg.freeze()
    return cfg
