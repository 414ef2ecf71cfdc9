"""Issue-11 acceptance: taidpt's trainers inside the real, unmodified CoOp and Dassl.pytorch.

From the pristine archives of ``../shared/upstream/`` (the ``upstream`` fixture): a test-time
CoOp checkout whose ``train.py`` gains only the line ``import taidpt.dassl_plugin`` (CoOp's own
``clip/`` stays in place and shadows the wheel there), and a copy of Dassl's ``tools/train.py``
with the same line. Dassl is not installed: its extracted tree goes on ``PYTHONPATH``, with the
import-time dependencies this environment lacks (scikit-learn, pandas, wilds) installed from PyPI
into a temporary folder beside it. Every host run must reach the mAP of our own ``train.py`` on
the same inputs and show loss and mAP in its ``log.txt``.

CoOp's own ``CoOp`` trainer runs in the same checkout on a fake DTD tree. It can only load CLIP
weights by model name through ``clip._MODELS`` and a SHA256-checked download, so the harness
(not CoOp) names a local random tiny CLIP there as a ``file://`` URL before running the
unmodified ``train.py``.
"""
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from fake_data import TOY_CAPTIONS as CAPTIONS, TOY_CLASSES as CLASSES, TOY_SYNONYMS as SYNONYMS
from fake_data import child_env, network_env, write_image, write_image_list
from taidpt import dassl_bridge

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_LINE = "import taidpt.dassl_plugin  # noqa: F401\n"
# What ``import dassl.engine`` needs beyond taidpt's own dependencies (Dassl's evaluation imports
# scikit-learn; its datasets import gdown, and its domain-generalisation ones pandas and wilds).
DASSL_IMPORT_DEPS = ("scikit-learn", "pandas", "gdown")
# The runs of each script: our train.py, CoOp's train.py, Dassl's tools/train.py. Through Dassl
# the alias run is the training run (the harder case: clean_cfg keeps only
# TRAINER.CAPTION_DISTILL_DOUBLE); each eval-only run loads TRAINED_BY[host].
HOST_RUNS = {"own": ("taidpt", "zeroshot"), "coop": ("taidpt", "alias", "zeroshot", "eval"),
             "dassl": ("alias", "zeroshot", "eval")}
TRAINED_BY = {"coop": "taidpt", "dassl": "alias"}
WILDS = "wilds==1.2.2"  # Dassl's pin; installed without its dependencies (torch, ogb, ...)
# CoOp's runner: register the local weights under a model name, then run train.py as a script.
COOP_RUNNER = ("import runpy, sys\nfrom clip import clip\nclip._MODELS['tiny77'] = sys.argv[1]\n"
               "sys.argv = ['train.py'] + sys.argv[2:]\nrunpy.run_path('train.py', run_name='__main__')\n")


def _add_plugin_line(source: str, target: str, after: str) -> None:
    """Copy the script ``source`` to ``target`` with :data:`PLUGIN_LINE` after the line ``after``."""
    with open(source, encoding="utf-8") as f:
        text = f.read()
    assert text.count(after) == 1, f"{source} changed: no single line {after!r}"
    with open(target, "w", encoding="utf-8") as f:
        f.write(text.replace(after, after + PLUGIN_LINE))


def _missing(requirements):
    """The ``name==version`` requirements whose distribution this environment does not have."""
    missing = []
    for requirement in requirements:
        try:
            importlib.metadata.distribution(re.split(r"[=<>]", requirement)[0])
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing


def _pip(*args):
    """``pip install ARGS``; a failure names the packages and the fix."""
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          *args], capture_output=True, text=True, timeout=600,
                         env=network_env())
    assert run.returncode == 0, (f"pip install {' '.join(args)} failed: Dassl's import-time "
                                 f"dependencies come from PyPI (or install Dassl's requirements "
                                 f"yourself):\n{run.stderr[-2000:]}")


def _dassl_path(dassl_dir: str, tmp) -> str:
    """``PYTHONPATH`` that makes the extracted Dassl importable: its tree, plus a folder with the
    packages of :data:`DASSL_IMPORT_DEPS` (and their dependencies) and wilds that this
    environment lacks, installed there from PyPI."""
    def importable(path):
        probe = subprocess.run([sys.executable, "-c", "import dassl.engine"], capture_output=True,
                               text=True, env=child_env(path), timeout=300)
        return probe.returncode == 0, probe.stderr[-2000:]

    ok, _ = importable(dassl_dir)
    if ok:
        return dassl_dir
    site, report = tmp / "dassl_deps", tmp / "pip_report.json"
    _pip("--dry-run", "--ignore-installed", "--report", str(report), *DASSL_IMPORT_DEPS)
    resolved = [f"{item['metadata']['name']}=={item['metadata']['version']}"
                for item in json.loads(report.read_text())["install"]]
    needed = _missing(resolved) + _missing([WILDS])
    _pip("--no-deps", "--target", str(site), *needed)
    path = os.pathsep.join([dassl_dir, str(site)])
    ok, error = importable(path)
    assert ok, f"Dassl still does not import with {needed} installed:\n{error}"
    return path


