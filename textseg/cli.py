"""The ``textseg`` command: Lightning's CLI with ``fit``, ``validate``, ``test`` and ``predict``.

Examples:
    textseg fit --config configs/semimedref_mmiunet.yaml
    textseg test --config configs/semimedref_mmiunet.yaml --ckpt_path runs/.../best.ckpt
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from textseg.datamodule import TextSegDataModule
from textseg.methods import SemiMedRefModule, SupervisedModule, TextSegModule

__all__ = ["SemiMedRefModule", "SupervisedModule", "TextSegCLI", "main"]


class TextSegCLI(LightningCLI):
    """LightningCLI with ``--test_after_fit``: test the best checkpoint right after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--test_after_fit`` (bool) to ``fit``."""
        parser.add_argument("--test_after_fit", type=bool, default=False, help="Run `test` on the best checkpoint.")

    def after_fit(self) -> None:
        """Test the best (or last) checkpoint when ``--test_after_fit`` is set."""
        if self.config.get("fit", {}).get("test_after_fit"):
            callback = self.trainer.checkpoint_callback
            ckpt = "best" if getattr(callback, "best_model_path", None) else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def main(args: Any = None) -> None:
    """Entry point of the ``textseg`` console script and ``python -m textseg``."""
    TextSegCLI(
        TextSegModule,
        TextSegDataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
