from __future__ import annotations

import numpy as np
import pytest
import torch

from textseg.errors import DataError
from textseg.ops.frequency import (
    ExchangeResult,
    band_half_width,
    frequency_exchange,
    legacy_disc_mask,
    low_band_mask,
    sample_partners,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int, c: int = 2, h: int = 16, w: int = 16, seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=torch.float64).to(dtype)


def _centred(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fft2(x.to(torch.float64)), dim=(-2, -1))


MOD = torch.tensor([0, 0, 0, 1, 1, 1])
EXCH = torch.tensor([True, True, False, True, True, False])


# ---------- masks


def test_band_half_width_and_mask_golden() -> None:
    assert band_half_width(224, 224, 0.05) == 11
    assert band_half_width(224, 160, 0.05) == 8
    assert band_half_width(16, 16, 0.0) == 0
    m = low_band_mask(8, 8, 0.2)  # b = floor(1.6) = 1, DC at (4, 4)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[3:6, 3:6] = True
    assert torch.equal(m, expected)
    assert int(low_band_mask(7, 9, 0.2).sum()) == 9  # b = 1 around (3, 4)
    assert bool(low_band_mask(7, 9, 0.2)[3, 4])
    assert int(low_band_mask(16, 16, 0.01).sum()) == 1  # b = 0: FDA keeps the DC term only
    assert int(low_band_mask(16, 16, 0.0).sum()) == 0  # beta = 0: empty band
    wide = low_band_mask(8, 12, 0.5)  # b = 4: all 8 rows (clipped), columns 2..10
    assert bool(wide.all(dim=1).logical_not().all()) and bool(wide[:, 2:11].all()) and int(wide.sum()) == 72
    assert int(low_band_mask(224, 224, 0.05).sum()) == 23 * 23


def test_legacy_disc_mask_golden() -> None:
    d = legacy_disc_mask(8, 8, 1)  # centre (4, 4): the point and its 4 neighbours
    assert torch.nonzero(d).tolist() == [[3, 4], [4, 3], [4, 4], [4, 5], [5, 4]]
    assert int(legacy_disc_mask(224, 224, 10).sum()) == 317  # lattice points with u^2 + v^2 <= 100
    assert torch.nonzero(legacy_disc_mask(5, 5, 0)).tolist() == [[2, 2]]
    assert not bool(legacy_disc_mask(224, 224, 10)[0, 0])  # DC is never in the disc


def test_mask_errors() -> None:
    with pytest.raises(DataError, match="beta"):
        low_band_mask(8, 8, 0.6)
    with pytest.raises(DataError, match="beta"):
        low_band_mask(8, 8, -0.1)
    with pytest.raises(DataError, match="radius"):
        legacy_disc_mask(8, 8, -1)
    with pytest.raises(DataError, match="size"):
        low_band_mask(0, 8, 0.1)


# ---------- partners


def test_partners_other_modality_and_exchangeable() -> None:
    for seed in range(50):
        g = _gen(seed)
        mod = torch.randint(0, 2, (10,), generator=g)
        exch = torch.rand(10, generator=g) < 0.6
        p = sample_partners(mod, exch, g)
        assert p.dtype == torch.long and p.shape == (10,)
        for i in range(10):
            eligible = [j for j in range(10) if exch[j] and mod[j] != mod[i]]
            if exch[i] and eligible:
                assert int(p[i]) in eligible
            else:
                assert int(p[i]) == -1


def test_partners_uniform() -> None:
    mod = torch.tensor([0, 1, 1, 1, 1, 0])
    exch = torch.tensor([True, True, True, True, False, False])
    g = _gen(3)
    draws = torch.stack([sample_partners(mod, exch, g) for _ in range(3000)])
    counts = torch.bincount(draws[:, 0], minlength=6).tolist()
    assert counts[0] == counts[4] == counts[5] == 0  # never itself, never labeled, never same modality
    for j in (1, 2, 3):
        assert abs(counts[j] / 3000 - 1 / 3) < 0.04
    assert bool((draws[:, 1:4] == 0).all())  # the only X-ray unlabeled sample
    assert bool((draws[:, 4:] == -1).all())  # labeled samples get no partner


# ---------- amplitude / complex exchange


@pytest.mark.parametrize("mode", ["amplitude", "complex"])
def test_identity_when_beta_zero(mode: str) -> None:
    x = _images(6)
    res = frequency_exchange(x, MOD, EXCH, _gen(0), beta=0.0, mode=mode)  # type: ignore[arg-type]
    assert isinstance(res, ExchangeResult)
    assert torch.equal(res.image, x)
    assert not bool(res.exchanged.any())
    assert bool((res.partner == -1).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["amplitude", "complex", "legacy"])
