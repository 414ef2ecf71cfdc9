"""The full config tree and its assembly: defaults -> dataset YAML -> method YAML -> flags -> opts.

Every registered trainer and dataset adds its own node through ``extend_cfg``. Unknown keys are
errors that name the key and where it came from. The reference implementation's names
(``TRAINER.Caption.*`` and its ``TRAIN.*`` switches) are accepted as aliases of the node of the
trainer being configured (see :func:`reference_key_aliases`).
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

# Reference (authors' code) keys that mean the same for every trainer -> our key.
GENERAL_KEY_ALIASES: Dict[str, str] = {
    "DATASET.partial_prob": "DATASET.PARTIAL_PROB",
}
# The trainer whose reference keys apply when no trainer is named (the reference's main method).
DEFAULT_REFERENCE_TRAINER = "TaIDPT"


def reference_key_aliases(trainer_name: str = "") -> Dict[str, str]:
    """Reference key -> our key for ``trainer_name`` (aliases accepted): the general aliases plus
    the trainer's own ``reference_key_aliases`` (``TRAINER.Caption.*`` is read into
    ``TRAINER.TAIDPT`` for TaI-DPT and into ``TRAINER.DUALCOOP`` for ``Caption_dual``). An empty or
    unknown name, or a trainer without reference keys of its own (``ZeroshotCLIP_dense`` reads the
    same files), uses those of :data:`DEFAULT_REFERENCE_TRAINER`."""
    own = {}
    if trainer_name in TRAINER_REGISTRY:
        own = getattr(TRAINER_REGISTRY.get(trainer_name), "reference_key_aliases", {})
    own = own or TRAINER_REGISTRY.get(DEFAULT_REFERENCE_TRAINER).reference_key_aliases
    return {**GENERAL_KEY_ALIASES, **own}


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


def _read_yaml(path: str) -> Dict[str, Any]:
    """A YAML file flattened to dotted keys; a missing file names the shipped configs."""
    try:
        with open(path, encoding="utf-8") as f:
            return _flatten(yaml.safe_load(f) or {})
    except FileNotFoundError:
        raise FileNotFoundError(f"Config file {path} does not exist (see configs/ for the shipped "
                                "dataset and trainer configs).") from None


def merge_from_file(cfg: CN, path: str, aliases: Optional[Dict[str, str]] = None) -> None:
    """Merge a YAML file; reference key names are translated (``aliases``, default: those of
    :data:`DEFAULT_REFERENCE_TRAINER`); unknown keys name the file."""
    aliases = reference_key_aliases() if aliases is None else aliases
    pairs: List[Any] = []
    for key, value in _read_yaml(path).items():
        pairs += [aliases.get(key, key), value]
    _merge_pairs(cfg, pairs, f"config file {path}")


def merge_from_opts(cfg: CN, opts: Sequence[str], aliases: Optional[Dict[str, str]] = None) -> None:
    if len(opts) % 2:
        raise ConfigError(f"Command-line opts must be KEY VALUE pairs, got an odd list: {list(opts)}")
    aliases = reference_key_aliases() if aliases is None else aliases
    pairs = list(opts)
    for i in range(0, len(pairs), 2):
        pairs[i] = aliases.get(pairs[i], pairs[i])
    _merge_pairs(cfg, pairs, "the command-line opts")


def _trainer_name(files: Sequence[str], flags: Dict[str, Any], opts: Sequence[str]) -> str:
    """The trainer the merged config will name: opts win over flags over the YAML files."""
    opt_names = [opts[i + 1] for i in range(0, len(opts) - 1, 2) if opts[i] == "TRAINER.NAME"]
    if opt_names:
        return str(opt_names[-1])
    if flags.get("TRAINER.NAME"):
        return str(flags["TRAINER.NAME"])
    names = [_read_yaml(path).get("TRAINER.NAME") for path in files]
    return next((str(n) for n in reversed(names) if n), "")


def setup_cfg(dataset_config_file: str = "", config_file: str = "", flags: Optional[Dict[str, Any]] = None,
              opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """defaults -> dataset YAML -> method YAML -> flags (non-empty values only) -> opts -> freeze.

    Reference key names are translated for the trainer the config names (:func:`reference_key_aliases`).
    """
    cfg = get_cfg_default()
    flags = flags or {}
    files = [path for path in (dataset_config_file, config_file) if path]
    aliases = reference_key_aliases(_trainer_name(files, flags, opts))
    for path in files:
        merge_from_file(cfg, path, aliases)
    for key, value in flags.items():
        if value not in (None, "", [], ()):
            _merge_pairs(cfg, [key, value], "the command-line flags")
    merge_from_opts(cfg, opts, aliases)
    if freeze:
        cfg.freeze()
    return cfg
