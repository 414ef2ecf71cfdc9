"""The paper's tables and figures from run folders (``taidpt report``; scripts/paper/).

Runs live under ``OUTPUT/<dataset>/<run>/seed<S>/`` (``<run>`` a method folder, optionally with a
setting folder, e.g. ``TaIDPT``, ``DualCoOp/p0.1``), each holding ``results_test.json``
(train.py) or ``ensemble.json`` (``taidpt ensemble``). A folder ``synthetic-<dataset>``, or a
result whose dataset is the synthetic world, belongs to the synthetic world: its cells are
reported in a table of their own, never mixed with real numbers nor compared with the paper.

A layout (:data:`LAYOUTS`, name -> builder) is the paper's table: columns, and rows of cells, each
cell naming a dataset, a run and a result key, with the paper's number and where it comes from.
:func:`build_report` fills every cell with the mean, the sample std and the seeds found (a cell
without runs stays empty, with its count: never zero). Numpy only, no torch.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tabulate import tabulate

from taidpt.extras import require
from taidpt.io import atomic_write

SYNTHETIC_PREFIX = "synthetic-"
SYNTHETIC_DATASET = "Synthetic"  # cfg.DATASET.NAME of the synthetic world in results_*.json
RESULT_FILES = ("results_test.json", "ensemble.json")
SEED_DIR = re.compile(r"seed(\d+)$")
WORLDS = ("real", "synthetic")

DATASETS = {"voc2007": "VOC2007", "coco2014": "MS-COCO", "nuswide": "NUS-WIDE"}
SPEC9 = "SPEC 9"
SPEC7 = "SPEC 7"
# SPEC 9 (the paper's Table 1): method -> (VOC2007, MS-COCO, NUS-WIDE)
TABLE1_PAPER = {"ZSCLIP": (76.2, 47.3, 36.4), "ZSCLIP+DPT": (77.3, 49.7, 37.4),
                "TaI": (86.0, 61.1, 44.9), "TaI-DPT": (88.3, 65.1, 46.5)}
# SPEC 9 (the paper's Table 4, TaI-DPT): loss -> (VOC2007, MS-COCO, NUS-WIDE)
TABLE4_PAPER = {"BCE": (84.9, 59.0, 40.5), "ASL": (84.6, 56.9, 36.0), "ranking": (88.3, 65.1, 46.5)}
# SPEC 9 (the paper's Table 3, average over 10% .. 90%): dataset -> (DualCoOp, + TaI-DPT)
TABLE3_PAPER_AVG = {"coco2014": (83.3, 83.6), "voc2007": (94.1, 94.8), "nuswide": (57.2, 58.3)}
PROPORTIONS = ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9")
SHOTS = ("1", "2", "4", "8", "16")


@dataclass(frozen=True)
class Cell:
    """What fills one cell: ``metric`` of ``OUTPUT/<dataset>/<run>/seed<S>/`` (a results key such
    as ``mAP_merged``, or an ``ensemble.json`` key such as ``best_mAP``); with ``average_of``, the
    per-seed mean of those cells instead (e.g. Table 3's average over proportions)."""

    dataset: str
    run: str = ""
    metric: str = "mAP"
    paper: Optional[float] = None
    source: str = ""
    average_of: Tuple["Cell", ...] = ()


@dataclass(frozen=True)
class Row:
    label: str
    cells: Tuple[Optional[Cell], ...]  # one per column (None: the paper has no such cell)


@dataclass(frozen=True)
class Layout:
    """A table of the paper; ``x_values`` (one number per column, ``None`` for a column drawn as a
    horizontal line) makes it a figure too, one panel per dataset."""

    name: str
    title: str
    columns: Tuple[str, ...]
    rows: Tuple[Row, ...]
    x_label: str = ""
    x_values: Tuple[Optional[float], ...] = ()


@dataclass
class CellResult:
    """A filled cell: per-seed values, the seeds expected, mean and sample std (None when empty)."""

    cell: Cell
    values: Dict[int, float]
    expected: Tuple[int, ...]

    @property
    def missing(self) -> List[int]:
        return [s for s in self.expected if s not in self.values]

    @property
    def mean(self) -> Optional[float]:
        return statistics.mean(self.values.values()) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values.values()) if len(self.values) > 1 else None

    @property
    def difference(self) -> Optional[float]:
        return None if self.mean is None or self.cell.paper is None else self.mean - self.cell.paper

    def text(self) -> str:
        """``mean ± std (n/N)``; ``(n/N, missing s2)`` when seeds are missing; empty: ``(0/N)``."""
        count = f"{len(self.values)}/{len(self.expected)}"
        if self.missing:
            count += ", missing " + " ".join(f"s{s}" for s in self.missing)
        if self.mean is None:
            return f"({count})"
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.mean:.2f}{spread} ({count})"


