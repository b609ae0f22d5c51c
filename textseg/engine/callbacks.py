"""Lightning callbacks and the W&B logger of the research workflow (logging, prediction files, run cards).

* :class:`TextSegWandbLogger` -- a :class:`~lightning.pytorch.loggers.WandbLogger` that is **offline unless an API key
  is configured** and names its run from the model and datamodule hyper-parameters (project / group / tags / name:
  method, backbone, dataset, label ratio, seed and the ablation switches that differ from the method's defaults), so
  that the seeds of one configuration share a W&B group and ablation runs line up in tables.
* :class:`WandbOverlayCallback` -- validation overlays (image, ground truth, prediction, text as caption) of a few fixed
  images, and at test time a per-image ``wandb.Table`` (id, text, Dice, IoU).
* :class:`MaskWriter` -- a :class:`~lightning.pytorch.callbacks.BasePredictionWriter` writing ``masks/<id>.png`` (and
  optionally ``probs/<id>.png`` and ``overlays/<id>.png``) at the original image size.
* :class:`RunCardCallback` -- ``run_card.json`` in the run directory at fit start: resolved hyper-parameters, split
  file, metric definitions, library versions, git commit and command line.

Per-image scores follow LViT's definitions in :mod:`textseg.ops.metrics` (``data.md`` §10.2): a pixel is foreground when
``sigmoid(logit) >= 0.5``; Dice = 2 sum(gt*pred) / (sum gt + sum pred + 1e-5); IoU = |gt & pred| / |gt | pred|, 0 when
both are empty.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import inspect
import json
import netrc
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from textseg.data.io import read_image, read_size
from textseg.errors import DataError
from textseg.ops.metrics import LVIT_EPS

__all__ = [
    "ABLATION_KEYS",
    "MaskWriter",
    "RunCardCallback",
    "RunFacts",
    "TextSegWandbLogger",
    "WandbOverlayCallback",
    "git_info",
    "library_versions",
    "per_image_scores",
    "render_overlay",
    "run_facts",
    "wandb_offline_default",
]

#: Method arguments that switch a component on or off (Semi-MedRef Tables 2-3, TextMoE Table 2, the base losses).
#: Those that differ from the method's defaults name the W&B group; all of them become W&B tags.
ABLATION_KEYS: tuple[str, ...] = (
    "use_teacher",
    "image_strong",
    "text_aug",
    "mix",
    "mix_mode",
    "contrastive",
    "spc",
    "pseudo_label",
    "expert",
    "lambda_diff",
    "exchange_mode",
    "loss",
    "eval_teacher",
)
#: W&B project when neither the ``project`` argument nor ``$WANDB_PROJECT`` names one.
DEFAULT_PROJECT = "textseg"
#: Longest W&B group name (the W&B limit is 128 characters); longer names are shortened with a hash.
MAX_GROUP_LENGTH = 128
#: Longest W&B tag (a W&B limit).
MAX_TAG_LENGTH = 64
#: Libraries whose versions go into the run card.
CARD_LIBRARIES: tuple[str, ...] = ("torch", "lightning", "monai", "transformers", "torchmetrics")
#: Host of the W&B API in ``~/.netrc`` (``wandb login`` writes the key there).
WANDB_API_HOST = "api.wandb.ai"
#: Seconds allowed to each ``git`` call of the run card.
GIT_TIMEOUT_S = 5.0


# ------------------------------------------------------------------------------------------------ run description


def _init_defaults(cls: type) -> dict[str, Any]:
    """Constructor defaults of ``cls`` and its bases (subclass first), for arguments passed on via ``**kwargs``."""
    defaults: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.default is not inspect.Parameter.empty:
                defaults.setdefault(p.name, p.default)
    return defaults


def _ratio_tag(ratio: Any) -> str:
    """``0.01`` -> ``"1%"``, ``0.25`` -> ``"25%"`` (``"?"`` when unknown)."""
    try:
        return f"{float(ratio) * 100:g}%"
    except (TypeError, ValueError):
        return "?"


def _method_name(model: LightningModule | type) -> str:
    """Class name without the ``Module`` suffix (``SemiMedRefModule`` -> ``SemiMedRef``)."""
    name = model.__name__ if isinstance(model, type) else type(model).__name__
    return name[: -len("Module")] if name.endswith("Module") and len(name) > len("Module") else name


@dataclass(frozen=True)
class RunFacts:
    """What identifies a run in tables: method, backbone, data, label ratio, seed and ablation switches.

    Attributes:
        method: Method name (class name without ``Module``).
        backbone: Network backbone (``"mmiunet"``, ``"guidedecoder"``, ...).
        dataset: Dataset name; composite data joins the names with ``+``.
        labeled_ratio: Label ratio of the datamodule (``None`` without a datamodule).
        seed: Seed of the datamodule (the labeled split and data streams).
        switches: Every :data:`ABLATION_KEYS` value the model has.
        changed: The switches whose value differs from the method's constructor default.
    """

    method: str
    backbone: str
    dataset: str
    labeled_ratio: float | None
    seed: int | None
    switches: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """W&B group: everything but the seed, so the seeds of one configuration are grouped."""
        parts = [self.method, self.backbone, self.dataset, _ratio_tag(self.labeled_ratio)]
        parts += [f"{k}={v}" for k, v in self.changed.items()]
        name = "-".join(parts)
        if len(name) > MAX_GROUP_LENGTH:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            name = f"{name[: MAX_GROUP_LENGTH - 9]}-{digest}"
        return name

    @property
    def name(self) -> str:
        """W&B run name: the group plus the seed."""
        return f"{self.group}-seed{self.seed}"

    @property
    def tags(self) -> list[str]:
        """W&B tags: method, backbone, dataset, ratio, seed and every switch value (each at most 64 characters)."""
        tags = [self.method, self.backbone, self.dataset, f"ratio={_ratio_tag(self.labeled_ratio)}"]
        tags += [f"seed={self.seed}"] + [f"{k}={v}" for k, v in self.switches.items()]
        return [t[:MAX_TAG_LENGTH] for t in tags]

    def config(self) -> dict[str, Any]:
        """Summary keys added to the W&B config (the full hyper-parameters are logged by Lightning)."""
        return {
            "method": self.method,
            "backbone": self.backbone,
            "dataset_name": self.dataset,
            "labeled_ratio": self.labeled_ratio,
            "seed": self.seed,
            "ablation": dict(self.changed),
        }


def run_facts(model: LightningModule, datamodule: LightningDataModule | None = None) -> RunFacts:
    """Describe a run from ``model.hparams`` and the datamodule's ``hparams``.

    Args:
        model: The LightningModule (its saved hyper-parameters and class defaults are read).
        datamodule: The datamodule, if any (``dataset``, ``labeled_ratio``, ``seed``).

    Returns:
        The run facts.
    """
    hp = dict(getattr(model, "hparams", {}) or {})
    data = dict(getattr(datamodule, "hparams", {}) or {}) if datamodule is not None else {}
    defaults = _init_defaults(type(model))
    switches = {k: hp[k] for k in ABLATION_KEYS if k in hp}
    changed = {k: v for k, v in switches.items() if k in defaults and defaults[k] != v}
    dataset = data.get("dataset", "?")
    if isinstance(dataset, (list, tuple)):
        dataset = "+".join(str(d) for d in dataset)
    ratio = data.get("labeled_ratio")
    seed = data.get("seed")
    return RunFacts(
        method=_method_name(model),
        backbone=str(hp.get("backbone", "?")),
        dataset=str(dataset),
        labeled_ratio=float(ratio) if ratio is not None else None,
        seed=int(seed) if seed is not None else None,
        switches=switches,
        changed=changed,
    )


# ------------------------------------------------------------------------------------------------------- W&B


def _netrc_has_wandb_key() -> bool:
    """Whether a netrc file (``$NETRC`` or ``~/.netrc``) holds credentials for the W&B API host."""
    base_url = os.environ.get("WANDB_BASE_URL", f"https://{WANDB_API_HOST}")
    host = base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0] or WANDB_API_HOST
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc")).expanduser()
    if not path.is_file():
        return False
    try:
        auth = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def wandb_offline_default(offline: bool | None = None) -> bool:
    """Decide whether W&B runs offline.

    Args:
        offline: An explicit choice (returned as is), or ``None`` to decide from the environment.

    Returns:
        ``True`` (offline) when ``WANDB_MODE`` is ``offline``/``dryrun``/``disabled``, or when ``WANDB_MODE`` is not
        ``online`` and no API key is configured (``WANDB_API_KEY`` unset and no netrc entry for the W&B host).
        Nothing touches the network in offline mode; ``wandb sync <run dir>`` uploads a run later.
    """
    if offline is not None:
        return bool(offline)
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online":
        return False
    return not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb_key())


class TextSegWandbLogger(WandbLogger):
    """W&B logger that is offline without an API key and names runs from the hyper-parameters.

    :meth:`describe` fills the W&B project/group/tags/name from the model and datamodule hyper-parameters
    (:class:`RunFacts`); ``textseg fit`` calls it before training, and :class:`WandbOverlayCallback` calls it at
    ``setup`` for the Python API. A W&B group can only be chosen before the run starts: call :meth:`describe` before
    ``trainer.fit`` (the CLI does) to group runs; tags, name and config are also updated on a running run.

    Args:
        project: W&B project; ``None`` = ``$WANDB_PROJECT``, else ``"textseg"``.
        name: Run name; ``None`` = ``<group>-seed<seed>``.
        group: Run group; ``None`` = method-backbone-dataset-ratio plus the changed ablation switches.
        tags: Extra tags, added to the generated ones.
        save_dir: Folder of the local ``wandb/`` run files; ``None`` = ``$WANDB_DIR`` if set, else the run directory
            of the first logger (``runs/<name>/version_N/``).
        offline: ``True``/``False`` forces the mode; ``None`` = :func:`wandb_offline_default` (offline unless an API
            key is configured).
        log_model: Upload checkpoints as artifacts (online only; see :class:`~lightning.pytorch.loggers.WandbLogger`).
        entity: W&B entity (user or team).
        job_type: W&B job type.
        notes: W&B notes.
        **kwargs: Further :class:`~lightning.pytorch.loggers.WandbLogger` / ``wandb.init`` arguments.

    Raises:
        ValueError: If ``log_model`` is set for an offline run.
    """

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        save_dir: str | None = None,
        offline: bool | None = None,
        log_model: bool | Literal["all"] = False,
        entity: str | None = None,
        job_type: str | None = None,
        notes: str | None = None,
        **kwargs: Any,
    ) -> None:
        is_offline = wandb_offline_default(offline)
        if is_offline and log_model:
            raise ValueError(
                f"log_model={log_model!r} needs an online W&B run, but W&B is offline (offline={offline}, "
                f"WANDB_MODE={os.environ.get('WANDB_MODE')!r}, no API key found); set log_model false or log in"
            )
        if is_offline:
            kwargs["mode"] = "offline"
        super().__init__(
            name=name,
            save_dir=save_dir,  # type: ignore[arg-type]
            project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            log_model=log_model,
            entity=entity,
            group=group,
            tags=list(tags or []),
            job_type=job_type,
            notes=notes,
            **kwargs,
        )
        self._offline = is_offline
        self._user_name = name
        self._user_group = group
        self._user_tags = list(tags or [])
        self.facts: RunFacts | None = None

    @property
    def offline(self) -> bool:
        """Whether the run is (or will be) offline."""
        return self._offline

    def describe(
        self, model: LightningModule, datamodule: LightningDataModule | None = None, log_dir: str | None = None
    ) -> RunFacts:
        """Name the run from the hyper-parameters.

        Before the W&B run exists this sets group, tags, name, config and (when neither ``save_dir`` nor
        ``$WANDB_DIR`` is set) the run files' folder ``log_dir``; afterwards it updates tags, name and config of the
        running run (its group cannot change; a warning says so if it would).

        Args:
            model: The LightningModule.
            datamodule: The datamodule, if any.
            log_dir: The run directory of the first logger (``trainer.log_dir``).

        Returns:
            The facts the names were built from.
        """
        facts = run_facts(model, datamodule)
        self.facts = facts
        name = self._user_name or facts.name
        group = self._user_group or facts.group
        tags = list(dict.fromkeys([*self._user_tags, *facts.tags]))
        if self._experiment is None:
            init = self._wandb_init
            init.update(name=name, group=group, tags=tags)
            init["config"] = {**dict(init.get("config") or {}), **facts.config()}
            if init.get("dir") is None and not os.environ.get("WANDB_DIR") and log_dir:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                init["dir"] = str(log_dir)
                self._save_dir = str(log_dir)
            self._name = name
            return facts
        run: Any = self._experiment
        if not hasattr(run, "config"):  # rank > 0: the dummy experiment
            return facts
        run.name = name
        run.tags = tuple(tags)
        run.config.update(facts.config(), allow_val_change=True)
        if getattr(run, "group", None) != group:
            rank_zero_warn(
                f"the W&B run already started in group {getattr(run, 'group', None)!r}; call describe() before "
                f"trainer.fit to group it as {group!r}"
            )
        return facts

    def finish(self) -> None:
        """Finish the W&B run (if one was started) so that a next run in this process starts a new one."""
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish()
        self._experiment = None


def wandb_loggers(trainer: Trainer) -> list[WandbLogger]:
    """The trainer's W&B loggers."""
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