class Runs:
    """Each named run once (lazily, in a subprocess); ``get(name)`` -> its output folder."""

    def __init__(self, tmp, upstream, tiny_clip_file):
        self.tmp, self.done = tmp, {}
        self.root = tmp / "data"
        write_image_list(str(self.root), CLASSES, n=8, synonyms=SYNONYMS, size=64)
        (self.root / "captions.txt").write_text("\n".join(CAPTIONS * 3) + "\n")
        for c, texture in enumerate(("banded", "dotted")):  # CoOp's DTD layout, split by CoOp
            for i in range(5):
                write_image(str(self.root / "dtd" / "images" / texture / f"{texture}_{i}.jpg"),
                            size=64, seed=10 * c + i)
        self.coop = str(tmp / "CoOp")
        shutil.copytree(upstream["coop"], self.coop)
        _add_plugin_line(os.path.join(upstream["coop"], "train.py"), os.path.join(self.coop, "train.py"),
                         after="import trainers.zsclip\n")
        self.dassl_tools = str(tmp / "dassl_tools")
        os.makedirs(self.dassl_tools)
        _add_plugin_line(os.path.join(upstream["dassl"], "tools", "train.py"),
                         os.path.join(self.dassl_tools, "train.py"),
                         after="from dassl.engine import build_trainer\n")
        self.env = child_env(_dassl_path(upstream["dassl"], tmp), REPO, HOME=str(tmp / "home"),
                             TAIDPT_CACHE=str(tmp / "taidpt_cache"))
        self.tiny_clip = tiny_clip_file
        self.dassl_defaults = _dassl_defaults(upstream["dassl"])
        self.commands = self._commands()

    def _commands(self):
        cfgs = os.path.join(REPO, "configs")
        taidpt = ["--root", str(self.root), "--seed", "1",
                  "--dataset-config-file", os.path.join(cfgs, "datasets", "image_list.yaml"),
                  "--config-file", os.path.join(cfgs, "trainers", "TaIDPT", "rn50_voc2007_debug.yaml")]
        opts = ["MODEL.BACKBONE.PATH", self.tiny_clip, "INPUT.SIZE", "(64, 64)",
                "DATASET.CAPTIONS.SOURCE", "text", "DATASET.CAPTIONS.PATH", "captions.txt",
                "DATALOADER.NUM_WORKERS", "0", "OPTIM.LR", "0.002", "OPTIM.WARMUP_EPOCH", "-1",
                "TRAIN.PRINT_FREQ", "1", "TRAINER.TAIDPT.N_CTX", "4"]
        zeroshot = ["--trainer", "ZeroshotCLIP_dense", "--eval-only", "--root", str(self.root),
                    "--dataset-config-file", os.path.join(cfgs, "datasets", "image_list.yaml"),
                    "--config-file", os.path.join(cfgs, "trainers", "ZeroshotCLIP", "rn50.yaml"),
                    "MODEL.BACKBONE.PATH", self.tiny_clip, "INPUT.SIZE", "(64, 64)",
                    "DATALOADER.NUM_WORKERS", "0"]
        scripts = {"own": [os.path.join(REPO, "train.py")], "coop": ["train.py"],
                   "dassl": [os.path.join(self.dassl_tools, "train.py")]}
        commands = {}
        for host, names in HOST_RUNS.items():
            out = str(self.tmp / host)
            trained = TRAINED_BY.get(host)
            variants = {
                "taidpt": (["--trainer", "TaIDPT", *taidpt, *opts], None),
                "alias": (["--trainer", "Caption_distill_double", *taidpt, *opts], None),
                "zeroshot": (zeroshot, None),
                "eval": (["--trainer", "TaIDPT", *taidpt, "--eval-only", "--model-dir",
                          f"{out}-{trained}", "--load-epoch", "2", *opts,
                          "DATASET.CAPTIONS.PATH", "missing.txt"], f"{host}-{trained}")}
            for name in names:
                args, before = variants[name]
                commands[f"{host}-{name}"] = (scripts[host] + ["--output-dir", f"{out}-{name}", *args],
                                              before)
        weights = self._coop_weights()
        commands["coop-coop"] = (["-c", COOP_RUNNER, weights, "--trainer", "CoOp", "--seed", "1",
                                  "--root", str(self.root), "--dataset-config-file",
                                  os.path.join("configs", "datasets", "dtd.yaml"), "--output-dir",
                                  str(self.tmp / "coop-coop"), "MODEL.BACKBONE.NAME", "tiny77",
                                  "INPUT.SIZE", "(64, 64)", "TRAINER.COOP.PREC", "fp32",
                                  "TRAINER.COOP.N_CTX", "4", "OPTIM.MAX_EPOCH", "1",
                                  "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4"],
                                 None)
        return commands

    def _coop_weights(self) -> str:
        """A random tiny CLIP with CoOp's 77-token context, at a ``file://`` URL whose folder is
        its SHA256 (what CoOp's ``clip._download`` checks)."""
        from taidpt.clip import GEOMETRIES, random_clip, save_clip

        path = self.tmp / "tiny77.pt"
        save_clip(random_clip(dataclasses.replace(GEOMETRIES["tiny"], context_length=77)), str(path))
        folder = self.tmp / "weights" / hashlib.sha256(path.read_bytes()).hexdigest()
        folder.mkdir(parents=True)
        return "file://" + str(path.rename(folder / "tiny77.pt"))

    def get(self, name: str):
        """The output folder of run ``name`` (run first if needed); its return code must be 0."""
        if name not in self.done:
            args, before = self.commands[name]
            if before:
                self.get(before)
            run = subprocess.run([sys.executable, *args], cwd=self.coop, env=self.env,
                                 capture_output=True, text=True, timeout=600)
            assert run.returncode == 0, f"{name}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
            self.done[name] = self.tmp / name
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, upstream, tiny_clip_file):
    return Runs(tmp_path_factory.mktemp("hosts"), upstream, tiny_clip_file)


