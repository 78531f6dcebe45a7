"""GPTQ in Q4_0's layout: each weight column is rounded in turn, and its rounding error is
spread over the columns not yet rounded through the inverse Hessian of the layer's inputs
(``H = 2 X^T X / n``), so the layer's output error on the calibration inputs stays small.

Q4_0 fixes the layout: symmetric levels -8..7, one float16 scale per 32 consecutive weights
along the input axis. Without act-order, a group's scale is chosen when the sweep reaches its
first column, from the group's weights as updated so far (``fit_scales`` weighted by the
Hessian's diagonal). With act-order, columns are visited by decreasing Hessian diagonal; the
groups stay the 32-column runs of the original order (static groups: Q4_0 has no index map),
their scales chosen before the sweep from the original weights. ``damp`` adds that fraction of
the mean diagonal to the diagonal; ``block_size`` columns are updated together (lazy batch).

act-order is on by default (the most important columns are rounded first, while the most
columns remain to absorb their error); it generalises better to text unlike the calibration's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from t2n.compress.blockwise import ALL, LINEAR, CommonOptions, Method, columns_of, entry
from t2n.compress.q4_0_fit import BLOCK, QMAX, QMIN, f16, fit_scales
from t2n.compress.registry import BUILTIN
from t2n.errors import CompressionError

__all__ = ["gptq_q4_0_weight", "gptq_layer", "observe_hessian", "Gptq", "GptqOptions"]


def _group_scales(w: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    """Scales ``[rows]`` of one 32-column group ``w [rows, 32]``."""
    d, _ = fit_scales(w, diag[None, :])
    return d


def gptq_q4_0_weight(weight: torch.Tensor, hessian: torch.Tensor, *, damp: float = 0.01,
                     block_size: int = 128, act_order: bool = False):
    """``(d [rows * k/32], q [rows * k/32, 32])`` for ``weight [rows, k]`` (k a multiple of
    32) and the Hessian ``[k, k]`` of its inputs."""
    w = weight.detach().float().clone()
    rows, k = w.shape
    if k % BLOCK:
        raise ValueError(f"GPTQ in Q4_0 needs k a multiple of {BLOCK}, got {k}")
    h = hessian.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    diag0 = torch.diag(h).clone()
    scales = torch.zeros(rows, k // BLOCK, device=w.device)
    if act_order:
        for g in range(k // BLOCK):
            cols = slice(g * BLOCK, (g + 1) * BLOCK)
            scales[:, g] = _group_scales(w[:, cols], diag0[cols])
        perm = torch.argsort(diag0, descending=True)
    else:
        perm = torch.arange(k, device=w.device)
    if act_order:
        w, h = w[:, perm], h[perm][:, perm]
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))
    hinv = _inverse_cholesky(h)
    q_out = torch.zeros(w.shape, dtype=torch.int8, device=w.device)
    block_size = max(BLOCK, block_size // BLOCK * BLOCK)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            group = col // BLOCK
            if not act_order and col % BLOCK == 0:   # the sweep reaches a new group
                scales[:, group] = _group_scales(w1[:, i:i + BLOCK],
                                                 diag0[col:col + BLOCK])
            d = scales[:, group]
            x = w1[:, i]
            safe = torch.where(d == 0, torch.ones_like(d), d)
            q = torch.where(d == 0, torch.zeros_like(x),
                            torch.floor(x / safe + 0.5).clamp_(QMIN, QMAX))
            q_out[:, i1 + i] = q.to(torch.int8)
            e = (x - q * d) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if act_order:
        q = torch.empty_like(q_out)
        q[:, perm] = q_out
        q_out = q
    return f16(scales).reshape(-1), q_out.reshape(-1, BLOCK)


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor of ``h``'s inverse, adding damping until ``h`` factors."""
    extra = 0.0
    mean = torch.mean(torch.diag(h))
    for _ in range(8):
        try:
            lower = torch.linalg.cholesky(h + extra * mean * torch.eye(len(h), device=h.device))
            inv = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(inv, upper=True)
        except torch.linalg.LinAlgError:
            extra = 0.01 if extra == 0 else extra * 4
    raise ValueError("the layer's input Hessian is not positive definite even with damping")


@dataclass(frozen=True)
class GptqOptions(CommonOptions):
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.damp, (int, float)) or not 0 < self.damp < 1:
            raise CompressionError(f"option damp={self.damp!r}", "give a fraction in (0, 1), "
                                   "e.g. 0.01")
        if not isinstance(self.block_size, int) or self.block_size < BLOCK:
            raise CompressionError(f"option block_size={self.block_size!r}",
                                   f"give a multiple of {BLOCK}, e.g. 128")


class Gptq(Method):
    """Observes ``H = X^T X`` of each layer's inputs; quantizes with ``gptq_q4_0_weight``."""

    name = "gptq"

    def observe(self, stats, name, module, x):
        observe_hessian(stats, name, module, x)

    def quantize_layer(self, name, module, weight, stat):
        o = self.options
        return gptq_layer(weight, stat, damp=o.damp, block_size=o.block_size,
                          act_order=o.act_order)


def observe_hessian(stats: dict, name: str, module, x: torch.Tensor) -> None:
    """Accumulate ``X^T X`` of layer ``name``'s inputs (its columns) in ``stats[name]``."""
    rows = columns_of(module, x.detach()).float()
    entry_ = stats.setdefault(name, {"h": 0, "n": 0})
    entry_["h"] = entry_["h"] + rows.T @ rows
    entry_["n"] += len(rows)


def gptq_layer(weight: torch.Tensor, stat, **options):
    """GPTQ of ``weight`` from what ``observe_hessian`` gathered (None: never observed, so
    plain scale search)."""
    if stat is None:
        return fit_scales(weight.reshape(-1, BLOCK))
    return gptq_q4_0_weight(weight, stat["h"] / max(stat["n"], 1), **options)


BUILTIN.update({
    "gptq_q4_0": entry(Gptq, GptqOptions, LINEAR,
                       "Q4_0 on Linear by GPTQ (rounding errors compensated through the inputs' "
                       "Hessian)"),
    "gptq_q4_0_all": entry(Gptq, GptqOptions, ALL,
                           "Q4_0 on Linear, Embedding, Conv1d, Conv2d by GPTQ (tied weights "
                           "through their Linear)"),
})