# ------------------------------------------------------------------------------------------------- helpers


def per_image_scores(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """LViT per-image Dice and IoU of binary predictions (the definitions of :class:`textseg.ops.metrics.PerImageScore`).

    Args:
        preds: Binary predictions ``[B, ...]``.
        target: Binary targets ``[B, ...]``.

    Returns:
        ``(dice, iou)``, float64 ``[B]``: Dice = 2 sum(t*p) / (sum t + sum p + 1e-5); IoU = |t & p| / |t | p|, 0 when
        the union is empty.
    """
    p = preds.reshape(preds.shape[0], -1).double()
    t = target.reshape(target.shape[0], -1).double()
    inter = (p * t).sum(1)
    dice = 2 * inter / (t.sum(1) + p.sum(1) + LVIT_EPS)
    union = ((p + t) > 0).double().sum(1)
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))
    return dice, iou


def _forward_logits(pl_module: LightningModule, batch: Mapping[str, Any]) -> Tensor:
    """Logits of the evaluation network on a batch (``pl_module(image, text, eval_net[, modality])``)."""
    net = getattr(pl_module, "eval_net", None)
    params = inspect.signature(pl_module.forward).parameters
    kwargs: dict[str, Any] = {}
    if "modality" in params and "modality" in batch:
        kwargs["modality"] = batch["modality"]
    out = pl_module(batch["image"], batch["text"], net, **kwargs)
    return out["logits"] if isinstance(out, Mapping) else out


