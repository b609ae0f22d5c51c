"""Fused multi-head attention of the text-guided networks (``docs/methods.md`` §2, §3 and §4).

:class:`FusedMultiheadAttention` is a batch-first ``nn.MultiheadAttention`` whose ``need_weights=False`` call (the
only one the networks make) computes what MHA computes -- MHA also ends in ``scaled_dot_product_attention`` there --
with fewer ops:

* batch-first throughout: MHA transposes its inputs to sequence-first, so every in-projection reads a
  non-contiguous tensor (a copy and four more ops per ``Linear``) and the output is permuted back;
* packed in-projections: one ``Linear`` for q, k and v when they share the input, one for k and v of a
  cross-attention (MMI-UNet, TextMoE) and one for q and k when they share the input but v does not
  (GuideDecoder's self-attention, which MHA projects with three);
* no per-call mask work: :func:`key_padding_bias` turns a boolean key-padding mask into the float mask MHA builds
  from it on every call (0 for kept keys, ``-inf`` for ignored ones); the networks build it once per forward of the
  whole network and pass it to every layer, where it is added to the scores as it is.

It adds no parameter: the parameters, their initialisation, their order and their state-dict keys
(``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``) are MHA's, so checkpoints, :mod:`textseg.models.convert` and
code that looks for ``nn.MultiheadAttention`` layers (for example to set their ``dropout``) keep working. Attention
dropout (``dropout``, read at call time) is applied only in training mode, by ``scaled_dot_product_attention``'s
``dropout_p``, as MHA does, on the same random stream. Any other call (``need_weights=True``, an ``attn_mask``,
``is_causal``) runs MHA's own ``forward``. ``tests/models/test_attention.py`` checks the equality with MHA.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textseg.errors import DataError
from textseg.ops.asserts import assert_on_device

__all__ = ["FusedMultiheadAttention", "key_padding_bias"]


def key_padding_bias(padding_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Turn a boolean key-padding mask into its additive float form ``[B, S]`` (0 = attend, ``-inf`` = ignore).

    This is the float mask ``nn.MultiheadAttention`` builds from a boolean ``key_padding_mask`` on every call
    (``docs/methods.md`` §1.2), and a valid float ``key_padding_mask`` of MHA itself; the networks build it once per
    forward and hand it to all their attention layers.

    Args:
        padding_mask: ``[B, S]`` bool, ``True`` = padded key (ignored); or a float mask (returned unchanged); or
            ``None``.
        dtype: Floating-point dtype of the result.

    Returns:
        The ``[B, S]`` float mask, or ``None``.

    Raises:
        DataError: If the mask is not ``[B, S]``.
    """
    if padding_mask is None:
        return None
    if padding_mask.ndim != 2 or not (padding_mask.dtype == torch.bool or padding_mask.is_floating_point()):
        raise DataError(
            f"a key-padding mask must be [B, S] bool or float, got {tuple(padding_mask.shape)} {padding_mask.dtype}"
        )
    if padding_mask.is_floating_point():
        return padding_mask
    zeros = torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device)
    return zeros.masked_fill_(padding_mask, float("-inf"))


def text_key_bias(mask: Tensor, dtype: torch.dtype, owner: str) -> Tensor:
    """The key-padding bias of a text mask ``[B, L]`` (``True`` or nonzero = real token), built once per forward.

    Every row must hold a real token (a row of ``-inf`` would give NaN attention); checked with a device assert, no
    host read.

    Args:
        mask: The text encoder's mask (:class:`~textseg.models.types.TextFeatures`).
        dtype: Floating-point dtype of the bias (the text states').
        owner: The network, for the message.

    Returns:
        ``[B, L]`` float bias: 0 at real tokens, ``-inf`` at padding.
    """
    valid = mask if mask.dtype == torch.bool else mask != 0
    assert_on_device(valid.any(dim=1).all(), f"{owner}: text mask has a batch row without a real token")
    return cast(Tensor, key_padding_bias(~valid, dtype))


