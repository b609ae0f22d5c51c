"""The preflight: every missing piece of a run, reported at once, before anything heavy is built.

A real run needs a data root in a known layout, the checkpoint it names (``--ckpt_path``), encoders that can be
loaded (built in, a local folder, or a Hugging Face Hub id that is in the local cache when the machine is offline),
the vision checkpoint it names and the folders and text files it names for extra unlabeled or predicted images.
Without a preflight each of them fails on its own, one per try, after the networks were built. :func:`preflight`
checks them all from the parsed configuration, in milliseconds, and :func:`check_run` raises one
:class:`~textseg.errors.DataError` listing every problem with what to do about it. When a data root does not hold the
dataset but a folder one level down does (``QaTa-COV19-v2/`` inside the given root), the message names that folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from textseg.engine.runfiles import is_special_ckpt
from textseg.errors import DataError

__all__ = ["check_run", "find_layout", "hub_cached", "preflight"]

#: Datasets that are generated when their root does not exist (nothing to check).
GENERATED: tuple[str, ...] = ("synthetic", "synthetic_ct")


def _detector(dataset: str) -> Callable[[Path], Any] | None:
    """The layout detector of a registered dataset reader (its static ``_detect``; ``None`` for one without)."""
    from textseg.data.registry import DATASETS

    return getattr(DATASETS.get(dataset), "_detect", None)  # looks at folder and file names only


def find_layout(dataset: str, root: Path) -> tuple[bool, Path | None, str]:
    """Whether ``root`` holds ``dataset`` in a known layout; if not, a subfolder that does.

    Returns:
        ``(found, subfolder, message)``: ``found`` when ``root`` itself holds it; otherwise the first subfolder (one
        level down) that holds it, or ``None``, and the reader's message about ``root``.
    """
    detect = _detector(dataset)
    if detect is None:
        return True, None, ""
    try:
        detect(root)
        return True, None, ""
    except DataError as exc:
        message = str(exc).split(". Looked for")[0]
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            detect(sub)
        except DataError:
            continue
        return False, sub, message
    return False, None, message


def hub_cached(repo_id: str) -> bool:
    """Whether a Hugging Face Hub model is in the local cache (its ``config.json``); never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def _encoder(spec: Any, kind: str, builtin: Sequence[str], option: str) -> list[str]:
    if not spec or spec in builtin:
        return []
    spec = str(spec)
    local = Path(spec).expanduser()
    if local.is_dir():
        return []
    from textseg.models.encoders.vision import looks_like_path  # the encoders' own rule (imported when checking)

    if looks_like_path(spec) or local.exists():
        return [f"{kind} encoder folder {spec} does not exist ({option}); pass a folder holding config.json and the "
                f"weights, a Hub id, or one of {', '.join(builtin)}"]  # fmt: skip
    from textseg.inference.loading import hub_offline

    if hub_offline() and not hub_cached(spec):
        return [f"{kind} encoder {spec!r} is not in the Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE): "
                f"run `huggingface-cli download {spec}` where there is internet and copy the cache "
                f"(~/.cache/huggingface), or pass a local folder to {option}"]  # fmt: skip
    return []


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [*value] if isinstance(value, (list, tuple)) else [value]


def _paths(data: Mapping[str, Any], key: str, kind: str, want_dir: bool) -> list[str]:
    problems = []
    for value in _as_list(data.get(key)):
        path = Path(str(value)).expanduser()
        if not path.exists():
            problems.append(f"{kind} {path} does not exist (--data.{key})")
        elif want_dir and not path.is_dir():
            problems.append(f"{kind} {path} is not a folder (--data.{key})")
        elif not want_dir and not path.is_file():
            problems.append(f"{kind} {path} is not a file (--data.{key})")
    return problems


def _data_roots(data: Mapping[str, Any], subcommand: str) -> list[str]:
    if subcommand == "predict" and data.get("predict_images"):
        return []  # predict reads its own folder, not the data root
    datasets, roots = _as_list(data.get("dataset")), _as_list(data.get("root"))
    if len(roots) == 1 and len(datasets) > 1:
        roots = roots * len(datasets)
    problems = []
    for dataset, root in zip(datasets, roots, strict=False):
        if dataset in GENERATED:
            continue
        path = Path(str(root)).expanduser()
        if not path.is_dir():
            what = "is not a folder" if path.exists() else "does not exist"
            problems.append(f"data root {path} for {dataset} {what} (--data.root): download the dataset (docs/data.md)"
                            " and pass the folder that holds it")  # fmt: skip
            continue
        found, sub, message = find_layout(str(dataset), path)
        if found:
            continue
        if sub is not None:
            problems.append(f"data root {path} does not hold {dataset} itself, but {sub} does: pass --data.root {sub}")
        else:
            problems.append(f"{message} (--data.root); `textseg data check {path}` says what it found")
    return problems


def preflight(config: Mapping[str, Any], subcommand: str) -> list[str]:
    """Every missing piece of a run, one sentence each (empty when nothing is missing).

    Args:
        config: The subcommand's parsed configuration as a dict (``data``, ``model`` with ``init_args``).
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.

    Returns:
        The problems, each naming the option to change and what to do.
    """
    data = config.get("data") or {}
    model = config.get("model") or {}
    init = model.get("init_args") or {} if isinstance(model, Mapping) else {}
    problems = _data_roots(data, subcommand)
    if subcommand == "fit":
        problems += _paths(data, "unlabeled_images", "unlabeled image folder", want_dir=True)
        problems += _paths(data, "unlabeled_texts", "unlabeled text file", want_dir=False)
    if subcommand == "predict":
        problems += _paths(data, "predict_images", "predict image folder", want_dir=True)
        problems += _paths(data, "predict_texts", "predict text file", want_dir=False)
    from textseg.models.encoders.text import BUILTIN_TEXT_SPECS
    from textseg.models.encoders.vision import BUILTIN_VISION_SPECS

    problems += _encoder(init.get("text_encoder"), "text", BUILTIN_TEXT_SPECS, "--model.init_args.text_encoder")
    problems += _encoder(init.get("vision_encoder"), "vision", BUILTIN_VISION_SPECS, "--model.init_args.vision_encoder")
    ckpt = config.get("ckpt_path")
    if ckpt and not is_special_ckpt(ckpt) and not str(ckpt).startswith(("http://", "https://", "s3://", "gs://")):
        if not Path(str(ckpt)).expanduser().is_file():
            problems.append(f"checkpoint {ckpt} not found (--ckpt_path): give a .ckpt file, or last / best")
    checkpoint = init.get("vision_checkpoint")
    if checkpoint and not Path(str(checkpoint)).expanduser().is_file():
        problems.append(
            f"vision checkpoint {checkpoint} does not exist (--model.init_args.vision_checkpoint): download it "
            "(docs/guide.md) or set it to null to start from the vision encoder's weights"
        )
    return problems


def check_run(config: Any, subcommand: str) -> None:
    """Run :func:`preflight` on a parsed configuration (a dict or a jsonargparse namespace).

    Raises:
        DataError: Listing every problem, one per line.
    """
    as_dict = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    problems = preflight(as_dict, subcommand)
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        raise DataError(
            f"{len(problems)} things this run needs are missing:\n" + "\n".join(f"  - {p}" for p in problems)
        )
