"""taidpt report (taidpt.engine.report) on fake OUTPUT trees of known values."""
import csv
import json
import os
import statistics

import numpy as np
import pytest
from PIL import Image

from taidpt.cli import main as taidpt_main
from taidpt.engine import report as rp


def write_results(root, dataset, run, seed, dataset_name="VOC2007", **results):
    path = os.path.join(root, dataset, *run.split("/"), f"seed{seed}", "results_test.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"split": "test", "dataset": dataset_name, "results": results}, f)


def write_ensemble(root, dataset, run, seed, best, a=0.0, b=0.0):
    path = os.path.join(root, dataset, *run.split("/"), f"seed{seed}", "ensemble.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"split": "test", "runs": {"a": "", "b": ""}, "mAP_a": a, "mAP_b": b,
                   "best_rate": 0.5, "best_mAP": best}, f)


# TaI-DPT on VOC2007, 3 seeds: (global, merged); on COCO seed 2 is missing.
VOC_TAIDPT = {1: (85.0, 87.5), 2: (86.0, 88.0), 3: (84.5, 89.0)}
COCO_TAIDPT = {1: (60.0, 64.0), 3: (61.0, 66.5)}
VOC_ZS = {1: (76.0, 77.0), 2: (76.0, 77.0), 3: (76.0, 77.0)}


@pytest.fixture
def tree(tmp_path):
    root = str(tmp_path / "out")
    for seed, (g, m) in VOC_TAIDPT.items():
        write_results(root, "voc2007", "TaIDPT", seed, mAP=m, mAP_global=g, mAP_merged=m)
    for seed, (g, m) in COCO_TAIDPT.items():
        write_results(root, "coco2014", "TaIDPT", seed, "COCO2014", mAP=m, mAP_global=g, mAP_merged=m)
    for seed, (g, m) in VOC_ZS.items():
        write_results(root, "voc2007", "ZeroshotCLIP", seed, mAP=m, mAP_global=g, mAP_merged=m)
    write_results(root, "voc2007", "TaIDPT/val", 1, mAP=1.0)  # not a seed folder: never read
    return root


def cell(report, row_label, column):
    r = [row.label for row in report.layout.rows].index(row_label)
    return report.cells[r][report.layout.columns.index(column)]


def test_table1_means_stds_seed_counts_paper_and_differences(tree):
    report = rp.build_report(rp.scan_runs(tree), "table1", "real")
    merged = [m for _, m in VOC_TAIDPT.values()]
    taidpt_voc = cell(report, "TaI-DPT", "VOC2007")
    assert taidpt_voc.values == {s: m for s, (_, m) in VOC_TAIDPT.items()}
    assert taidpt_voc.mean == statistics.mean(merged) and taidpt_voc.std == statistics.stdev(merged)
    assert taidpt_voc.cell.paper == 88.3 and taidpt_voc.cell.source == "SPEC 9"
    assert taidpt_voc.difference == pytest.approx(statistics.mean(merged) - 88.3, abs=1e-12)
    tai_voc = cell(report, "TaI", "VOC2007")
    assert tai_voc.mean == statistics.mean(g for g, _ in VOC_TAIDPT.values()) and tai_voc.cell.paper == 86.0
    coco = cell(report, "TaI-DPT", "MS-COCO")
    assert coco.missing == [2] and coco.mean == 65.25 and coco.text() == "65.25 ± 1.77 (2/3, missing s2)"
    zs = cell(report, "ZSCLIP", "VOC2007")
    assert zs.std == 0.0 and zs.difference == pytest.approx(76.0 - 76.2, abs=1e-12)
    empty = cell(report, "ZSCLIP", "NUS-WIDE")
    assert empty.values == {} and empty.mean is None and empty.text() == "(0/3, missing s1 s2 s3)"
    assert [c.cell.paper for c in report.cells[1]] == [77.3, 49.7, 37.4]  # ZSCLIP+DPT, SPEC 9

    lines = [[c.strip() for c in line.strip("|").split("|")] for line in rp.markdown(report).splitlines()
             if line.startswith("|") and not line.startswith("|--")]
    rows, base = {}, ""
    for line in lines[1:]:
        base = base if line[0] in ("paper", "Δ (ours - paper)") else line[0]
        rows[base if base == line[0] else f"{base} {line[0]}"] = line[1:]
    assert lines[0] == ["", "VOC2007", "MS-COCO", "NUS-WIDE"]
    voc_text = f"{statistics.mean(merged):.2f} ± {statistics.stdev(merged):.2f} (3/3)"
    assert voc_text == "88.17 ± 0.76 (3/3)"
    assert rows["TaI-DPT"] == [voc_text, "65.25 ± 1.77 (2/3, missing s2)", "(0/3, missing s1 s2 s3)"]
    assert rows["TaI-DPT paper"] == ["88.3", "65.1", "46.5"]
    assert rows["TaI-DPT Δ (ours - paper)"] == [f"{statistics.mean(merged) - 88.3:+.2f}", "+0.15", ""]
    assert rows["ZSCLIP"] == ["76.00 ± 0.00 (3/3)", "(0/3, missing s1 s2 s3)", "(0/3, missing s1 s2 s3)"]
    assert rows["ZSCLIP Δ (ours - paper)"] == ["-0.20", "", ""]


