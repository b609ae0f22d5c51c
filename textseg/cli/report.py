"""``textseg report``: gather ``test_metrics.json`` files into the papers' result tables (Markdown, CSV, plot).

The runs are read by :mod:`textseg.cli.runs` (one :class:`~textseg.cli.runs.RunResult` per run and dataset). The
tables follow the layout of the Semi-MedRef and TextMoE papers: one row per method (+ backbone, + every setting that
distinguishes runs of the same cell: ablation switches, epochs, batch limits...), one column per dataset x label
ratio, each cell the mean ± sample standard deviation over seeds of pooled Dice / IoU (the papers' convention) and,
in a second table, of LViT's per-image Dice / IoU (``docs/data.md`` §10.3), in percent, with the number of seeds; a
third gives HD95 in pixels, lower is better (§10.4; ``n/a`` for runs tested before it existed). A run trained on
composite data (TextMoE: QaTa + MosMed) contributes one cell per dataset its test split held; a dataset evaluated
nowhere leaves its cell empty.

Outputs in ``--out``: ``report.md``, ``results.csv`` (one row per cell, values in [0, 1], HD95 in pixels), ``runs.csv``
(one row per run) and ``dice_vs_ratio.png`` (pooled Dice against the label ratio: a panel per dataset, a line per row).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textseg.cli.runs import METRICS, OPTIONAL_METRICS, SEED_KEYS, RunResult, find_metric_files, load_run
from textseg.engine.runfiles import METRICS_FILE
from textseg.errors import DataError

__all__ = [
    "METRICS",
    "OPTIONAL_METRICS",
    "Cell",
    "RunResult",
    "aggregate",
    "find_metric_files",
    "load_run",
    "main",
    "markdown_tables",
    "plot_dice_vs_ratio",
    "write_report",
]

#: Display names of datasets (others are shown as they are).
DATASET_TITLES: dict[str, str] = {"qata": "QaTa-COV19", "mosmed": "MosMedData+"}
#: Column order of datasets (others follow alphabetically).
DATASET_ORDER: tuple[str, ...] = ("qata", "mosmed")
#: Axis labels of the metrics.
METRIC_LABELS: dict[str, str] = {
    "dice": "pooled Dice",
    "iou": "pooled IoU",
    "dice_per_image": "per-image Dice (LViT)",
    "iou_per_image": "per-image IoU (LViT)",
    "hd95": "HD95 (lower is better)",
}
#: Scale of the displayed values (percent, as in the papers).
PERCENT = 100.0
#: Displayed scale and unit of each metric: overlaps in percent, HD95 in pixels as computed.
METRIC_SCALE: dict[str, tuple[float, str]] = {m: (1.0, "px") if m == "hd95" else (PERCENT, "%") for m in METRICS}


@dataclass
class Cell:
    """The runs of one table cell and their statistics.

    Attributes:
        row: Row label.
        method: Method.
        backbone: Backbone.
        trained_on: Training data.
        variant: ``key=value`` pairs distinguishing the row from other rows of the same method and backbone.
        dataset: Column dataset.
        labeled_ratio: Column label ratio.
        runs: The runs (one per seed).
    """

    row: str
    method: str
    backbone: str
    trained_on: str
    variant: str
    dataset: str
    labeled_ratio: float
    runs: list[RunResult] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of seeds."""
        return len(self.runs)

    def mean(self, metric: str) -> float:
        """Mean of a metric over seeds (NaN if a run lacks it: a mean over fewer seeds would hide it)."""
        return statistics.fmean(r.metrics[metric] for r in self.runs)

    def std(self, metric: str) -> float:
        """Sample standard deviation (n - 1) of a metric over seeds; NaN for a single seed or if a run lacks it."""
        values = [r.metrics[metric] for r in self.runs]
        return statistics.stdev(values) if len(values) > 1 and not any(map(math.isnan, values)) else math.nan


