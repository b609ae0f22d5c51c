"""Frequency-space exchange of TextMoE (Zeng et al., MICCAI 2025, Sec. 2.3, Eqs. 6-7).

The paper exchanges "the frequency space" between randomly selected **unlabeled** images of **different
modalities** (Eq. 6, ``x_{i,f} = F^-1(F(x_j))``): the exchanged image keeps the content of ``x_i`` with the
style of ``x_j``. The teacher predicts on the original image, the student learns on the exchanged one (Eq. 7).
Neither the paper nor the public code gives a usable band size (``docs/methods.md`` Sec. 5.1).

:func:`frequency_exchange` implements three modes:

* ``"amplitude"`` (default, ``docs/methods.md`` Sec. 5.1 **Decision**): per channel, take the centred
  (``fftshift``-ed) 2-D spectrum; each exchangeable sample draws a partner uniformly among the exchangeable
  samples of a **different** modality in the batch; inside the low-frequency band (:func:`low_band_mask`) the
  sample's amplitude is replaced by the partner's, and the sample's own phase is kept everywhere (the FDA
  operation of Yang & Soatto, CVPR 2020). Samples with no eligible partner are left unchanged.
* ``"complex"``: same partners and band, but the whole complex spectrum of the band (amplitude and phase) is
  taken from the partner.
* ``"legacy"``: the public code (``jgfiuuuu/TextMoE``, ``docs/methods.md`` Sec. 5.1 [code] and Sec. 8 item 18): when
  the batch holds at least one exchangeable (unlabeled) sample, a permutation of the **whole batch** (labeled
  samples included, self-pairs allowed) picks partners, and every sample becomes
  ``real(IFFT(F_p - high(F_p) + high(F_i)))`` on the **unshifted** spectrum, where ``high`` keeps the
  frequencies at Euclidean index distance ``> legacy_radius`` from ``(H // 2, W // 2)``
  (:func:`legacy_disc_mask`). Without a shift that point is the Nyquist corner, so only a disc of the
  highest frequencies comes from the partner.

All functions are pure: randomness comes only from the explicit ``torch.Generator`` (drawn on the generator's
device and moved to the data's device, so a CPU generator drives GPU data reproducibly). The FFT runs in
float32 (float64 input stays float64) with autocast disabled, and the result is cast back to the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from textseg.errors import DataError
from textseg.ops.transfer import to_device

__all__ = [
    "EXCHANGE_MODES",
    "ExchangeResult",
    "band_half_width",
    "frequency_exchange",
    "legacy_disc_mask",
    "low_band_mask",
    "sample_partners",
]

ExchangeMode = Literal["amplitude", "complex", "legacy"]
#: The modes accepted by :func:`frequency_exchange`.
EXCHANGE_MODES: tuple[str, str, str] = ("amplitude", "complex", "legacy")
#: Largest band ratio: a half-width of ``min(H, W) / 2`` already covers the whole short axis.
MAX_BETA = 0.5


@dataclass
class ExchangeResult:
    """Output of :func:`frequency_exchange`.

    Attributes:
        image: ``[B, C, H, W]`` student input, same dtype and device as the input images. Samples that were
            not exchanged are bit-identical to the input.
        partner: ``[B]`` long, index (into the batch) of the sample whose spectrum was used, ``-1`` where the
            sample was not exchanged. In ``"legacy"`` mode a sample may be its own partner.
        exchanged: ``[B]`` bool, ``True`` where a partner's band was written into the sample.
    """

    image: Tensor
    partner: Tensor
    exchanged: Tensor


# ----------------------------------------------------------------------------------------------------
# validation helpers


def _check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0.0 <= float(beta) <= MAX_BETA):
        raise DataError(f"frequency exchange: beta must be a number in [0, {MAX_BETA}], got {beta!r}")


def _check_size(height: int, width: int) -> None:
    if isinstance(height, bool) or isinstance(width, bool) or height < 1 or width < 1:
        raise DataError(f"frequency exchange: image size must be positive, got height={height!r}, width={width!r}")


def _check_radius(radius: float) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not (float(radius) >= 0.0):
        raise DataError(f"frequency exchange: legacy_radius must be a number >= 0, got {radius!r}")


def _check_labels(modality: Tensor, exchangeable: Tensor, batch: int) -> None:
    if modality.shape != (batch,):
        raise DataError(f"frequency exchange: modality must have shape [{batch}], got {tuple(modality.shape)}")
    if modality.is_floating_point() or modality.is_complex() or modality.dtype == torch.bool:
        raise DataError(f"frequency exchange: modality must be an integer tensor, got dtype {modality.dtype}")
    if exchangeable.shape != (batch,):
        raise DataError(f"frequency exchange: exchangeable must have shape [{batch}], got {tuple(exchangeable.shape)}")
    if exchangeable.dtype != torch.bool:
        raise DataError(f"frequency exchange: exchangeable must be a bool tensor, got dtype {exchangeable.dtype}")


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float32 for float32 / float16 / bfloat16 input, float64 for float64 input."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------------
# masks and partners


def band_half_width(height: int, width: int, beta: float) -> int:
    """Half-width ``b = floor(beta * min(H, W))`` of the low-frequency band (FDA convention).

    Args:
        height: Image height ``H``.
        width: Image width ``W``.
        beta: Band ratio in ``[0, 0.5]``.

    Returns:
        ``b`` in pixels of the centred spectrum (``b = 11`` for ``beta = 0.05`` on 224 x 224).

    Raises:
        DataError: On a non-positive size or ``beta`` outside ``[0, 0.5]``.
    """
    _check_size(height, width)
    _check_beta(beta)
    return math.floor(float(beta) * min(height, width))


def low_band_mask(height: int, width: int, beta: float, device: torch.device | str | None = None) -> Tensor:
    """Centred low-frequency band of the ``"amplitude"`` and ``"complex"`` exchanges.

    With ``b = floor(beta * min(H, W))`` (:func:`band_half_width`) and ``(c_h, c_w) = (H // 2, W // 2)`` -- the
    position of the DC term after ``torch.fft.fftshift`` for even and odd sizes alike -- the band is the square
    ``|u - c_h| <= b`` and ``|v - c_w| <= b`` of the **shifted** grid, clipped to the grid: a
    ``(2b + 1) x (2b + 1)`` block around DC, exactly FDA's ``low_freq_mutate`` (Yang & Soatto, CVPR 2020).
    Any ``beta > 0`` therefore includes at least the DC term. ``beta = 0`` is the one exception to the FDA
    convention: it gives an **empty** band (no exchange), so that ``beta = 0`` is the identity. The band is
    symmetric under ``f -> -f``, so a real image stays real after the exchange.

    Args:
        height: Image height ``H``.
        width: Image width ``W``.
        beta: Band ratio in ``[0, 0.5]`` (``docs/methods.md`` Sec. 5.1; the public code's radius 10 on 224 px is
            about ``beta = 0.045``).
        device: Device of the mask (default CPU).

    Returns:
        ``[H, W]`` bool mask in centred (``fftshift``) coordinates, ``True`` inside the band.

    Raises:
        DataError: On a non-positive size or ``beta`` outside ``[0, 0.5]``.
    """
    b = band_half_width(height, width, beta)
    dev = torch.device("cpu") if device is None else torch.device(device)
    if float(beta) == 0.0:
        return torch.zeros(height, width, dtype=torch.bool, device=dev)
    rows = (torch.arange(height, device=dev) - height // 2).abs() <= b
    cols = (torch.arange(width, device=dev) - width // 2).abs() <= b
    return rows[:, None] & cols[None, :]


def legacy_disc_mask(height: int, width: int, radius: float, device: torch.device | str | None = None) -> Tensor:
    """Region of the **unshifted** spectrum that the public code takes from the partner (``"legacy"`` mode).

    The public code calls "high" the frequencies whose index ``(u, v)`` of the unshifted ``fft2`` grid lies at
    Euclidean distance ``> radius`` from ``(H // 2, W // 2)`` (integer division, as in the code), and keeps
    those from the sample itself; the complement -- the closed disc of the given radius around
    ``(H // 2, W // 2)``, i.e. around the Nyquist corner, the highest frequencies -- comes from the partner.

    Args:
        height: Image height ``H``.
        width: Image width ``W``.
        radius: Disc radius in index units (10 in the public code).
        device: Device of the mask (default CPU).

    Returns:
        ``[H, W]`` bool mask in unshifted ``fft2`` coordinates, ``True`` inside the disc (taken from the partner).

    Raises:
        DataError: On a non-positive size or a negative radius.
    """
    _check_size(height, width)
    _check_radius(radius)
    dev = torch.device("cpu") if device is None else torch.device(device)
    du = torch.arange(height, device=dev, dtype=torch.float32) - float(height // 2)
    dv = torch.arange(width, device=dev, dtype=torch.float32) - float(width // 2)
    dist = torch.sqrt(du[:, None] ** 2 + dv[None, :] ** 2)
    return ~(dist > float(radius))


def sample_partners(modality: Tensor, exchangeable: Tensor, generator: torch.Generator) -> Tensor:
    """Draw one other-modality unlabeled partner per exchangeable sample (``docs/methods.md`` Sec. 5.1 Decision).

    Sample ``i`` is eligible when ``exchangeable[i]``; its candidates are the samples ``j`` with
    ``exchangeable[j]`` and ``modality[j] != modality[i]``. The partner is drawn uniformly among the candidates
    (independently per sample, so two samples may share a partner). Samples that are not exchangeable or have
    no candidate get ``-1``.

    Random numbers: one ``U[0, 1)`` float64 vector of length ``B`` is drawn from ``generator`` on every call,
    whatever the labels hold, so the stream consumed depends only on ``B``.

    Args:
        modality: ``[B]`` integer modality indicator (TextMoE: 0 = QaTa X-ray, 1 = MosMed CT).
        exchangeable: ``[B]`` bool, ``True`` for unlabeled samples.
        generator: Source of randomness.

    Returns:
        ``[B]`` long partner indices (``-1`` for none) on ``modality.device``.

    Raises:
        DataError: On bad shapes or dtypes.
    """
    if modality.dim() != 1:
        raise DataError(f"sample_partners: modality must have shape [B], got {tuple(modality.shape)}")
    n = modality.shape[0]
    _check_labels(modality, exchangeable, n)
    device = modality.device
    u = to_device(torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64), device)
    exch = to_device(exchangeable, device)
    cand = exch[:, None] & exch[None, :] & (modality[:, None] != modality[None, :])
    csum = cand.to(torch.long).cumsum(dim=1)
    count = csum[:, -1] if n else torch.zeros(0, dtype=torch.long, device=device)
    k = torch.minimum(torch.floor(u * count.to(u.dtype)).to(torch.long), (count - 1).clamp(min=0))
    pick = (cand & (csum == (k + 1)[:, None])).to(torch.int8).argmax(dim=1) if n else count
    return torch.where(count > 0, pick, torch.full_like(pick, -1))


# ----------------------------------------------------------------------------------------------------
# exchange


def frequency_exchange(
    images: Tensor,
    modality: Tensor,
    exchangeable: Tensor,
    generator: torch.Generator,
    *,
    beta: float = 0.05,
    mode: ExchangeMode = "amplitude",
    legacy_radius: float = 10,
) -> ExchangeResult:
    """Build the student input of TextMoE's content regularisation (paper Eqs. 6-7, ``docs/methods.md`` Sec. 5.1).

    ``"amplitude"`` (default): with centred per-channel spectra ``F_i = fftshift(fft2(x_i))`` and the band
    ``M`` of :func:`low_band_mask`,

        x_i' = real(ifft2(ifftshift( (M * |F_p| + (1 - M) * |F_i|) * exp(i * angle(F_i)) )))

    where ``p`` is the partner from :func:`sample_partners` (an exchangeable sample of another modality).
    ``"complex"``: ``x_i' = real(ifft2(ifftshift(M * F_p + (1 - M) * F_i)))``. ``"legacy"``: the public code,
    ``x_i' = real(ifft2(G_p - high(G_p) + high(G_i)))`` with unshifted spectra ``G = fft2(x)``, ``high`` the
    complement of :func:`legacy_disc_mask` and ``p = randperm(B)[i]`` over the whole batch (labeled samples and
    self-pairs included); it runs only when at least one sample is exchangeable (as the code's
    ``(flag == False).any()``), and then every sample is exchanged. ``beta`` is unused in ``"legacy"`` mode and
    ``legacy_radius`` is unused otherwise.

    Text and modality indicators are unchanged (the caller keeps them), as are the samples that are not
    exchanged (bit-identical output). Random numbers: ``"amplitude"``/``"complex"`` draw ``B`` uniforms per call
    (:func:`sample_partners`); ``"legacy"`` draws one ``randperm(B)`` when it runs.

    Args:
        images: ``[B, C, H, W]`` network input (z-scored), any floating dtype.
        modality: ``[B]`` integer modality indicator (``dataset_id``).
        exchangeable: ``[B]`` bool, ``True`` for unlabeled samples.
        generator: Source of randomness; the result is a deterministic function of its state.
        beta: Band ratio in ``[0, 0.5]``; half-width ``floor(beta * min(H, W))``, ``0`` disables the exchange.
        mode: "amplitude" (default), "complex" or "legacy".
        legacy_radius: Disc radius of the ``"legacy"`` mode (10 in the public code).

    Returns:
        An :class:`ExchangeResult` (image, partner, exchanged). The number of unlabeled samples left unchanged
        for lack of a partner is ``(exchangeable & ~exchanged).sum()``.

    Raises:
        DataError: On bad shapes or dtypes, ``beta`` outside ``[0, 0.5]``, a negative radius or an unknown mode.
    """
    if images.dim() != 4:
        raise DataError(f"frequency exchange: images must have shape [B, C, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise DataError(f"frequency exchange: images must be a floating-point tensor, got dtype {images.dtype}")
    if mode not in EXCHANGE_MODES:
        raise DataError(f"frequency exchange: mode must be one of {EXCHANGE_MODES}, got {mode!r}")
    n, _, height, width = images.shape
    _check_size(height, width)
    _check_beta(beta)
    _check_radius(legacy_radius)
    _check_labels(modality, exchangeable, n)
    device = images.device
    modality = to_device(modality, device)
    exchangeable = to_device(exchangeable, device)

    if mode == "legacy":
        if not bool(exchangeable.any()):
            partner = torch.full((n,), -1, dtype=torch.long, device=device)
        else:
            partner = torch.randperm(n, generator=generator, device=generator.device).to(device)
    else:
        partner = sample_partners(modality, exchangeable, generator)
        if float(beta) == 0.0:  # empty band: nothing is written into any sample
            partner = torch.full_like(partner, -1)
    exchanged = partner >= 0  # decided on the device: no early exit that would read it back to the host
    if n == 0:  # a shape, known on the host
        return ExchangeResult(image=images.clone(), partner=partner, exchanged=exchanged)

    dims = (-2, -1)
    with torch.autocast(device_type=device.type, enabled=False):
        x = images.to(_compute_dtype(images))
        if mode == "legacy":
            spec = torch.fft.fft2(x, dim=dims)
            spec_p = spec[partner]
            high = (~legacy_disc_mask(height, width, legacy_radius, device)).to(spec.dtype)
            mixed = spec_p - spec_p * high + spec * high
            out = torch.fft.ifft2(mixed, dim=dims).real
            image = torch.where(exchanged[:, None, None, None], out.to(images.dtype), images)
        else:
            # The whole batch is transformed and the exchanged samples picked with a mask: selecting the subset
            # first (nonzero) would read the flags back to the host. Per-sample FFTs do not depend on the batch.
            spec = torch.fft.fftshift(torch.fft.fft2(x, dim=dims), dim=dims)
            spec_p = spec[partner.clamp_min(0)]
            band = low_band_mask(height, width, beta, device)
            if mode == "amplitude":
                amp = torch.where(band, spec_p.abs(), spec.abs())
                mixed = torch.polar(amp, spec.angle())
            else:
                mixed = torch.where(band, spec_p, spec)
            out = torch.fft.ifft2(torch.fft.ifftshift(mixed, dim=dims), dim=dims).real
            image = torch.where(exchanged[:, None, None, None], out.to(images.dtype), images)
    return ExchangeResult(image=image, partner=partner, exchanged=exchanged)
