"""Per-block scale choosers for Q4_0: swappable functions ``blocks [n, 32] -> d [n]``.

``blocks`` is float32, one row per block of 32 weights; the returned scales are float32 and
are rounded to float16 by the Q4_0 writer. Levels run from -8 to 7 times ``d``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["min_max", "signed_max", "percentile", "grid_mse"]


def _signed_max(blocks: np.ndarray) -> np.ndarray:
    pick = np.abs(blocks).argmax(axis=1)
    return np.take_along_axis(blocks, pick[:, None], axis=1)[:, 0]


def min_max(blocks: np.ndarray) -> np.ndarray:
    """``max|x| / -8``: a negative scale, so the largest positive value lands on level -8 and a
    negative peak on level +7 (7/8 of it). This is the rule torch-to-nnef's ``min_max_q4_0*``
    use, so the same registry name gives the same weights in both tools."""
    return np.abs(blocks).max(axis=1) / np.float32(-8)


def signed_max(blocks: np.ndarray) -> np.ndarray:
    """GGML's and tract's own rule: the value of largest magnitude, with its sign, lands exactly
    on level -8 (lower error than ``min_max`` on blocks whose peak is negative)."""
    return _signed_max(blocks) / np.float32(-8)


def percentile(p: float):
    """Clip each block's magnitudes at their ``p`` quantile before min-max (``max|x| / -8``)."""
    if not 0 < p <= 1:
        raise ValueError(f"percentile must be in (0, 1], got {p}")

    def scales(blocks: np.ndarray) -> np.ndarray:
        return np.quantile(np.abs(blocks), p, axis=1).astype(np.float32) / np.float32(-8)
    scales.__doc__ = f"min-max after clipping magnitudes at the {p} quantile of each block"
    return scales


def _error(blocks: np.ndarray, d: np.ndarray) -> np.ndarray:
    d16 = d.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(d16 == 0, 0, 1 / d16).astype(np.float32)
    q = np.clip(np.floor(blocks * inv[:, None] + np.float32(8.5)), 0, 15) - 8
    return ((q * d16[:, None] - blocks) ** 2).sum(axis=1)


def grid_mse(blocks: np.ndarray, shrink: tuple = (0.55, 1.0), steps: int = 24,
             chunk: int = 1 << 16) -> np.ndarray:
    """Per block, the scale of least squared error among the min-max scale, the signed-max
    scale, and ``steps`` shrinkings of the latter in both orientations (the peak on level -8,
    or on level +7): never worse than min-max or signed-max on any block."""
    out = np.empty(len(blocks), dtype=np.float32)
    factors = np.linspace(shrink[0], shrink[1], steps, dtype=np.float32)
    for start in range(0, len(blocks), chunk):
        x = blocks[start:start + chunk]
        peak = _signed_max(x)
        best_d = min_max(x)
        best_e = _error(x, best_d)
        for base in (peak / np.float32(-8), peak / np.float32(7)):
            for f in factors:
                d = base * f
                e = _error(x, d)
                better = e < best_e
                best_e = np.where(better, e, best_e)
                best_d = np.where(better, d, best_d)
        out[start:start + chunk] = best_d
    return out

