"""DataModule throughput: samples/s per worker of the training loaders at 224 px ("Speed and scale").

Generates a synthetic referring dataset of 224² PNGs (``TextSegDataModule(dataset="synthetic",
dataset_options={"synthetic": {"image_size": 224}})``, the SGSeg layout that the QaTa reader parses), then measures
the DataModule's own training loaders -- ``labeled`` (weak view + mask) and ``unlabeled`` (weak **and** strong
view), taken from ``train_dataloader().iterables`` -- for each ``num_workers``:

* startup: seconds from ``iter(loader)`` to the first batch (worker start included);
* steady state: after ``num_workers + 1`` warm-up batches (the burst prefetched while the workers started), the
  samples/s over the next ``--batches`` batches, with nothing else running in the main process (an upper bound of
  what the loader can feed). Per worker = samples/s divided by ``max(1, num_workers)``.

Configurations (loader x workers) run interleaved -- every round runs each once, in reversed order on odd rounds --
each with a fresh loader whose workers are shut down before the next starts (so idle workers never prefetch while
another is timed), and medians over the rounds are reported.

A per-transform breakdown (ms per sample of every MONAI transform of both pipelines, in the main process) shows where
a sample's time goes. The rate a training step consumes is read from ``results_step_time.json`` when present.

Memory: peak RSS of the main process (``resource.getrusage``) and the largest peak RSS (``VmHWM``) of any worker
process, read from ``/proc`` just before the workers shut down (it counts the pages a forked worker shares with the
parent).

Usage (CPU, about 3 minutes)::

    python benchmarks/data_throughput.py --workers 0 1 2 --rounds 3 --batches 8 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import resource
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from monai.data import get_track_meta, set_track_meta
from report_utils import add_threads_argument, cpu_string, environment, fmt_bytes, median, set_threads
from torch.utils.data import DataLoader

from textseg import TextSegDataModule

#: Loaders of the training step and what each sample holds.
LOADERS = {"labeled": "weak view + mask", "unlabeled": "weak + strong view"}
#: Target of the issue: samples/s per worker with both views at 224 px.
DEFAULT_TARGET = 300.0
#: Unit of ``VmHWM`` values (kB).
KIB = 1024
#: Clock ticks per second of ``/proc/<pid>/stat`` CPU times.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ------------------------------------------------------------------------------------------------------- memory
def _child_pids() -> list[int]:
    """PIDs of this process's children (DataLoader workers), from ``/proc/self/task/*/children``."""
    pids: list[int] = []
    try:
        for task in Path("/proc/self/task").iterdir():
            text = (task / "children").read_text()
            pids.extend(int(p) for p in text.split())
    except OSError:
        return []
    return pids


