"""Count the aten ops, kernel-launching ops and host syncs of one optimizer step of a real ``Trainer.fit`` (CPU).

Every method and backbone, with the demo configs' tiny networks and with full-size ones (ConvNeXt-T + BERT-base,
random weights), at 64 px, 2 labeled + 2 unlabeled synthetic images, burn-in / ramp / pre-training 0 and T-PatchMix
on every step, so every branch of the step runs. The counted step is the second optimizer step of the first epoch
(``textseg.engine.opcount.StepOpCounter``: from the callbacks' ``on_train_batch_start`` to the end of the module's
``on_train_batch_end``; data loading excluded). Sync-type ops are listed with the line that issued them; host reads
(``Tensor.tolist``/``numpy``/``cpu``, no dispatched op) are counted too, and listed by line in the JSON.
Semi-MedRef MMI-UNet is counted twice: with its batched student call (the default) and with three separate calls.
The fit runs as ``textseg fit`` does (CSV logger, textseg's progress bar, the non-finite guard); the counted step is
not a logging step (``log_every_n_steps`` 50), and each case is counted once more as a logging step, where the
loggers, the bar and the guard read their values back.

    python benchmarks/step_ops.py                 # tiny and full size; writes results_step_ops.md/.json
    python benchmarks/step_ops.py --sizes tiny    # tiny only (seconds)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from textseg.data.datamodule import TextSegDataModule
from textseg.engine.opcount import count_step
from textseg.methods import SemiMedRefModule, SupervisedModule, TextMoEModule

HERE = Path(__file__).resolve().parent
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"vision_encoder": "tiny", "text_encoder": "tiny", "project_dim": 16},
    "full": {"vision_encoder": "convnext-tiny", "text_encoder": "bert-base", "project_dim": 768},
}
SEMI: dict[str, Any] = {"burn_in_epochs": 0, "lambda_u_ramp_epochs": 0, "mix_prob": 1.0}
CASES: dict[str, tuple[Callable[[dict[str, Any]], Any], bool]] = {
    "Semi-MedRef MMI-UNet": (lambda kw: SemiMedRefModule(backbone="mmiunet", **SEMI, **kw), False),
    "Semi-MedRef MMI-UNet, separate student calls": (
        lambda kw: SemiMedRefModule(backbone="mmiunet", batched_student=False, **SEMI, **kw),
        False,
    ),
    "Semi-MedRef GuideDecoder": (lambda kw: SemiMedRefModule(backbone="guidedecoder", **SEMI, **kw), False),
    "TextMoE": (lambda kw: TextMoEModule(pretrain_epochs=0, **kw), True),
    "supervised MMI-UNet": (lambda kw: SupervisedModule(backbone="mmiunet", **kw), False),
}


def datamodule(root: Path, composite: bool) -> TextSegDataModule:
    options = {"n_train": 16, "n_val": 4, "n_test": 4, "image_size": 64}
    names = ["synthetic", "synthetic_ct"] if composite else "synthetic"
    roots = [str(root / "xray"), str(root / "ct")] if composite else str(root / "xray")
    opts = {n: dict(options) for n in names} if composite else {"synthetic": dict(options)}
    return TextSegDataModule(
        dataset=names,
        root=roots,
        dataset_options=opts,
        labeled_ratio=0.25,
        image_size=64,
        batch_size=2,
        unlabeled_batch_size=2,
    )


def count(case: str, size: str, root: Path) -> dict[str, Any]:
    build, composite = CASES[case]
    torch.manual_seed(0)
    counts = count_step(build(SIZES[size]), datamodule(root, composite), step=1)
    torch.manual_seed(0)  # the same step again, now a logging step (log_every_n_steps 1)
    logging = count_step(build(SIZES[size]), datamodule(root, composite), step=1, log_every_n_steps=1)
    return {
        "case": case,
        "size": size,
        **counts.totals(),
        "optimizer_scalars": counts.optimizer_scalars,
        "syncs": dict(counts.syncs.most_common()),
        "host_reads": dict(counts.host_reads.most_common()),
        "logging_step_syncs": dict(logging.syncs.most_common()),
        "top_launching": dict(counts.launching.most_common(8)),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Ops per optimizer step (CPU, `benchmarks/step_ops.py`)",
        "",
        "Second optimizer step of a real `Trainer.fit` (CSV logger, textseg's progress bar, the non-finite guard),"
        " 64 px, 2 labeled + 2 unlabeled images, every branch on; the last column counts the same step as a logging"
        " step.",
        "",
        "| step | size | aten ops | kernel-launching ops | sync-type ops | where the syncs are | host reads "
        "| sync-type ops at a logging step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        where = "; ".join(f"{n}x {k.split(' @ ')[1]}" for k, n in r["syncs"].items()) or "none"
        reads = sum(r["host_reads"].values())
        at_log = sum(r["logging_step_syncs"].values())
        lines.append(
            f"| {r['case']} | {r['size']} | {r['aten_ops']:,} | {r['launching_ops']:,} | {r['sync_ops']} | {where} "
            f"| {reads} | {at_log} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", default=str(HERE / "results_step_ops.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for case in args.cases:
                rows.append(count(case, size, Path(tmp)))
                print(f"{case} ({size}): {rows[-1]['aten_ops']} ops, {rows[-1]['launching_ops']} launching, "
                      f"{rows[-1]['sync_ops']} syncs", flush=True)  # fmt: skip
    text = markdown(rows)
    Path(args.out).write_text(text, encoding="utf-8")
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