# -------------------------------------------------------------------------------------------------- aggregation


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def aggregate(results: Sequence[RunResult]) -> tuple[list[Cell], list[str]]:
    """Group results into table cells.

    Rows are (method, backbone, training data, variant). The variant lists the settings (:attr:`RunResult.settings`:
    model, data and trainer; seeds excluded) whose values differ between runs of the same method, backbone, training
    data, dataset and label ratio, so ablation runs, and a 2-batch smoke run beside the real one, get their own rows,
    while settings that only change with the ratio (e.g. ``lambda_u=0`` at 100 %) do not split a row. Runs are merged
    only when every setting agrees; a seed seen twice among them keeps the newest run (a warning says which).

    Args:
        results: The runs.

    Returns:
        The cells (sorted by row, dataset, ratio) and warnings.
    """
    families: dict[tuple[str, str, str], list[RunResult]] = defaultdict(list)
    for r in results:
        families[(r.method, r.backbone, r.trained_on)].append(r)
    cells: dict[tuple[str, str, float], Cell] = {}
    warnings: list[str] = []
    for (method, backbone, trained_on), runs in families.items():
        by_cell: dict[tuple[str, float], list[RunResult]] = defaultdict(list)
        for r in runs:
            by_cell[(r.dataset, r.labeled_ratio)].append(r)
        vary: set[str] = set()
        for members in by_cell.values():
            keys = {k for r in members for k in r.settings} - SEED_KEYS
            # a setting a run does not record is unknown, not different
            vary.update(k for k in keys if len({_canon(r.settings[k]) for r in members if k in r.settings}) > 1)
        for r in sorted(runs, key=lambda x: x.mtime):
            variant = ", ".join(f"{k}={_short(r.settings[k])}" for k in sorted(vary) if k in r.settings)
            row = f"{method} ({backbone})"
            if variant:
                row += f" [{variant}]"
            if "+" in trained_on:
                row += f" trained on {trained_on}"
            key = (row, r.dataset, r.labeled_ratio)
            cell = cells.setdefault(key, Cell(row, method, backbone, trained_on, variant, r.dataset, r.labeled_ratio))
            same = [old for old in cell.runs if old.seed == r.seed]
            for old in same:
                warnings.append(f"seed {r.seed} twice in {row}, {r.dataset} {r.labeled_ratio:g}: using {r.path}")
                cell.runs.remove(old)
            cell.runs.append(r)
    ordered = sorted(cells.values(), key=lambda c: (c.row, _dataset_rank(c.dataset), c.labeled_ratio))
    return ordered, warnings


def _dataset_rank(name: str) -> tuple[int, str]:
    return (DATASET_ORDER.index(name), "") if name in DATASET_ORDER else (len(DATASET_ORDER), name)


def _column_title(dataset: str, ratio: float) -> str:
    return f"{DATASET_TITLES.get(dataset, dataset)} {ratio * PERCENT:g}%"


def _pm(cell: Cell, metric: str) -> str:
    scale = METRIC_SCALE[metric][0]
    mean, std = cell.mean(metric) * scale, cell.std(metric) * scale
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


#: The Markdown tables: title and the metrics shown in each cell (``a / b``).
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Pooled Dice / IoU (%), mean ± std over seeds", ("dice", "iou")),
    ("Per-image Dice / IoU (%, LViT), mean ± std over seeds", ("dice_per_image", "iou_per_image")),
    ("HD95 (pixels at the evaluated resolution, lower is better), mean ± std over seeds", ("hd95",)),
)