@dataclass
class Runs:
    """``values[world][(dataset, run)][seed]`` = the run's record (results dict or ensemble.json)."""

    root: str
    records: Dict[str, Dict[Tuple[str, str], Dict[int, dict]]] = field(
        default_factory=lambda: {world: {} for world in WORLDS})

    def seeds(self, world: str) -> List[int]:
        return sorted({s for by_seed in self.records[world].values() for s in by_seed})

    def settings(self, world: str, method: str, prefix: str) -> List[str]:
        """The ``<prefix><x>`` setting folders of ``method`` found in ``world`` (e.g. captions_N)."""
        found = {run.split("/", 1)[1] for _, run in self.records[world] if run.startswith(method + "/")}
        return sorted((s for s in found if s.startswith(prefix)), key=lambda s: float(s[len(prefix):]))


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable results file ({err}); delete it and rerun the "
                         "script to redo that run.") from None


def _is_synthetic(folder: str, record: dict, path: str) -> bool:
    if folder.startswith(SYNTHETIC_PREFIX) or record.get("dataset") == SYNTHETIC_DATASET:
        return True
    run_a = record.get("runs", {}).get("a", "") if os.path.basename(path) == "ensemble.json" else ""
    results_a = os.path.join(run_a, "results_test.json")
    return bool(run_a) and os.path.isfile(results_a) and _read_json(results_a).get("dataset") == SYNTHETIC_DATASET


