"""Training step time of the full-size Semi-MedRef, TextMoE and supervised steps ("Speed and scale").

Builds the networks at their paper size -- MMI-UNet (Semi-MedRef, supervised) or the TextMoE decoder on a random
full-size ConvNeXt-T (``vision_encoder="convnext-tiny"``), with the frozen text encoder a random BERT-base
(``text_encoder="bert-base"``: hidden 768, 12 layers, the package's in-code tokenizer; nothing is downloaded) -- and
times ``module.training_step`` + ``backward`` + ``optimizer_step`` (AdamW, then the EMA teacher update, exactly the
hook Lightning calls) in a minimal loop on batches built directly as ``{"labeled": {...}, "unlabeled": {...}}`` with
the sample keys of :mod:`textseg.data.transforms`, already on the device.

Variants (``method/precision/cache/format``) differ in the method, fp32 vs bf16 autocast (``torch.autocast`` around
the forward, as Lightning's ``bf16-mixed``), the frozen text encoder's feature cache (``text_cache_size`` default vs
0; toggled on one module by setting ``text_encoder.cache_size``, which is the only thing the cache switch reads) and
the memory format (``channels_last`` as ``TextSegModule.setup`` applies it). Variants are timed **interleaved**
(round r runs every variant once, in reversed order on odd rounds: ABC CBA ABC ...) on the same batch, warm-up rounds
are discarded, and medians are reported; ratios are also given as the median of the per-round (paired) ratios,
which is robust to load changes on a shared machine.

Step breakdown: separate instrumented rounds time the module's sub-calls with forward hooks and wrapped methods
(``text_encoder`` with its ``tokenize`` and BERT ``_encode``; the student ``net`` with its ConvNeXt stem + stages;
the EMA ``teacher``; ``_mix``/``_spc``/``_exchange``; ``seg_loss``, ``_contrastive`` and the differential loss;
``backward``; ``optimizer_step`` with the EMA ``update``), synchronising CUDA at every boundary. "other" is the
instrumented step minus the named parts (pseudo-labels, PosAug/span-mix text edits, logging calls, glue).

FLOPs: one extra step per (method, cache) under ``torch.utils.flop_counter.FlopCounterMode`` (fp32; autocast does not
change the count); the text-encoder and teacher shares come from its per-module counts (forward only, so their
attribution is exact), the student share (forward + backward) is the rest.

Usage (GPU, the paper's batch)::

    python benchmarks/step_time.py --device cuda --labeled 32 --unlabeled 32 --steps 10 --warmup 3 \
        --peak-tflops 989 --peak-tflops-fp32 67

The speed issue's four Semi-MedRef arms (fp32 reference without cache, eager; bf16; bf16 + compile; bf16 + compile +
CUDA graphs), compiled networks warmed up by the warm-up rounds (compilation takes the first of them)::

    python benchmarks/step_time.py --device cuda --peak-tflops 989 --peak-tflops-fp32 67 --warmup 4 --variants \
        semimedref/fp32/nocache/nchw semimedref/bf16/cache/cl semimedref/bf16/cache/cl/compile \
        semimedref/bf16/cache/cl/graphs

CPU (2 + 2 at 224 px, one thread; about 10 minutes)::

    python benchmarks/step_time.py --device cpu --labeled 2 --unlabeled 2 --threads 1 --steps 3 --warmup 1 \
        --breakdown-steps 1 --variants semimedref/fp32/nocache/nchw semimedref/fp32/cache/nchw ...
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import json
import os
import random
import resource
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from report_utils import add_threads_argument, cpu_string, environment, fmt_bytes, median, set_threads
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import textseg.methods.textmoe as textmoe_method
from textseg import SemiMedRefModule, SupervisedModule, TextMoEModule
from textseg.methods.base import TextSegModule
from textseg.ops.text import position_label

#: Default location of the real data files (``<x>/shared/data`` beside the ``<x>/main`` clone); read only for captions.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Rows of the QaTa ``train.csv`` that form the canonical train split (the rest is validation).
QATA_TRAIN_ROWS = 5716
#: Fallback captions when the real text files are absent (LViT style).
FALLBACK_XRAY_CAPTIONS = (
    "Bilateral pulmonary infection, two infected areas, all left lung and middle lower right lung.",
    "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung.",
    "Unilateral pulmonary infection, one infected area, lower left lung.",
    "Unilateral pulmonary infection, one infected area, middle lower right lung.",
    "Bilateral pulmonary infection, two infected areas, all left lung and all right lung.",
    "Unilateral pulmonary infection, one infected area, upper middle lower right lung.",
)
FALLBACK_CT_CAPTIONS = (
    "Unilateral pulmonary infection, one infected area, lower right lung.",
    "Bilateral pulmonary infection, two infected areas, middle left lung and lower right lung.",
    "Unilateral pulmonary infection, two infected areas, upper middle left lung.",
    "Bilateral pulmonary infection, three infected areas, lower left lung and middle lower right lung.",
)
#: Methods and the batch family (X-ray only, or composite X-ray + CT) they train on.
METHOD_FAMILY = {"semimedref": "xray", "supervised": "xray", "textmoe": "composite"}
#: Top-level parts of the breakdown (in step order) and their nested sub-parts (not added to the sum).
PARTS = (
    "text encoder",
    "student forward",
    "teacher forward",
    "mixing / exchange",
    "losses",
    "backward",
    "optimizer + EMA",
)
SUBPARTS = {
    "text encoder": ("text encoder: tokenize", "text encoder: BERT"),
    "student forward": ("student forward: ConvNeXt",),
    "optimizer + EMA": ("optimizer + EMA: EMA update",),
}
#: Ratios the issue targets: (label, numerator variant, denominator variant, comparison, target). Numerators are the
#: slower variant, so every ratio reads "x times faster" / "x times the cost". Default = bf16 + cache + channels_last
#: (CL), reference = fp32, no cache, NCHW.
RATIOS: tuple[tuple[str, str, str, str, float | None], ...] = (
    ("text cache on vs off, Semi-MedRef fp32", "semimedref/fp32/nocache/nchw", "semimedref/fp32/cache/nchw", ">=", 1.3),
    ("text cache on vs off, Semi-MedRef bf16", "semimedref/bf16/nocache/nchw", "semimedref/bf16/cache/nchw", ">=", 1.3),
    (
        "text cache on vs off, Semi-MedRef bf16 + CL",
        "semimedref/bf16/nocache/cl",
        "semimedref/bf16/cache/cl",
        ">=",
        1.3,
    ),
    ("Semi-MedRef / supervised, fp32 + cache", "semimedref/fp32/cache/nchw", "supervised/fp32/cache/nchw", "<=", 3.5),
    ("Semi-MedRef / supervised, bf16 + cache", "semimedref/bf16/cache/nchw", "supervised/bf16/cache/nchw", "<=", 3.5),
    ("Semi-MedRef / supervised, bf16 + cache + CL", "semimedref/bf16/cache/cl", "supervised/bf16/cache/cl", "<=", 3.5),
    ("Semi-MedRef default vs reference", "semimedref/fp32/nocache/nchw", "semimedref/bf16/cache/cl", ">=", 3.0),
    (
        "Semi-MedRef bf16 + compile vs reference",
        "semimedref/fp32/nocache/nchw",
        "semimedref/bf16/cache/cl/compile",
        ">=",
        None,
    ),
    (
        "Semi-MedRef bf16 + compile + CUDA graphs vs reference",
        "semimedref/fp32/nocache/nchw",
        "semimedref/bf16/cache/cl/graphs",
        ">=",
        None,
    ),
    ("Semi-MedRef bf16 vs fp32 (cache on)", "semimedref/fp32/cache/nchw", "semimedref/bf16/cache/nchw", ">=", None),
    ("Semi-MedRef CL vs NCHW (bf16, cache on)", "semimedref/bf16/cache/nchw", "semimedref/bf16/cache/cl", ">=", None),
    ("text cache on vs off, TextMoE fp32", "textmoe/fp32/nocache/nchw", "textmoe/fp32/cache/nchw", ">=", None),
    ("text cache on vs off, TextMoE bf16", "textmoe/bf16/nocache/nchw", "textmoe/bf16/cache/nchw", ">=", None),
    ("TextMoE default vs reference", "textmoe/fp32/nocache/nchw", "textmoe/bf16/cache/cl", ">=", None),
)
#: Synthetic batch content: cells per side of the smooth random field behind images and masks, the image noise level,
#: the share of lesion pixels in a mask, and the contrast range / noise of the stand-in strong view.
IMAGE_FIELD_CELLS = 8
MASK_FIELD_CELLS = 6
IMAGE_NOISE = 0.1
MASK_FRACTION = 0.05
STRONG_CONTRAST = (0.8, 1.2)
STRONG_NOISE = 0.05
#: TextMoE's EMA schedule min(1 - 1/(step + 1), 0.99) reaches its cap after 99 steps; a step-0 update is a plain copy.
TEXTMOE_STEADY_STEP = 100
#: Batch size of the text-cache warm-up.
WARM_CHUNK = 64


# ------------------------------------------------------------------------------------------------------ variants
#: ``compile`` parts of a variant name and the ``torch.compile`` mode each stands for (``RunHooks.setup``).
COMPILE_MODES = {"compile": "default", "graphs": "reduce-overhead", "autotune": "max-autotune"}


@dataclass(frozen=True)
class Variant:
    """One timed configuration: ``method/precision/cache/format[/compile]``, e.g. ``semimedref/bf16/cache/cl/graphs``.

    The optional fifth part compiles the student and teacher networks as a ``fit`` with ``compile MODE`` does:
    ``compile`` (default mode), ``graphs`` (``reduce-overhead``: CUDA graphs) or ``autotune`` (``max-autotune``);
    without it the networks run eagerly.
    """

    method: str
    precision: str
    cache: bool
    channels_last: bool
    compile: str = "eager"

    @property
    def name(self) -> str:
        """The spec string of the variant."""
        base = f"{self.method}/{self.precision}/{'cache' if self.cache else 'nocache'}/{self.fmt}"
        return base if self.compile == "eager" else f"{base}/{self.compile}"

    @property
    def fmt(self) -> str:
        """``"cl"`` (channels_last) or ``"nchw"``."""
        return "cl" if self.channels_last else "nchw"

    @property
    def key(self) -> tuple[str, bool, str]:
        """The runner (built module) this variant uses: method, memory format and compilation."""
        return (self.method, self.channels_last, self.compile)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """Parse ``method/precision/cache|nocache/nchw|cl[/compile|graphs|autotune]``; errors name the bad part."""
        parts = spec.split("/")
        if len(parts) not in (4, 5):
            raise ValueError(f"variant {spec!r}: expected method/precision/cache|nocache/nchw|cl[/compile]")
        method, precision, cache, fmt = parts[:4]
        compiled = parts[4] if len(parts) == 5 else "eager"
        if method not in METHOD_FAMILY:
            raise ValueError(f"variant {spec!r}: method {method!r} not in {sorted(METHOD_FAMILY)}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"variant {spec!r}: precision {precision!r} is not fp32 or bf16")
        if cache not in ("cache", "nocache"):
            raise ValueError(f"variant {spec!r}: {cache!r} is not cache or nocache")
        if fmt not in ("nchw", "cl"):
            raise ValueError(f"variant {spec!r}: memory format {fmt!r} is not nchw or cl")
        if compiled not in ("eager", *COMPILE_MODES):
            raise ValueError(f"variant {spec!r}: {compiled!r} is not one of {['eager', *COMPILE_MODES]}")
        return cls(method, precision, cache == "cache", fmt == "cl", compiled)


def matrix_variants(args: argparse.Namespace) -> list[Variant]:
    """The ``--variants`` list, or the product of ``--methods`` x ``--precision`` x ``--cache`` x ``--format``."""
    if args.variants:
        return [Variant.parse(s) for s in args.variants]
    formats = args.format or (["nchw", "cl"] if args.device.startswith("cuda") else ["nchw"])
    return [
        Variant(m, p, c == "on", f == "cl", k)
        for m in args.methods
        for p in args.precision
        for c in args.cache
        for f in formats
        for k in args.compile
    ]


# --------------------------------------------------------------------------------------------------------- data
def load_captions(data_dir: Path | None) -> tuple[list[str], list[str], str]:
    """X-ray and CT training captions, one per training row (repeats kept, so sampling follows text frequencies).

    Args:
        data_dir: Folder holding ``QaTa-COV19/train.csv`` and ``MosMedDataPlus/Train_text_MosMedData+ 1(in).csv``;
            ``None`` or missing files fall back to the embedded captions.

    Returns:
        ``(xray captions, ct captions, description of the source)``.
    """
    xray: list[str] = []
    ct: list[str] = []
    sources = []
    if data_dir is not None:
        qata = data_dir / "QaTa-COV19" / "train.csv"
        if qata.is_file():
            with qata.open(newline="", encoding="utf-8") as fh:
                xray = [row["Description"] for row in csv.DictReader(fh)][:QATA_TRAIN_ROWS]
            sources.append(f"{qata} (first {QATA_TRAIN_ROWS} rows, {len(set(xray))} distinct texts)")
        mosmed = data_dir / "MosMedDataPlus" / "Train_text_MosMedData+ 1(in).csv"
        if mosmed.is_file():
            with mosmed.open(newline="", encoding="utf-8") as fh:
                ct = [row["text"] for row in csv.DictReader(fh, delimiter=";")]
            sources.append(f"{mosmed} ({len(set(ct))} distinct texts)")
    if not xray:
        xray = list(FALLBACK_XRAY_CAPTIONS)
        sources.append("embedded X-ray captions")
    if not ct:
        ct = list(FALLBACK_CT_CAPTIONS)
        sources.append("embedded CT captions")
    return xray, ct, "; ".join(sources)


def _field(gen: torch.Generator, batch: int, size: int, cells: int) -> Tensor:
    """A smooth random field ``[B, 1, size, size]`` (bilinear upsampling of a ``cells x cells`` Gaussian grid)."""
    low = torch.randn(batch, 1, cells, cells, generator=gen)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def _zscore(x: Tensor) -> Tensor:
    """Per-image z-score, as ``NormalizeIntensityd(channel_wise=True)``."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def _samples(
    gen: torch.Generator, texts: list[str], modality: list[int], size: int, labeled: bool, dataset_names: list[str]
) -> dict[str, Any]:
    """One labeled or unlabeled batch dict with the keys of :mod:`textseg.data.transforms`."""
    b = len(texts)
    image = _zscore(
        _field(gen, b, size, IMAGE_FIELD_CELLS) + IMAGE_NOISE * torch.randn(b, 1, size, size, generator=gen)
    )
    out: dict[str, Any] = {
        "image": image,
        "text": texts,
        "position": torch.tensor([position_label(t) for t in texts], dtype=torch.long),
        "modality": torch.tensor(modality, dtype=torch.long),
        "id": [f"bench_{i}" for i in range(b)],
        "path": ["" for _ in range(b)],
        "dataset": [dataset_names[m] for m in modality],
    }
    if labeled:
        lesion = _field(gen, b, size, MASK_FIELD_CELLS)
        cut = torch.quantile(lesion.flatten(1), 1 - MASK_FRACTION, dim=1).view(b, 1, 1, 1)
        out["mask"] = (lesion > cut).float()
    else:
        contrast = torch.empty(b, 1, 1, 1).uniform_(*STRONG_CONTRAST, generator=gen)
        noise = STRONG_NOISE * torch.randn(b, 1, size, size, generator=gen)
        out["image_strong"] = _zscore(image * contrast + noise)
    return out