def markdown_tables(cells: Sequence[Cell]) -> str:
    """The :data:`TABLES` in Markdown (mean ± std over seeds, n seeds); one that no run has a value for is left out."""
    columns = sorted({(c.dataset, c.labeled_ratio) for c in cells}, key=lambda k: (_dataset_rank(k[0]), k[1]))
    rows = list(dict.fromkeys(c.row for c in cells))
    index = {(c.row, c.dataset, c.labeled_ratio): c for c in cells}
    parts = []
    for title, metrics in TABLES:
        if not any(not math.isnan(r.metrics[m]) for c in cells for r in c.runs for m in metrics):
            continue
        header = "| method | " + " | ".join(_column_title(d, r) for d, r in columns) + " |"
        lines = [f"### {title}", "", header, "|---|" + "---|" * len(columns)]
        for row in rows:
            values = []
            for d, r in columns:
                cell = index.get((row, d, r))
                values.append("" if cell is None else " / ".join(_pm(cell, m) for m in metrics) + f" (n={cell.n})")
            lines.append(f"| {row} | " + " | ".join(values) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------------- output


def _fmt(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def write_csv(cells: Sequence[Cell], path: Path) -> Path:
    """One row per cell: means and sample standard deviations (in [0, 1]; HD95 in pixels), seeds and run folders."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        stats = [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
        keys = ["method", "backbone", "trained_on", "variant", "dataset", "labeled_ratio", "n_seeds", "seeds"]
        writer.writerow([*keys, *stats, "runs"])
        for c in cells:
            values = [_fmt(f(m)) for m in METRICS for f in (c.mean, c.std)]
            seeds = ";".join(str(r.seed) for r in c.runs)
            runs = ";".join(str(r.path.parent) for r in c.runs)
            facts = [c.method, c.backbone, c.trained_on, c.variant, c.dataset, f"{c.labeled_ratio:g}", c.n, seeds]
            writer.writerow([*facts, *values, runs])
    return path


def write_runs_csv(cells: Sequence[Cell], path: Path) -> Path:
    """One row per run and dataset."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "row", "dataset", "labeled_ratio", "seed", *METRICS])
        for c in cells:
            for r in c.runs:
                metrics = [_fmt(r.metrics[m]) for m in METRICS]
                writer.writerow([str(r.path.parent), c.row, c.dataset, f"{c.labeled_ratio:g}", r.seed, *metrics])
    return path


def plot_dice_vs_ratio(cells: Sequence[Cell], path: Path, metric: str = "dice") -> Path:
    """Plot a metric (default pooled Dice, in percent) against the label ratio: one panel per dataset, one line per row.

    Dice and IoU are drawn in percent, HD95 in pixels (:data:`METRIC_SCALE`).

    Args:
        cells: The cells.
        path: PNG file to write.
        metric: One of :data:`METRICS`.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, unit = METRIC_SCALE[metric]
    datasets = sorted({c.dataset for c in cells}, key=_dataset_rank)
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(5.5 * max(1, len(datasets)), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=False):
        rows = list(dict.fromkeys(c.row for c in cells if c.dataset == dataset))
        for row in rows:
            members = sorted((c for c in cells if c.dataset == dataset and c.row == row), key=lambda c: c.labeled_ratio)
            x = [c.labeled_ratio * PERCENT for c in members]
            y = [c.mean(metric) * scale for c in members]
            err = [0.0 if math.isnan(c.std(metric)) else c.std(metric) * scale for c in members]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=row)
        ax.set_xscale("log")
        ax.minorticks_off()
        ticks = sorted({c.labeled_ratio * PERCENT for c in cells if c.dataset == dataset})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_xlabel("labeled data (%)")
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} ({unit})")
        ax.set_title(DATASET_TITLES.get(dataset, dataset))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(dirs: Sequence[str | Path], out: str | Path) -> tuple[str, list[Path]]:
    """Gather the runs under ``dirs`` and write ``report.md``, ``results.csv``, ``runs.csv`` and the plot to ``out``.

    Args:
        dirs: Run folders (searched recursively for ``test_metrics.json``).
        out: Output folder (created).

    Returns:
        The Markdown text and the files written.

    Raises:
        DataError: If no ``test_metrics.json`` is found or a file is malformed.
    """
    files = find_metric_files(dirs)
    if not files:
        raise DataError(f"no {METRICS_FILE} under {', '.join(str(d) for d in dirs)}")
    results = [r for f in files for r in load_run(f)]
    cells, warnings = aggregate(results)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = f"# textseg results ({len(files)} test_metrics.json files)\n\n" + markdown_tables(cells)
    if warnings:
        text += "\nWarnings:\n\n" + "\n".join(f"- {w}" for w in warnings) + "\n"
    md = out_dir / "report.md"
    md.write_text(text, encoding="utf-8")
    written = [
        md,
        write_csv(cells, out_dir / "results.csv"),
        write_runs_csv(cells, out_dir / "runs.csv"),
        plot_dice_vs_ratio(cells, out_dir / "dice_vs_ratio.png"),
    ]
    return text, written


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``textseg report RUNS_DIR... [--out DIR]``.

    Args:
        argv: Arguments after ``report``.

    Returns:
        0 on success, 1 when no run was found or a file is malformed.
    """
    parser = argparse.ArgumentParser(
        prog="textseg report", description="Gather test_metrics.json files into the papers' result tables."
    )
    parser.add_argument("runs", nargs="+", help="run folders (searched recursively) or test_metrics.json files")
    parser.add_argument("--out", default="report", help="output folder (default: report)")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        text, written = write_report(args.runs, args.out)
    except DataError as exc:
        print(f"textseg report: {exc}")
        return 1
    print(text)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