def _display_grey(image: Tensor) -> np.ndarray:
    """A network input ``[C, H, W]`` (z-scored) as a min-max scaled ``uint8 [H, W]`` picture."""
    x = image.detach().float().cpu()
    x = x.mean(0) if x.ndim == 3 else x
    lo, hi = float(x.min()), float(x.max())
    scaled = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return (scaled * 255).round().clamp(0, 255).to(torch.uint8).numpy()


class _OutputCapture:
    """Forward hook keeping the last logits of a module (avoids a second forward pass at test time)."""

    def __init__(self) -> None:
        self.logits: Tensor | None = None
        self._handle: Any = None

    def attach(self, module: nn.Module) -> None:
        """Start capturing ``module``'s outputs."""
        self.detach()
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        logits = output.get("logits") if isinstance(output, Mapping) else output
        self.logits = logits.detach() if isinstance(logits, Tensor) else None

    def detach(self) -> None:
        """Stop capturing."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.logits = None


# ----------------------------------------------------------------------------------------- W&B overlays/table


@dataclass
class _Sample:
    """A cached validation sample for the overlays."""

    id: str
    text: str
    image: Tensor
    mask: Tensor
    extra: dict[str, Any]


class WandbOverlayCallback(Callback):
    """Log validation overlays and a per-image test table to the trainer's W&B logger(s).

    Validation: every ``every_n_epochs`` epochs, the same ``num_images`` validation images (``ids``, or the first ones
    of the validation set) are logged under ``val/overlays`` as ``wandb.Image`` with the ground truth and the
    prediction as W&B masks and ``"<id>: <text> (Dice d)"`` as caption. Test: a ``wandb.Table`` ``test/per_image``
    with columns id, dataset, text, dice, iou (LViT per-image definitions, :func:`per_image_scores`), one row per test
    image; its mean Dice equals ``test_dice_per_image``.

    Without a W&B logger the callback does nothing. At ``setup`` it calls :meth:`TextSegWandbLogger.describe`.

    Args:
        num_images: Validation images to show (when ``ids`` is not given).
        ids: Record ids of the validation images to show.
        every_n_epochs: Log overlays every this many validation epochs.
        log_test_table: Log the per-image test table.
    """

    def __init__(
        self,
        num_images: int = 4,
        ids: Sequence[str] | None = None,
        every_n_epochs: int = 1,
        log_test_table: bool = True,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.num_images = num_images
        self.ids = list(ids) if ids is not None else None
        self.every_n_epochs = every_n_epochs
        self.log_test_table = log_test_table
        self._samples: dict[str, _Sample] = {}
        self._scanned = False
        self._rows: list[list[Any]] = []
        self._capture = _OutputCapture()

    @property
    def _wanted(self) -> int:
        return len(self.ids) if self.ids is not None else self.num_images

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Describe the run to every :class:`TextSegWandbLogger` (tags, name, config)."""
        for logger in wandb_loggers(trainer):
            if isinstance(logger, TextSegWandbLogger):
                logger.describe(pl_module, getattr(trainer, "datamodule", None), trainer.log_dir)

    # ------------------------------------------------------------------------------------------- validation
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Cache the chosen validation samples (first epoch only)."""
        if self._scanned or not wandb_loggers(trainer) or len(self._samples) >= self._wanted:
            return
        for i, sample_id in enumerate(batch["id"]):
            if len(self._samples) >= self._wanted:
                break
            if sample_id in self._samples or (self.ids is not None and sample_id not in self.ids):
                continue
            extra = {"modality": batch["modality"][i : i + 1]} if "modality" in batch else {}
            self._samples[sample_id] = _Sample(
                id=str(sample_id),
                text=str(batch["text"][i]),
                image=batch["image"][i].detach().cpu(),
                mask=batch["mask"][i].detach().cpu(),
                extra=extra,
            )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the overlays of the cached samples."""
        if trainer.sanity_checking or not wandb_loggers(trainer):
            return
        if not self._scanned:
            self._scanned = True
            if self.ids is not None:
                missing = [i for i in self.ids if i not in self._samples]
                if missing:
                    rank_zero_warn(f"WandbOverlayCallback: validation ids not found: {missing}")
        if not self._samples or trainer.current_epoch % self.every_n_epochs != 0 or not trainer.is_global_zero:
            return
        self._log_overlays(trainer, pl_module)

    def _log_overlays(self, trainer: Trainer, pl_module: LightningModule) -> None:
        samples = [self._samples[i] for i in (self.ids or list(self._samples)) if i in self._samples]
        batch: dict[str, Any] = {
            "image": torch.stack([s.image for s in samples]).to(pl_module.device),
            "text": [s.text for s in samples],
        }
        if all("modality" in s.extra for s in samples):
            batch["modality"] = torch.cat([torch.as_tensor(s.extra["modality"]) for s in samples]).to(pl_module.device)
        with torch.no_grad():
            logits = _forward_logits(pl_module, batch).float().cpu()
        preds = (logits >= 0).long()
        targets = torch.stack([s.mask for s in samples]).long()
        dice, _ = per_image_scores(preds, targets)
        labels = {0: "background", 1: "lesion"}
        images = [_display_grey(s.image) for s in samples]
        captions = [f"{s.id}: {s.text} (Dice {float(d):.3f})" for s, d in zip(samples, dice, strict=True)]
        masks = [
            {
                "ground_truth": {"mask_data": t[0].numpy().astype(np.uint8), "class_labels": labels},
                "prediction": {"mask_data": p[0].numpy().astype(np.uint8), "class_labels": labels},
            }
            for t, p in zip(targets, preds, strict=True)
        ]
        for logger in wandb_loggers(trainer):
            logger.log_image("val/overlays", images, step=trainer.global_step, caption=captions, masks=masks)

    # ------------------------------------------------------------------------------------------------- test
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start capturing the evaluation network's logits."""
        self._rows = []
        net = getattr(pl_module, "eval_net", None)
        if self.log_test_table and wandb_loggers(trainer) and isinstance(net, nn.Module):
            self._capture.attach(net)

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Forget the previous batch's logits."""
        self._capture.logits = None

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Score every image of the batch."""
        if not self.log_test_table or not wandb_loggers(trainer):
            return
        logits = self._capture.logits
        if logits is None or logits.shape[0] != len(batch["id"]):
            with torch.no_grad():
                logits = _forward_logits(pl_module, batch)
        dice, iou = per_image_scores((logits >= 0).long(), batch["mask"].long())
        datasets = batch.get("dataset") or [""] * len(batch["id"])
        for i, sample_id in enumerate(batch["id"]):
            row = [str(sample_id), str(datasets[i]), str(batch["text"][i]), float(dice[i]), float(iou[i])]
            self._rows.append(row)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the per-image table (rows gathered from every rank)."""
        self._capture.detach()
        if not self.log_test_table or not wandb_loggers(trainer):
            return
        rows = self._rows
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in (part or [])]
        if not trainer.is_global_zero:
            return
        unique = list({(r[1], r[0]): r for r in rows}.values())
        for logger in wandb_loggers(trainer):
            logger.log_table("test/per_image", columns=["id", "dataset", "text", "dice", "iou"], data=unique)