def test_expected_seeds_can_be_given(tree):
    report = rp.build_report(rp.scan_runs(tree), "table1", "real", seeds=[1, 2, 3, 4])
    assert cell(report, "TaI-DPT", "VOC2007").text().endswith("(3/4, missing s4)")


def test_csv_matches_the_cells(tree, tmp_path):
    text, paths = rp.write_report(rp.scan_runs(tree), "table1", str(tmp_path / "rep"))
    with open(paths[1]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["world"] for r in rows} == {"real"}
    voc = next(r for r in rows if r["row"] == "TaI-DPT" and r["column"] == "VOC2007")
    merged = [m for _, m in VOC_TAIDPT.values()]
    assert float(voc["mean"]) == statistics.mean(merged) and float(voc["std"]) == statistics.stdev(merged)
    assert (voc["seeds"], voc["expected"], voc["missing"], voc["paper"]) == ("3", "3", "", "88.3")
    assert float(voc["difference"]) == statistics.mean(merged) - 88.3
    coco = next(r for r in rows if r["row"] == "TaI-DPT" and r["column"] == "MS-COCO")
    assert (coco["seeds"], coco["missing"], coco["values"]) == ("2", "2", "1:64.0 3:66.5")
    nus = next(r for r in rows if r["row"] == "TaI" and r["column"] == "NUS-WIDE")
    assert nus["mean"] == "" and nus["seeds"] == "0" and nus["paper"] == "44.9"  # empty, not zero
    assert open(paths[0]).read() == text + "\n"


def test_synthetic_runs_get_their_own_table_without_the_paper(tree):
    for seed in (1, 2):
        write_results(tree, "synthetic-voc2007", "TaIDPT", seed, "Synthetic",
                      mAP_global=50.0 + seed, mAP_merged=60.0 + seed)
    # a synthetic result in a real dataset's folder is still synthetic
    write_results(tree, "nuswide", "TaIDPT", 1, "Synthetic", mAP_global=1.0, mAP_merged=2.0)
    runs = rp.scan_runs(tree)
    real = rp.build_report(runs, "table1", "real")
    synthetic = rp.build_report(runs, "table1", "synthetic")
    assert cell(real, "TaI-DPT", "NUS-WIDE").values == {}
    assert cell(real, "TaI-DPT", "VOC2007").values == {s: m for s, (_, m) in VOC_TAIDPT.items()}
    assert cell(synthetic, "TaI-DPT", "VOC2007").values == {1: 61.0, 2: 62.0}
    assert cell(synthetic, "TaI-DPT", "NUS-WIDE").values == {1: 2.0}
    text = rp.markdown(synthetic)
    assert "SYNTHETIC WORLD" in text and "paper" not in text.replace("with the paper", "")
    assert all(r[13] == "" and r[15] == "" for r in rp.csv_rows(synthetic))  # no paper, no difference
    both, _ = rp.write_report(runs, "table1", os.path.join(tree, "report"))
    assert both.index("Table 1: mAP") < both.index("SYNTHETIC WORLD")


def test_table3_average_over_proportions_per_seed(tmp_path):
    root = str(tmp_path)
    values = {}
    for seed in (1, 2):
        for i, p in enumerate(rp.PROPORTIONS):
            if seed == 2 and p == "0.9":
                continue  # seed 2 lacks 90%: no average for it
            values[seed, p] = 80.0 + i + seed
            write_results(root, "voc2007", f"DualCoOp/p{p}", seed, mAP=values[seed, p])
            write_ensemble(root, "voc2007", f"DualCoOpTaIDPT/p{p}", seed, best=values[seed, p] + 1)
    report = rp.build_report(rp.scan_runs(root), "table3", "real")
    average = cell(report, "VOC2007: DualCoOp", "Avg.")
    assert average.values == {1: statistics.mean(values[1, p] for p in rp.PROPORTIONS)}
    assert average.cell.paper == 94.1 and average.difference == pytest.approx(85.0 - 94.1, abs=1e-12)
    assert cell(report, "VOC2007: DualCoOp + TaI-DPT", "Avg.").values == {1: 86.0}
    assert cell(report, "VOC2007: DualCoOp", "90%").text() == "89.00 (1/2, missing s2)"  # 80 + 8 + 1
    assert cell(report, "MS-COCO: DualCoOp", "10%").cell.paper is None  # per-proportion: not in SPEC
    assert len(report.layout.columns) == 10 and len(report.layout.rows) == 6