def scan_runs(root: str) -> Runs:
    """Every ``results_test.json`` / ``ensemble.json`` in a ``seed<S>`` folder under ``root``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such folder; give the OUTPUT of the scripts/paper/ runs.")
    runs = Runs(root)
    for name in RESULT_FILES:
        for path in glob.glob(os.path.join(glob.escape(root), "**", name), recursive=True):
            parts = os.path.relpath(path, root).split(os.sep)
            match = SEED_DIR.fullmatch(parts[-2]) if len(parts) >= 4 else None
            if not match:
                continue
            record = _read_json(path)
            world = "synthetic" if _is_synthetic(parts[0], record, path) else "real"
            dataset = parts[0][len(SYNTHETIC_PREFIX):] if parts[0].startswith(SYNTHETIC_PREFIX) else parts[0]
            values = record.get("results", record)
            runs.records[world].setdefault((dataset, "/".join(parts[1:-2])), {})[int(match.group(1))] = {
                **values, "_path": path}
    return runs


def cell_values(runs: Runs, world: str, cell: Cell) -> Dict[int, float]:
    """``{seed: value}`` of a cell (an ``average_of`` cell: the seeds that have every part)."""
    if cell.average_of:
        parts = [cell_values(runs, world, part) for part in cell.average_of]
        seeds = set.intersection(*(set(p) for p in parts)) if parts else set()
        return {s: statistics.mean(p[s] for p in parts) for s in sorted(seeds)}
    out = {}
    for seed, record in runs.records[world].get((cell.dataset, cell.run), {}).items():
        if cell.metric not in record:
            raise KeyError(f"{record['_path']} has no {cell.metric!r} (keys: "
                           f"{', '.join(k for k in record if not k.startswith('_'))}); is it the run "
                           f"the {cell.run} cells expect?")
        out[seed] = float(record[cell.metric])
    return out


def _row_per_dataset(label: str, run: str, metric: str, paper: Optional[Sequence[float]],
                     source: str = SPEC9) -> Row:
    return Row(label, tuple(Cell(d, run, metric, paper[i] if paper else None, source if paper else "")
                            for i, d in enumerate(DATASETS)))


def table1(runs: Runs, world: str) -> Layout:
    rows = [("ZSCLIP", "ZeroshotCLIP", "mAP_global"), ("ZSCLIP+DPT", "ZeroshotCLIP", "mAP_merged"),
            ("TaI", "TaIDPT", "mAP_global"), ("TaI-DPT", "TaIDPT", "mAP_merged")]
    return Layout("table1", "Table 1: mAP (%) without image labels (captions only)",
                  tuple(DATASETS.values()),
                  tuple(_row_per_dataset(label, run, metric, TABLE1_PAPER[label]) for label, run, metric in rows))


def table2(runs: Runs, world: str) -> Layout:
    return Layout("table2", "Table 2: mAP (%) on the 16 novel classes of MS-COCO (zero-shot)",
                  ("MS-COCO (16 novel classes)",),
                  (Row("ZSCLIP", (Cell("coco2014", "ZeroshotCLIP/novel", "mAP_global", 40.2, SPEC7),)),
                   Row("TaI-DPT", (Cell("coco2014", "TaIDPT/novel", "mAP_merged", 59.2, SPEC7),))))


def table3(runs: Runs, world: str) -> Layout:
    rows = []
    for dataset in ("coco2014", "voc2007", "nuswide"):
        for i, (label, run, metric) in enumerate((("DualCoOp", "DualCoOp", "mAP"),
                                                  ("DualCoOp + TaI-DPT", "DualCoOpTaIDPT", "best_mAP"))):
            cells = tuple(Cell(dataset, f"{run}/p{p}", metric) for p in PROPORTIONS)
            average = Cell(dataset, paper=TABLE3_PAPER_AVG[dataset][i], source=SPEC9, average_of=cells)
            rows.append(Row(f"{DATASETS[dataset]}: {label}", cells + (average,)))
    return Layout("table3", "Table 3: mAP (%) with partial labels (proportion of known labels)",
                  tuple(f"{round(100 * float(p))}%" for p in PROPORTIONS) + ("Avg.",), tuple(rows))


def table4(runs: Runs, world: str) -> Layout:
    losses = (("BCE", "TaIDPT/loss_bce"), ("ASL", "TaIDPT/loss_asl_mean"), ("ranking", "TaIDPT"))
    rows = [_row_per_dataset(f"TaI, {loss}", run, "mAP_global", None) for loss, run in losses]
    rows += [_row_per_dataset(f"TaI-DPT, {loss}", run, "mAP_merged", TABLE4_PAPER[loss]) for loss, run in losses]
    return Layout("table4", "Table 4: mAP (%) by training loss", tuple(DATASETS.values()), tuple(rows))


def fig6(runs: Runs, world: str) -> Layout:
    rows = []
    for dataset, name in DATASETS.items():
        rows.append(Row(f"{name}: CoOp", tuple(Cell(dataset, f"CoOpML/k{k}", "mAP") for k in SHOTS)))
        rows.append(Row(f"{name}: CoOp + TaI-DPT",
                        tuple(Cell(dataset, f"CoOpML+TaIDPT/k{k}", "best_mAP") for k in SHOTS)))
    return Layout("fig6", "Figure 6: mAP (%) of few-shot CoOp, alone and + TaI-DPT", SHOTS, tuple(rows),
                  "shots per class", tuple(float(k) for k in SHOTS))


def fig7(runs: Runs, world: str) -> Layout:
    settings = runs.settings(world, "TaIDPT", "captions_")
    counts = [s[len("captions_"):] for s in settings]
    rows = tuple(Row(f"{name}: TaI-DPT", tuple(Cell(dataset, f"TaIDPT/{s}", "mAP_merged") for s in settings)
                     + (Cell(dataset, "TaIDPT", "mAP_merged"),)) for dataset, name in DATASETS.items())
    return Layout("fig7", "Figure 7: mAP (%) of TaI-DPT by number of training captions",
                  tuple(counts) + ("all",), rows, "training captions",
                  tuple(float(c) for c in counts) + (None,))


# name -> layout builder (runs, world): add a layout here to report another table.
LAYOUTS: Dict[str, Callable[[Runs, str], Layout]] = {
    "table1": table1, "table2": table2, "table3": table3, "table4": table4, "fig6": fig6, "fig7": fig7}


@dataclass
class Report:
    """One world's filled layout: ``cells[r][c]`` (None where the paper has no cell)."""

    layout: Layout
    world: str
    cells: List[List[Optional[CellResult]]]