# ----------------------------------------------------------------------------------------------- mask writer


def _caption_lines(text: str, width: int, font: Any, draw: ImageDraw.ImageDraw, margin: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width - 2 margin`` pixels."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        current = ""
        for word in paragraph.split():
            trial = f"{current} {word}".strip()
            if current and draw.textlength(trial, font=font) > width - 2 * margin:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    return lines


def render_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    text: str,
    color: Sequence[int] = (255, 48, 48),
    alpha: float = 0.45,
    margin: int = 4,
) -> Image.Image:
    """Tint the predicted lesion on the image and draw the referring text as a caption below it.

    Args:
        image: Greyscale ``uint8 [H, W]`` (display orientation).
        mask: Boolean or {0, 1} ``[H, W]`` prediction.
        text: Caption (PIL's default font, wrapped to the image width).
        color: RGB tint of the lesion.
        alpha: Opacity of the tint.
        margin: Caption margin in pixels.

    Returns:
        An RGB image ``[W, H + caption height]``.
    """
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in size")
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=-1)
    tint = np.asarray(color, dtype=np.float32)[None, None, :]
    sel = mask.astype(bool)
    rgb[sel] = (1 - alpha) * rgb[sel] + alpha * tint[0]
    picture = Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8), mode="RGB")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(picture)
    lines = _caption_lines(text, picture.width, font, probe, margin)
    _, top, _, bottom = probe.textbbox((0, 0), "Ag", font=font)
    line_height = int(bottom - top) + 2
    out = Image.new("RGB", (picture.width, picture.height + len(lines) * line_height + 2 * margin), (0, 0, 0))
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((margin, picture.height + margin + i * line_height - top), line, fill=(255, 255, 255), font=font)
    return out


