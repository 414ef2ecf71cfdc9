"""The full config tree and its assembly: defaults -> dataset YAML -> method YAML -> flags -> opts.

Every registered trainer and dataset adds its own node through ``extend_cfg``. Unknown keys are
errors that name the key and where it came from. The reference implementation's names
(``TRAINER.Caption.*``, its ``TRAIN.*`` / ``INPUT.*`` / ``TEST.*`` additions and its dataset
names) are accepted for the trainer being configured: each is translated to our keys or, where it
has no effect here, logged once as ignored (see :func:`reference_key_aliases`).
"""
from __future__ import annotations

import ast
import fnmatch
import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import yaml
from yacs.config import CfgNode as CN

import taidpt.datasets  # noqa: F401 - registers the datasets
import taidpt.trainers  # noqa: F401 - registers the trainers
from taidpt.datasets._common import check_writable
from taidpt.datasets.captions import SOURCES
from taidpt.datasets.coco2014 import CLASS_SUBSETS as COCO_CLASS_SUBSETS
from taidpt.datasets.synthetic.dataset import CLASS_SUBSETS as SYNTHETIC_CLASS_SUBSETS
from taidpt.engine.data import INTERPOLATION, TEST_RESIZES, TRAIN_TRANSFORMS
from taidpt.engine.defaults import FINAL_MODELS, get_engine_defaults
from taidpt.engine.evaluator import SPLITS
from taidpt.engine.optim import LR_SCHEDULERS, OPTIMIZERS, WARMUP_TYPES
from taidpt.engine.registry import DATASET_REGISTRY, TRAINER_REGISTRY
from taidpt.losses import DOUBLE_LOSSES, KNOWN_LABEL_LOSSES
from taidpt.metrics import DIFFICULT_MODES
from taidpt.models.feature_cache import FEATURE_DTYPES
from taidpt.models.precision import PRECISIONS
from taidpt.models.prompts import CLASS_TOKEN_POSITIONS
from taidpt.trainers.dualcoop import LOSSES as DUALCOOP_LOSSES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ignored:
    """A reference key that has no effect here: accepted, and logged once with ``reason``."""

    reason: str


@dataclass(frozen=True)
class Translated:
    """A reference key whose value becomes our settings: ``convert(value, seen)`` -> a list of
    (our key, value) pairs, where ``seen`` holds every translated reference value given so far
    (this one included). An empty list means no effect here: logged once with ``reason``."""

    convert: Callable[[Any, Dict[str, Any]], List[Tuple[str, Any]]]
    reason: str = ""


Alias = Union[str, Ignored, Translated]


class ConfigError(KeyError):
    """An unknown or mistyped config key; the message names the key and its source."""

    def __str__(self) -> str:
        return str(self.args[0])


class ConfigValueError(ConfigError, ValueError):
    """A config value outside its allowed set or range; the message names the key, the value and
    what is allowed."""


def _decode(value: Any) -> Any:
    """A command-line string as the Python value it spells (``"True"``, ``"[1, 2]"``); else as is."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


# The names the reference's INPUT.TRANSFORMS_TEST takes.
REFERENCE_TEST_TRANSFORMS = ("resize", "center_crop", "normalize")


def _test_resize(value: Any, seen: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """``INPUT.TRANSFORMS_TEST`` -> ``INPUT.TEST_RESIZE``: ``crop`` with ``center_crop`` (shorter
    side + center crop, TaI-DPT), else ``square`` (resize to ``INPUT.SIZE``, ``Caption_dual``)."""
    names = [value] if isinstance(value, str) else list(value)
    unknown = [name for name in names if name not in REFERENCE_TEST_TRANSFORMS]
    if unknown:
        raise ConfigError(f"INPUT.TRANSFORMS_TEST (reference key) has unknown names {unknown}: "
                          f"use {', '.join(REFERENCE_TEST_TRANSFORMS)}, or our INPUT.TEST_RESIZE "
                          "(crop / square).")
    return [("INPUT.TEST_RESIZE", "crop" if "center_crop" in names else "square")]


def _caption_ablation(value: Any, seen: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """The reference's caption-count ablation (Figure 7): ``TRAIN.IF_ablation True`` with
    ``TRAIN.Caption_num N`` -> ``DATASET.CAPTIONS.MAX_CAPTIONS N`` (a random subset of N captions)."""
    number = seen.get("TRAIN.Caption_num", 0)
    if type(number) is not int:
        raise ConfigError(f"TRAIN.Caption_num (reference key) must be a whole number of captions, "
                          f"got {number!r}; or set our DATASET.CAPTIONS.MAX_CAPTIONS.")
    if seen.get("TRAIN.IF_ablation") and number > 0:
        return [("DATASET.CAPTIONS.MAX_CAPTIONS", number)]
    return []


_COCO_CAPTIONS = [("DATASET.CAPTIONS.SOURCE", "coco"),
                  ("DATASET.CAPTIONS.PATH", "COCO/annotations/captions_train2017.json"),
                  ("DATASET.CAPTIONS.PER_IMAGE", 1)]
# The reference's dataset names -> the settings of our dataset configs that do the same
# (configs/datasets/*_caption.yaml and *_partial.yaml, less DATASET.PARTIAL_PROB).
REFERENCE_DATASETS: Dict[str, List[Tuple[str, Any]]] = {
    "VOC2007_distill": [("DATASET.DIFFICULT", "negative")] + _COCO_CAPTIONS,
    "COCO2014_distill": _COCO_CAPTIONS,
    "nuswide_distill_limit": [
        ("DATASET.CAPTIONS.SOURCE", "openimages"),
        ("DATASET.CAPTIONS.PATH", "OpenImages/open_images_train_v6_captions.jsonl"),
        ("DATASET.CAPTIONS.LIMIT_PER_CLASS", 1000)],
    "VOC2007_partial": [("DATASET.DIFFICULT", "negative"), ("DATASET.VAL_STRIDE", -1),
                        ("DATASET.CAPTIONS.SOURCE", "")],
    "COCO2014_partial": [("DATASET.VAL_STRIDE", 20), ("DATASET.CAPTIONS.SOURCE", "")],
    "nuswide_partial": [("DATASET.VAL_STRIDE", 60), ("DATASET.CAPTIONS.SOURCE", "")],
}


def _reference_dataset(value: Any, seen: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """``DATASET.NAME``, preceded by what a reference dataset name implies (its caption corpus,
    difficult labels, val stride): the reference's datasets hard-code them."""
    return REFERENCE_DATASETS.get(str(value), []) + [("DATASET.NAME", value)]