def test_shape_and_dtype_kept(dtype: torch.dtype, mode: str) -> None:
    x = _images(6, c=3, h=12, w=10, dtype=dtype)
    res = frequency_exchange(x, MOD, EXCH, _gen(1), beta=0.2, mode=mode, legacy_radius=3)  # type: ignore[arg-type]
    assert res.image.shape == x.shape and res.image.dtype == dtype and res.image.device == x.device
    assert res.partner.shape == (6,) and res.partner.dtype == torch.long
    assert res.exchanged.shape == (6,) and res.exchanged.dtype == torch.bool
    ref = frequency_exchange(x.to(torch.float32), MOD, EXCH, _gen(1), beta=0.2, mode=mode, legacy_radius=3)  # type: ignore[arg-type]
    assert torch.equal(res.partner, ref.partner)
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 5e-2
    assert torch.allclose(res.image.to(torch.float32), ref.image, atol=tol * 4, rtol=tol)


def test_autocast_bf16() -> None:
    x = _images(6, dtype=torch.float32)
    ref = frequency_exchange(x, MOD, EXCH, _gen(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = frequency_exchange(x.to(torch.bfloat16), MOD, EXCH, _gen(2))
    assert res.image.dtype == torch.bfloat16
    assert torch.equal(res.partner, ref.partner)
    assert torch.allclose(res.image.float(), ref.image, atol=0.1, rtol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res32 = frequency_exchange(x, MOD, EXCH, _gen(2))
    assert res32.image.dtype == torch.float32
    assert torch.allclose(res32.image, ref.image, atol=1e-6)


def test_amplitude_keeps_phase_and_swaps_band_amplitude() -> None:
    h, w, beta = 16, 12, 0.25  # b = 3 -> a 7 x 7 band around (8, 6)
    x = _images(6, c=2, h=h, w=w, seed=4)
    res = frequency_exchange(x, MOD, EXCH, _gen(5), beta=beta)
    band = low_band_mask(h, w, beta)
    assert int(band.sum()) == 49
    fx, fo = _centred(x), _centred(res.image)
    assert float(torch.fft.ifft2(torch.fft.ifftshift(fo, dim=(-2, -1))).imag.abs().max()) < 1e-10
    for i in range(6):
        p = int(res.partner[i])
        if not bool(res.exchanged[i]):
            assert torch.equal(res.image[i], x[i])
            continue
        # Band amplitude from the partner, high band amplitude kept.
        assert torch.allclose(fo[i].abs()[:, band], fx[p].abs()[:, band], atol=1e-9)
        assert torch.allclose(fo[i].abs()[:, ~band], fx[i].abs()[:, ~band], atol=1e-9)
        # Own phase at every frequency with a non-negligible amplitude in both spectra.
        ok = (fx[i].abs() > 1e-6) & (fo[i].abs() > 1e-6)
        assert float(ok.float().mean()) > 0.99
        unit_in = fx[i][ok] / fx[i][ok].abs()
        unit_out = fo[i][ok] / fo[i][ok].abs()
        assert float((unit_in - unit_out).abs().max()) < 1e-8
        # The partner really differs, so the image changed.
        assert not torch.allclose(res.image[i], x[i])
    assert res.exchanged.tolist() == [True, True, False, True, True, False]


def test_complex_swaps_band_spectrum() -> None:
    x = _images(6, h=16, w=16, seed=6)
    res = frequency_exchange(x, MOD, EXCH, _gen(7), beta=0.125, mode="complex")
    band = low_band_mask(16, 16, 0.125)
    fx, fo = _centred(x), _centred(res.image)
    for i in torch.nonzero(res.exchanged).flatten().tolist():
        p = int(res.partner[i])
        assert torch.allclose(fo[i][:, band], fx[p][:, band], atol=1e-9)
        assert torch.allclose(fo[i][:, ~band], fx[i][:, ~band], atol=1e-9)
    # Same partner draws as the amplitude mode for the same generator state.
    amp = frequency_exchange(x, MOD, EXCH, _gen(7), beta=0.125, mode="amplitude")
    assert torch.equal(amp.partner, res.partner)


def test_exchange_takes_partner_dc_mean() -> None:
    # Constant images: the whole spectrum is the DC term, so the output is the partner's constant.
    x = torch.stack([torch.full((1, 8, 8), float(v)) for v in (1.0, 2.0, 5.0, 7.0)])
    mod = torch.tensor([0, 0, 1, 1])
    exch = torch.tensor([True, False, True, False])
    res = frequency_exchange(x, mod, exch, _gen(0), beta=0.1, mode="amplitude")
    assert res.partner.tolist() == [2, -1, 0, -1]
    assert torch.allclose(res.image[0], torch.full((1, 8, 8), 5.0), atol=1e-5)
    assert torch.allclose(res.image[2], torch.full((1, 8, 8), 1.0), atol=1e-5)
    assert torch.equal(res.image[1], x[1]) and torch.equal(res.image[3], x[3])


def test_partner_modality_and_unexchanged_counted() -> None:
    x = _images(6)
    for seed in range(20):
        res = frequency_exchange(x, MOD, EXCH, _gen(seed), beta=0.1)
        for i in torch.nonzero(res.exchanged).flatten().tolist():
            p = int(res.partner[i])
            assert bool(EXCH[p]) and int(MOD[p]) != int(MOD[i])
        assert torch.equal(res.exchanged, EXCH)
    # Unlabeled samples of one modality only: nobody has a partner.
    mod = torch.tensor([0, 0, 0, 1, 1, 1])
    exch = torch.tensor([True, True, True, False, False, False])
    res = frequency_exchange(x, mod, exch, _gen(0), beta=0.1)
    assert torch.equal(res.image, x)
    assert int((exch & ~res.exchanged).sum()) == 3
    assert res.partner.tolist() == [-1] * 6
    # One CT unlabeled sample: it pairs with an X-ray one, both X-ray ones pair with it.
    exch = torch.tensor([True, True, False, True, False, False])
    res = frequency_exchange(x, mod, exch, _gen(0), beta=0.1)
    assert res.partner[[0, 1]].tolist() == [3, 3]
    assert int(res.partner[3]) in (0, 1)
    assert int((exch & ~res.exchanged).sum()) == 0
    assert torch.equal(res.image[[2, 4, 5]], x[[2, 4, 5]])


def test_determinism_and_seed_dependence() -> None:
    x = _images(8, seed=9)
    mod = torch.tensor([0, 1] * 4)
    exch = torch.ones(8, dtype=torch.bool)
    a = frequency_exchange(x, mod, exch, _gen(11), beta=0.1)
    b = frequency_exchange(x, mod, exch, _gen(11), beta=0.1)
    c = frequency_exchange(x, mod, exch, _gen(12), beta=0.1)
    assert torch.equal(a.image, b.image) and torch.equal(a.partner, b.partner)
    assert not torch.equal(a.partner, c.partner)
    assert not torch.equal(a.image, c.image)
    g = _gen(11)
    first = frequency_exchange(x, mod, exch, g, beta=0.1)
    second = frequency_exchange(x, mod, exch, g, beta=0.1)  # the generator state advanced
    assert torch.equal(first.image, a.image)
    assert not torch.equal(second.partner, first.partner)


def test_small_batches() -> None:
    empty = frequency_exchange(
        torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool), _gen(0)
    )
    assert empty.image.shape == (0, 3, 8, 8) and empty.partner.shape == (0,) and empty.exchanged.shape == (0,)
    x = _images(1)
    one = frequency_exchange(x, torch.tensor([1]), torch.tensor([True]), _gen(0))
    assert torch.equal(one.image, x) and one.partner.tolist() == [-1] and one.exchanged.tolist() == [False]
    leg = frequency_exchange(x, torch.tensor([1]), torch.tensor([True]), _gen(0), mode="legacy")
    assert leg.partner.tolist() == [0] and leg.exchanged.tolist() == [True]  # self-pair: round trip
    assert torch.allclose(leg.image, x, atol=1e-12)
    empty_leg = frequency_exchange(
        torch.zeros(0, 1, 4, 4),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.bool),
        _gen(0),
        mode="legacy",
    )
    assert empty_leg.image.shape == (0, 1, 4, 4)


# ---------- legacy


def _smooth_images(b: int, h: int, w: int) -> torch.Tensor:
    """Low-frequency cosine mixtures with a different offset and contrast per sample, plus faint noise."""
    g = torch.Generator().manual_seed(31)
    u = torch.arange(h, dtype=torch.float64)[:, None] / h
    v = torch.arange(w, dtype=torch.float64)[None, :] / w
    out = []
    for i in range(b):
        a = torch.randn(4, generator=g, dtype=torch.float64)
        img = 3.0 * i + (1 + i) * (a[0] * torch.cos(2 * torch.pi * u) + a[1] * torch.sin(2 * torch.pi * v))
        img = img + a[2] * torch.cos(2 * torch.pi * (u + 2 * v)) + a[3] * torch.sin(4 * torch.pi * u)
        out.append(img + 0.01 * torch.randn(h, w, generator=g, dtype=torch.float64))
    return torch.stack(out)[:, None]


def _legacy_reference(x: np.ndarray, perm: list[int], radius: float) -> np.ndarray:
    """The public code's formula, written out with numpy and explicit loops."""
    _, _, h, w = x.shape
    high = np.zeros((h, w))
    for u in range(h):
        for v in range(w):
            if np.sqrt((u - h // 2) ** 2 + (v - w // 2) ** 2) > radius:
                high[u, v] = 1.0
    out = np.empty_like(x)
    for i, p in enumerate(perm):
        own = np.fft.fft2(x[i], axes=(-2, -1))
        par = np.fft.fft2(x[p], axes=(-2, -1))
        out[i] = np.fft.ifft2(par + own * high - par * high, axes=(-2, -1)).real
    return out


@pytest.mark.parametrize(("h", "w", "radius"), [(16, 16, 3), (12, 15, 4), (24, 24, 10)])
def test_legacy_matches_reference_formula(h: int, w: int, radius: int) -> None:
    x = _images(5, c=2, h=h, w=w, seed=13)
    mod = torch.tensor([0, 0, 1, 1, 1])
    exch = torch.tensor([False, True, False, False, False])  # one unlabeled sample triggers the swap
    res = frequency_exchange(x, mod, exch, _gen(21), mode="legacy", legacy_radius=radius)
    perm = torch.randperm(5, generator=_gen(21))
    assert torch.equal(res.partner, perm)
    assert bool(res.exchanged.all())
    ref = _legacy_reference(x.numpy(), perm.tolist(), radius)
    assert np.allclose(res.image.numpy(), ref, atol=1e-10)


def test_legacy_changes_only_the_highest_frequency_disc() -> None:
    h = w = 24
    x = _images(4, c=1, h=h, w=w, seed=17)
    mod = torch.tensor([0, 1, 0, 1])
    exch = torch.tensor([True, False, False, False])
    res = frequency_exchange(x, mod, exch, _gen(4), mode="legacy", legacy_radius=5)
    disc = legacy_disc_mask(h, w, 5)
    fx = torch.fft.fft2(x)
    fo = torch.fft.fft2(res.image)
    for i in range(4):
        p = int(res.partner[i])
        assert torch.allclose(fo[i][:, ~disc], fx[i][:, ~disc], atol=1e-9)  # own spectrum outside the disc
        assert torch.allclose(fo[i][:, disc], fx[p][:, disc], atol=1e-9)  # partner inside it
    # The disc sits at the Nyquist corner: DC and the lowest frequencies are untouched, the mean is kept.
    assert torch.allclose(res.image.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-12)
    # On smooth (natural-like) images the perturbation is tiny, unlike the amplitude exchange of a similar band.
    smooth = _smooth_images(4, h, w)
    leg = frequency_exchange(smooth, mod, exch, _gen(4), mode="legacy", legacy_radius=5)
    amp = frequency_exchange(smooth, mod, torch.ones(4, dtype=torch.bool), _gen(4), beta=5 / 24)
    leg_change = float((leg.image - smooth).norm() / smooth.norm())
    amp_change = float((amp.image - smooth).norm() / smooth.norm())
    assert leg_change < 0.05 < 0.3 < amp_change


def test_legacy_needs_an_unlabeled_sample() -> None:
    x = _images(4, seed=2)
    g = _gen(0)
    res = frequency_exchange(x, torch.tensor([0, 1, 0, 1]), torch.zeros(4, dtype=torch.bool), g, mode="legacy")
    assert torch.equal(res.image, x) and res.partner.tolist() == [-1] * 4 and not bool(res.exchanged.any())
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=_gen(0)))  # no draw consumed


# ---------- validation


def test_exchange_errors() -> None:
    x = _images(6)
    g = _gen(0)
    with pytest.raises(DataError, match="shape"):
        frequency_exchange(x[0], MOD, EXCH, g)
    with pytest.raises(DataError, match="floating"):
        frequency_exchange(x.to(torch.long), MOD, EXCH, g)
    with pytest.raises(DataError, match="beta"):
        frequency_exchange(x, MOD, EXCH, g, beta=0.7)
    with pytest.raises(DataError, match="beta"):
        frequency_exchange(x, MOD, EXCH, g, beta=float("nan"))
    with pytest.raises(DataError, match="mode"):
        frequency_exchange(x, MOD, EXCH, g, mode="phase")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="modality"):
        frequency_exchange(x, MOD[:5], EXCH, g)
    with pytest.raises(DataError, match="modality"):
        frequency_exchange(x, MOD.float(), EXCH, g)
    with pytest.raises(DataError, match="exchangeable"):
        frequency_exchange(x, MOD, EXCH.long(), g)
    with pytest.raises(DataError, match="exchangeable"):
        frequency_exchange(x, MOD, EXCH[:4], g)
    with pytest.raises(DataError, match="legacy_radius"):
        frequency_exchange(x, MOD, EXCH, g, mode="legacy", legacy_radius=-2)
    with pytest.raises(ValueError):
        frequency_exchange(x, MOD, EXCH, g, beta=-0.01)