class MaskWriter(BasePredictionWriter):
    """Write the predictions of ``textseg predict`` as PNG files at the original image size.

    Each batch's ``predict_step`` output must be ``{"id": list[str], "text": list[str], "path": list[str],
    "probs": Tensor [B, 1, h, w] in [0, 1]}`` (``path`` = the original image file; missing ``text``/``path`` are taken
    from the batch, then from the datamodule's records). The probabilities are resized to the original image size
    (read from the file header) with bilinear interpolation, then written as

    * ``masks/<id>.png``: ``uint8`` 0/255, foreground where the probability is ``>= threshold``;
    * ``probs/<id>.png`` (``write_probs``): ``uint8`` ``round(255 p)``;
    * ``overlays/<id>.png`` (``write_overlays``): the image with the predicted lesion tinted and the text as caption;
    * ``predictions.csv``: id, text, image, mask file and predicted lesion fraction of every image (one file per rank
      under DDP: ``predictions.rank<r>.csv``).

    Args:
        output_dir: Output folder (created).
        write_probs: Also write the probability maps.
        write_overlays: Also write the overlays.
        threshold: Probability threshold of the mask (0.5 = logit 0, the metrics' threshold).
        overlay_color: RGB tint of the lesion in the overlays.
        overlay_alpha: Opacity of the tint.
    """

    def __init__(
        self,
        output_dir: str | Path,
        write_probs: bool = False,
        write_overlays: bool = True,
        threshold: float = 0.5,
        overlay_color: tuple[int, int, int] = (255, 48, 48),
        overlay_alpha: float = 0.45,
    ) -> None:
        super().__init__(write_interval="batch")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if not 0.0 <= overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {overlay_alpha}")
        self.output_dir = Path(output_dir)
        self.write_probs = write_probs
        self.write_overlays = write_overlays
        self.threshold = threshold
        self.overlay_color = tuple(int(c) for c in overlay_color)
        self.overlay_alpha = overlay_alpha
        self._rows: list[list[Any]] = []
        self._lookup: dict[str, tuple[str, str]] | None = None

    def _record_lookup(self, trainer: Trainer | None) -> dict[str, tuple[str, str]]:
        """``id -> (text, image path)`` from the datamodule's records (fallback for outputs without them)."""
        if self._lookup is None:
            self._lookup = {}
            splits = getattr(getattr(trainer, "datamodule", None), "splits", None) or {}
            for records in splits.values():
                for rec in records:
                    self._lookup.setdefault(str(rec.id), (str(rec.text), str(rec.image)))
        return self._lookup

    def _field(self, name: str, prediction: Mapping[str, Any], batch: Any, ids: list[str], trainer: Any) -> list[str]:
        values = prediction.get(name)
        if values is None and isinstance(batch, Mapping):
            values = batch.get(name)
        if values is None:
            lookup = self._record_lookup(trainer)
            missing = [i for i in ids if i not in lookup]
            if missing:
                raise DataError(
                    f"MaskWriter: the prediction has no {name!r} and ids {missing[:5]} are not in the datamodule's "
                    "records; predict_step must return 'id', 'text', 'path' and 'probs'"
                )
            values = [lookup[i][0 if name == "text" else 1] for i in ids]
        values = [str(v) for v in values]
        if len(values) != len(ids):
            raise ValueError(f"MaskWriter: {len(values)} {name!r} entries for {len(ids)} ids")
        return values

    def write_predictions(self, prediction: Mapping[str, Any], batch: Any = None, trainer: Any = None) -> list[Path]:
        """Write the files of one batch of predictions.

        Args:
            prediction: ``predict_step`` output (see the class docstring).
            batch: The batch (fallback for ``text``/``path``).
            trainer: The trainer (fallback: its datamodule's records).

        Returns:
            The mask files written.

        Raises:
            ValueError: If ``probs`` is not ``[B, 1, h, w]`` in [0, 1] or the fields disagree in length.
            DataError: If an image file is missing or unreadable, or an id is not a plain file name.
        """
        if "id" not in prediction or "probs" not in prediction:
            raise ValueError(f"MaskWriter: prediction needs 'id' and 'probs', got keys {sorted(prediction)}")
        ids = [str(i) for i in prediction["id"]]
        probs = torch.as_tensor(prediction["probs"]).detach().float().cpu()
        if probs.ndim != 4 or probs.shape[1] != 1 or probs.shape[0] != len(ids):
            raise ValueError(f"MaskWriter: probs must be [B={len(ids)}, 1, h, w], got {tuple(probs.shape)}")
        if probs.numel() and (float(probs.min()) < 0.0 or float(probs.max()) > 1.0):
            raise ValueError(
                f"MaskWriter: probs must be probabilities in [0, 1], got {float(probs.min())}..{float(probs.max())}"
            )
        texts = self._field("text", prediction, batch, ids, trainer)
        paths = self._field("path", prediction, batch, ids, trainer)
        folders = {"masks": self.output_dir / "masks"}
        if self.write_probs:
            folders["probs"] = self.output_dir / "probs"
        if self.write_overlays:
            folders["overlays"] = self.output_dir / "overlays"
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        written = []
        for i, sample_id in enumerate(ids):
            if not sample_id or Path(sample_id).name != sample_id or sample_id in (".", ".."):
                raise DataError(f"MaskWriter: id {sample_id!r} is not a plain file name")
            height, width = read_size(Path(paths[i]), "image")
            prob = F.interpolate(probs[i : i + 1], size=(height, width), mode="bilinear", align_corners=False)
            prob_np = prob[0, 0].clamp(0.0, 1.0).numpy()
            mask = prob_np >= self.threshold
            mask_path = folders["masks"] / f"{sample_id}.png"
            Image.fromarray(mask.astype(np.uint8) * np.uint8(255), mode="L").save(mask_path)
            written.append(mask_path)
            if self.write_probs:
                grey = np.round(prob_np * 255.0).astype(np.uint8)
                Image.fromarray(grey, mode="L").save(folders["probs"] / f"{sample_id}.png")
            if self.write_overlays:
                picture = read_image(Path(paths[i]))
                overlay = render_overlay(picture, mask, texts[i], self.overlay_color, self.overlay_alpha)
                overlay.save(folders["overlays"] / f"{sample_id}.png")
            self._rows.append([sample_id, texts[i], paths[i], str(mask_path), f"{float(mask.mean()):.6f}"])
        return written

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Write one batch (Lightning hook)."""
        self.write_predictions(prediction, batch, trainer)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Reset the index of written files."""
        self._rows = []
        self._lookup = None

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write ``predictions.csv`` (per rank under DDP)."""
        self.write_index(trainer.global_rank if trainer.world_size > 1 else None)
        rank_zero_info(f"textseg: wrote {len(self._rows)} masks to {self.output_dir / 'masks'}")

    def write_index(self, rank: int | None = None) -> Path:
        """Write the index of the files written so far.

        Args:
            rank: Rank suffix of the file name (``None`` for a single process).

        Returns:
            The CSV file.
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / ("predictions.csv" if rank is None else f"predictions.rank{rank}.csv")
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "text", "image", "mask", "lesion_fraction"])
            writer.writerows(self._rows)
        return path


