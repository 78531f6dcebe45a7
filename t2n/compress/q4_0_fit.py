"""Q4_0 arithmetic in torch for the calibrated methods (any device): the grid, rounding, and
the importance-weighted scale search.

A block of 32 weights ``x`` is stored as ``d`` (float16) and levels ``q`` in -8..7 (the file
keeps ``q + 8``); it decodes to ``q * d``. The levels a method stores need not be the nearest
ones (GPTQ and AutoRound choose them), so everything here returns ``(d, q)`` pairs that
``Q4_0Tensor.from_blocks`` writes as they are.

``fit_scales`` minimises the weighted error ``sum_j w_j (x_j - d q_j)^2`` of each block over
``d``: candidates spread around the signed peak in both orientations (the peak on level -8, or
on +7), each followed by least-squares refits (``d = sum w q x / sum w q^2``, then rounding
again) until they stop improving; every candidate is scored with its float16-rounded scale,
the way it will be stored. With ``w`` the input's mean square per column this is llama.cpp's
importance-matrix search, widened (both orientations, a denser grid, repeated refits).
"""
from __future__ import annotations

import torch

__all__ = ["BLOCK", "f16", "levels", "fit_scales", "weighted_error", "rtn_scales"]

BLOCK = 32
QMIN, QMAX = -8, 7


def f16(d: torch.Tensor) -> torch.Tensor:
    """``d`` rounded to the nearest float16, kept in its own dtype (the stored scale)."""
    return d.clamp(-65504, 65504).to(torch.float16).to(d.dtype)


def levels(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The nearest level in -8..7 of each value of ``x [n, 32]`` for the scales ``d [n]``
    (GGML's rounding: half up); 0 where ``d`` is 0."""
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))
    q = x * inv[:, None]
    return q.add_(0.5).floor_().clamp_(QMIN, QMAX)


def weighted_error(x, w, d, q) -> torch.Tensor:
    return (w * (x - d[:, None] * q) ** 2).sum(dim=1)


def rtn_scales(x: torch.Tensor) -> torch.Tensor:
    """GGML's rule: the signed peak lands on level -8."""
    pick = x.abs().argmax(dim=1, keepdim=True)
    return f16(x.gather(1, pick)[:, 0] / -8)


def fit_scales(x: torch.Tensor, w: torch.Tensor | None = None, *, steps: int = 8,
               spread: tuple = (0.7, 1.1), refits: int = 1, chunk: int = 1 << 14):
    """Scales and levels ``(d [n], q [n, 32] int8)`` for the blocks ``x [n, 32]`` minimising
    the error weighted by ``w``: broadcastable to ``x``, or ``[m, 32]`` with ``n`` a multiple
    of ``m`` for the blocks of a weight matrix (block ``b`` takes row ``b % m``: one row per
    32 input columns), or None (plain squared error).

    Each candidate ``d`` gives levels ``q``; the error of any scale ``s`` with those levels is
    ``C - 2 s A + s^2 B`` (``A = sum w q x``, ``B = sum w q^2``, ``C = sum w x^2``), which
    scores both the candidate and its least-squares refit ``A / B`` from the same sums."""
    x = x.float()
    periodic = w is not None and w.dim() == 2 and len(w) not in (1, len(x)) \
        and len(x) % len(w) == 0
    if w is not None and not periodic:
        w = torch.broadcast_to(w.float(), x.shape)
    out_d = torch.empty(len(x), dtype=torch.float32, device=x.device)
    out_q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    factors = torch.linspace(spread[0], spread[1], steps).tolist() if steps > 1 else [1.0]
    for start in range(0, len(x), chunk):
        xs = x[start:start + chunk].contiguous()
        if w is None:
            ws = torch.ones_like(xs)
        elif periodic:   # one weight row per block column: block b takes row b % len(w)
            rows = torch.arange(start, start + len(xs), device=x.device) % len(w)
            ws = w.float()[rows]
        else:
            ws = w[start:start + chunk].contiguous()
            # blocks whose weights are all zero (inputs never seen): plain squared error
            ws = torch.where(ws.sum(dim=1, keepdim=True) > 0, ws, torch.ones_like(ws))
        c = torch.linalg.vecdot(ws * xs, xs, dim=1)
        peak = xs.gather(1, xs.abs().argmax(dim=1, keepdim=True))[:, 0]
        # the best (error, scale, scale the levels were rounded with) of each block
        best_d = rtn_scales(xs)
        best_e, best_from = _score(xs, ws, c, best_d)[0], best_d
        for base in (peak / -8, peak / 7):
            for f in factors:
                d = f16(base * f)
                for _ in range(refits + 1):
                    e, a, b = _score(xs, ws, c, d)
                    refit = torch.where(b > 0, f16(a / b.clamp(min=1e-30)), d)
                    e_refit = c - 2 * refit * a + refit * refit * b
                    for cand, err in ((d, e), (refit, e_refit)):
                        better = err < best_e
                        best_e = torch.where(better, err, best_e)
                        best_d = torch.where(better, cand, best_d)
                        best_from = torch.where(better, d, best_from)
                    d = refit
        out_d[start:start + chunk] = best_d
        out_q[start:start + chunk] = levels(xs, best_from).to(torch.int8)
    return out_d, out_q


def _score(x, w, c, d):
    """``(error, A, B)`` of the scale ``d`` with its own nearest levels."""
    q = levels(x, d)
    wq = w * q
    a = torch.linalg.vecdot(wq, x, dim=1)
    b = torch.linalg.vecdot(wq, q, dim=1)
    return c - 2 * d * a + d * d * b, a, b
