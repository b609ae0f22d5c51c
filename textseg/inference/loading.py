"""Where a trained model comes from: a ``textseg fit`` checkpoint, a ``save_pretrained`` folder or a Hub repository.

:func:`resolve_source` turns what the user typed into a local file or folder (downloading a Hub repository with
``huggingface_hub.snapshot_download``, from the local cache only when ``HF_HUB_OFFLINE`` is set);
:func:`load_checkpoint` reads a Lightning checkpoint safely (``weights_only=True``, textseg's checkpoints hold only
tensors and plain values, ``textseg/engine/checkpointing.py``) and :func:`build_method` rebuilds the method's
TextSegModule from its hyperparameters; :func:`to_inference` keeps only what prediction needs: the evaluation network
as ``module.net`` (the EMA teacher's copy when the method evaluated the teacher) and the frozen text encoder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textseg.engine.checkpointing import check_fits, read_checkpoint, saved_method
from textseg.errors import DataError
from textseg.models.encoders.vision import looks_like_path

if TYPE_CHECKING:
    from textseg.methods.base import TextSegModule

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "METHODS",
    "WEIGHTS_FILE",
    "build_method",
    "hub_offline",
    "load_checkpoint",
    "method_class",
    "resolve_source",
    "to_inference",
]

#: Files of a ``save_pretrained`` folder.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
#: The methods a model may be rebuilt as: class name -> module. Nothing else is imported from a config.
METHODS: dict[str, str] = {
    "SupervisedModule": "textseg.methods.supervised",
    "SemiMedRefModule": "textseg.methods.semimedref",
    "TextMoEModule": "textseg.methods.textmoe",
}
#: Hyperparameters LightningCLI adds that are not constructor arguments.
_NOT_ARGUMENTS = ("_class_path", "_instantiator")
_OFF_VALUES = ("", "0", "false", "no", "off")


def hub_offline() -> bool:
    """Whether the Hugging Face Hub must not be contacted (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set)."""
    return any(
        os.environ.get(v, "").strip().lower() not in _OFF_VALUES for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """A local checkpoint file or model folder for ``source`` (a path, or a Hub repository id to download).

    Args:
        source: A ``.ckpt`` file, a ``save_pretrained`` folder, or a Hub id ``owner/name``.

    Returns:
        The existing file or folder.

    Raises:
        DataError: If a path does not exist, a folder is not a saved model, or a Hub id cannot be obtained (offline
            and not cached, unknown repository, no network).
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise DataError(
                f"model folder {path} has no {CONFIG_FILE} and {WEIGHTS_FILE}: not a folder written by save_pretrained"
            )
        return path
    if looks_like_path(text) or path.suffix in (".ckpt", ".pt", ".pth") or text.count("/") != 1:
        raise DataError(f"model not found: {text} (neither a checkpoint file, a model folder nor a Hub id owner/name)")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            text, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE], local_files_only=hub_offline()
        )
    except Exception as exc:
        where = "in the local Hub cache (HF_HUB_OFFLINE is set)" if hub_offline() else "on the Hugging Face Hub"
        raise DataError(f"model {text!r} is not a local path and was not found {where}: {exc}") from exc
    return resolve_source(folder)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a Lightning checkpoint written by ``textseg fit`` (tensors and plain values only: ``weights_only``).

    Raises:
        DataError: If the file is not a loadable checkpoint or holds no ``state_dict``/``hyper_parameters``.
    """
    checkpoint = read_checkpoint(path, finite=False)  # check_fits below refuses NaN/inf weights
    if "hyper_parameters" not in checkpoint:
        raise DataError(f"checkpoint {path} has no hyper_parameters: not written by textseg fit")
    return checkpoint


def method_class(name: str) -> type[TextSegModule]:
    """The method class called ``name`` (one of :data:`METHODS`).

    Raises:
        DataError: For another name.
    """
    if name not in METHODS:
        raise DataError(f"unknown method {name!r}: a model must be one of {', '.join(METHODS)}")
    import importlib

    cls: type[TextSegModule] = getattr(importlib.import_module(METHODS[name]), name)
    return cls


def constructor_arguments(hparams: dict[str, Any]) -> dict[str, Any]:
    """The method's constructor arguments from its saved hyperparameters, rebuilt for inference only.

    LightningCLI's own keys are dropped; ``vision_checkpoint`` (pretrained ImageNet weights, replaced by the trained
    ones anyway) and ``compile`` are switched off, so rebuilding never reads a training-time file.
    """
    args = {k: v for k, v in hparams.items() if k not in _NOT_ARGUMENTS}
    if "vision_checkpoint" in args:
        args["vision_checkpoint"] = None
    if "compile" in args:
        args["compile"] = False
    return args


def build_method(name: str, hparams: dict[str, Any]) -> TextSegModule:
    """Build the method ``name`` with its saved hyperparameters (random weights, to be loaded).

    Raises:
        DataError: For an unknown method, or hyperparameters its constructor refuses.
    """
    cls = method_class(name)
    try:
        return cls(**constructor_arguments(hparams))
    except TypeError as exc:
        raise DataError(f"the saved hyperparameters do not fit {name} of this textseg version: {exc}") from exc


def to_inference(module: TextSegModule) -> tuple[TextSegModule, str]:
    """Keep only the evaluation network (as ``module.net``) and drop the EMA teacher; eval mode.

    Returns:
        The module and which network it evaluates (``"student"`` or ``"teacher"``).
    """
    net = module.eval_net
    evaluated = "student" if net is module.net else "teacher"
    module.net = getattr(net, "module", net)  # EMATeacher keeps its copy of the student as .module
    if hasattr(module, "teacher"):
        module.register_module("teacher", None)
    module.eval()
    module.requires_grad_(False)
    return module, evaluated


def module_from_checkpoint(path: Path) -> tuple[TextSegModule, dict[str, Any], str]:
    """Rebuild a method from a ``textseg fit`` checkpoint.

    Returns:
        The inference module (:func:`to_inference`), the checkpoint (without weights) and the evaluated network.

    Raises:
        DataError: If the file is not a textseg checkpoint, its method is unknown or its weights do not fit.
    """
    checkpoint = load_checkpoint(path)
    name = saved_method(checkpoint)
    module = build_method(name, dict(checkpoint["hyper_parameters"]))
    check_fits(checkpoint, module, str(path))
    module.load_state_dict(checkpoint["state_dict"])
    module, evaluated = to_inference(module)
    checkpoint.pop("state_dict")
    checkpoint.pop("optimizer_states", None)
    return module, checkpoint, evaluated
