"""Command-line overrides that turn a shipped config into a tiny CPU run (a test helper, not a test module)."""

from __future__ import annotations

#: A small synthetic tree for ``--data.dataset_options``.
TINY_SYNTHETIC = "{synthetic: {n_train: 8, n_val: 4, n_test: 4, image_size: 64}}"


def tiny_args(max_epochs: int = 1, train_batches: int = 2, dataset_options: str = TINY_SYNTHETIC) -> list[str]:
    """Overrides for ``textseg fit``: 64 px, batches of 2, tiny encoders, CPU, no progress bar or model summary."""
    return [
        "--data.image_size", "64",
        "--data.batch_size", "2",
        "--data.unlabeled_batch_size", "2",
        "--data.eval_batch_size", "4",
        "--data.num_workers", "0",
        "--data.dataset_options", dataset_options,
        "--model.init_args.vision_encoder", "tiny",
        "--model.init_args.text_encoder", "tiny",
        "--model.init_args.vision_checkpoint", "null",
        "--model.init_args.project_dim", "16",
        "--trainer.accelerator", "cpu",
        "--trainer.min_epochs", "null",
        "--trainer.max_epochs", str(max_epochs),
        "--trainer.limit_train_batches", str(train_batches),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
