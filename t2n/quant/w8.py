"""8-bit weights with float activations: symmetric int8 levels, one float32 scale per row.

A weight ``[m, ...]`` (rows first: a Linear's output features, an Embedding's tokens, a Conv's
output channels) is stored as levels ``q`` (int8, the weight's shape, -127..127) and scales
``s`` (float32 ``[m]``)::

    value[r, ...] = q[r, ...] * s[r]          s[r] = max|w[r, ...]| / 127 (float32)
                                              q = round(w / s[r]), ties to even, clamped

and an all-zero row gets ``s = 0`` and ``q = 0``.

In the bundle (``t2n.translate.weights``): the levels as a plain int8 ``.dat`` (item type 4,
8 bits), the scales as a float32 ``.dat`` of shape ``[m, 1, ...]`` (the label ``NAME.scale``),
and the dequantization in the graph, ``mul(tract_core_cast(q, to = "f32"), s)``, cast to the
model's float type when it is not f32. tract folds that into a float constant when it loads the
bundle (the .dat files hold 1 byte per value; memory at run time holds the float weight); an
embedding table is instead gathered as int8 rows and only the rows looked up are dequantized.
torch computes the same float32 products (``W8Tensor.dequantize``), so tract and torch agree.
"""
from __future__ import annotations

import numpy as np
import torch

from t2n.quant.packed import PackedTensor

__all__ = ["LEVELS", "W8Tensor"]

LEVELS = 127


def _check(levels: torch.Tensor, scales: torch.Tensor) -> None:
    if levels.dtype != torch.int8 or levels.dim() < 2:
        raise ValueError(f"W8Tensor levels are int8 of rank >= 2 (rows first), got "
                         f"{levels.dtype} {tuple(levels.shape)}")
    if scales.dtype != torch.float32 or tuple(scales.shape) != (levels.shape[0],):
        raise ValueError(f"W8Tensor needs float32 scales [{levels.shape[0]}] (one per row), got "
                         f"{scales.dtype} {tuple(scales.shape)}")


class W8Tensor(PackedTensor):
    """A read-only float tensor stored as int8 levels with one float32 scale per row,
    dequantized whenever an op uses it (see ``t2n.quant.packed``). Put it in a module with
    ``nn.Parameter(W8Tensor.from_float(w), requires_grad=False)``."""

    INNER = ("levels", "scales")
    levels: torch.Tensor
    scales: torch.Tensor

    @staticmethod
    def __new__(cls, levels: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype):
        return cls._wrap(levels.shape, dtype, levels.device)

    def __init__(self, levels: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype):
        _check(levels, scales)
        if not dtype.is_floating_point:
            raise TypeError(f"W8Tensor stands for a float tensor, not {dtype}")
        self.levels, self.scales = levels, scales

    @classmethod
    def _make(cls, inner: dict, shape, dtype: torch.dtype) -> W8Tensor:
        return cls(inner["levels"], inner["scales"], dtype)

    @classmethod
    def from_float(cls, tensor: torch.Tensor) -> W8Tensor:
        """Symmetric per-row quantization: ``s = max|row| / 127``, ``q = round(w / s)``."""
        w = tensor.detach()
        if not w.is_floating_point():
            raise TypeError(f"W8Tensor quantizes float weights, got a {w.dtype} tensor")
        if w.dim() < 2:
            raise ValueError(f"W8Tensor needs a weight of rank >= 2 (rows first), got shape "
                             f"{tuple(w.shape)}")
        finite = torch.isfinite(w)
        if not finite.all():
            flat = int((~finite).reshape(-1).nonzero()[0])
            at = [int(i) for i in np.unravel_index(flat, tuple(w.shape))]
            raise ValueError(f"W8Tensor cannot quantize non-finite values: "
                             f"{int((~finite).sum())} NaN/inf in the weight, the first "
                             f"{float(w.reshape(-1)[flat])} at index {at}")
        rows = w.float().reshape(w.shape[0], -1)
        scales = rows.abs().amax(dim=1) / LEVELS
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        q = torch.round(rows / safe[:, None]).clamp_(-LEVELS, LEVELS)
        q[scales == 0] = 0
        return cls(q.to(torch.int8).reshape(w.shape).contiguous(), scales.contiguous(),
                   tensor.dtype)

    @classmethod
    def from_levels(cls, levels, scales, dtype: torch.dtype = torch.float32) -> W8Tensor:
        """The levels (int8, -127..127) and per-row float32 scales as given."""
        levels = torch.as_tensor(levels)
        scales = torch.as_tensor(scales)
        _check(levels, scales)
        if levels.numel() and int(levels.min()) < -LEVELS:
            raise ValueError(f"W8Tensor levels run from -{LEVELS} to {LEVELS}")
        if not torch.isfinite(scales).all() or bool((scales < 0).any()):
            raise ValueError("W8Tensor scales must be finite and >= 0")
        return cls(levels, scales, dtype)

    def _scales_like(self, rank: int) -> torch.Tensor:
        return self.scales.reshape(-1, *([1] * (rank - 1)))

    def dequantize(self) -> torch.Tensor:
        """The plain float tensor: ``q * s`` in float32, then one rounding to ``dtype``."""
        return (self.levels.float() * self._scales_like(self.levels.dim())).to(self.dtype)

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """``embedding(table, indices)``, dequantizing only the rows looked up."""
        return (self.levels[indices].float() * self.scales[indices].unsqueeze(-1)).to(self.dtype)

    @property
    def scale_shape(self) -> tuple:
        """The shape of the scales in the bundle: ``[rows, 1, ...]`` (broadcasts on the rows)."""
        return (self.shape[0],) + (1,) * (self.dim() - 1)
