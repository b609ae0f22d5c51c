"""A quiet run: narrow filters for third-party messages that are known to be harmless in textseg, and a short summary.

A ``textseg`` run prints its own lines (the split, one line per epoch, the test table, where files went) and the
warnings that concern the user's run. The messages below are printed by Lightning and torch on every run, say
nothing about it, and teach users to skim past warnings; each filter matches one message exactly and says why it is
safe to drop. Everything else still shows.

:class:`ParamSummary` replaces Lightning's default model summary: the same table of modules and parameter counts,
without the ``Mode`` and ``FLOPs`` columns and the "Modules in eval mode" / "Total FLOPs: 0" lines. In textseg, modules
in eval mode during training are the frozen text encoder and the EMA teacher, by design, and FLOPs are only counted
when a batch is given to the summary, which training never does, so they always read 0.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import get_formatted_model_size, get_human_readable_count

__all__ = ["QUIET_LOG_PREFIXES", "QUIET_WARNINGS", "ParamSummary", "install_filters"]

#: ``(message regex, why it is harmless)`` of the Python warnings a textseg run drops.
QUIET_WARNINGS: tuple[tuple[str, str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        "Lightning's own use of a torch pytree API that torch deprecated; nothing the user can change",
    ),
    (
        r"Found \d+ module\(s\) in eval mode at the start of training",
        "the frozen text encoder and the EMA teacher are in eval mode on purpose (docs/methods.md §9)",
    ),
)
#: ``(logger name, message prefix, why)`` of the log records a textseg run drops: advertisements.
QUIET_LOG_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("lightning.fabric.utilities.rank_zero", "💡 Tip: For seamless cloud", "Lightning's advert for its paid services"),
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud", "Lightning's advert for its paid services"),
)


class _DropPrefix(logging.Filter):
    """Drop the records of one logger whose message starts with a prefix."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


def install_filters() -> None:
    """Install the filters of :data:`QUIET_WARNINGS` and :data:`QUIET_LOG_PREFIXES` (idempotent)."""
    for pattern, _why in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, prefix, _why in QUIET_LOG_PREFIXES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))


class ParamSummary(ModelSummary):
    """Lightning's model summary without the ``Mode``/``FLOPs`` columns and their totals (see the module docstring)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        """Log the table of modules (name, type, parameters) and the parameter totals."""
        columns = [(name, [str(v) for v in values]) for name, values in summary_data if name not in ("Mode", "FLOPs")]
        widths = [max([len(name), *map(len, values)]) for name, values in columns]
        rows = [" | ".join(name.ljust(w) for (name, _), w in zip(columns, widths, strict=True))]
        rule = "-" * len(rows[0])
        rows.append(rule)
        n_rows = len(columns[0][1]) if columns else 0
        for i in range(n_rows):
            rows.append(" | ".join(values[i].ljust(w) for (_, values), w in zip(columns, widths, strict=True)))
        rows.append(rule)
        totals = (
            (get_human_readable_count(trainable_parameters), "Trainable params"),
            (get_human_readable_count(total_parameters - trainable_parameters), "Non-trainable params"),
            (get_human_readable_count(total_parameters), "Total params"),
            (get_formatted_model_size(model_size), "Total estimated model params size (MB)"),
        )
        rows.extend(f"{value:<10} {label}" for value, label in totals)
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info("\n" + "\n".join(rows))
