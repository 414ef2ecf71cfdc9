"""Optional dependencies (setup.py ``extras_require``): imported only where they are used, and a
missing one is an ImportError that names the extra installing it."""
from __future__ import annotations

import importlib
from types import ModuleType

# Top-level package -> the taidpt extra that installs it.
EXTRAS = {"pycocotools": "coco", "matplotlib": "plot"}


def require(module: str, purpose: str) -> ModuleType:
    """``import module`` (a package of :data:`EXTRAS` or one of its submodules) for ``purpose``."""
    package = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != package:
            raise
        extra = EXTRAS[package]
        raise ImportError(f"{purpose} needs {package}, an optional dependency: pip install "
                          f"'taidpt[{extra}]' (in a checkout: pip install -e '.[{extra}]').") from None