def build_report(runs: Runs, name: str, world: str, seeds: Sequence[int] = ()) -> Report:
    """Fill layout ``name`` from ``world``'s runs; expected seeds: ``seeds``, else every seed found
    in the layout's cells."""
    if name not in LAYOUTS:
        raise ValueError(f"Unknown table {name!r}; choose one of {', '.join(LAYOUTS)}.")
    layout = LAYOUTS[name](runs, world)
    values = [[None if cell is None else cell_values(runs, world, cell) for cell in row.cells]
              for row in layout.rows]
    found = sorted({s for row in values for v in row if v for s in v})
    expected = tuple(sorted(seeds)) if seeds else tuple(found)
    cells = [[None if cell is None else CellResult(cell, v, expected)
              for cell, v in zip(row.cells, row_values)] for row, row_values in zip(layout.rows, values)]
    return Report(layout, world, cells)


def has_runs(report: Report) -> bool:
    return any(c is not None and c.values for row in report.cells for c in row)


def markdown(report: Report) -> str:
    """The layout as a Markdown table: ``mean ± std (n/N)`` per cell; for real runs, a ``paper``
    and a ``Δ`` (ours - paper) line under each row that has paper numbers."""
    layout = report.layout
    synthetic = report.world == "synthetic"
    lines = []
    for row, cells in zip(layout.rows, report.cells):
        lines.append([row.label] + ["" if c is None else c.text() for c in cells])
        if synthetic or not any(c is not None and c.cell.paper is not None for c in cells):
            continue
        lines.append(["  paper"] + ["" if c is None or c.cell.paper is None else f"{c.cell.paper:.1f}"
                                    for c in cells])
        lines.append(["  Δ (ours - paper)"] + ["" if c is None or c.difference is None else f"{c.difference:+.2f}"
                                               for c in cells])
    title = layout.title + (" — SYNTHETIC WORLD (tiny CLIP): not comparable with the paper"
                            if synthetic else "")
    sources = sorted({c.cell.source for row in report.cells for c in row if c is not None and c.cell.source})
    note = ("cells: mean ± sample std over seeds (seeds found / expected); empty cells have no run yet"
            + ("" if synthetic else f"; paper numbers from {', '.join(sources) or 'nowhere'}"
               " (cells without one: not in SPEC)"))
    return "\n".join([f"### {title}", "", tabulate(lines, headers=[""] + list(layout.columns),
                                                   tablefmt="github", disable_numparse=True), "", note])


CSV_HEADER = ("table", "world", "row", "column", "dataset", "run", "metric", "seeds", "expected",
              "missing", "values", "mean", "std", "paper", "paper_source", "difference")


def csv_rows(report: Report) -> List[List[str]]:
    """One CSV row per cell (:data:`CSV_HEADER`); empty strings where a value does not exist."""

    def number(x: Optional[float]) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))

    out = []
    for row, cells in zip(report.layout.rows, report.cells):
        for column, c in zip(report.layout.columns, cells):
            if c is None:
                continue
            run = "avg(" + ", ".join(p.run for p in c.cell.average_of) + ")" if c.cell.average_of else c.cell.run
            paper = None if report.world == "synthetic" else c.cell.paper
            out.append([report.layout.name, report.world, row.label, column, c.cell.dataset, run,
                        c.cell.metric, str(len(c.values)), str(len(c.expected)),
                        " ".join(map(str, c.missing)), " ".join(f"{s}:{v!r}" for s, v in sorted(c.values.items())),
                        number(c.mean), number(c.std), number(paper),
                        c.cell.source if paper is not None else "",
                        number(c.difference if paper is not None else None)])
    return out


