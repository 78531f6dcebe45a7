"""Example inputs at a second size of every dynamic axis, with partly padded masks.

A bundle with dynamic axes promises to run at sizes it was not traced at. The verification
runs tract on the traced example and on these inputs: every symbol takes another size, and an
integer or boolean input named like a mask (``attention_mask``) keeps its first two thirds
and pads the rest along its dynamic axis, so the padding and masking paths run too.
"""
from __future__ import annotations

import math
import re

import torch

__all__ = ["MASK_NAME", "second_sizes", "traced_sizes", "resized_inputs"]

MASK_NAME = re.compile("mask", re.IGNORECASE)


def second_sizes(traced: dict[str, int], step: int = 3) -> dict[str, int]:
    """Another size per symbol: ``step`` more than traced (``step`` less when
    ``step < 0``, never below 1)."""
    return {symbol: max(1, n + step) for symbol, n in traced.items()}


def traced_sizes(tensors: list[torch.Tensor], names: list[str],
                 dynamic_axes: dict) -> dict[str, int]:
    """symbol -> its size in the example inputs (the first input that carries it)."""
    sizes: dict[str, int] = {}
    for tensor, name in zip(tensors, names):
        for axis, symbol in dynamic_axes.get(name, {}).items():
            sizes.setdefault(symbol, int(tensor.shape[axis]))
    return sizes


def resized_inputs(tensors: list[torch.Tensor], names: list[str], dynamic_axes: dict,
                   sizes: dict[str, int], seed: int = 0) -> list[torch.Tensor]:
    """``tensors`` remade with every dynamic axis at ``sizes[symbol]``; inputs without a
    dynamic axis are kept as they are."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for tensor, name in zip(tensors, names):
        axes = dynamic_axes.get(name, {})
        if not axes:
            out.append(tensor)
            continue
        shape = list(tensor.shape)
        for axis, symbol in axes.items():
            shape[axis] = sizes[symbol]
        if MASK_NAME.search(name) and not tensor.is_floating_point():
            out.append(_padded_mask(shape, max(axes), tensor.dtype))
        else:
            out.append(_like(tensor, shape, generator))
    return out


def _padded_mask(shape: list[int], axis: int, dtype: torch.dtype) -> torch.Tensor:
    """Ones, and zeros on the last third of ``axis`` (at least one position kept)."""
    mask = torch.ones(shape, dtype=torch.bool)
    keep = max(1, math.ceil(shape[axis] * 2 / 3))
    index = [slice(None)] * len(shape)
    index[axis] = slice(keep, None)
    mask[tuple(index)] = False
    return mask.to(dtype)


def _like(tensor: torch.Tensor, shape: list[int], generator) -> torch.Tensor:
    """Values of the example's kind: integers within its range (token ids stay in the
    vocabulary), floats with its mean and spread, random booleans."""
    if tensor.dtype == torch.bool:
        return torch.rand(shape, generator=generator) < 0.5
    if not tensor.is_floating_point():
        low, high = (int(tensor.min()), int(tensor.max())) if tensor.numel() else (0, 0)
        return torch.randint(low, high + 1, shape, generator=generator, dtype=tensor.dtype)
    flat = tensor.detach().float()
    mean = float(flat.mean()) if flat.numel() else 0.0
    std = float(flat.std()) if flat.numel() > 1 else 1.0
    values = torch.randn(shape, generator=generator) * (std if std > 0 else 1.0) + mean
    return values.to(tensor.dtype)
