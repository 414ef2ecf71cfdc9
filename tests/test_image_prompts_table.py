"""scripts/image_prompts_table.py on a fake sweep tree of known values."""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def table_module():
    spec = importlib.util.spec_from_file_location(
        "image_prompts_table", os.path.join(REPO, "scripts", "image_prompts_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(path, mAP, seconds=None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "results_test.json"), "w") as f:
        json.dump({"results": {"mAP": mAP}}, f)
    if seconds is not None:
        with open(os.path.join(path, "log.txt"), "w") as f:
            f.write(f"[x INFO taidpt.engine.trainer] Elapsed: 0:{seconds // 60:02d}:{seconds % 60:02d}\n")


def write_ensemble(path, a, b, best, rate):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "ensemble.json"), "w") as f:
        json.dump({"mAP_a": a, "mAP_b": b, "best_mAP": best, "best_rate": rate}, f)


def test_table_means_wins_rates_and_times(tmp_path, table_module):
    root = str(tmp_path)
    for seed, (text, image, merged) in {1: (70.0, 40.0, 71.0), 2: (72.0, 50.0, 71.5)}.items():
        write_run(os.path.join(root, "TaIDPT", f"seed{seed}"), text, seconds=100 + seed)
        write_run(os.path.join(root, "DualCoOp", "p0.1", f"seed{seed}"), image, seconds=20 * seed)
        write_ensemble(os.path.join(root, "DualCoOpTaIDPT", "p0.1", f"seed{seed}"), text, image,
                       merged, 0.1 * seed)
    write_run(os.path.join(root, "DualCoOp", "p0.5", "seed1"), 60.0)  # no ensemble yet: no row
    table = table_module.build_table(root)
    assert "| TaI-DPT (merged head) | s1: 70.00, s2: 72.00 | 71.00 ± 1.41 | 102 |" in table
    assert "ZSCLIP" not in table  # no zero-shot run in this tree
    assert ("| 0.1 | 45.00 ± 7.07 | 71.00 ± 1.41 | 71.25 ± 0.35 | s1: 0.1, s2: 0.2 | yes (2/2) | "
            "no (1/2) | 30 |") in table
    assert "| 0.5 |" not in table
    assert "CoOpML" not in table
