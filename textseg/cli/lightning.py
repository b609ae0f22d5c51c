"""The Lightning part of the ``textseg`` command: :class:`TextSegCLI` (a :class:`~lightning.pytorch.cli.LightningCLI`).

Kept apart from :mod:`textseg.cli.main` so that ``textseg data``, ``textseg report`` and ``textseg grid`` start without
importing Lightning, MONAI and transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from textseg.data.datamodule import TextSegDataModule
from textseg.engine import checkpointing
from textseg.engine.predictions import MaskWriter
from textseg.engine.progress import EpochSummary, wants_epoch_lines
from textseg.engine.runcard import RunCardCallback
from textseg.engine.wandb import TextSegWandbLogger
from textseg.methods import SemiMedRefModule, SupervisedModule, TextSegModule

__all__ = [
    "DESCRIPTION",
    "WEIGHTS_ONLY_DEFAULT",
    "SemiMedRefModule",
    "SupervisedModule",
    "TextSegCLI",
    "run_lightning_cli",
]

#: Loggers whose run directory ``--run_dir`` sets.
_DIR_LOGGERS = ("CSVLogger", "TensorBoardLogger")
#: Logger used by ``--run_dir`` when the config has none.
_DEFAULT_LOGGER = "textseg.engine.loggers.CSVLogger"
#: Default of ``--weights_only`` in every Lightning subcommand: checkpoints are read with torch's restricted
#: unpickler (tensors and plain containers only), never with full pickle.
WEIGHTS_ONLY_DEFAULT = True
#: ``--ckpt_path`` values that Lightning resolves itself (prefixes: ``registry:name``, ``hpc``...).
_SPECIAL_CKPT = ("best", "last", "hpc", "registry")
#: Description of ``textseg --help``.
DESCRIPTION = (
    "textseg: semi-supervised, text-guided medical image segmentation. Lightning subcommands: fit, validate, test, "
    "predict. Workflow commands: 'textseg data check|synth', 'textseg report RUNS_DIR...', "
    "'textseg grid SWEEP.yaml', 'textseg probe --config C --ckpt_path CKPT' (each with --help)."
)


class TextSegCLI(LightningCLI):
    """LightningCLI with ``--test_after_fit``, ``--seed``, ``--run_dir``, a run card and W&B run naming.

    Every Lightning subcommand defaults ``--weights_only`` to ``True`` (:data:`WEIGHTS_ONLY_DEFAULT`), so
    ``--ckpt_path`` and ``--test_after_fit`` never unpickle arbitrary objects.

    Args:
        *args: :class:`~lightning.pytorch.cli.LightningCLI` arguments.
        command: The command line recorded in ``run_card.json`` (default ``sys.argv``).
        **kwargs: :class:`~lightning.pytorch.cli.LightningCLI` keyword arguments.
    """

    def __init__(self, *args: Any, command: Sequence[str] | None = None, **kwargs: Any) -> None:
        self._command = list(command) if command is not None else None
        super().__init__(*args, **kwargs)

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """Build the parsers, then default ``--weights_only`` to ``True`` in every Lightning subcommand.

        LightningCLI adds the ``Trainer.fit/validate/test/predict`` arguments (``ckpt_path``, ``weights_only``) to
        each subcommand parser after :meth:`add_arguments_to_parser`, so the default is set here, on the main parser.
        Lightning's own default (``None``) lets torch decide, which means full pickle for an ``http`` checkpoint or
        under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``; ``--weights_only false`` still opts out for a trusted file.
        Lightning versions whose trainer methods lack ``weights_only`` are left unchanged.
        """
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if not add_subcommands:
            return
        for name in self.subcommands():
            try:
                self.parser.set_defaults({f"{name}.weights_only": WEIGHTS_ONLY_DEFAULT})
            except KeyError:  # jsonargparse's NSKeyError: this Lightning has no ``weights_only`` argument
                continue

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before anything runs, then let Lightning read its hyper-parameters.

        LightningCLI replaces the configured model by the checkpoint's (class and arguments) when ``--ckpt_path`` is a
        file. A checkpoint of another method would silently turn, say, ``test --config semimedref...`` into a test of
        the supervised baseline, so that is an error here, as are a missing file and one that is not a readable
        checkpoint. Lightning's special values (``best``, ``last``, ``hpc``, ``registry``) are resolved later; the
        module's ``on_load_checkpoint`` checks those.

        Raises:
            DataError: Naming the file and the problem.
        """
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and str(path) not in _SPECIAL_CKPT and not str(path).startswith(_SPECIAL_CKPT):
            self._check_ckpt_file(Path(path), str(self.config[subcommand].get("model.class_path") or ""))
        super()._parse_ckpt_path()

    @staticmethod
    def _check_ckpt_file(path: Path, model_class_path: str) -> None:
        ckpt = checkpointing.read_checkpoint(path, mmap=True)
        checkpointing.refuse_other_method(ckpt, model_class_path.rsplit(".", 1)[-1], f"checkpoint {path}")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--test_after_fit``, ``--seed`` and ``--run_dir``."""
        parser.add_argument("--test_after_fit", type=bool, default=False, help="Run `test` on the best checkpoint.")
        parser.add_argument(
            "--seed",
            type=int | None,
            default=None,
            help="One seed for seed_everything, data.seed (the labeled subset; 42 = Semi-MedRef's published split) and "
            "the method's aug_seed (sweeps vary this).",
        )
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Write the run into exactly this folder (sets the CSV/TensorBoard logger's save_dir, name, version).",
        )

    # ----------------------------------------------------------------------------------------------- config
    def _subconfig(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Apply ``--seed`` and ``--run_dir`` to the parsed config (so that ``config.yaml`` records them)."""
        config = self._subconfig()
        seed = config.get("seed")
        if seed is not None:
            config["seed_everything"] = seed
            if config.get("data") is not None and "seed" in config["data"]:
                config["data"]["seed"] = seed
            init_args = config.get("model.init_args")
            if init_args is not None and "aug_seed" in init_args:
                init_args["aug_seed"] = seed
            seed_everything(seed, workers=True)
        self._ensure_dir_logger(config)
        run_dir = config.get("run_dir")
        if run_dir:
            self._apply_run_dir(config, Path(run_dir))

    @staticmethod
    def _logger_items(trainer: Any) -> list[Any]:
        """The logger entries of a trainer config (``class_path`` namespaces; empty for ``True``/``None``)."""
        from jsonargparse import Namespace

        loggers = trainer.get("logger")
        items = loggers if isinstance(loggers, list) else [loggers]
        return [i for i in items if isinstance(i, Namespace) and i.get("class_path")]

    @staticmethod
    def _is_dir_logger(item: Any) -> bool:
        return str(item.get("class_path", "")).rsplit(".", 1)[-1] in _DIR_LOGGERS

    def _ensure_dir_logger(self, config: Any) -> None:
        """Put a CSV logger first when the config's only loggers are W&B ones, so the run keeps its directory.

        ``configs/logger/wandb.yaml`` appends a W&B logger; composed with a config without a logger it would be the
        only one, and ``split.json``/``test_metrics.json``/checkpoints would land in ``default_root_dir`` itself.
        """
        from jsonargparse import Namespace

        trainer = config["trainer"]
        items = self._logger_items(trainer)
        if not items or any(self._is_dir_logger(i) for i in items):
            return
        root = trainer.get("default_root_dir") or "."
        csv = Namespace(class_path=_DEFAULT_LOGGER, init_args=Namespace(save_dir=str(root), name="lightning_logs"))
        trainer["logger"] = [csv, *items]

    def _apply_run_dir(self, config: Any, run_dir: Path) -> None:
        """Point the first CSV/TensorBoard logger at ``run_dir`` (adding a CSV logger if the config has none)."""
        from jsonargparse import Namespace

        trainer = config["trainer"]
        trainer["default_root_dir"] = str(run_dir)
        if trainer.get("logger") is False:
            return
        items = self._logger_items(trainer)
        args = {"save_dir": str(run_dir.parent), "name": "", "version": run_dir.name}
        for item in items:
            if self._is_dir_logger(item):
                if item.get("init_args") is None:
                    item["init_args"] = Namespace()
                for key, value in args.items():
                    item["init_args"][key] = value
                return
        csv = Namespace(class_path=_DEFAULT_LOGGER, init_args=Namespace(**args))
        trainer["logger"] = [csv, *items]

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Instantiate the trainer; add a run card and, for ``fit``, the one-line-per-epoch summary.

        A :class:`~textseg.engine.runcard.RunCardCallback` is added if the config has none. ``fit`` also gets an
        :class:`~textseg.engine.progress.EpochSummary` (one line per epoch on stdout) when stdout is not a terminal
        (a SLURM log file) or ``TEXTSEG_EPOCH_LINES=1`` (``0``: never), unless the config has one.
        """
        trainer = super().instantiate_trainer(**kwargs)
        callbacks: list[Any] = getattr(trainer, "callbacks", [])
        if not any(isinstance(cb, RunCardCallback) for cb in callbacks):
            callbacks.insert(0, RunCardCallback(command=self._command))
        if (
            self.subcommand == "fit"
            and wants_epoch_lines()
            and not any(isinstance(cb, EpochSummary) for cb in callbacks)
        ):
            callbacks.append(EpochSummary())
        return trainer

    # ------------------------------------------------------------------------------------------------ hooks
    def _describe_wandb(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, TextSegWandbLogger):
                logger.describe(self.model, self.datamodule, self.trainer.log_dir)

    def _finish_wandb(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, TextSegWandbLogger):
                logger.finish()

    def before_fit(self) -> None:
        """Name the W&B run (group, tags) before it starts."""
        self._describe_wandb()

    def before_validate(self) -> None:
        """Name the W&B run before it starts."""
        self._describe_wandb()

    def before_test(self) -> None:
        """Name the W&B run before it starts."""
        self._describe_wandb()

    def before_predict(self) -> None:
        """Name the W&B run; write the predictions, and do not also keep every prediction in memory.

        Without a prediction writer in the config, a :class:`~textseg.engine.predictions.MaskWriter` writes masks
        (PNG 0/255 at each image's size), probability maps and overlays into ``<run dir>/predictions`` (the logger's
        run folder, ``--run_dir``, or ``default_root_dir``). To choose what is written, or where, configure the writer
        yourself: ``--trainer.callbacks+=textseg.engine.predictions.MaskWriter --trainer.callbacks.output_dir DIR
        --trainer.callbacks.write_probs false --trainer.callbacks.write_overlays false``.
        """
        self._describe_wandb()
        callbacks: list[Any] = getattr(self.trainer, "callbacks")  # noqa: B009 (a property mypy does not see)
        writers = [cb for cb in callbacks if isinstance(cb, BasePredictionWriter)]
        if not writers:
            run_dir = self.trainer.log_dir or self.trainer.default_root_dir  # a broadcast under DDP: every rank asks
            writers = [MaskWriter(Path(run_dir) / "predictions", write_probs=True)]
            callbacks.append(writers[0])
        self._writers = writers
        kwargs = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if kwargs.get("return_predictions") is None:
            kwargs["return_predictions"] = False

    def after_fit(self) -> None:
        """Test the best (or last) checkpoint when ``--test_after_fit`` is set, then finish the W&B run.

        The checkpoint is read with fit's ``--weights_only`` (``True`` by default).
        """
        fit_config = self.config.get("fit", {})
        if fit_config.get("test_after_fit"):
            callback = self.trainer.checkpoint_callback
            ckpt = "best" if getattr(callback, "best_model_path", None) else None
            weights_only = fit_config.get("weights_only")
            kwargs = {} if weights_only is None else {"weights_only": weights_only}
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, **kwargs)
        self._finish_wandb()

    def after_validate(self) -> None:
        """Finish the W&B run."""
        self._finish_wandb()

    def after_test(self) -> None:
        """Finish the W&B run."""
        self._finish_wandb()

    def after_predict(self) -> None:
        """Say where the predictions are, then finish the W&B run."""
        for writer in getattr(self, "_writers", []):
            folder = getattr(writer, "output_dir", None)
            if folder is not None:
                rank_zero_info(f"textseg: predictions written to {folder}")
        self._finish_wandb()


def run_lightning_cli(args: Any = None, command: Sequence[str] | None = None) -> TextSegCLI:
    """Run LightningCLI on textseg's model and datamodule.

    Args:
        args: Arguments for LightningCLI (list, dict or ``None`` for ``sys.argv``).
        command: The command line recorded in ``run_card.json``.

    Returns:
        The CLI object (after the subcommand ran).
    """
    return TextSegCLI(
        TextSegModule,
        TextSegDataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": DESCRIPTION},
        args=args,
        command=command,
    )