def fill_fig6(root, dataset, world_prefix="", name="VOC2007"):
    expected = {}
    for seed in (1, 2, 3):
        for i, k in enumerate(rp.SHOTS):
            alone, merged = 40.0 + 5 * i + seed, 70.0 + i + 0.5 * seed
            write_results(root, world_prefix + dataset, f"CoOpML/k{k}", seed, name, mAP=alone)
            write_ensemble(root, world_prefix + dataset, f"CoOpML+TaIDPT/k{k}", seed, best=merged)
            expected.setdefault(("CoOp", k), []).append(alone)
            expected.setdefault(("CoOp + TaI-DPT", k), []).append(merged)
    return expected


def test_fig6_png_and_its_points_equal_the_report(tmp_path):
    root = str(tmp_path / "out")
    expected = fill_fig6(root, "voc2007")
    text, paths = rp.write_report(rp.scan_runs(root), "fig6", str(tmp_path / "rep"))
    png, points_file = (p for p in paths if p.endswith((".png", "_points.json")))
    image = Image.open(png)
    assert os.path.getsize(png) > 10_000
    assert image.size == (round(3 * rp.FIGURE_SIZE[0] * rp.FIGURE_DPI), round(rp.FIGURE_SIZE[1] * rp.FIGURE_DPI))
    assert np.asarray(image.convert("L")).std() > 10  # something is drawn
    points = json.load(open(points_file))
    with open(paths[1]) as f:
        rows = {(r["row"], r["column"]): r for r in csv.DictReader(f)}
    voc = points["VOC2007"]
    assert set(voc) == {"CoOp", "CoOp + TaI-DPT"} and points["MS-COCO"] == {"CoOp": [], "CoOp + TaI-DPT": []}
    for series, pts in voc.items():
        assert [p["x"] for p in pts] == [1, 2, 4, 8, 16]
        for p in pts:
            assert p["mean"] == statistics.mean(expected[series, p["column"]])
            assert p["std"] == statistics.stdev(expected[series, p["column"]]) and p["seeds"] == 3
            assert float(rows[f"VOC2007: {series}", p["column"]]["mean"]) == p["mean"]
    assert f"{statistics.mean(expected['CoOp', '16']):.2f}" in text


def test_fig7_columns_are_the_caption_counts_found_and_all(tmp_path):
    root = str(tmp_path)
    for n, value in ((400, 55.0), (100, 50.0), (1600, 58.0)):
        write_results(root, "synthetic-coco2014", f"TaIDPT/captions_{n}", 1, "Synthetic", mAP_merged=value)
    write_results(root, "synthetic-coco2014", "TaIDPT", 1, "Synthetic", mAP_merged=60.0)
    report = rp.build_report(rp.scan_runs(root), "fig7", "synthetic")
    assert report.layout.columns == ("100", "400", "1600", "all")
    assert report.layout.x_values == (100.0, 400.0, 1600.0, None)
    assert [c.mean for c in report.cells[1]] == [50.0, 55.0, 58.0, 60.0]
    _, paths = rp.write_report(rp.scan_runs(root), "fig7", os.path.join(root, "rep"))
    assert [os.path.basename(p) for p in paths] == ["fig7.md", "fig7.csv", "fig7_synthetic.png",
                                                    "fig7_synthetic_points.json"]
    pts = json.load(open(paths[3]))["MS-COCO"]["TaI-DPT"]
    assert [(p["x"], p["mean"]) for p in pts] == [(100.0, 50.0), (400.0, 55.0), (1600.0, 58.0), (None, 60.0)]


def test_cli_prints_and_writes(tree, capsys):
    assert taidpt_main(["report", tree, "--table", "table1"]) == 0
    out = capsys.readouterr().out
    assert "88.17 ± 0.76 (3/3)" in out and os.path.isfile(os.path.join(tree, "report", "table1.csv"))
    assert taidpt_main(["report", os.path.join(tree, "nowhere"), "--table", "table1"]) == 2


def test_a_result_without_the_metric_is_named(tmp_path):
    write_results(str(tmp_path), "voc2007", "TaIDPT", 1, mAP=1.0)
    with pytest.raises(KeyError, match="results_test.json has no 'mAP_global'"):
        rp.build_report(rp.scan_runs(str(tmp_path)), "table1", "real")
