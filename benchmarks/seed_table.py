"""Paired multi-seed summary of ``semimedref_synthetic.py`` runs: mean Dice, gain, seeds ahead, shuffle drop.

The benchmark's result records (its ``--out`` JSON, or the copies kept under a group of
``results_semimedref_synthetic.json``) hold one run each. This script groups them into arms, pairs each arm with a
reference arm by seed (same labeled subset, initial weights and steps) and prints the Markdown summary the README
tables quote, so every mean, "ahead on k of n seeds" and paired spread there can be recomputed from the stored runs.
The p-value is the exact two-sided paired sign-flip (permutation) test of the mean gain: under "the arm makes no
difference" each seed's gain is as likely positive as negative, so p is the share of the 2^n sign patterns whose mean
gain is at least as far from 0 as the observed one (no normality assumed; the smallest p with n seeds is 2 / 2^n).

An arm is ``LABEL=SOURCE``; SOURCE is a glob of record files (it ends in ``.json``) or ``GROUP/PREFIX`` (records of
that group of the results JSON whose key starts with PREFIX; a record's seed is its ``args.seed``, else the digits
ending the key); several sources joined by ``+`` form one arm (seeds of two sessions). The first arm is the
reference. Example (session 10, lr 3e-4):

    python benchmarks/seed_table.py "supervised=session10_one_environment_8seeds/lsup_s" \\
        "Semi-MedRef=session10_one_environment_8seeds/lsem_s" "no PosAug=session10_one_environment_8seeds/lnop_s"
"""

from __future__ import annotations

import argparse
import functools
import glob
import itertools
import json
import re
import statistics
from pathlib import Path
from typing import Any

#: Result keys of a record: one of the benchmark's methods, or a ``--probe`` re-test of a best checkpoint.
METHOD_KEYS = ("supervised", "semimedref")
PROBE_KEY = "probe_of_best_checkpoint"
#: Most paired seeds the exact sign-flip test enumerates (2^20 patterns).
MAX_EXACT_SEEDS = 20
#: Sums of gains closer than this count as equal in the sign-flip test (float round-off of the 4-digit Dice values).
TIE_TOLERANCE = 1e-9


def run_scores(record: dict[str, Any]) -> tuple[float, float]:
    """(own-text test Dice, shuffled-text Dice) of one result record."""
    if PROBE_KEY in record:
        probe = record[PROBE_KEY]
        return float(probe["own_dice"]), float(probe["shuffled_dice"])
    keys = [k for k in METHOD_KEYS if k in record]
    if len(keys) != 1:
        raise ValueError(f"a record must hold exactly one of {METHOD_KEYS} or {PROBE_KEY!r}, not {sorted(record)}")
    metrics, probe = record[keys[0]]
    return float(metrics["test_dice"]), float(probe["shuffled_dice"])


def record_seed(name: str, record: dict[str, Any]) -> int:
    """The run's ``--seed``, or the digits that end its name (probe records keep no arguments)."""
    if "args" in record:
        return int(record["args"]["seed"])
    match = re.search(r"(\d+)$", name)
    if match is None:
        raise ValueError(f"record {name!r} has no args and no seed at the end of its name")
    return int(match.group(1))


def sign_flip_p(diffs: list[float]) -> float:
    """Exact two-sided p-value of the paired sign-flip test that the mean of ``diffs`` is 0 (all 2^n sign patterns).

    Raises:
        ValueError: For more than :data:`MAX_EXACT_SEEDS` differences (the enumeration doubles with each one).
    """
    if len(diffs) > MAX_EXACT_SEEDS:
        raise ValueError(f"the exact sign-flip test enumerates 2^n patterns; {len(diffs)} > {MAX_EXACT_SEEDS} seeds")
    observed = abs(sum(diffs)) - TIE_TOLERANCE
    signs = itertools.product((1.0, -1.0), repeat=len(diffs))
    extreme = sum(abs(sum(s * d for s, d in zip(pattern, diffs, strict=True))) >= observed for pattern in signs)
    return extreme / 2 ** len(diffs)


