from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from textseg.errors import DataError
from textseg.ops.ema import EMATeacher, linear_ramp, semimedref_momentum, textmoe_momentum


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(4, 1, 1)
    )


def _perturb(student: nn.Module, seed: int) -> None:
    """Give the student different parameters and BN statistics than the teacher copy."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    student.train()
    student(torch.randn(3, 1, 5, 5, generator=g))  # updates running stats and num_batches_tracked


def test_midpoint_params_and_float_buffers_int_copied() -> None:
    student = _net()
    teacher = EMATeacher(student)
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    _perturb(student, 1)
    _perturb(student, 2)
    teacher.update(student, 0.5)
    after = teacher.module.state_dict()
    s_state = student.state_dict()
    assert s_state["1.num_batches_tracked"].item() == 2
    for k, v in after.items():
        if v.is_floating_point():
            expected = (before[k] + s_state[k]) / 2
            assert torch.equal(v, expected), k  # exact mean, params and BN running stats alike
            assert not torch.equal(v, before[k]), k
        else:
            assert torch.equal(v, s_state[k]), k  # num_batches_tracked copied
    assert after["1.running_mean"].abs().sum() > 0


def test_momentum_one_keeps_and_zero_copies() -> None:
    student = _net()
    teacher = EMATeacher(student)
    before = copy.deepcopy(teacher.module.state_dict())
    _perturb(student, 3)
    teacher.update(student, 1.0)
    for k, v in teacher.module.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, before[k]), k
    teacher.update(student, 0.0)
    for k, v in teacher.module.state_dict().items():
        assert torch.equal(v, student.state_dict()[k]), k


def test_general_momentum_value() -> None:
    student = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 2.0]]))
    teacher = EMATeacher(student)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[3.0, -2.0]]))
    teacher.update(student, 0.9)
    weight = teacher.module.weight
    assert isinstance(weight, torch.Tensor)
    assert torch.allclose(weight, torch.tensor([[1.2, 1.6]]), atol=1e-6)


def test_momentum_validation_and_mismatch() -> None:
    student = _net()
    teacher = EMATeacher(student)
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(DataError, match="momentum"):
            teacher.update(student, bad)
    with pytest.raises(DataError, match="do not match"):
        teacher.update(nn.Linear(2, 2), 0.5)


def test_no_grad_not_in_optimizer_and_sticky_eval() -> None:
    student = _net()
    owner = nn.Module()
    owner.student = student
    owner.teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in owner.teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    opt_ids = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not opt_ids & {id(p) for p in owner.teacher.parameters()}
    assert len(opt_ids) == len(list(student.parameters()))

    owner.train()
    owner.teacher.requires_grad_(True)
    assert student.training and not owner.teacher.training
    assert all(not m.training for m in owner.teacher.modules())
    assert all(not p.requires_grad for p in owner.teacher.parameters())

    x = torch.randn(2, 1, 5, 5, requires_grad=True)
    out = owner.teacher(x)
    assert not out.requires_grad
    # Eval mode: dropout off and BN running stats used -> deterministic, and stats not updated.
    bn = owner.teacher.module.get_submodule("1")
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
    stats = bn.running_mean.clone()
    assert torch.equal(out, owner.teacher(x))
    assert torch.equal(stats, bn.running_mean)
    student.train()
    loss = student(x).sum()
    loss.backward()
    assert all(p.grad is None for p in owner.teacher.parameters())


def test_state_dict_round_trip() -> None:
    student = _net()
    owner = nn.Module()
    owner.student = student
    owner.teacher = EMATeacher(student)
    _perturb(student, 5)
    owner.teacher.update(student, 0.3)
    state = owner.state_dict()
    assert any(k.startswith("teacher.module.") for k in state)
    fresh = nn.Module()
    fresh.student = _net(seed=7)
    fresh.teacher = EMATeacher(fresh.student)
    fresh.load_state_dict(state)
    for k, v in owner.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    x = torch.randn(2, 1, 5, 5)
    assert torch.equal(owner.teacher(x), fresh.teacher(x))


def test_semimedref_momentum_golden() -> None:
    for e in range(6):
        assert semimedref_momentum(e) == pytest.approx(0.99, abs=1e-12)
    assert semimedref_momentum(15) == pytest.approx(0.9945, abs=1e-12)
    assert semimedref_momentum(10) == pytest.approx(0.99225, abs=1e-12)
    for e in (25, 26, 100):
        assert semimedref_momentum(e) == pytest.approx(0.999, abs=1e-12)
    values = [semimedref_momentum(e) for e in range(30)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    with pytest.raises(DataError):
        semimedref_momentum(3, start=1.5)


def test_textmoe_momentum_golden() -> None:
    assert textmoe_momentum(0) == 0.0
    assert textmoe_momentum(1) == 0.5
    assert textmoe_momentum(3) == pytest.approx(0.75)
    assert textmoe_momentum(99) == pytest.approx(0.99)
    assert textmoe_momentum(10_000) == 0.99
    assert textmoe_momentum(10_000, max_momentum=0.999) == 0.999
    assert textmoe_momentum(100, max_momentum=1.0) == pytest.approx(100 / 101)
    with pytest.raises(DataError):
        textmoe_momentum(-1)


def test_linear_ramp_golden() -> None:
    kw = {"start_epoch": 5, "ramp_epochs": 15, "max_value": 0.3}
    assert linear_ramp(0, **kw) == 0.0
    assert linear_ramp(5, **kw) == 0.0
    assert linear_ramp(12.5, **kw) == pytest.approx(0.15)
    assert linear_ramp(20, **kw) == pytest.approx(0.3)
    assert linear_ramp(40, **kw) == pytest.approx(0.3)
    assert linear_ramp(5, start_epoch=5, ramp_epochs=0, max_value=0.3) == 0.3