def make_pool(
    family: str, n: int, labeled: int, unlabeled: int, size: int, captions: tuple[list[str], list[str]], seed: int
) -> list[dict[str, Any]]:
    """``n`` training batches ``{"labeled": ..., "unlabeled": ...}`` with texts sampled from the training rows.

    ``family="xray"``: every sample is an X-ray (modality 0) with a QaTa caption; ``"composite"``: modalities alternate
    0/1 (X-ray / CT caption), so TextMoE's frequency exchange finds partners of the other modality.
    """
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    names = ["qata", "mosmed"]
    pool = []
    for _ in range(n):
        batch: dict[str, Any] = {}
        for key, count in (("labeled", labeled), ("unlabeled", unlabeled)):
            modality = [i % 2 if family == "composite" else 0 for i in range(count)]
            texts = [rng.choice(captions[m]) for m in modality]
            batch[key] = _samples(gen, texts, modality, size, key == "labeled", names)
        pool.append(batch)
    return pool


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a nested batch dict to ``device``."""
    return {
        k: to_device(v, device) if isinstance(v, dict) else v.to(device) if isinstance(v, Tensor) else v
        for k, v in batch.items()
    }


def pool_texts(pool: Sequence[dict[str, Any]]) -> list[str]:
    """Distinct texts of a batch pool (the cache warm-up set)."""
    return list(dict.fromkeys(t for batch in pool for part in batch.values() for t in part["text"]))


# ------------------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PartTimer:
    """Accumulates wall time per named region; synchronises CUDA at every boundary. Inactive timers cost a call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.active = False
        self.totals: dict[str, float] = {}
        self._depth: dict[str, int] = {}
        self._start: dict[str, float] = {}

    def start(self, name: str) -> None:
        """Open region ``name`` (nested re-entry of the same name counts once)."""
        if not self.active:
            return
        depth = self._depth.get(name, 0)
        if depth == 0:
            synchronize(self.device)
            self._start[name] = time.perf_counter()
        self._depth[name] = depth + 1

    def stop(self, name: str) -> None:
        """Close region ``name``."""
        if not self.active or self._depth.get(name, 0) == 0:
            return
        self._depth[name] -= 1
        if self._depth[name] == 0:
            synchronize(self.device)
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - self._start.pop(name)

    @contextmanager
    def region(self, name: str) -> Iterator[None]:
        """Time the body as region ``name``."""
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def wrap(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        """``fn`` timed as region ``name``."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.region(name):
                return fn(*args, **kwargs)

        return timed

    def hook(self, module: nn.Module, name: str) -> None:
        """Time every forward call of ``module`` as region ``name`` (forward pre-hook + hook)."""
        module.register_forward_pre_hook(lambda _m, _a: self.start(name))
        module.register_forward_hook(lambda _m, _a, _o: self.stop(name))


@dataclass
class TextCounter:
    """Texts requested from the text encoder vs rows BERT actually encoded (cache misses, deduplicated)."""

    requested: int = 0
    encoded: int = 0


def instrument(module: TextSegModule, timer: PartTimer, counter: TextCounter, networks: bool = True) -> None:
    """Install the breakdown hooks and wrappers on ``module`` (active only while ``timer.active``).

    ``networks=False`` leaves the student and teacher networks without forward hooks (compiled networks).
    """
    enc = module.text_encoder

    def count_request(_m: nn.Module, args: tuple[Any, ...]) -> None:
        counter.requested += len(args[0])

    enc.register_forward_pre_hook(count_request)
    timer.hook(enc, "text encoder")
    encode = enc._encode

    def counted_encode(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        counter.encoded += int(batch["input_ids"].shape[0])
        return encode(batch)

    enc._encode = timer.wrap(counted_encode, "text encoder: BERT")  # type: ignore[method-assign]
    enc.tokenize = timer.wrap(enc.tokenize, "text encoder: tokenize")  # type: ignore[method-assign]
    net: Any = module.net
    teacher: Any = getattr(module, "teacher", None)
    if networks:
        timer.hook(net, "student forward")
        timer.hook(net.vision.embeddings, "student forward: ConvNeXt")
        for stage in net.vision.encoder.stages:
            timer.hook(stage, "student forward: ConvNeXt")
        if teacher is not None:
            timer.hook(teacher, "teacher forward")
    if teacher is not None:
        teacher.update = timer.wrap(teacher.update, "optimizer + EMA: EMA update")
    timer.hook(module.seg_loss, "losses")
    for attr in ("_contrastive",):
        if hasattr(module, attr):
            setattr(module, attr, timer.wrap(getattr(module, attr), "losses"))
    for attr in ("_mix", "_spc", "_exchange"):
        if hasattr(module, attr):
            setattr(module, attr, timer.wrap(getattr(module, attr), "mixing / exchange"))


@contextmanager
def timed_differential_loss(timer: PartTimer) -> Iterator[None]:
    """Time TextMoE's differential loss (a module-level function of ``textseg.methods.textmoe``) as "losses"."""
    original = textmoe_method.differential_loss
    textmoe_method.differential_loss = timer.wrap(original, "losses")
    try:
        yield
    finally:
        textmoe_method.differential_loss = original


# ------------------------------------------------------------------------------------------------------ runners
@dataclass
class Runner:
    """A built module with its optimizer, batch pool and the measurements of each variant that uses it."""

    module: TextSegModule
    optimizer: torch.optim.Optimizer
    pool: list[dict[str, Any]]
    cache_size: int
    counter: TextCounter
    times: dict[str, list[float]] = field(default_factory=dict)
    cpu_times: dict[str, list[float]] = field(default_factory=dict)
    parts: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    text_stats: dict[str, list[int]] = field(default_factory=dict)
    peak_mem: dict[str, int] = field(default_factory=dict)
    build_s: float = 0.0


def build_runner(variant: Variant, args: argparse.Namespace, pool: list[dict[str, Any]], timer: PartTimer) -> Runner:
    """Build the full-size module of a variant on the device, its AdamW optimizer, hooks, and warm its text cache.

    A compiled variant's networks are compiled in place (``fullgraph=True``, ``--compile-backend``) and get no
    breakdown hooks inside them (a host sync there would break the graph).
    """
    method, channels_last = variant.method, variant.channels_last
    start = time.perf_counter()
    device = torch.device(args.device)
    common: dict[str, Any] = {
        "vision_encoder": args.vision_encoder,
        "text_encoder": args.text_encoder,
        "project_dim": args.project_dim,
        "channels_last": channels_last,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
    }
    module: TextSegModule
    if method == "semimedref":
        # No burn-in and no lambda_u ramp, so the first step already runs the full semi-supervised objective.
        module = SemiMedRefModule(backbone="mmiunet", burn_in_epochs=0, lambda_u_ramp_epochs=0, **common)
    elif method == "supervised":
        module = SupervisedModule(backbone="mmiunet", **common)
    else:
        moe = TextMoEModule(pretrain_epochs=0, **common)
        # Put the EMA schedule at its steady state (momentum 0.99); without a Trainer global_step stays 0.
        moe.stage_start_step.fill_(-TEXTMOE_STEADY_STEP)
        module = moe
    module.to(device)
    nets = [n for n in (module.net, getattr(module, "teacher", None)) if n is not None]
    for net in nets:  # what RunHooks.setup does under a Trainer
        if channels_last:
            net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if variant.compile != "eager":
            net.compile(fullgraph=True, mode=COMPILE_MODES[variant.compile], backend=args.compile_backend)
    module.train()
    params = [p for p in module.net.parameters() if p.requires_grad]
    # fused, as TextSegModule.configure_optimizers builds it on CPU and CUDA
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, fused=True)
    counter = TextCounter()
    instrument(module, timer, counter, networks=variant.compile == "eager")
    with torch.no_grad():  # warm the cache with the batches' texts, as after the first epoch on real data
        texts = pool_texts(pool)
        for i in range(0, len(texts), WARM_CHUNK):
            module.text_encoder(texts[i : i + WARM_CHUNK])
    cache_size = module.text_encoder.cache_size
    return Runner(
        module,
        optimizer,
        [to_device(b, device) for b in pool],
        cache_size,
        counter,
        build_s=time.perf_counter() - start,
    )