@functools.cache
def read_results(results: Path) -> dict[str, Any]:
    """The parsed results JSON, read once per path for all the arms and sources of a summary."""
    return dict(json.loads(results.read_text(encoding="utf-8")))


def load_records(source: str, results: Path) -> dict[str, dict[str, Any]]:
    """Name -> record of one source: a glob of JSON record files, or ``GROUP/PREFIX`` of the results JSON."""
    if source.endswith(".json"):
        return {Path(f).stem: json.loads(Path(f).read_text(encoding="utf-8")) for f in sorted(glob.glob(source))}
    group, sep, prefix = source.partition("/")
    groups = read_results(results)
    if not sep or group not in groups:
        raise ValueError(f"{source}: not a *.json glob, nor GROUP/PREFIX with a group of {results}")
    runs = groups[group].get("runs", groups[group])
    return {k: v for k, v in runs.items() if k.startswith(prefix) and isinstance(v, dict)}  # not "note"


def load_arm(source: str, results: Path) -> dict[int, tuple[float, float]]:
    """Seed -> (Dice, shuffled Dice) of the runs named by ``source``: sources (see :func:`load_records`) joined by +."""
    arm: dict[int, tuple[float, float]] = {}
    for part in source.split("+"):
        for name, record in load_records(part, results).items():
            seed = record_seed(name, record)
            if seed in arm:
                raise ValueError(f"{source}: two runs with seed {seed}")
            arm[seed] = run_scores(record)
    if not arm:
        raise ValueError(f"{source}: no runs")
    return arm


def summary(arms: dict[str, dict[int, tuple[float, float]]]) -> str:
    """Markdown table: mean Dice, paired gain over the first arm (seeds ahead, spread, sign-flip p), shuffle drop."""
    labels = list(arms)
    ref = arms[labels[0]]
    lines = [
        f"| arm | seeds | mean test Dice | gain over {labels[0]} (seeds ahead; paired SD; sign-flip p) "
        "| shuffled texts |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        arm = arms[label]
        seeds = sorted(arm)
        mean = statistics.fmean(arm[s][0] for s in seeds)
        drop = statistics.fmean(arm[s][1] / arm[s][0] - 1 for s in seeds)
        gain = ""
        if label != labels[0]:
            missing = [s for s in seeds if s not in ref]
            if missing:
                raise ValueError(f"{label}: seeds {missing} have no {labels[0]} run to pair with")
            diffs = [arm[s][0] - ref[s][0] for s in seeds]
            spread = f"{statistics.stdev(diffs):.3f}" if len(diffs) > 1 else "n/a"
            ahead = sum(d > 0 for d in diffs)
            gain = f"{statistics.fmean(diffs):+.3f} ({ahead} of {len(diffs)}; {spread}; p {sign_flip_p(diffs):.3g})"
        lines.append(f"| {label} | {', '.join(map(str, seeds))} | {mean:.3f} | {gain} | {drop:.0%} |")
    return "\n".join(lines)


def seed_list(spec: str) -> list[int]:
    """``"42-45"`` -> [42, 43, 44, 45]; ``"42,44"`` -> [42, 44]."""
    seeds: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        seeds += range(int(first), int(last or first) + 1)
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arms", nargs="+", metavar="LABEL=SOURCE", help="the first arm is the reference")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("results_semimedref_synthetic.json"))
    parser.add_argument("--seeds", type=seed_list, help="keep only these seeds in every arm: 42-45 or 42,44,46")
    args = parser.parse_args()
    arms: dict[str, dict[int, tuple[float, float]]] = {}
    try:
        for spec in args.arms:
            label, sep, source = spec.partition("=")
            if not sep or not label or not source:
                raise ValueError(f"{spec!r} is not LABEL=SOURCE")
            arm = load_arm(source, args.results)
            if args.seeds:
                if missing := sorted(set(args.seeds) - set(arm)):
                    raise ValueError(f"{label}: no run with seeds {missing}")
                arm = {s: arm[s] for s in args.seeds}
            arms[label] = arm
        print(summary(arms))
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