def _results(folder):
    return json.loads((folder / "results_test.json").read_text())["results"]


def _flat(tree, prefix=""):
    """A nested dict as ``{dotted key: value}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config(folder):
    """The run's ``config.yaml`` as dotted keys, without what names the run itself."""
    cfg = _flat(yaml.safe_load((folder / "config.yaml").read_text()))
    del cfg["OUTPUT_DIR"], cfg["TRAINER.NAME"]
    return cfg


def _dassl_defaults(dassl_dir):
    """Dassl's stock defaults as dotted keys (tuples as lists); its defaults.py needs only yacs."""
    spec = importlib.util.spec_from_file_location(
        "dassl_stock_defaults", os.path.join(dassl_dir, "dassl", "config", "defaults.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return _flat(json.loads(json.dumps(module._C)))


# (host, run, our train.py's run it must equal)
CASES = [("coop", "taidpt", "taidpt"), ("coop", "eval", "taidpt"), ("coop", "alias", "taidpt"),
         ("coop", "zeroshot", "zeroshot"), ("dassl", "alias", "taidpt"), ("dassl", "eval", "taidpt"),
         ("dassl", "zeroshot", "zeroshot")]


@pytest.mark.parametrize("host, run, own", CASES)
def test_host_run_reaches_our_train_py_map(runs, host, run, own):
    """``--trainer TaIDPT`` (2 epochs), ``--eval-only --model-dir ... --load-epoch 2``,
    ``Caption_distill_double`` and ``ZeroshotCLIP_dense --eval-only`` (no --model-dir) against
    our train.py's TaIDPT and zero-shot runs: same mAPs, the same taidpt config but for Dassl's
    defaults of keys no file sets; the log shows loss and mAP."""
    hosted, ours = runs.get(f"{host}-{run}"), runs.get(f"own-{own}")
    assert _results(hosted) == pytest.approx(_results(ours), abs=1e-6)
    assert set(_results(hosted)) == {"mAP", "mAP_global", "mAP_local", "mAP_merged"}
    log = (hosted / "log.txt").read_text()
    assert re.search(r"^\* mAP: [\d.]+%$", log, re.MULTILINE), log[-2000:]
    if run in ("taidpt", "alias"):
        assert len(re.findall(r"epoch \[[12]/2\] batch \[\d+/\d+\] loss [\d.]+", log)) >= 2
    if run != "eval":  # the eval run names another captions file, on purpose
        hosted_cfg, own_cfg, dassl = _config(hosted), _config(ours), runs.dassl_defaults
        assert set(hosted_cfg) == set(own_cfg)
        differ = sorted(key for key in own_cfg if hosted_cfg[key] != own_cfg[key])
        # Only keys no file or flag sets differ, holding Dassl's default (README), e.g. the
        # OPTIM keys of zero-shot; Dassl's CLIP-unfit defaults are replaced.
        assert all(key in dassl and hosted_cfg[key] == dassl[key] for key in differ), differ
        assert not set(differ) & set(dassl_bridge.CLIP_DEFAULT_KEYS)
        if run == "zeroshot":
            assert hosted_cfg["OPTIM.NAME"] == "adam" and own_cfg["OPTIM.NAME"] == "sgd"


def test_clip_preprocessing_and_evaluator_replace_dassls_defaults(runs):
    log = (runs.get("coop-taidpt") / "log.txt").read_text()
    for key in ("INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD", "TEST.EVALUATOR"):
        assert f"{key}: Dassl's default" in log
    assert "load_model() skipped" in (runs.get("coop-zeroshot") / "log.txt").read_text()


def test_coops_own_trainer_still_runs_beside_the_plugin(runs):
    log = (runs.get("coop-coop") / "log.txt").read_text()
    assert re.search(r"epoch \[1/1\] batch \[1/1\] .* loss [\d.]+", log) and "* accuracy:" in log