def _reference_value(key: str, ours: str, values: Dict[str, str], value: Any,
                     seen: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """A reference key whose values are names of the reference's meaning -> our key with the name
    of ours (a trainer's ``reference_values``, e.g. ``TRAIN.LOSSFUNC ranking`` ->
    ``TRAINER.TAIDPT.LOSS ranking_scale2``); an unknown value names both keys."""
    if value not in values:
        raise ConfigValueError(f"{key} (reference key) must be one of {', '.join(values)}, got "
                               f"{value!r}; or set our {ours} ({', '.join(sorted(set(values.values())))}, ...).")
    return [(ours, values[value])]


# Reference (authors' code) keys that mean the same for every trainer -> our key or handling.
GENERAL_KEY_ALIASES: Dict[str, Alias] = {
    "DATASET.partial_prob": "DATASET.PARTIAL_PROB",
    "DATASET.NAME": Translated(_reference_dataset),
    "INPUT.random_resized_crop_scale": "INPUT.RRCROP_SCALE",
    "INPUT.cutout_proportion": "INPUT.CUTOUT_FACTOR",
    "INPUT.TRANSFORMS_TEST": Translated(_test_resize),
    "TRAIN.IF_ablation": Translated(_caption_ablation, "the caption-count ablation is off (it is "
                                    "DATASET.CAPTIONS.MAX_CAPTIONS here)"),
    "TRAIN.Caption_num": Translated(_caption_ablation, "used only with TRAIN.IF_ablation True "
                                    "(it is DATASET.CAPTIONS.MAX_CAPTIONS here)"),
    "TEST.EVALUATOR_ACT": Ignored("mAP ranks each head's raw scores here (SPEC 3); no activation "
                                  "is applied"),
    "TEST.SAVE_PREDS": Ignored("every evaluation writes OUTPUT_DIR/predictions_<split>.npz"),
}
# The trainer whose reference keys apply when no trainer is named (the reference's main method).
DEFAULT_REFERENCE_TRAINER = "TaIDPT"


def reference_key_aliases(trainer_name: str = "") -> Dict[str, Alias]:
    """Reference key -> our key (or :class:`Translated` / :class:`Ignored`) for ``trainer_name``
    (aliases accepted): the general aliases plus the trainer's own ``reference_key_aliases``
    (``TRAINER.Caption.*`` is read into ``TRAINER.TAIDPT`` for TaI-DPT and into
    ``TRAINER.DUALCOOP`` for ``Caption_dual``); a key another trainer reads and this one does not
    is ignored. An empty or unknown name, or a trainer without reference keys of its own
    (``ZeroshotCLIP_dense`` reads the same files), uses those of :data:`DEFAULT_REFERENCE_TRAINER`."""
    trainer = TRAINER_REGISTRY.get(trainer_name) if trainer_name in TRAINER_REGISTRY else None
    if not getattr(trainer, "reference_key_aliases", {}):
        trainer = TRAINER_REGISTRY.get(DEFAULT_REFERENCE_TRAINER)
    own: Dict[str, Alias] = dict(trainer.reference_key_aliases)
    for key, values in getattr(trainer, "reference_values", {}).items():
        own[key] = Translated(functools.partial(_reference_value, key, own[key], values))
    readers: Dict[str, List[str]] = {}
    for name in TRAINER_REGISTRY.registered_names():
        for key in getattr(TRAINER_REGISTRY.get(name), "reference_key_aliases", {}):
            readers.setdefault(key, []).append(name)
    others = {key: Ignored(f"trainer {trainer_name or DEFAULT_REFERENCE_TRAINER} has no such "
                           f"setting (read by {', '.join(names)})")
              for key, names in readers.items() if key not in own}
    return {**others, **GENERAL_KEY_ALIASES, **own}


class ReferenceKeys:
    """Translates the reference's keys of one config assembly (all its sources, in merge order);
    :meth:`log_ignored` then logs each key that had no effect once."""

    def __init__(self, aliases: Dict[str, Alias]) -> None:
        self.aliases = aliases
        self.seen: Dict[str, Any] = {}
        self.ignored: Dict[str, str] = {}

    def translate(self, pairs: Sequence[Tuple[str, Any]]) -> List[Any]:
        """(key, value) pairs of one source -> a flat KEY VALUE list in our keys: the translated
        reference keys first, then our own keys (which win within the source)."""
        for key, value in pairs:
            if isinstance(self.aliases.get(key), Translated):
                self.seen[key] = _decode(value)
        translated: List[Any] = []
        own: List[Any] = []
        for key, value in pairs:
            alias = self.aliases.get(key)
            if alias is None:
                own += [key, value]
            elif isinstance(alias, str):
                translated += [alias, value]
            elif isinstance(alias, Ignored):
                self.ignored[key] = alias.reason
            else:
                for ours, converted in alias.convert(self.seen[key], self.seen):
                    translated += [ours, converted]
        return translated + own

    def log_ignored(self) -> None:
        """One log line per reference key without effect (translated keys judged on their final
        values, e.g. ``TRAIN.Caption_num`` given in a file and ``TRAIN.IF_ablation`` in the opts)."""
        for key, value in self.seen.items():
            alias = self.aliases[key]
            if not alias.convert(value, self.seen):
                self.ignored[key] = alias.reason
        for key, reason in self.ignored.items():
            logger.warning("Reference config key %s is accepted and ignored: %s", key, reason)


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


def merge_from_file(cfg: CN, path: str, reference: Optional[ReferenceKeys] = None) -> None:
    """Merge a YAML file; reference key names are translated (``reference``, default: the keys of
    :data:`DEFAULT_REFERENCE_TRAINER`); unknown keys name the file."""
    own = reference is None
    reference = reference or ReferenceKeys(reference_key_aliases())
    _merge_pairs(cfg, reference.translate(list(_read_yaml(path).items())), f"config file {path}")
    if own:
        reference.log_ignored()


def merge_from_opts(cfg: CN, opts: Sequence[str], reference: Optional[ReferenceKeys] = None) -> None:
    if len(opts) % 2:
        raise ConfigError(f"Command-line opts must be KEY VALUE pairs, got an odd list: {list(opts)}")
    own = reference is None
    reference = reference or ReferenceKeys(reference_key_aliases())
    pairs = reference.translate([(opts[i], opts[i + 1]) for i in range(0, len(opts), 2)])
    _merge_pairs(cfg, pairs, "the command-line opts")
    if own:
        reference.log_ignored()


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
    """defaults -> dataset YAML -> method YAML -> flags (non-empty values only) -> opts -> freeze
    (the values checked first, :func:`check_values`).

    Reference key names are translated for the trainer the config names (:func:`reference_key_aliases`);
    each ignored one is logged once.
    """
    cfg = get_cfg_default()
    flags = flags or {}
    files = [path for path in (dataset_config_file, config_file) if path]
    reference = ReferenceKeys(reference_key_aliases(_trainer_name(files, flags, opts)))
    for path in files:
        merge_from_file(cfg, path, reference)
    for key, value in flags.items():
        if value not in (None, "", [], ()):
            _merge_pairs(cfg, [key, value], "the command-line flags")
    merge_from_opts(cfg, opts, reference)
    reference.log_ignored()
    if freeze:
        check_values(cfg)
        cfg.freeze()
    return cfg


# Keys (fnmatch patterns over dotted keys) with a fixed set of values: each the constant its reader
# checks. INPUT.TRANSFORMS is a list: each of its names must be one of the set.
CHOICES: Dict[str, Sequence[str]] = {
    "TEST.SPLIT": SPLITS,
    "TEST.FINAL_MODEL": FINAL_MODELS,
    "DATASET.DIFFICULT": DIFFICULT_MODES,
    "DATASET.CAPTIONS.SOURCE": ("",) + SOURCES,
    "DATASET.CAPTIONS.FEATURE_CACHE_DTYPE": tuple(FEATURE_DTYPES),
    "DATASET.COCO2014.CLASSES": COCO_CLASS_SUBSETS,
    "DATASET.SYNTHETIC.CLASSES": SYNTHETIC_CLASS_SUBSETS,
    "INPUT.INTERPOLATION": tuple(INTERPOLATION),
    "INPUT.TEST_RESIZE": TEST_RESIZES,
    "INPUT.TRANSFORMS": tuple(TRAIN_TRANSFORMS),
    "OPTIM.NAME": OPTIMIZERS,
    "OPTIM.LR_SCHEDULER": LR_SCHEDULERS,
    "OPTIM.WARMUP_TYPE": WARMUP_TYPES,
    "TRAINER.*.PREC": PRECISIONS,
    "TRAINER.*.CLASS_TOKEN_POSITION": CLASS_TOKEN_POSITIONS,
    "TRAINER.TAIDPT.LOSS": tuple(DOUBLE_LOSSES),
    "TRAINER.DUALCOOP.LOSS": DUALCOOP_LOSSES,
    "TRAINER.COOPML.LOSS": KNOWN_LABEL_LOSSES,
    "TRAINER.COCOOPML.LOSS": KNOWN_LABEL_LOSSES,
}
# Numeric keys (patterns) -> (low, high, low included, high included); None: unbounded.
RANGES: Dict[str, Tuple[Optional[float], Optional[float], bool, bool]] = {
    "OPTIM.LR": (0, None, False, False),
    "OPTIM.WEIGHT_DECAY": (0, None, True, False),
    "OPTIM.MOMENTUM": (0, None, True, False),
    "OPTIM.MAX_EPOCH": (0, None, True, False),
    "DATALOADER.*.BATCH_SIZE": (1, None, True, False),
    "DATALOADER.NUM_WORKERS": (0, None, True, False),
    "DATALOADER.PREFETCH_FACTOR": (1, None, True, False),
    "TRAIN.PRINT_FREQ": (1, None, True, False),
    "TRAIN.CHECKPOINT_FREQ": (0, None, True, False),
    "TRAIN.CHECKPOINT_ITER_FREQ": (0, None, True, False),
    "DATASET.PARTIAL_PROB": (0, 1, False, True),
    "TRAINER.*.GL_MERGE_RATE": (0, 1, True, True),
    "TRAINER.ENSEMBLE.RATE": (0, 1, True, True),
    "TRAINER.*.N_CTX": (1, None, True, False),
    "TRAINER.*.PROTOTYPES.WEIGHT": (0, 1, True, True),
    "TRAINER.TAIDPT.NOISE_STD": (0, None, True, False),
}


def _interval(low, high, low_in: bool, high_in: bool) -> str:
    upper = "inf)" if high is None else f"{high:g}{']' if high_in else ')'}"
    return f"{'[' if low_in else '('}{low:g}, {upper}"


def _matching(table: Dict[str, Any], key: str) -> Any:
    return next((rule for pattern, rule in table.items() if fnmatch.fnmatchcase(key, pattern)), None)


def check_values(cfg: CN) -> None:
    """Every key of :data:`CHOICES` / :data:`RANGES` holds an allowed value; else a
    :class:`ConfigValueError` naming the key, the value and the allowed ones."""
    for key, value in _flatten(cfg).items():
        choices = _matching(CHOICES, key)
        if choices is not None:
            bad = [v for v in value if v not in choices] if isinstance(value, (list, tuple)) else (
                [] if value in choices else [value])
            if bad:
                allowed = ", ".join(repr(c) if c == "" else c for c in choices)
                raise ConfigValueError(f"{key} must be one of {allowed}, got {value!r}: fix it in "
                                       "the config file or the command-line opts.")
        bounds = _matching(RANGES, key)
        if bounds is not None:
            low, high, low_in, high_in = bounds
            ok = (not isinstance(value, bool) and isinstance(value, (int, float))
                  and not math.isnan(value)
                  and (value >= low if low_in else value > low)
                  and (high is None or (value <= high if high_in else value < high)))
            if not ok:
                raise ConfigValueError(f"{key} must lie in {_interval(*bounds)}, got "
                                       f"{value!r}: fix it in the config file or the command-line "
                                       "opts.")



def check_output_dir(cfg: CN) -> None:
    """``OUTPUT_DIR`` is a writable folder (created if missing), before any work; the caches are
    checked where they are built (``taidpt.datasets``)."""
    if cfg.OUTPUT_DIR:
        check_writable(cfg.OUTPUT_DIR, "OUTPUT_DIR (--output-dir)")
