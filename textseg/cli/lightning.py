"""The Lightning part of the ``textseg`` command: :class:`TextSegCLI` (a :class:`~lightning.pytorch.cli.LightningCLI`).

Kept apart from :mod:`textseg.cli.main` so that ``textseg data``, ``textseg report`` and ``textseg grid`` start without
importing Lightning, MONAI and transformers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import BasePredictionWriter, ModelSummary, RichModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from textseg.cli.preflight import check_run
from textseg.data.datamodule import TextSegDataModule
from textseg.engine import checkpointing, runfiles, runfolder
from textseg.engine.predictions import MaskWriter
from textseg.engine.progress import EpochSummary, step_light_bar, wants_epoch_lines
from textseg.engine.quiet import ParamSummary
from textseg.engine.runcard import RunCardCallback
from textseg.engine.wandb import TextSegWandbLogger
from textseg.errors import DataError
from textseg.methods import SemiMedRefModule, SupervisedModule, TextSegModule

__all__ = [
    "DESCRIPTION",
    "WEIGHTS_ONLY_DEFAULT",
    "SemiMedRefModule",
    "SupervisedModule",
    "TextSegCLI",
    "run_lightning_cli",
]

#: The subcommands the preflight checks.
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: Loggers whose run directory ``--run_dir`` sets.
_DIR_LOGGERS = ("CSVLogger", "TensorBoardLogger")
#: Logger used by ``--run_dir`` when the config has none.
_DEFAULT_LOGGER = "textseg.engine.loggers.CSVLogger"
#: Default of ``--weights_only`` in every Lightning subcommand: checkpoints are read with torch's restricted
#: unpickler (tensors and plain containers only), never with full pickle.
WEIGHTS_ONLY_DEFAULT = True
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

    The command owns its run folder (:class:`~textseg.engine.runfolder.RunFolder`; ``docs/guide.md``, "Run
    folders"): rank 0 locks it before anything is written and ``fit`` refuses a folder holding an earlier run unless
    it resumes it or ``--run_dir_exists`` says otherwise; checkpoints and ``config.yaml`` are written atomically, and
    an ``OSError`` while writing run files ends the command with one :class:`~textseg.engine.runfolder.RunFileError`.

    Args:
        *args: :class:`~lightning.pytorch.cli.LightningCLI` arguments.
        command: The command line recorded in ``run_card.json`` (default ``sys.argv``).
        **kwargs: :class:`~lightning.pytorch.cli.LightningCLI` keyword arguments.
    """

    def __init__(self, *args: Any, command: Sequence[str] | None = None, **kwargs: Any) -> None:
        self._command = list(command) if command is not None else None
        self._folder: runfolder.RunFolder | None = None
        try:
            super().__init__(*args, **kwargs)  # parses, instantiates and runs the subcommand
        except OSError as exc:
            error = runfolder.write_error(exc, [self._folder.path] if self._folder is not None else [])
            if error is None:
                raise
            raise error from exc
        finally:
            if self._folder is not None:
                self._folder.release()

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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then run the preflight: every missing piece of the run at once, before anything is built.

        The data root, encoder folders and Hub ids (offline), the vision checkpoint, the unlabeled/predict inputs
        and a ``--ckpt_path`` file that does not exist (:mod:`textseg.cli.preflight`).

        Raises:
            DataError: Listing every problem.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand in LIGHTNING_SUBCOMMANDS:
            check_run(self.config[subcommand], str(subcommand))

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
        if path and not runfiles.is_special_ckpt(path):
            model = self.config[subcommand]
            self._check_ckpt_file(Path(path), str(model.get("model.class_path") or ""), model.get("model.init_args"))
        super()._parse_ckpt_path()

    def _check_ckpt_file(self, path: Path, model_class_path: str, init_args: Any = None) -> None:
        """Refuse a ``--ckpt_path`` file of another method or network, or with NaN/inf weights, before it is used.

        LightningCLI then builds the model from the checkpoint's arguments, so the network settings
        (:data:`~textseg.engine.checkpointing.NETWORK_KEYS`) typed on the command line (``--model.init_args.backbone
        mmiunet``) must match the checkpoint's, or the command stops naming them. Those that come from ``--config``
        files or defaults (a config of the same method, with the run's overrides left out) are replaced by the
        checkpoint's, with a warning naming them.

        Raises:
            DataError: Naming the file and the problem.
        """
        import sys

        from lightning.pytorch.utilities import rank_zero_warn

        where = f"checkpoint {path}"
        ckpt = checkpointing.read_checkpoint(path, mmap=True)  # refuses NaN/inf weights
        checkpointing.refuse_other_method(ckpt, model_class_path.rsplit(".", 1)[-1], where)
        configured = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args or {})
        command = self._command if self._command is not None else sys.argv
        typed = {str(arg)[2:].split("=", 1)[0].rsplit(".", 1)[-1] for arg in command if str(arg).startswith("--model.")}
        replaced = checkpointing.refuse_other_network(ckpt, configured, where, keys=typed)
        if replaced:
            settings = ", ".join(f"{k}={saved!r} (configured: {wanted!r})" for k, (saved, wanted) in replaced.items())
            rank_zero_warn(f"textseg: {where} was trained with {settings}; using the checkpoint's settings")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--test_after_fit``, ``--seed``, ``--run_dir`` and ``--run_dir_exists``."""
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
        parser.add_argument(
            "--run_dir_exists",
            type=runfolder.RunDirExists,
            default="error",
            help="What fit does when the run folder already holds a run (and --ckpt_path does not resume it): "
            "error (default), new_version (write into the next free <run_dir>_vN) or overwrite (delete the earlier "
            "run's records and checkpoints first).",
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
        self._claim_run_folder(config)

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
        Lightning's default logger (``logger`` unset or ``true``) becomes textseg's CSV logger in the same place
        (``<default_root_dir>/lightning_logs/version_N``), whose version :meth:`_claim_run_folder` reserves.
        """
        from jsonargparse import Namespace

        trainer = config["trainer"]
        items = self._logger_items(trainer)
        if any(self._is_dir_logger(i) for i in items) or (not items and trainer.get("logger") not in (None, True)):
            return
        root = trainer.get("default_root_dir") or "."
        csv = Namespace(class_path=_DEFAULT_LOGGER, init_args=Namespace(save_dir=str(root), name="lightning_logs"))
        trainer["logger"] = [csv, *items]

    def _claim_run_folder(self, config: Any) -> None:
        """Lock the run folder on rank 0 (reserving the logger's next ``version_N`` when none is set).

        The folder is ``--run_dir``, else the first CSV/TensorBoard logger's ``save_dir/name/version``; without
        either (``--trainer.logger false``) nothing is claimed. ``fit`` into a folder holding an earlier run is
        refused, resumed (``--ckpt_path``) or settled as ``--run_dir_exists`` says
        (:meth:`textseg.engine.runfolder.RunFolder.claim`); a ``new_version`` folder replaces the configured one.
        """
        if not self.subcommand or getattr(rank_zero_only, "rank", 0) != 0:
            return
        trainer = config["trainer"]
        reserved = False
        if config.get("run_dir"):
            folder = Path(config["run_dir"])
        else:
            loggers = [i for i in self._logger_items(trainer) if self._is_dir_logger(i)]
            if not loggers:
                return
            args = loggers[0].get("init_args") or {}
            root = Path(args.get("save_dir") or trainer.get("default_root_dir") or ".") / (args.get("name") or "")
            version = args.get("version")
            if version is None:
                version = args["version"] = runfolder.reserve_version(root)
                reserved = True
            folder = root / (version if isinstance(version, str) else f"version_{version}")
        self._folder = runfolder.RunFolder.claim(
            folder,
            fit=self.subcommand == "fit",
            resume_from=config.get("ckpt_path"),
            exists=config.get("run_dir_exists") or "error",
            created=reserved,
        )
        if self._folder.path != folder:  # --run_dir_exists new_version
            if config.get("run_dir"):
                config["run_dir"] = str(self._folder.path)
            self._apply_run_dir(config, self._folder.path)

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

        Lightning's default progress bar becomes its log-step variant
        (:func:`~textseg.engine.progress.step_light_bar`: no host sync per step); a bar the config names is kept.

        A :class:`~textseg.engine.runcard.RunCardCallback` is added if the config has none. ``fit`` also gets an
        :class:`~textseg.engine.progress.EpochSummary` (one line per epoch on stdout) when stdout is not a terminal
        (a SLURM log file) or ``TEXTSEG_EPOCH_LINES=1`` (``0``: never), unless the config has one. Checkpoints are
        saved by :class:`~textseg.engine.runfolder.AtomicCheckpointIO` (unless the strategy has its own writer).
        ``validate``/``test``/``predict`` into a folder holding a fit's ``config.yaml`` save their config as
        ``<subcommand>_config.yaml`` beside it.
        """
        folder = self._folder.path if self._folder is not None else None
        if self.subcommand != "fit" and folder is not None and (folder / "config.yaml").exists():
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"{self.subcommand}_config.yaml"}
        configured = {id(cb) for cb in self._configured_callbacks()}  # before Lightning appends its defaults
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = runfolder.AtomicCheckpointIO()
        callbacks: list[Any] = getattr(trainer, "callbacks", [])
        for i, callback in enumerate(callbacks):  # Lightning's default summary: without the Mode and FLOPs noise
            if type(callback) in (ModelSummary, RichModelSummary):
                callbacks[i] = ParamSummary(max_depth=callback._max_depth)
            elif id(callback) not in configured:  # its default bar: metrics read at logging steps, not every step
                callbacks[i] = step_light_bar(callback)
        if not any(isinstance(cb, RunCardCallback) for cb in callbacks):
            callbacks.insert(0, RunCardCallback(command=self._command))
        if self._folder is not None:  # --run_dir_exists overwrite: the earlier run goes once training starts
            callbacks.append(runfolder.CommitOverwrite(self._folder))
        if (
            self.subcommand == "fit"
            and wants_epoch_lines()
            and not any(isinstance(cb, EpochSummary) for cb in callbacks)
        ):
            callbacks.append(EpochSummary())
        return trainer

    def _configured_callbacks(self) -> list[Any]:
        """The trainer callbacks the config names (instantiated); Lightning later appends its defaults to this list."""
        config = self.config_init.get(self.subcommand) if self.subcommand else self.config_init
        listed = (config or {}).get("trainer", {}).get("callbacks") or []
        return list(listed) if isinstance(listed, list | tuple) else [listed]

    # ------------------------------------------------------------------------------------------------ hooks
    def _describe_wandb(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, TextSegWandbLogger):
                logger.describe(self.model, self.datamodule, self.trainer.log_dir)

    def _finish_wandb(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, TextSegWandbLogger):
                logger.finish()

    def _require_last(self) -> None:
        """``--ckpt_path last`` without a last checkpoint is an error (Lightning would silently start afresh).

        Raises:
            DataError: Naming the folders looked in.
        """
        if self._subconfig().get("ckpt_path") != "last":
            return
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a broadcast: every rank asks
        places: dict[Path, str] = {}
        for callback in self.trainer.checkpoint_callbacks:
            folder = getattr(callback, "dirpath", None) or run_dir / "checkpoints"
            places[Path(folder)] = str(getattr(callback, "CHECKPOINT_NAME_LAST", "last"))
        places = places or {run_dir / "checkpoints": "last"}
        for folder, name in places.items():
            pattern = re.compile(rf"^{re.escape(name)}")
            if folder.is_dir() and any(pattern.match(p.stem) for p in folder.glob("*.ckpt")):
                return
        where = ", ".join(str(f) for f in places)
        raise DataError(
            f"--ckpt_path last: no last checkpoint (last.ckpt) in {where}; the run's ModelCheckpoint needs "
            "save_last: true (every shipped config has it), or give a checkpoint file to --ckpt_path"
        )

    def _keep_earlier_logs(self) -> None:
        """validate/test/predict append to the run folder's ``metrics.csv`` and keep its ``hparams.yaml``."""
        for logger in self.trainer.loggers:
            keep = getattr(logger, "keep_earlier", None)
            if callable(keep):
                keep()

    def before_fit(self) -> None:
        """Check ``--ckpt_path last``; name the W&B run; with ``--test_after_fit``, have the data check the test split.

        The DataModule refuses an empty split the run needs before training; with ``test_after_fit`` that includes
        the test split, so a run never trains for hours to find nothing to test.
        """
        self._require_last()
        self._describe_wandb()
        if self._subconfig().get("test_after_fit") and isinstance(self.datamodule, TextSegDataModule):
            self.datamodule.test_after_fit = True

    def before_validate(self) -> None:
        """Check ``--ckpt_path last``; keep the run folder's logs; name the W&B run before it starts."""
        self._require_last()
        self._keep_earlier_logs()
        self._describe_wandb()

    def before_test(self) -> None:
        """Check ``--ckpt_path last``; keep the run folder's logs; name the W&B run before it starts."""
        self._require_last()
        self._keep_earlier_logs()
        self._describe_wandb()

    def before_predict(self) -> None:
        """Name the W&B run; write the predictions, and do not also keep every prediction in memory.

        Without a prediction writer in the config, a :class:`~textseg.engine.predictions.MaskWriter` writes masks
        (PNG 0/255 at each image's size), probability maps and overlays into ``<run dir>/predictions`` (the logger's
        run folder, ``--run_dir``, or ``default_root_dir``). To choose what is written, or where, configure the writer
        yourself: ``--trainer.callbacks+=textseg.engine.predictions.MaskWriter --trainer.callbacks.output_dir DIR
        --trainer.callbacks.write_probs false --trainer.callbacks.write_overlays false``.
        """
        self._require_last()
        self._keep_earlier_logs()
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
        save_config_callback=runfolder.AtomicSaveConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": DESCRIPTION},
        args=args,
        command=command,
    )
