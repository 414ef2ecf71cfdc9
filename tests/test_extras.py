"""Packaging (issue 11, item 7): optional dependencies are imported where used, with errors naming
the extra; dependencies no module imports are not declared."""
import ast
import os
import re
import subprocess
import sys

import pytest

from fake_data import child_env
from taidpt.extras import EXTRAS, require

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_kwargs():
    tree = ast.parse(open(os.path.join(REPO, "setup.py"), encoding="utf-8").read())
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "setup")
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords
            if kw.arg in ("install_requires", "extras_require")}


def _imported_packages():
    """Top-level packages imported anywhere in taidpt/, scripts/, tests/ and train.py."""
    found = set()
    for folder in ("taidpt", "scripts", "tests"):
        for base, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith(".py"):
                    source = open(os.path.join(base, name), encoding="utf-8").read()
                    for node in ast.walk(ast.parse(source)):
                        if isinstance(node, ast.Import):
                            found |= {alias.name.split(".")[0] for alias in node.names}
                        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                            found.add(node.module.split(".")[0])
                        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "require":
                            found.add(ast.literal_eval(node.args[0]).split(".")[0])
    return found


# Distribution name -> the top-level package it provides.
MODULE_OF = {"openai-clip": "clip", "Pillow": "PIL"}
# Declared, but used through another package.
INDIRECT = {"tensorboard": "torch.utils.tensorboard's SummaryWriter",
            "setuptools": "openai-clip's pkg_resources import", "pytest-timeout": "a pytest plugin"}


def test_every_declared_dependency_is_imported():
    kwargs = _setup_kwargs()
    declared = kwargs["install_requires"] + [d for deps in kwargs["extras_require"].values() for d in deps]
    names = {re.split(r"[<>=!;\[ ]", requirement)[0] for requirement in declared}
    imported = _imported_packages()
    unused = {name for name in names - set(INDIRECT) if MODULE_OF.get(name, name) not in imported}
    assert not unused, f"declared in setup.py but never imported: {sorted(unused)}"
    assert not {"gdown", "scipy"} & names


def test_optional_packages_are_extras_only():
    kwargs = _setup_kwargs()
    core = {re.split(r"[<>=!;\[ ]", r)[0] for r in kwargs["install_requires"]}
    for package, extra in EXTRAS.items():
        assert package not in core and package in kwargs["extras_require"][extra]
        assert package in kwargs["extras_require"]["dev"]  # the tests need them


def test_taidpt_imports_without_the_extras():
    code = ("import sys; sys.modules['pycocotools'] = sys.modules['matplotlib'] = None; "
            "import taidpt.config, taidpt.cli, taidpt.cli.train, taidpt.datasets.coco2014; print('ok')")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env=child_env())
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_missing_extra_names_the_pip_command(monkeypatch, tmp_path):
    from taidpt.datasets.coco2014 import load_instances

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ImportError, match=r"COCO2014 \(its instances annotations\) needs pycocotools.*"
                                          r"pip install 'taidpt\[coco\]'"):
        load_instances(str(tmp_path / "instances_val2014.json"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"taidpt\[plot\]"):
        require("matplotlib", "A figure")