def _peak_rss(pid: int) -> int | None:
    """Peak resident set size (``VmHWM``) of process ``pid`` in bytes, or ``None`` if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KIB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (``/proc/<pid>/stat`` fields 14-15), or ``None``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def workers_cpu_seconds(pids: Sequence[int]) -> float | None:
    """Total CPU seconds of the given worker processes, ``None`` if any is unreadable."""
    values = [_cpu_seconds(p) for p in pids]
    return None if not values or any(v is None for v in values) else sum(v for v in values if v is not None)


def workers_peak_rss() -> int | None:
    """Largest ``VmHWM`` among the live child processes, ``None`` when there are none (or ``/proc`` is absent)."""
    values = [v for v in (_peak_rss(p) for p in _child_pids()) if v is not None]
    return max(values) if values else None


def self_peak_rss() -> int:
    """Peak RSS of this process in bytes (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB


# -------------------------------------------------------------------------------------------------- measurement
def make_datamodule(args: argparse.Namespace, root: Path, workers: int) -> TextSegDataModule:
    """The DataModule under test (synthetic 224 px data, ``workers`` per loader), set up for fitting."""
    dm = TextSegDataModule(
        dataset="synthetic",
        root=str(root),
        labeled_ratio=args.labeled_ratio,
        image_size=args.image_size,
        batch_size=args.batch_size,
        unlabeled_batch_size=args.unlabeled_batch_size,
        num_workers=workers,
        seed=args.seed,
        check=args.check,
        dataset_options={
            "synthetic": {
                "n_train": args.n_train,
                "n_val": args.n_eval,
                "n_test": args.n_eval,
                "image_size": args.image_size,
            }
        },
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def train_loader(dm: TextSegDataModule, kind: str) -> DataLoader:
    """The DataModule's ``labeled`` or ``unlabeled`` training loader."""
    loaders: Any = dm.train_dataloader().iterables
    loader = loaders.get(kind) if isinstance(loaders, dict) else None
    if not isinstance(loader, DataLoader):
        raise ValueError(f"train_dataloader() has no {kind!r} DataLoader (got {type(loader).__name__})")
    return loader


def _batch_size(batch: dict[str, Any]) -> int:
    """Samples in a collated batch."""
    return len(batch["text"])


def measure_loader(loader: DataLoader, workers: int, batches: int) -> dict[str, Any]:
    """Startup time, steady-state samples/s over ``batches`` batches, CPU seconds spent on them, workers' peak RSS.

    The CPU time is the workers' (``/proc/<pid>/stat``) or, without workers, this process's over the timed window:
    samples per CPU-second is what one worker delivers when it has a core to itself.
    """
    warm = workers + 1
    available = len(loader)
    if warm + batches > available:
        raise ValueError(
            f"loader has {available} batches, the measurement needs {warm} warm-up + {batches} timed; "
            "raise --n-train or lower --batches / --batch-size"
        )
    start = time.perf_counter()
    it: Iterator[dict[str, Any]] = iter(loader)
    first = next(it)
    startup = time.perf_counter() - start
    for _ in range(warm - 1):
        next(it)
    pids = _child_pids() if workers > 0 else []
    cpu0 = workers_cpu_seconds(pids) if workers > 0 else time.process_time()
    t0 = time.perf_counter()
    samples = 0
    for _ in range(batches):
        samples += _batch_size(next(it))
    elapsed = time.perf_counter() - t0
    cpu1 = workers_cpu_seconds(pids) if workers > 0 else time.process_time()
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    views = [k for k in ("image", "image_strong", "mask") if k in first]
    shape = tuple(first["image"].shape)
    worker_rss = workers_peak_rss() if workers > 0 else None
    del it, first
    return {
        "startup_s": startup,
        "samples": samples,
        "seconds": elapsed,
        "samples_per_s": samples / elapsed,
        "cpu_s": cpu,
        "samples_per_cpu_s": samples / cpu if cpu else None,
        "views": views,
        "batch_shape": shape,
        "worker_peak_rss": worker_rss,
    }


def transform_breakdown(dm: TextSegDataModule, kind: str, samples: int) -> dict[str, float]:
    """Mean CPU ms per sample (``time.process_time``) of each transform of the ``kind`` pipeline, in this process.

    The transforms run as :class:`~textseg.data.sampling.SeededDataset` runs them: MONAI meta-data tracking off; the
    whole pipeline is timed as the DataLoader calls it, with the per-sample re-seeding.
    """
    ds: Any = train_loader(dm, kind).dataset
    steps = list(ds.transform.transforms)
    totals = [0.0] * len(steps)
    names = [type(t).__name__ for t in steps]
    tracking = get_track_meta()
    set_track_meta(False)
    for i in range(samples):
        data = ds.data[i % len(ds.data)]
        for j, step in enumerate(steps):
            t0 = time.process_time()
            data = step(data)
            totals[j] += time.process_time() - t0
    set_track_meta(tracking)
    out: dict[str, float] = {}
    for name, total in zip(names, totals, strict=True):
        key = name
        n = 2
        while key in out:  # ScaleIntensityRanged appears twice
            key, n = f"{name} #{n}", n + 1
        out[key] = 1000 * total / samples
    start = time.process_time()  # the whole pipeline as the DataLoader calls it
    for i in range(samples):
        ds[(i % len(ds), i)]
    out["Dataset.__getitem__ (whole pipeline)"] = 1000 * (time.process_time() - start) / samples
    return out


def consumption(step_json: Path) -> list[dict[str, Any]]:
    """Samples/s each timed training step consumes (labeled and unlabeled), from the step-time results."""
    if not step_json.is_file():
        return []
    data = json.loads(step_json.read_text())
    rows = []
    for rec in data.get("steps", []):
        step = float(rec["median_step_s"])
        rows.append(
            {
                "variant": rec["variant"],
                "device": data.get("device", "?"),
                "step_s": step,
                "labeled_per_s": rec["labeled"] / step,
                "unlabeled_per_s": rec["unlabeled"] / step,
            }
        )
    return rows


# -------------------------------------------------------------------------------------------------------- report
def device_string(threads: int) -> str:
    """CPU model, core count and torch threads."""
    return cpu_string(f"main-process torch threads {threads} (workers: 1 each)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=None, help="synthetic dataset folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the generated temporary dataset")
    p.add_argument("--n-train", type=int, default=320, help="synthetic train images")
    p.add_argument("--n-eval", type=int, default=16, help="synthetic validation and test images (each)")
    p.add_argument("--image-size", type=int, default=224, help="PNG side and network input side")
    p.add_argument("--labeled-ratio", type=float, default=0.25, help="labeled share of the train split")
    p.add_argument("--batch-size", type=int, default=16, help="labeled batch size")
    p.add_argument("--unlabeled-batch-size", type=int, default=16, help="unlabeled batch size")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="num_workers values")
    p.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians over rounds)")
    p.add_argument("--transform-samples", type=int, default=32, help="samples of the per-transform breakdown")
    add_threads_argument(p, " in the main process")
    p.add_argument("--check", default="fast", choices=["full", "fast", "off"], help="DataModule input check")
    p.add_argument("--seed", type=int, default=42, help="split and augmentation seed")
    p.add_argument("--target", type=float, default=DEFAULT_TARGET, help="samples/s per worker to reach")
    p.add_argument(
        "--step-results",
        type=Path,
        default=Path(__file__).with_name("results_step_time.json"),
        help="step-time results to compare against (skipped when absent)",
    )
    p.add_argument("--note", action="append", default=[], help="free text added to the results file")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).with_name("results_data_throughput.md"),
        help="Markdown results file (a .json sibling is written too)",
    )
    args = p.parse_args(argv)
    if args.image_size % 32:
        raise ValueError(f"--image-size {args.image_size} is not a multiple of 32")
    if min(args.batches, args.rounds, args.transform_samples, args.batch_size, args.unlabeled_batch_size) < 1:
        raise ValueError("--batches, --rounds, --transform-samples and the batch sizes must be >= 1")
    if min(args.workers) < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and write the results files; return the JSON record."""
    args = parse_args(argv)
    set_threads(args.threads)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    tmp = None
    root: Path = args.root
    if root is None:
        tmp = Path(tempfile.mkdtemp(prefix="textseg_bench_"))
        root = tmp / "synthetic224"
    try:
        t0 = time.perf_counter()
        dms = {w: make_datamodule(args, root, w) for w in args.workers}
        setup_s = time.perf_counter() - t0
        dm0 = dms[args.workers[0]]
        sizes = {k: len(dm0.splits[k]) for k in LOADERS}
        print(f"dataset ready in {setup_s:.1f} s: {sizes} at {root}", flush=True)

        configs = [(kind, w) for kind in LOADERS for w in args.workers]
        results: dict[tuple[str, int], list[dict[str, Any]]] = {c: [] for c in configs}
        for rnd in range(args.rounds):
            for kind, w in configs if rnd % 2 == 0 else configs[::-1]:
                loader = train_loader(dms[w], kind)
                res = measure_loader(loader, w, args.batches)
                del loader
                gc.collect()
                results[(kind, w)].append(res)
                print(f"round {rnd} {kind} workers={w}: {res['samples_per_s']:.1f} samples/s", flush=True)
        breakdown = {kind: transform_breakdown(dm0, kind, args.transform_samples) for kind in LOADERS}
        need = consumption(args.step_results)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    load_after = os.getloadavg()
    rss_main = self_peak_rss()
    threads = torch.get_num_threads()
    dev = device_string(threads)
    command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])

    lines = [
        "| loader | sample holds | workers | batch | startup to 1st batch (s) | samples/s (wall, median) | min–max "
        f"| per worker (wall) | samples per worker CPU-second | ≥ {args.target:.0f}/worker (wall / CPU) "
        "| worker peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    records = []
    per_worker_best: dict[str, float] = {}
    for kind, w in configs:
        runs = results[(kind, w)]
        rates = [r["samples_per_s"] for r in runs]
        rate = median(rates)
        per_worker = rate / max(1, w)
        cpu_rates = [r["samples_per_cpu_s"] for r in runs if r["samples_per_cpu_s"] is not None]
        cpu_rate = median(cpu_rates) if cpu_rates else None
        best = cpu_rate if cpu_rate is not None else per_worker
        per_worker_best[kind] = max(per_worker_best.get(kind, 0.0), best)
        startup = median([r["startup_s"] for r in runs])
        rss = max((r["worker_peak_rss"] for r in runs if r["worker_peak_rss"] is not None), default=None)
        bs = args.batch_size if kind == "labeled" else args.unlabeled_batch_size
        met = [
            "—" if value is None else "yes" if value >= args.target else "**no**" for value in (per_worker, cpu_rate)
        ]
        cpu_s = "—" if cpu_rate is None else f"{cpu_rate:.1f}"
        lines.append(
            f"| {kind} | {LOADERS[kind]} | {w} | {bs} | {startup:.2f} | {rate:.1f} | {min(rates):.1f}–{max(rates):.1f} "
            f"| {per_worker:.1f} | {cpu_s} | {met[0]} / {met[1]} | {fmt_bytes(rss, 'MiB')} |"
        )
        records.append(
            {
                "loader": kind,
                "workers": w,
                "batch_size": bs,
                "rounds": runs,
                "median_samples_per_s": rate,
                "per_worker_samples_per_s": per_worker,
                "samples_per_worker_cpu_s": cpu_rate,
                "median_startup_s": startup,
                "worker_peak_rss_bytes": rss,
                "target_met_wall": per_worker >= args.target,
                "target_met_cpu": None if cpu_rate is None else cpu_rate >= args.target,
            }
        )

    bd_lines = ["| transform | labeled (CPU ms/sample) | unlabeled (CPU ms/sample) |", "|---|---|---|"]
    names = list(dict.fromkeys([*breakdown["labeled"], *breakdown["unlabeled"]]))
    names.sort(key=lambda name: name.startswith("Dataset.__getitem__"))  # the whole-pipeline total goes last
    for name in names:
        cells = [f"{breakdown[k][name]:.2f}" if name in breakdown[k] else "—" for k in LOADERS]
        bd_lines.append(f"| {name} | {cells[0]} | {cells[1]} |")

    need_lines: list[str] = []
    if need:
        need_lines = [
            "| step variant (from results_step_time.json) | step (s) | consumes labeled/s | unlabeled/s "
            "| workers needed (labeled + unlabeled) at the best samples per worker CPU-second |",
            "|---|---|---|---|---|",
        ]
        for row in need:
            n_lab = math.ceil(row["labeled_per_s"] / per_worker_best["labeled"]) if row["labeled_per_s"] else 0
            n_unl = math.ceil(row["unlabeled_per_s"] / per_worker_best["unlabeled"]) if row["unlabeled_per_s"] else 0
            row["workers_needed"] = [n_lab, n_unl]
            need_lines.append(
                f"| `{row['variant']}` | {row['step_s']:.3f} | {row['labeled_per_s']:.2f} | "
                f"{row['unlabeled_per_s']:.2f} | {n_lab} + {n_unl} |"
            )

    header = [
        "# DataModule throughput (224² synthetic PNGs)",
        "",
        f"- command: `{command}`",
        f"- device: {dev}",
        f"- torch {torch.__version__}, monai {version('monai')}, date {started:%Y-%m-%d %H:%M} UTC, "
        f"load average {load_before[0]:.1f} → {load_after[0]:.1f} (1 min)",
        f"- data: `TextSegDataModule(dataset='synthetic', dataset_options={{'synthetic': {{'image_size': "
        f"{args.image_size}}}}}, "
        f"image_size={args.image_size}, labeled_ratio={args.labeled_ratio})`: {sizes['labeled']} labeled / "
        f"{sizes['unlabeled']} unlabeled training images (generated and set up in {setup_s:.1f} s)",
        f"- main-process peak RSS {fmt_bytes(rss_main, 'MiB')}",
        "",
        "Method: for every (loader, num_workers) a fresh DataModule loader is iterated: startup = time to the first "
        f"batch; then num_workers + 1 warm-up batches are skipped and {args.batches} batches are timed with nothing "
        "else in the main process (the most the loader can supply). Configurations run interleaved -- each round "
        "runs every configuration once, in reversed order on odd rounds -- with the workers of one configuration "
        f"shut down before the next starts; {args.rounds} rounds, medians reported. Per worker = samples/s / "
        "max(1, workers). Samples per worker CPU-second divides the samples of the timed window by the CPU time the "
        "workers (or, without workers, the main process) spent in it (`/proc/<pid>/stat`, `time.process_time`): the "
        "rate of one worker that has a core to itself. The machine is shared with other jobs, so wall rates with 2 "
        "workers on 2 cores are bounded by the cores left to us. Worker peak RSS is the largest VmHWM of a worker "
        "(pages shared with the parent included).",
    ]
    body = [
        "",
        "## Loader throughput",
        "",
        *lines,
        "",
        "## Where a sample's time goes (main process, CPU ms per sample)",
        "",
        *bd_lines,
    ]
    if need_lines:
        body += ["", "## Supply vs what the training step consumes", "", *need_lines]
    body += [
        "",
        "GPU comparison pending: the step-time results above are from this run's device; on a GPU, rerun "
        "`benchmarks/step_time.py --device cuda` first, then this script, to get the workers a GPU step needs.",
    ]
    if args.note:
        body += ["", "## Notes", "", *[f"- {n}" for n in args.note]]
    text = "\n".join(header + body) + "\n"
    print(text)
    record = {
        "command": command,
        "device": dev,
        "environment": environment(),
        "threads": threads,
        "date_utc": started.isoformat(timespec="seconds"),
        "loadavg_before_after": [load_before, load_after],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "dataset_sizes": sizes,
        "setup_s": setup_s,
        "main_peak_rss_bytes": rss_main,
        "loaders": records,
        "transform_ms_per_sample": breakdown,
        "consumption": need,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    return record


if __name__ == "__main__":
    main()
