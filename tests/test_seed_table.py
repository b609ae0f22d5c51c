"""benchmarks/seed_table.py: the paired multi-seed summary the README tables quote."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import seed_table


def record(method: str, seed: int, dice: float, shuffled: float) -> dict:
    return {"args": {"seed": seed}, method: [{"test_dice": dice}, {"shuffled_dice": shuffled}]}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    runs = {
        "sup_s1": record("supervised", 1, 0.50, 0.40),
        "sup_s2": record("supervised", 2, 0.60, 0.30),
        "smr_s1": record("semimedref", 1, 0.55, 0.44),
        # a --probe re-test keeps no arguments: the seed is the end of its name
        "smr_s2": {"probe_of_best_checkpoint": {"own_dice": 0.58, "shuffled_dice": 0.348}},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"g": {"note": "", "runs": runs}}))
    return path


def test_paired_summary_values(results: Path) -> None:
    arms = {label: seed_table.load_arm(f"g/{prefix}", results) for label, prefix in (("sup", "sup_"), ("smr", "smr_"))}
    assert arms["smr"] == {1: (0.55, 0.44), 2: (0.58, 0.348)}
    rows = seed_table.summary(arms).splitlines()
    assert rows[2] == "| sup | 1, 2 | 0.550 |  | -35% |"  # mean(0.5, 0.6); drops -20 % and -50 %
    # gains +0.05 and -0.02: mean +0.015, one seed ahead, sample SD 0.0495; all four sign patterns give a mean at
    # least 0.015 from 0 (p 1); drops -20 % and -40 %
    assert rows[3] == "| smr | 1, 2 | 0.565 | +0.015 (1 of 2; 0.049; p 1) | -30% |"


def test_sign_flip_p_golden_values() -> None:
    # every seed ahead: only the all-plus and all-minus patterns are as extreme, 2 / 2^8
    assert seed_table.sign_flip_p([0.03, 0.01, 0.05, 0.02, 0.04, 0.01, 0.06, 0.02]) == 2 / 256
    # sums over the 8 patterns of (0.03, 0.01, -0.02): +-0.02, +-0.06, 0.00 (twice), +-0.04; 6 reach |0.02|
    assert seed_table.sign_flip_p([0.03, 0.01, -0.02]) == pytest.approx(6 / 8)
    assert seed_table.sign_flip_p([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="21 > 20 seeds"):
        seed_table.sign_flip_p([0.01] * 21)


def test_record_files_and_errors(results: Path, tmp_path: Path) -> None:
    for seed, dice in ((7, 0.4), (8, 0.5)):
        (tmp_path / f"run{seed}.json").write_text(json.dumps(record("supervised", seed, dice, dice / 2)))
    assert seed_table.load_arm(str(tmp_path / "run*.json"), results) == {7: (0.4, 0.2), 8: (0.5, 0.25)}
    # two sources joined by + form one arm; a seed in both is refused
    joined = seed_table.load_arm(f"g/sup_+{tmp_path / 'run*.json'}", results)
    assert joined == {1: (0.5, 0.4), 2: (0.6, 0.3), 7: (0.4, 0.2), 8: (0.5, 0.25)}
    with pytest.raises(ValueError, match="two runs with seed 1"):
        seed_table.load_arm("g/sup_+g/smr_", results)
    with pytest.raises(ValueError, match="no runs"):
        seed_table.load_arm("g/none_", results)
    with pytest.raises(ValueError, match="nor GROUP/PREFIX"):
        seed_table.load_arm("missing/sup_", results)
    with pytest.raises(ValueError, match="no sup run to pair with"):
        seed_table.summary({"sup": {1: (0.5, 0.4)}, "smr": {1: (0.6, 0.5), 2: (0.6, 0.5)}})
    with pytest.raises(ValueError, match="exactly one of"):
        seed_table.run_scores({"args": {"seed": 1}})


def test_seed_list() -> None:
    assert seed_table.seed_list("42-45") == [42, 43, 44, 45]
    assert seed_table.seed_list("42,44,46-47") == [42, 44, 46, 47]