class FusedMultiheadAttention(nn.MultiheadAttention):
    """Batch-first ``nn.MultiheadAttention`` whose ``need_weights=False`` path is fused (see the module doc).

    Called like MHA. With ``need_weights=False``, no ``attn_mask`` and ``is_causal=False`` (how the networks call
    it) the fused path below runs; any other call is MHA's own ``forward``.

    Args:
        embed_dim: Token width E (queries, keys and values).
        num_heads: Heads H; must divide ``embed_dim``.
        dropout: Dropout probability of the attention weights (training mode only).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        if embed_dim % num_heads:
            raise DataError(f"attention width {embed_dim} is not divisible by {num_heads} heads")
        super().__init__(embed_dim, num_heads, dropout=dropout, batch_first=True)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` ``[B, N, E]`` to ``key`` / ``value`` ``[B, S, E]``; MHA's arguments and result.

        Pass the same tensor object to share a projection: ``query is key is value`` (self-attention), ``key is
        value`` (cross-attention) or ``query is key`` (shared queries and keys, other values).

        Args:
            query: ``[B, N, E]``.
            key: ``[B, S, E]``.
            value: ``[B, S, E]``.
            key_padding_mask: ``[B, S]`` bool (``True`` = ignore this key) or float (added to the scores, as
                :func:`key_padding_bias` builds it once per network forward), or ``None``.
            need_weights: Also return the attention weights (MHA's path).
            attn_mask: MHA's ``attn_mask`` (MHA's path).
            average_attn_weights: MHA's argument (with ``need_weights``).
            is_causal: MHA's argument (MHA's path).

        Returns:
            ``(output [B, N, E], None)`` from the fused path; MHA's ``(output, weights)`` otherwise.
        """
        if need_weights or attn_mask is not None or is_causal or query.ndim != 3:
            return super().forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        return self._fused(query, key, value, key_padding_bias(key_padding_mask, query.dtype)), None

    def _heads(self, projected: Tensor, parts: int) -> tuple[Tensor, ...]:
        """Split ``[B, N, parts * E]`` into ``parts`` views ``[B, H, N, E / H]``.

        Unbinding the ``parts`` axis in place (then transposing each part) makes the backward one ``stack`` that
        writes the gradient of the projection in its own layout, with no copy after it.
        """
        split = projected.unflatten(-1, (parts, self.num_heads, self.head_dim)).unbind(2)
        return tuple(part.transpose(1, 2) for part in split)

    def _fused(self, query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None) -> Tensor:
        """Packed in-projections, ``scaled_dot_product_attention`` and the out-projection; ``[B, N, E]``."""
        width = self.embed_dim
        weight, b = self.in_proj_weight, self.in_proj_bias
        if key is value and query is key:
            q, k, v = self._heads(F.linear(query, weight, b), 3)
        elif key is value:
            (w_q, w_kv), (b_q, b_kv) = weight.split([width, 2 * width]), b.split([width, 2 * width])
            (q,) = self._heads(F.linear(query, w_q, b_q), 1)
            k, v = self._heads(F.linear(key, w_kv, b_kv), 2)
        elif query is key:
            (w_qk, w_v), (b_qk, b_v) = weight.split([2 * width, width]), b.split([2 * width, width])
            q, k = self._heads(F.linear(query, w_qk, b_qk), 2)
            (v,) = self._heads(F.linear(value, w_v, b_v), 1)
        else:
            (w_q, w_k, w_v), (b_q, b_k, b_v) = weight.chunk(3), b.chunk(3)
            (q,) = self._heads(F.linear(query, w_q, b_q), 1)
            (k,) = self._heads(F.linear(key, w_k, b_k), 1)
            (v,) = self._heads(F.linear(value, w_v, b_v), 1)
        mask = None if bias is None else bias[:, None, None, :]  # broadcast over heads and queries
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out_proj(out.transpose(1, 2).flatten(2))
