"""Use a trained model: :class:`Segmenter` loads it, segments images from texts, and saves or shares it.

A model comes from a Lightning checkpoint of ``textseg fit``, from a folder written by :meth:`Segmenter.save_pretrained`
(``config.json``, ``model.safetensors``, ``README.md``) or from a Hugging Face Hub repository holding such a folder.
Predictions are those of ``textseg predict``: the same preprocessing (:mod:`textseg.inference.inputs`), the same
evaluation network and forward (``TextSegModule.forward_batch``) and the same resize back to the image's size
(:func:`textseg.engine.predictions.resize_probs`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch
from torch import Tensor

from textseg.engine import checkpointing
from textseg.engine.predictions import resize_probs
from textseg.errors import DataError
from textseg.inference import card, loading
from textseg.inference.inputs import ImageLike, batch_inputs
from textseg.models.convert import check_state_dict

if TYPE_CHECKING:
    from textseg.methods.base import TextSegModule

__all__ = ["Segmenter"]

#: Modality codes (``modality`` key of the batches): 0 = X-ray, 1 = CT.
MODALITIES = (0, 1)


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DataError(f"unknown device {device!r}: {exc}") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {device!r} asked for, but CUDA is not available")
    return chosen


def _config(
    module: TextSegModule, hparams: dict[str, Any], evaluated: str, image_size: int | None, modality: int
) -> dict[str, Any]:
    """The ``config.json`` content of a method module (see :mod:`textseg.inference.card`)."""
    from textseg import __version__

    return {
        "format": card.FORMAT,
        "format_version": card.FORMAT_VERSION,
        "textseg_version": __version__,
        "method": type(module).__name__,
        "class_path": f"{type(module).__module__}.{type(module).__name__}",
        "hparams": card.plain({k: v for k, v in hparams.items() if not k.startswith("_")}),
        "image_size": None if image_size is None else int(image_size),
        "modality": int(modality),
        "evaluated": evaluated,
        "dataset": None,
        "metrics": {},
    }


class Segmenter:
    """A trained text-guided segmentation model, ready to predict.

    Build it with :meth:`from_pretrained`. The network runs in eval mode on ``device`` without gradients.

    Args:
        module: The method's TextSegModule reduced to its evaluation network (``module.net``) and text encoder.
        config: The model's ``config.json`` content (method, hyperparameters, ``image_size``, ``modality``, ...).
        device: Where to run (default: CUDA when available, else CPU).

    Attributes:
        module: The TextSegModule.
        config: The configuration (what :meth:`save_pretrained` writes as ``config.json``).
        image_size: The network's input side (read from ``config``).
        modality: Default modality code of the images (0 = X-ray, 1 = CT; TextMoE's gate reads it; from ``config``).
        device: The device.
    """

    def __init__(self, module: TextSegModule, config: dict[str, Any], device: str | torch.device | None = None):
        self.config = config
        self.device = _default_device(device)
        self.module = module.to(self.device).eval()

    @property
    def image_size(self) -> int:
        """The network's input side (``config["image_size"]``)."""
        return int(self.config["image_size"])

    @property
    def modality(self) -> int:
        """The default modality code (``config["modality"]``; what :meth:`save_pretrained` writes)."""
        return int(self.config.get("modality", 0))

    def modality_code(self, modality: int | None = None) -> int:
        """``modality``, or the default one; checked to be 0 (X-ray) or 1 (CT).

        Raises:
            DataError: For another code.
        """
        code = self.modality if modality is None else int(modality)
        if code not in MODALITIES:
            raise DataError(f"modality must be 0 (X-ray) or 1 (CT), got {modality!r}")
        return code

    def logits(self, inputs: Tensor, texts: list[str], modality: int | None = None) -> Tensor:
        """The evaluation network's logits ``[B, 1, S, S]`` on prepared inputs ``[B, 1, S, S]`` and their texts."""
        code = self.modality_code(modality)
        batch = {
            "image": inputs.to(self.device),
            "text": texts,
            "modality": torch.full((len(texts),), code, dtype=torch.long, device=self.device),
        }
        with torch.inference_mode():
            out: Tensor = self.module.forward_batch(batch, self.module.eval_net)["logits"]
        return out

    # ------------------------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike[str],
        device: str | torch.device | None = None,
        image_size: int | None = None,
        modality: int | None = None,
    ) -> Segmenter:
        """Load a model from a ``textseg fit`` checkpoint, a :meth:`save_pretrained` folder or a Hub repository.

        Args:
            path_or_hub_id: A ``.ckpt`` file, a folder with ``config.json`` and ``model.safetensors``, or a Hub id
                (``owner/name``; read from the local cache only when ``HF_HUB_OFFLINE`` is set).
            device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available, else CPU.
            image_size: Network input side; overrides the model's (required for a checkpoint that does not record
                its DataModule's ``image_size``).
            modality: Default modality code (0 = X-ray, 1 = CT); default the model's, else 0.

        Returns:
            The segmenter.

        Raises:
            DataError: If the model cannot be found or read, was written by an unknown method, does not fit its
                network, or has no image size and none is given.
        """
        source = loading.resolve_source(path_or_hub_id)
        if source.is_dir():
            module, config = cls._from_folder(source)
        else:
            module, config = cls._from_checkpoint(source)
        if image_size is not None:
            config["image_size"] = int(image_size)
        if modality is not None:
            config["modality"] = int(modality)
        try:
            return cls.from_config(module, config, device)
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from exc

    @classmethod
    def from_module(
        cls,
        module: TextSegModule,
        image_size: int,
        modality: int = 0,
        device: str | torch.device | None = None,
    ) -> Segmenter:
        """Wrap a textseg method module in memory (e.g. just trained in a notebook); the module itself is not changed.

        Args:
            module: A :class:`~textseg.methods.base.TextSegModule` subclass instance.
            image_size: The network input side it was trained at.
            modality: Default modality code (0 = X-ray, 1 = CT).
            device: As :meth:`from_pretrained`.

        Returns:
            The segmenter (on a copy of the evaluation network).
        """
        import copy

        loading.method_class(type(module).__name__)  # one of the known methods
        reduced, evaluated = loading.to_inference(copy.deepcopy(module))
        config = _config(reduced, dict(module.hparams), evaluated, image_size, modality)
        return cls.from_config(reduced, config, device)

    @classmethod
    def from_config(
        cls, module: TextSegModule, config: dict[str, Any], device: str | torch.device | None = None
    ) -> Segmenter:
        """Check ``config``'s image size and modality, then build the segmenter (see the class arguments).

        Raises:
            DataError: If the image size is missing or not a positive multiple of 32, or the modality not 0 or 1.
        """
        size = config.get("image_size")
        if size is None:
            raise DataError(
                "the model does not record the network's image size (a checkpoint without "
                "datamodule_hyper_parameters): pass image_size=<the --data.image_size of the training run>"
            )
        if int(size) <= 0 or int(size) % 32 != 0:
            raise DataError(f"image_size must be a positive multiple of 32, got {size}")
        if int(config.get("modality", 0)) not in MODALITIES:
            raise DataError(f"modality must be 0 (X-ray) or 1 (CT), got {config.get('modality')!r}")
        return cls(module, config, device)

    @staticmethod
    def _from_checkpoint(path: Path) -> tuple[TextSegModule, dict[str, Any]]:
        module, checkpoint, evaluated = loading.module_from_checkpoint(path)
        data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
        modality = int(data.get("predict_modality") or 0)
        config = _config(module, dict(checkpoint["hyper_parameters"]), evaluated, data.get("image_size"), modality)
        config["dataset"] = card.plain(data.get("dataset"))
        config["run"], config["metrics"] = card.find_run(path)
        return module, config

    @staticmethod
    def _from_folder(folder: Path) -> tuple[TextSegModule, dict[str, Any]]:
        from safetensors.torch import load_file

        config = card.read_config(folder / loading.CONFIG_FILE)
        module = loading.build_method(str(config["method"]), dict(config["hparams"]))
        module, _ = loading.to_inference(module)
        try:
            state = load_file(str(folder / loading.WEIGHTS_FILE))
        except Exception as exc:
            raise DataError(f"{folder / loading.WEIGHTS_FILE} could not be read: {exc}") from exc
        checkpointing.refuse_nonfinite({"state_dict": state}, f"model folder {folder}")
        weights = folder / loading.WEIGHTS_FILE
        check_state_dict(state, module.state_dict(), f"{weights} ({config['method']})")  # keys and shapes, one line
        module.load_state_dict(state)
        return module, config

    # ---------------------------------------------------------------------------------------------- predicting

    @overload
    def predict_proba(self, image: ImageLike, text: str, modality: int | None = None) -> np.ndarray: ...

    @overload
    def predict_proba(
        self, image: list[ImageLike] | tuple[ImageLike, ...], text: Sequence[str], modality: int | None = None
    ) -> list[np.ndarray]: ...

    def predict_proba(
        self,
        image: ImageLike | list[ImageLike] | tuple[ImageLike, ...],
        text: str | Sequence[str],
        modality: int | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """Lesion probabilities at the input image's size.

        Args:
            image: A path, a PIL image or a NumPy array (``H x W`` grey or ``H x W x 3``), or a list of them.
            text: The referring text, or one text per image of a list.
            modality: Modality code of the images (default :attr:`modality`).

        Returns:
            ``float32 [H, W]`` in [0, 1] per image (a list for a list of images).

        Raises:
            DataError: For unreadable images, texts that do not match the images, or a bad modality.
        """
        images, texts, single = self._pair(image, text)
        out = self._probabilities(images, texts, modality)
        return out[0] if single else out

    def _probabilities(self, images: list[Any], texts: list[str], modality: int | None) -> list[np.ndarray]:
        """One forward pass over the batch; each image's probabilities at its own size."""
        code = self.modality_code(modality)  # checked before the images are read
        inputs, sizes = batch_inputs(images, self.image_size)
        probs = torch.sigmoid(self.logits(inputs, texts, code).float()).cpu()
        return [resize_probs(probs[i : i + 1], size)[0, 0].numpy() for i, size in enumerate(sizes)]

    @overload
    def predict(
        self, image: ImageLike, text: str, threshold: float = 0.5, modality: int | None = None
    ) -> np.ndarray: ...

    @overload
    def predict(
        self,
        image: list[ImageLike] | tuple[ImageLike, ...],
        text: Sequence[str],
        threshold: float = 0.5,
        modality: int | None = None,
    ) -> list[np.ndarray]: ...

    def predict(
        self,
        image: ImageLike | list[ImageLike] | tuple[ImageLike, ...],
        text: str | Sequence[str],
        threshold: float = 0.5,
        modality: int | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """Binary lesion masks at the input image's size: ``probability >= threshold`` (as ``textseg predict``).

        Args:
            image: As :meth:`predict_proba`.
            text: As :meth:`predict_proba`.
            threshold: Probability threshold in [0, 1] (0.5 = logit 0, the metrics' threshold).
            modality: As :meth:`predict_proba`.

        Returns:
            ``bool [H, W]`` per image (a list for a list of images).

        Raises:
            DataError: As :meth:`predict_proba`, or for a threshold outside [0, 1].
        """
        if not 0.0 <= float(threshold) <= 1.0:
            raise DataError(f"threshold must be in [0, 1], got {threshold}")
        images, texts, single = self._pair(image, text)
        masks = [p >= threshold for p in self._probabilities(images, texts, modality)]
        return masks[0] if single else masks

    @staticmethod
    def _pair(image: Any, text: Any) -> tuple[list[Any], list[str], bool]:
        """``(images, texts, single)``: one image with one text, or equally long lists."""
        if isinstance(image, (list, tuple)):
            if isinstance(text, str) or not isinstance(text, (list, tuple)):
                raise DataError("a list of images needs a list of texts, one per image")
            if len(image) != len(text) or not image:
                raise DataError(f"{len(image)} images and {len(text)} texts: give one text per image")
            images, texts, single = list(image), list(text), False
        else:
            if not isinstance(text, str):
                raise DataError(f"one image needs one text (a str), got {type(text).__name__}")
            images, texts, single = [image], [text], True
        empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if empty:
            raise DataError(f"the text of image {empty[0]} is empty or not a string: every image needs its text")
        return images, texts, single

    # ------------------------------------------------------------------------------------------------- saving

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The evaluation network's and the text encoder's tensors, each its own contiguous CPU copy (no sharing)."""
        return {k: v.detach().to("cpu").contiguous().clone() for k, v in self.module.state_dict().items()}

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card into ``directory``.

        Args:
            directory: The folder (created if needed; the three files are overwritten).

        Returns:
            The folder.
        """
        from safetensors.torch import save_file

        from textseg import __version__

        folder = Path(directory).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        config = card.plain({**self.config, "textseg_version": __version__})
        (folder / loading.CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        save_file(self.state_dict(), str(folder / loading.WEIGHTS_FILE), metadata={"format": "pt"})
        (folder / loading.CARD_FILE).write_text(card.model_card(config), encoding="utf-8")
        return folder

    def push_to_hub(
        self,
        repo_id: str,
        private: bool = True,
        token: str | None = None,
        commit_message: str = "Upload textseg model",
        folder: str | os.PathLike[str] | None = None,
    ) -> Any:
        """Save the model (:meth:`save_pretrained`) and upload the folder to a Hugging Face Hub model repository.

        Args:
            repo_id: ``owner/name``; created (``exist_ok``) if missing.
            private: Create the repository as private.
            token: Hub token (default: the logged-in user's).
            commit_message: The commit message.
            folder: Where to write the files first (default: a temporary folder).

        Returns:
            What ``HfApi.upload_folder`` returns (the commit info).
        """
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            target = self.save_pretrained(folder if folder is not None else tmp)
            return api.upload_folder(
                repo_id=repo_id, folder_path=str(target), repo_type="model", commit_message=commit_message
            )

    def __repr__(self) -> str:
        hp = self.config.get("hparams", {})
        return (
            f"Segmenter({self.config.get('method')}, backbone={hp.get('backbone')!r}, "
            f"image_size={self.image_size}, device={self.device})"
        )