# --------------------------------------------------------------------------------------------------- run card

#: Metric definitions written into every run card (``textseg.ops.metrics``, ``data.md`` §10).
METRIC_DEFINITIONS: dict[str, str] = {
    "threshold": "a pixel is foreground when sigmoid(logit) >= 0.5, i.e. logit >= 0",
    "dice": "pooled Dice: 2TP / (2TP + FP + FN) with TP, FP, FN summed over all pixels of all images of the split "
    "(GuideDecoder, MMI-UNet, TextMoE and Semi-MedRef tables); 0 when the split has no foreground at all",
    "iou": "pooled IoU: TP / (TP + FP + FN) over the split, as for dice",
    "dice_per_image": f"LViT per-image Dice averaged over images: 2 sum(gt*pred) / (sum gt + sum pred + {LVIT_EPS:g}); "
    "an image with empty ground truth and empty prediction scores 0",
    "iou_per_image": "LViT per-image IoU averaged over images: |gt & pred| / |gt | pred|, 0 when the union is empty",
}


def library_versions(libraries: Sequence[str] = CARD_LIBRARIES) -> dict[str, str | None]:
    """Versions of Python, ``libraries`` and textseg (``None`` for a library that is not installed)."""
    import textseg

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in libraries:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["textseg"] = textseg.__version__
    return versions