def autocast(variant: Variant, device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast for bf16 variants, nothing for fp32."""
    if variant.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_step(runner: Runner, variant: Variant, batch: dict[str, Any], device: torch.device, timer: PartTimer) -> None:
    """One optimiser step as Lightning runs it: autocast forward (``training_step``), backward, AdamW + EMA."""
    module = runner.module
    with autocast(variant, device):
        loss = cast(Tensor, module.training_step(batch, 0))
    with timer.region("backward"):
        loss.backward()
    with timer.region("optimizer + EMA"):
        module.optimizer_step(0, 0, runner.optimizer, None)
        runner.optimizer.zero_grad(set_to_none=True)


def timed_step(
    runner: Runner, variant: Variant, batch: dict[str, Any], device: torch.device, timer: PartTimer
) -> tuple[float, float, int, int]:
    """Run one step of ``variant``; return (wall s, process CPU s, texts requested, BERT rows encoded)."""
    runner.module.text_encoder.cache_size = runner.cache_size if variant.cache else 0
    before = (runner.counter.requested, runner.counter.encoded)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    train_step(runner, variant, batch, device, timer)
    synchronize(device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        runner.peak_mem[variant.name] = max(runner.peak_mem.get(variant.name, 0), peak)
    return elapsed, cpu, runner.counter.requested - before[0], runner.counter.encoded - before[1]


def count_flops(runner: Runner, variant: Variant, device: torch.device, timer: PartTimer) -> dict[str, float]:
    """FLOPs of one fp32 step of ``variant``'s method and cache setting: total, text encoder, teacher, student."""
    fp32 = Variant(variant.method, "fp32", variant.cache, variant.channels_last)
    runner.module.text_encoder.cache_size = runner.cache_size if variant.cache else 0
    with FlopCounterMode(display=False, depth=2) as counter:
        train_step(runner, fp32, runner.pool[0], device, timer)
    counts = {k: float(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    prefix = type(runner.module).__name__
    total = float(counter.get_total_flops())
    text = counts.get(f"{prefix}.text_encoder", 0.0)
    teacher = counts.get(f"{prefix}.teacher", 0.0)
    return {"total": total, "text_encoder": text, "teacher": teacher, "student": total - text - teacher}


# ------------------------------------------------------------------------------------------------------- report
def device_string(device: torch.device, threads: int) -> str:
    """Human description of the device the figures come from."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    return cpu_string(f"torch threads {threads}")


def batch_samples(variant: Variant, args: argparse.Namespace) -> int:
    """Samples one step consumes (supervised: labeled only)."""
    return args.labeled if variant.method == "supervised" else args.labeled + args.unlabeled


def peak_for(variant: Variant, args: argparse.Namespace) -> float | None:
    """Peak TFLOP/s of the variant's precision, if given."""
    if variant.precision == "fp32" and args.peak_tflops_fp32 is not None:
        return float(args.peak_tflops_fp32)
    return None if args.peak_tflops is None else float(args.peak_tflops)


def primary(runner: Runner, variant: Variant, args: argparse.Namespace) -> list[float]:
    """Step times on the primary clock (``--clock``): wall seconds, or process CPU seconds."""
    return runner.cpu_times[variant.name] if args.clock == "cpu" else runner.times[variant.name]


def step_table(
    variants: list[Variant],
    runners: dict[tuple[str, bool, str], Runner],
    flops: dict[str, dict[str, float]],
    args: argparse.Namespace,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown rows of the step-time table and the matching JSON records."""
    lines = [
        "| variant | batch (lab+unl) | median wall (s) | min–max wall (s) | median CPU time (s) | samples/s "
        "| BERT rows / texts | GFLOP/step | of which text enc. / teacher / student | achieved TFLOP/s | % of peak "
        "| peak GPU mem |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    records = []
    for v in variants:
        r = runners[v.key]
        times, cpu = r.times[v.name], r.cpu_times[v.name]
        med = median(primary(r, v, args))
        f = flops.get(f"{v.method}/{v.name.split('/')[2]}", {})
        total = f.get("total", float("nan"))
        achieved = total / med / 1e12
        peak = peak_for(v, args)
        share = f"{100 * achieved / peak:.1f} %" if peak else "—"
        requested, encoded = r.text_stats[v.name]
        mem = fmt_bytes(r.peak_mem[v.name]) if v.name in r.peak_mem else "n/a (CPU)"
        lab = args.labeled
        unl = 0 if v.method == "supervised" else args.unlabeled
        split = "/".join(f"{f.get(k, float('nan')) / 1e9:.0f}" for k in ("text_encoder", "teacher", "student"))
        lines.append(
            f"| `{v.name}` | {lab}+{unl} | {median(times):.3f} | {min(times):.3f}–{max(times):.3f} | "
            f"{median(cpu):.3f} | {batch_samples(v, args) / med:.2f} | {encoded}/{requested} | {total / 1e9:.1f} | "
            f"{split} | {achieved:.4f} | {share} | {mem} |"
        )
        records.append(
            {
                "variant": v.name,
                "method": v.method,
                "precision": v.precision,
                "text_cache": v.cache,
                "channels_last": v.channels_last,
                "labeled": lab,
                "unlabeled": unl,
                "step_s": times,
                "step_cpu_s": cpu,
                "median_step_s": median(times),
                "median_step_cpu_s": median(cpu),
                "clock": args.clock,
                "median_step_primary_s": med,
                "samples_per_s": batch_samples(v, args) / med,
                "bert_rows_encoded": encoded,
                "texts_requested": requested,
                "flops": f,
                "achieved_tflops": achieved,
                "peak_share": achieved / peak if peak else None,
                "peak_gpu_mem_bytes": r.peak_mem.get(v.name),
            }
        )
    return lines, records


def breakdown_table(
    variants: list[Variant], runners: dict[tuple[str, bool, str], Runner]
) -> tuple[list[str], dict[str, Any]]:
    """Markdown rows of the per-part breakdown (median ms and share of the instrumented step) and JSON data."""
    have = [v for v in variants if runners[v.key].parts.get(v.name)]
    if not have:
        return [], {}
    header = "| part | " + " | ".join(f"`{v.name}`" for v in have) + " |"
    lines = [header, "|---|" + "---|" * len(have)]
    data: dict[str, Any] = {}
    rows: list[tuple[str, bool]] = []
    for part in PARTS:
        rows.append((part, False))
        rows.extend((sub, True) for sub in SUBPARTS.get(part, ()))
    rows += [("other", False), ("instrumented step", False)]
    for name, nested in rows:
        cells = []
        for v in have:
            samples = runners[v.key].parts[v.name]
            values = [s.get(name, 0.0) for s in samples]
            total = median([s["instrumented step"] for s in samples])
            value = median(values)
            data.setdefault(v.name, {})[name] = value
            cells.append(f"{1000 * value:.0f} ms ({100 * value / total:.0f} %)")
        label = f"&nbsp;&nbsp;↳ {name.split(': ', 1)[1]}" if nested else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines, data


def ratio_table(
    variants: list[Variant], runners: dict[tuple[str, bool, str], Runner], args: argparse.Namespace
) -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown rows of the targeted ratios on both clocks (median of paired per-round ratios, ratio of medians)."""
    clocks = {
        "wall": {v.name: runners[v.key].times[v.name] for v in variants},
        "cpu": {v.name: runners[v.key].cpu_times[v.name] for v in variants},
    }
    lines = [
        "| ratio | numerator / denominator | wall: median of per-round ratios | wall: ratio of medians | CPU time: "
        f"median of per-round ratios | CPU time: ratio of medians | target | met ({args.clock}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    records = []
    for label, num, den, op, target in RATIOS:
        if num not in clocks["wall"] or den not in clocks["wall"]:
            continue
        values: dict[str, dict[str, Any]] = {}
        for clock, times in clocks.items():
            paired = [a / b for a, b in zip(times[num], times[den], strict=False)]
            values[clock] = {
                "paired_median": median(paired),
                "ratio_of_medians": median(times[num]) / median(times[den]),
                "per_round": paired,
            }
        value = values[args.clock]["paired_median"]
        met = None if target is None else (value >= target if op == ">=" else value <= target)
        target_s = "—" if target is None else f"{op} {target}"
        met_s = "—" if met is None else ("yes" if met else "**no**")
        w, c = values["wall"], values["cpu"]
        lines.append(
            f"| {label} | `{num}` / `{den}` | {w['paired_median']:.2f}× | {w['ratio_of_medians']:.2f}× | "
            f"{c['paired_median']:.2f}× | {c['ratio_of_medians']:.2f}× | {target_s} | {met_s} |"
        )
        records.append(
            {
                "ratio": label,
                "numerator": num,
                "denominator": den,
                **{f"{clock}_{k}": val for clock, d in values.items() for k, val in d.items()},
                "target": target,
                "op": op,
                "met": met,
                "met_on_clock": args.clock,
            }
        )
    return lines, records


# --------------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labeled", type=int, default=32, help="labeled images per step (Semi-MedRef: 32)")
    p.add_argument("--unlabeled", type=int, default=32, help="unlabeled images per step")
    p.add_argument("--size", type=int, default=224, help="image side (a multiple of 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--methods", nargs="+", default=list(METHOD_FAMILY), choices=list(METHOD_FAMILY))
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--cache", nargs="+", default=["on", "off"], choices=["on", "off"], help="text feature cache")
    p.add_argument(
        "--format",
        nargs="+",
        default=None,
        choices=["nchw", "cl"],
        help="memory format (default: nchw on CPU, nchw and cl on CUDA)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="explicit method/precision/cache|nocache/nchw|cl list (overrides the matrix)",
    )
    p.add_argument(
        "--compile",
        nargs="+",
        default=["eager"],
        choices=["eager", *COMPILE_MODES],
        help="networks eager, or compiled: compile (default mode), graphs (reduce-overhead), autotune",
    )
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: tracing only, CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed rounds (every variant once per round)")
    p.add_argument("--warmup", type=int, default=3, help="discarded rounds before timing")
    p.add_argument("--breakdown-steps", type=int, default=2, help="instrumented rounds for the per-part breakdown")
    p.add_argument("--pool", type=int, default=4, help="distinct batches cycled through (per method family)")
    add_threads_argument(p)
    p.add_argument("--vision-encoder", default="convnext-tiny", help="ConvNeXt spec (random full-size ConvNeXt-T)")
    p.add_argument("--text-encoder", default="bert-base", help="text encoder spec (random BERT-base, no download)")
    p.add_argument("--project-dim", type=int, default=768, help="ITCL projection width (Semi-MedRef: 768)")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak TFLOP/s (bf16, or all variants)")
    p.add_argument("--peak-tflops-fp32", type=float, default=None, help="device peak TFLOP/s for fp32 variants")
    p.add_argument(
        "--matmul-precision",
        default="highest",
        choices=["highest", "high", "medium"],
        help="torch.set_float32_matmul_precision (highest = no TF32 in fp32 matmuls)",
    )
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default=None,
        help="clock of samples/s, FLOP/s and the target checks: wall, or process CPU time (robust on a shared CPU; "
        "default: cpu on CPU, wall on CUDA)",
    )
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="real text files (captions only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic batches and of the models")
    p.add_argument("--note", action="append", default=[], help="free text added to the results file")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).with_name("results_step_time.md"),
        help="Markdown results file (a .json sibling is written too)",
    )
    args = p.parse_args(argv)
    if args.clock is None:
        args.clock = "wall" if args.device.startswith("cuda") else "cpu"
    if args.size % 32:
        raise ValueError(f"--size {args.size} is not a multiple of 32")
    if min(args.labeled, args.steps, args.pool) < 1 or args.unlabeled < 0 or args.warmup < 0:
        raise ValueError("--labeled, --steps and --pool must be >= 1, --unlabeled and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and write the results files; return the JSON record."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=r".*self\.log\(\).*")  # no Trainer attached: logging is a no-op
    device = torch.device(args.device)
    set_threads(args.threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.manual_seed(args.seed)
    variants = matrix_variants(args)
    if any(v.method == "textmoe" for v in variants) and args.unlabeled and args.unlabeled < 2:
        raise ValueError("TextMoE's frequency exchange needs --unlabeled >= 2 (one partner of each modality)")
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    xray, ct, caption_source = load_captions(args.data_dir)
    pools = {
        fam: make_pool(fam, args.pool, args.labeled, args.unlabeled, args.size, (xray, ct), args.seed)
        for fam in sorted({METHOD_FAMILY[v.method] for v in variants})
    }
    timer = PartTimer(device)
    runners: dict[tuple[str, bool, str], Runner] = {}
    for v in variants:
        if v.key not in runners:
            print(f"building {v.method} ({v.fmt}, {v.compile}) ...", flush=True)
            runners[v.key] = build_runner(v, args, pools[METHOD_FAMILY[v.method]], timer)
    for v in variants:
        r = runners[v.key]
        r.times[v.name], r.cpu_times[v.name], r.parts[v.name], r.text_stats[v.name] = [], [], [], [0, 0]

    with timed_differential_loss(timer):
        # Timed rounds, interleaved (ABC CBA ...), warm-up rounds discarded.
        for rnd in range(args.warmup + args.steps):
            order = variants if rnd % 2 == 0 else variants[::-1]
            for v in order:
                r = runners[v.key]
                seconds, cpu, requested, encoded = timed_step(r, v, r.pool[rnd % len(r.pool)], device, timer)
                if rnd >= args.warmup:
                    r.times[v.name].append(seconds)
                    r.cpu_times[v.name].append(cpu)
                    r.text_stats[v.name][0] += requested
                    r.text_stats[v.name][1] += encoded
                tag = "warm-up" if rnd < args.warmup else "timed"
                print(f"round {rnd} ({tag}) {v.name}: {seconds:.3f} s wall, {cpu:.3f} s CPU", flush=True)
        # Instrumented rounds for the breakdown.
        eager = [v for v in variants if v.compile == "eager"]  # compiled networks carry no breakdown hooks
        for rnd in range(args.breakdown_steps):
            order = eager if rnd % 2 == 0 else eager[::-1]
            for v in order:
                r = runners[v.key]
                timer.totals = {}
                timer.active = True
                try:
                    seconds, _, _, _ = timed_step(r, v, r.pool[rnd % len(r.pool)], device, timer)
                finally:
                    timer.active = False
                parts = dict(timer.totals)
                parts["instrumented step"] = seconds
                parts["other"] = seconds - sum(parts.get(p, 0.0) for p in PARTS)
                r.parts[v.name].append(parts)
                print(f"breakdown {rnd} {v.name}: {seconds:.3f} s", flush=True)
        # FLOPs, once per (method, cache), on an eager runner where there is one.
        flops: dict[str, dict[str, float]] = {}
        for v in sorted(variants, key=lambda v: v.compile != "eager"):
            flop_key = f"{v.method}/{v.name.split('/')[2]}"
            if flop_key not in flops:
                flops[flop_key] = count_flops(runners[v.key], v, device, timer)
                print(f"flops {flop_key}: {flops[flop_key]['total'] / 1e9:.1f} GFLOP", flush=True)

    step_lines, step_records = step_table(variants, runners, flops, args)
    part_lines, part_data = breakdown_table(variants, runners)
    ratio_lines, ratio_records = ratio_table(variants, runners, args)
    load_after = os.getloadavg()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dev = device_string(device, torch.get_num_threads())
    command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])
    header = [
        "# Training step time",
        "",
        f"- command: `{command}`",
        f"- device: {dev}",
        f"- torch {torch.__version__}, threads {torch.get_num_threads()}, date {started:%Y-%m-%d %H:%M} UTC, "
        f"load average {load_before[0]:.1f} → {load_after[0]:.1f} (1 min)",
        f"- networks: MMI-UNet (Semi-MedRef, supervised) / TextMoE decoder on vision encoder `{args.vision_encoder}`"
        f"{' (random full-size ConvNeXt-T)' if args.vision_encoder == 'convnext-tiny' else ''}, text encoder "
        f"`{args.text_encoder}`{' (random BERT-base, in-code tokenizer)' if args.text_encoder == 'bert-base' else ''}"
        f", max length 24, ITCL dim {args.project_dim}; image {args.size}², batch {args.labeled} labeled + "
        f"{args.unlabeled} unlabeled",
        f"- captions: {caption_source}; images and masks are smooth random fields (z-scored), {args.pool} "
        "batches cycled, already on the device",
        f"- process peak RSS {fmt_bytes(rss_peak)} (all modules of the run together)",
        "",
        "Method: a minimal loop calls `training_step` (inside `torch.autocast` for bf16), `backward`, and the "
        "module's `optimizer_step` (AdamW, then the EMA teacher update), with no Trainer (so `self.log` is a no-op "
        "and the batch is already on the device). Variants run interleaved -- each round runs every variant once on "
        "the same batch, in reversed order on odd rounds -- "
        f"{args.warmup} warm-up round(s) are discarded, {args.steps} timed rounds follow, and the tables give medians; "
        "ratios are the median of the per-round paired ratios (robust to load changes on a shared machine) beside "
        "the ratio of medians. Each step is timed on two clocks: wall time and the process's CPU time "
        "(`time.process_time`; with one torch thread on a shared CPU it excludes the time other jobs hold the core, "
        f"so it is the steadier measure there). Samples/s, FLOP/s and the target checks use the {args.clock} clock. "
        "The text cache is warmed with the pool's texts before timing (steady state of an "
        "epoch where texts repeat); PosAug'd texts fill it during the warm-up rounds. 'BERT rows / texts' counts "
        "the rows BERT really encoded vs the texts requested over the timed steps. The breakdown comes from "
        f"{args.breakdown_steps} separate instrumented round(s) (forward hooks and wrapped sub-calls, CUDA "
        "synchronised at every boundary); 'other' is the rest of the step (pseudo-labels, text edits, glue). "
        "FLOPs: `FlopCounterMode` over one fp32 step (matmul/conv/attention, forward + backward).",
    ]
    if device.type != "cuda":
        header += [
            "",
            "**GPU figures pending**: no GPU was available for this run. On a GPU run "
            "`python benchmarks/step_time.py --device cuda --peak-tflops <bf16 peak> --peak-tflops-fp32 <fp32 peak>` "
            "(defaults: 32 + 32 images, all methods, fp32/bf16, cache on/off, NCHW/channels_last).",
        ]
    notes = [f"- {n}" for n in args.note]
    body = [
        "",
        "## Step time",
        "",
        *step_lines,
        "",
        "## Ratios",
        "",
        *ratio_lines,
        "",
        "## Breakdown (median of the instrumented rounds; share of the instrumented step)",
        "",
        *(part_lines or ["(no instrumented rounds)"]),
    ]
    if notes:
        body += ["", "## Notes", "", *notes]
    text = "\n".join(header + body) + "\n"
    print(text)
    record = {
        "command": command,
        "device": dev,
        "environment": environment(),
        "threads": torch.get_num_threads(),
        "date_utc": started.isoformat(timespec="seconds"),
        "loadavg_before_after": [load_before, load_after],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "captions": caption_source,
        "build_s": {f"{m}/{'cl' if c else 'nchw'}/{k}": r.build_s for (m, c, k), r in runners.items()},
        "process_peak_rss_bytes": rss_peak,
        "steps": step_records,
        "ratios": ratio_records,
        "breakdown_s": part_data,
        "breakdown_raw_s": {v.name: runners[v.key].parts[v.name] for v in variants},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


if __name__ == "__main__":
    main()
