"""Issue-4 integration: the quickstart pipeline (reduced world, short runs) end to end."""
import json
import os
import resource
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A limit that does not depend on how loaded the machine is: CPU seconds, per process of the run;
# the wall-clock limit only guards against a hang.
CPU_SECONDS = 1800
HANG_SECONDS = 4 * 3600


def _limit_cpu():
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))


@pytest.mark.slow
def test_quickstart_quick_completes_and_writes_the_table(tmp_path):
    out = tmp_path / "qs"
    # $TAIDPT_CACHE: the session's cache (conftest), where test_synthetic's pretrained-CLIP test
    # uses (or builds) the same --quick world and tiny CLIP: one pretraining for both tests.
    env = dict(os.environ, TAIDPT_OFFLINE="1")
    run = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "quickstart.py"), "--quick",
                          "--output-dir", str(out)], env=env, capture_output=True, text=True,
                         preexec_fn=_limit_cpu, timeout=HANG_SECONDS)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("table.md", "table.csv", "map.png", "results.json"):
        assert (out / name).is_file(), name
    table = (out / "table.md").read_text()
    for row in ("ZSCLIP", "ZSCLIP+DPT", "TaI", "TaI-DPT", "Linear probe (reference)"):
        assert f"| {row} " in table
    results = json.loads((out / "results.json").read_text())
    chance = results["chance"]["1"]
    seed = results["per_seed"]["1"]
    # The reduced tiny CLIP (8 classes, 160 steps) is far above chance, and so are the prompts it learns.
    assert seed["ZeroshotCLIP"]["mAP_global"] > chance + 15
    assert seed["TaIDPT"]["mAP_merged"] > chance + 15
    for run_name in ("ZeroshotCLIP", "TaIDPT"):
        assert set(seed[run_name]) == {"mAP", "mAP_global", "mAP_local", "mAP_merged"}
    assert (out / "seed1" / "TaIDPT" / "prompt_learner" / "model.pth.tar-3").is_file()