def git_info(path: str | Path | None = None) -> dict[str, Any] | None:
    """Commit of the git checkout holding ``path`` (default: the textseg sources), if there is one.

    Args:
        path: A file or folder inside the checkout.

    Returns:
        ``{"commit": sha, "dirty": bool}``, or ``None`` when git is missing, times out or ``path`` is not in a
        checkout. Never raises.
    """
    start = Path(path) if path is not None else Path(__file__).resolve().parent
    cwd = start if start.is_dir() else start.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def _jsonable(value: Any) -> Any:
    """A JSON round trip (paths, enums and other objects become strings)."""
    return json.loads(json.dumps(value, default=str))


class RunCardCallback(Callback):
    """Write ``run_card.json`` into the run directory at fit start (rank 0).

    The card records the resolved hyper-parameters of the model and the datamodule (with their classes), the split
    file of the run (``split.json``, with its SHA-256), the metric definitions (:data:`METRIC_DEFINITIONS`), library
    versions (:func:`library_versions`), the git commit of the textseg sources (:func:`git_info`, ``null`` without
    git), the trainer setup and the command line. ``textseg fit`` always adds this callback.

    Args:
        filename: File name inside ``trainer.log_dir`` (``default_root_dir`` without a logger).
        command: The command line to record; ``None`` = ``sys.argv``.
    """

    def __init__(self, filename: str = "run_card.json", command: Sequence[str] | None = None) -> None:
        self.filename = filename
        self.command = list(command) if command is not None else None

    def build_card(self, trainer: Trainer, pl_module: LightningModule, log_dir: str | None = None) -> dict[str, Any]:
        """Assemble the card (see the class docstring) for the run directory ``log_dir`` (``trainer.log_dir``)."""
        run_dir = Path((log_dir if log_dir is not None else trainer.log_dir) or trainer.default_root_dir)
        datamodule = getattr(trainer, "datamodule", None)
        split_path = run_dir / "split.json"
        split: dict[str, Any] | None = None
        if split_path.is_file():
            split = {"file": split_path.name, "sha256": hashlib.sha256(split_path.read_bytes()).hexdigest()}
        command = self.command if self.command is not None else list(sys.argv)
        return {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_dir": str(run_dir),
            "model": {
                "class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
                "hparams": _jsonable(dict(pl_module.hparams)),
            },
            "data": None
            if datamodule is None
            else {
                "class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
                "hparams": _jsonable(dict(datamodule.hparams)),
            },
            "split": split,
            "metrics": dict(METRIC_DEFINITIONS),
            "versions": library_versions(),
            "git": git_info(),
            "trainer": {
                "max_epochs": trainer.max_epochs,
                "precision": str(trainer.precision),
                "accelerator": type(trainer.accelerator).__name__,
                "num_devices": trainer.num_devices,
                "world_size": trainer.world_size,
                "strategy": type(trainer.strategy).__name__,
            },
            "command": {"argv": command, "line": shlex.join(command)},
        }

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the card (rank 0; ``trainer.log_dir`` is a broadcast under DDP, so every rank asks for it)."""
        log_dir = trainer.log_dir
        if not trainer.is_global_zero:
            return
        card = self.build_card(trainer, pl_module, log_dir)
        path = Path(card["run_dir"]) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
