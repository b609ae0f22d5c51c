"""W&B for the research workflow: the offline-by-default logger and run names built from the hyper-parameters.

:class:`TextSegWandbLogger` is a :class:`~lightning.pytorch.loggers.WandbLogger` that is **offline unless an API key is
configured** (:func:`wandb_offline_default`) and names its run from the model and datamodule hyper-parameters
(:func:`run_facts` / :class:`RunFacts`): project, group, tags and name carry the method, backbone, dataset, label
ratio, seed and the ablation switches (:data:`ABLATION_KEYS`) that differ from the method's defaults, so that the
seeds of one configuration share a W&B group and ablation runs line up in tables.
"""

from __future__ import annotations

import hashlib
import inspect
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

__all__ = [
    "ABLATION_KEYS",
    "RunFacts",
    "TextSegWandbLogger",
    "run_facts",
    "wandb_loggers",
    "wandb_offline_default",
]

#: Method arguments that switch a component on or off (Semi-MedRef Tables 2-3, TextMoE Table 2, the base losses).
#: Those that differ from the method's defaults name the W&B group; all of them become W&B tags. The only place that
#: names them: each must be a constructor argument of at least one method class (``tests/engine/test_wandb.py``).
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
#: Host of the W&B API in ``~/.netrc`` (``wandb login`` writes the key there).
WANDB_API_HOST = "api.wandb.ai"


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
    (:class:`RunFacts`); ``textseg fit`` calls it before training, and
    :class:`~textseg.engine.overlays.WandbOverlayCallback` calls it at ``setup`` for the Python API. A W&B group can
    only be chosen before the run starts: call :meth:`describe` before ``trainer.fit`` (the CLI does) to group runs;
    tags, name and config are also updated on a running run.

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
        if self._wandb_init.get("anonymous") is None:
            # Lightning passes anonymous=None, which W&B answers with "The anonymous setting has no effect" on
            # every run; leaving the key out is the same setting without the message.
            self._wandb_init.pop("anonymous", None)
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
