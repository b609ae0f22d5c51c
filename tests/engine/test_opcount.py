"""Host syncs in one training step of each method (a deterministic count; ``textseg.engine.opcount``).

The counted step is the second optimizer step of a real ``Trainer.fit`` with a CSV logger and textseg's progress bar
(tiny networks, 64 px, 2 labeled + 2 unlabeled images, the unlabeled branch and T-PatchMix on from the first step),
not a logging step; a logging step adds the reads of the loggers, the bar and the non-finite guard (last test). What
remains:

* ``encoders/text.py``: the frozen text encoder's transformers BERT checks its attention mask on the host, once per
  call (Semi-MedRef: the teacher's call and the student's one call for all its parts), and is called only for texts
  not yet in its cache (so the count falls to 0 once every text was seen).

Host reads (``Tensor.tolist``, which dispatch no op) are pinned by line too; each reads a host tensor, no device sync:
the text cache's keys (tokenizer output, ``encoders/text.py``), MONAI's Dice reduction axes (a host ``arange``, called
from ``ops/losses.py``), and T-PatchMix's partner permutation, drawn from the step's CPU generator and read for the
derangement check (``ops/mixing.py``), the position boxes (``ops/boxes.py``) and the span-mixed texts
(``methods/semimedref.py``). The accept flags of the mixes stay on the device: the texts' features are picked there.

The non-finite guard, the networks' input checks, TextMoE's gates and momentum and the frequency exchange read
nothing back (``docs/guide.md``, "Speed").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from textseg.data.datamodule import TextSegDataModule
from textseg.engine.opcount import count_step
from textseg.methods import SemiMedRefModule, SupervisedModule, TextMoEModule

TINY: dict[str, Any] = {"vision_encoder": "tiny", "text_encoder": "tiny", "project_dim": 16}
SEMI: dict[str, Any] = {"burn_in_epochs": 0, "lambda_u_ramp_epochs": 0, "mix_prob": 1.0}

#: Host reads of a Semi-MedRef step, by file.
SEMI_READS = {
    "encoders/text.py": 2,
    "ops/losses.py": 2,
    "ops/mixing.py": 1,
    "ops/boxes.py": 1,
    "methods/semimedref.py": 1,
}

#: Per case: the module, composite data, syncs by file, host reads by file.
CASES: dict[str, tuple[Callable[[], Any], bool, dict[str, int], dict[str, int]]] = {
    "semimedref_mmiunet": (
        lambda: SemiMedRefModule(backbone="mmiunet", **SEMI, **TINY),
        False,
        {"encoders/text.py": 2},
        SEMI_READS,
    ),
    "semimedref_guidedecoder": (
        lambda: SemiMedRefModule(backbone="guidedecoder", **SEMI, **TINY),
        False,
        {"encoders/text.py": 2},
        SEMI_READS,
    ),
    "supervised_mmiunet": (
        lambda: SupervisedModule(backbone="mmiunet", **TINY),
        False,
        {"encoders/text.py": 1},
        {"encoders/text.py": 1, "ops/losses.py": 1},
    ),
    "textmoe": (
        lambda: TextMoEModule(**TINY),
        True,
        {"encoders/text.py": 2},
        {"encoders/text.py": 2, "ops/losses.py": 2},
    ),
}


def _by_file(counter: Counter[str]) -> dict[str, int]:
    by_file: dict[str, int] = {}
    for key, count in counter.items():
        where = key.split(" @ ")[1].rsplit(":", 1)[0]
        by_file[where] = by_file.get(where, 0) + count
    return by_file


@pytest.mark.parametrize("name", list(CASES))
def test_sync_ops_of_one_training_step(name: str, qata_root: Path, mosmed_root: Path) -> None:
    build, composite, expected, reads = CASES[name]
    torch.manual_seed(0)
    roots = [str(qata_root), str(mosmed_root)] if composite else str(qata_root)
    dm = TextSegDataModule(
        dataset=["qata", "mosmed"] if composite else "qata",
        root=roots,
        labeled_ratio=0.25,
        image_size=64,
        batch_size=2,
        unlabeled_batch_size=2,
    )
    counts = count_step(build(), dm, step=1)
    assert _by_file(counts.syncs) == expected, dict(counts.syncs)
    assert _by_file(counts.host_reads) == reads, dict(counts.host_reads)
    totals = counts.totals()
    assert totals["sync_ops"] <= 5 and totals["launching_ops"] > 1000  # the step was counted, backward included


def test_batched_student_halves_the_launches(qata_root: Path) -> None:
    """Semi-MedRef's one batched student call (``docs/methods.md`` §6.6) against its three separate calls."""
    launching = {}
    for batched in (False, True):
        torch.manual_seed(0)
        dm = TextSegDataModule(
            dataset="qata", root=str(qata_root), labeled_ratio=0.25, image_size=64, batch_size=2, unlabeled_batch_size=2
        )
        module = SemiMedRefModule(backbone="mmiunet", batched_student=batched, **SEMI, **TINY)
        counts = count_step(module, dm, step=1)
        launching[batched] = counts.totals()["launching_ops"]
        # the teacher's texts, then one call for the student's texts, or one per part (the weak ones: cached)
        assert sum(n for k, n in counts.syncs.items() if "encoders/text.py" in k) == (2 if batched else 3)
    assert launching[True] < 0.5 * launching[False], launching


def test_a_logging_step_reads_back_only_for_the_readers(qata_root: Path) -> None:
    """At a logging step the loggers, the progress bar and the non-finite guard read their values, nothing else."""
    torch.manual_seed(0)
    dm = TextSegDataModule(
        dataset="qata", root=str(qata_root), labeled_ratio=0.25, image_size=64, batch_size=2, unlabeled_batch_size=2
    )
    counts = count_step(SemiMedRefModule(backbone="mmiunet", **SEMI, **TINY), dm, step=1, log_every_n_steps=1)
    syncs = _by_file(counts.syncs)
    assert syncs.pop("encoders/text.py") == 2 and syncs.pop("engine/guards.py") == 1, dict(counts.syncs)
    assert list(syncs) == ["utilities/apply_func.py"]  # Lightning turning each logged tensor into a number
    reads = _by_file(counts.host_reads)
    assert reads.pop("engine/progress.py") == 1  # the bar's train_loss, read with the loggers
    assert reads == SEMI_READS
