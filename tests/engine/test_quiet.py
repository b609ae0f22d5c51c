"""The quiet run: narrow filters for known-harmless third-party messages, and the short model summary."""

from __future__ import annotations

import logging
import warnings

import pytest

from textseg.engine.quiet import ParamSummary, install_filters
from textseg.engine.wandb import TextSegWandbLogger


def test_filters_drop_only_the_known_messages(caplog: pytest.LogCaptureFixture) -> None:
    install_filters()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        install_filters()  # installed inside the context too: catch_warnings resets the filter list
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn(
            "Found 288 module(s) in eval mode at the start of training. This may ...", UserWarning, stacklevel=1
        )
        warnings.warn(
            "The number of training batches (2) is smaller than the logging interval", UserWarning, stacklevel=1
        )
    assert [str(w.message)[:14] for w in caught] == ["The number of "]
    log = logging.getLogger("lightning.fabric.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="lightning.fabric.utilities.rank_zero"):
        log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_param_summary_has_no_mode_or_flops(caplog: pytest.LogCaptureFixture) -> None:
    data = [
        (" ", ["0", "1"]),
        ("Name", ["text_encoder", "net"]),
        ("Type", ["TextEncoder", "MMIUNetCore"]),
        ("Params", ["23.4 K", "1.1 M"]),
        ("Mode", ["eval", "train"]),
        ("FLOPs", ["0", "0"]),
    ]
    with caplog.at_level(logging.INFO):
        ParamSummary.summarize(data, 2_100_000, 1_100_000, 8.533, {"train": 262, "eval": 288}, 0)
    text = caplog.records[-1].getMessage()
    lines = text.strip().splitlines()
    assert lines[0].split("|")[1].strip() == "Name" and "FLOPs" not in text and "Mode" not in text
    assert "net          | MMIUNetCore | 1.1 M" in text
    assert "1.0 M      Non-trainable params" in text and "8.533      Total estimated model params size (MB)" in text
    assert "eval mode" not in text and "Total FLOPs" not in text


def test_wandb_logger_does_not_pass_anonymous(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = TextSegWandbLogger(project="p")
    assert "anonymous" not in logger._wandb_init and logger._wandb_init["mode"] == "offline"