def figure_points(report: Report) -> Dict[str, Dict[str, List[dict]]]:
    """What a figure draws: per dataset panel, per series (row label), the points ``{x, column,
    mean, std, seeds}`` of the cells that have runs (``x`` None: a horizontal line)."""
    panels: Dict[str, Dict[str, List[dict]]] = {}
    for row, cells in zip(report.layout.rows, report.cells):
        panel, _, series = row.label.partition(": ")
        points = [{"x": x, "column": column, "mean": c.mean, "std": c.std, "seeds": len(c.values)}
                  for x, column, c in zip(report.layout.x_values, report.layout.columns, cells)
                  if c is not None and c.values]
        panels.setdefault(panel, {})[series] = points
    return panels


FIGURE_SIZE = (4.0, 3.2)  # inches per panel
FIGURE_DPI = 100


def draw_figure(report: Report, path: str) -> Dict[str, Dict[str, List[dict]]]:
    """Draw the figure of ``report`` (one panel per dataset) into the PNG ``path``; return the
    points drawn (:func:`figure_points`). The paper's own points are drawn where the layout has
    them (hollow markers); the paper's figures have no numbers in SPEC, so none are drawn today."""
    matplotlib = require("matplotlib", "The report's figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = figure_points(report)
    fig, axes = plt.subplots(1, len(points), figsize=(FIGURE_SIZE[0] * len(points), FIGURE_SIZE[1]),
                             squeeze=False, dpi=FIGURE_DPI)
    for ax, (panel, series) in zip(axes[0], points.items()):
        for i, (label, pts) in enumerate(series.items()):
            colour = f"C{i}"
            curve = [p for p in pts if p["x"] is not None]
            if curve:
                ax.errorbar([p["x"] for p in curve], [p["mean"] for p in curve],
                            yerr=[p["std"] or 0.0 for p in curve], marker="o", capsize=3, color=colour,
                            label=f"{label} (ours)")
            for p in pts:
                if p["x"] is None:
                    ax.axhline(p["mean"], ls="--", color=colour, lw=1, label=f"{label}, {p['column']} (ours)")
        paper = [(x, c.cell.paper) for row, cells in zip(report.layout.rows, report.cells)
                 if row.label.startswith(panel + ":") for x, c in zip(report.layout.x_values, cells)
                 if c is not None and c.cell.paper is not None and x is not None]
        if paper and report.world == "real":
            ax.plot(*zip(*paper), "s", mfc="none", color="k", label="paper")
        ax.set_xscale("log", base=2)
        ax.set_title(panel + (" (synthetic)" if report.world == "synthetic" else ""), fontsize=9)
        ax.set_xlabel(report.layout.x_label)
        ax.set_ylabel("mAP (%)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=FIGURE_DPI))
    plt.close(fig)
    return points


def write_report(runs: Runs, name: str, out_dir: str, seeds: Sequence[int] = ()) -> Tuple[str, List[str]]:
    """The Markdown of layout ``name`` for each world with runs (real first), and the files written
    into ``out_dir`` (atomically): ``<name>.md``, ``<name>.csv`` and, for a figure, per world
    ``<name>[_synthetic].png`` with the points it draws in ``<name>[_synthetic]_points.json``."""
    reports = [build_report(runs, name, world, seeds) for world in WORLDS]
    shown = [r for r in reports if has_runs(r)] or reports[:1]
    text = "\n\n".join(markdown(r) for r in shown)
    paths = [os.path.join(out_dir, f"{name}.md"), os.path.join(out_dir, f"{name}.csv")]
    atomic_write(paths[0], lambda f: f.write((text + "\n").encode()))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for report in shown:
        writer.writerows(csv_rows(report))
    atomic_write(paths[1], lambda f: f.write(buffer.getvalue().encode()))
    for report in shown:
        if not report.layout.x_values or not has_runs(report):
            continue
        stem = os.path.join(out_dir, name + ("_synthetic" if report.world == "synthetic" else ""))
        points = draw_figure(report, stem + ".png")
        atomic_write(stem + "_points.json", lambda f: f.write(json.dumps(points, indent=2).encode()))
        paths += [stem + ".png", stem + "_points.json"]
    return text, paths
