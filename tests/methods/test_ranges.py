"""Numeric hyperparameters of the methods are range-checked at construction (issue 27): one line naming the argument,
its value and the allowed range, before any network is built."""

from __future__ import annotations

import pytest

from textseg.errors import DataError
from textseg.methods.semimedref import SemiMedRefModule
from textseg.methods.supervised import SupervisedModule
from textseg.methods.textmoe import TextMoEModule

CASES = [
    (SupervisedModule, "lr", 0.0, "> 0"),
    (SupervisedModule, "lr", -1e-3, "> 0"),
    (SupervisedModule, "weight_decay", -0.01, ">= 0"),
    (SupervisedModule, "min_lr", -1e-6, ">= 0"),
    (SupervisedModule, "max_length", 0, ">= 1"),
    (SupervisedModule, "project_dim", 0, ">= 1"),
    (SupervisedModule, "text_cache_size", -1, ">= 0"),
    (SupervisedModule, "lr_t_max", 0, ">= 1"),
    (SupervisedModule, "guide_alpha", float("nan"), "a finite number"),
    (SemiMedRefModule, "lambda_u", -0.3, ">= 0"),
    (SemiMedRefModule, "ema_start", 1.5, "in [0, 1]"),
    (SemiMedRefModule, "ema_end", -0.1, "in [0, 1]"),
    (SemiMedRefModule, "confidence", 2.0, "in [0, 1]"),
    (SemiMedRefModule, "burn_in_epochs", -1, ">= 0"),
    (SemiMedRefModule, "soft_temperature", 0.0, "> 0"),
    (SemiMedRefModule, "itcl_temperature", 0.0, "> 0"),
    (SemiMedRefModule, "posaug_rho", 1.1, "in [0, 1]"),
    (SemiMedRefModule, "mix_prob", -0.5, "in [0, 1]"),
    (SemiMedRefModule, "mix_block", 0, ">= 1"),
    (SemiMedRefModule, "spc_prob", 1.5, "in [0, 1]"),
    (SemiMedRefModule, "lambda_itcl_sup", -0.02, ">= 0"),
    (SemiMedRefModule, "aug_seed", -1, ">= 0"),
    (TextMoEModule, "num_experts", 0, ">= 1"),
    (TextMoEModule, "ema_max", 1.01, "in [0, 1]"),
    (TextMoEModule, "pseudo_threshold", -0.5, "in [0, 1]"),
    (TextMoEModule, "exchange_beta", 0.6, "in [0, 0.5]"),
    (TextMoEModule, "lambda_diff", -0.1, ">= 0"),
    (TextMoEModule, "pretrain_epochs", -2, ">= 0"),
]


@pytest.mark.parametrize(
    ("cls", "argument", "value", "allowed"), CASES, ids=[f"{c.__name__}-{a}-{v}" for c, a, v, _ in CASES]
)
def test_out_of_range_hyperparameter_is_refused(cls: type, argument: str, value: float, allowed: str) -> None:
    with pytest.raises(DataError) as err:
        cls(**{argument: value})
    assert str(err.value) == f"{argument} must be {allowed}, got {value!r}"
