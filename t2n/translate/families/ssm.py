"""State-space models: ``t2n::selective_scan`` (t2n/ssm.py) as one tract loop over the tokens.

The scan becomes one ``tract_core_scan`` along the token axis whose body (the static fragment
``t2n/nnef/fragments/t2n_selective_scan_cell.nnef``) does one token: the decay
``exp(dt * A)``, the state update and the contraction of the state with ``C``. Every operand
is brought to rank 5, [batch, tokens, groups, rows, N], so the body is the same for Mamba
(one group, a row per channel) and Mamba-2 (groups of heads, a row per head dimension); the
token axis may stay symbolic.
"""
from __future__ import annotations

import torch

import t2n.ssm  # noqa: F401  (defines torch.ops.t2n.selective_scan)
from t2n.errors import TranslationError
from t2n.translate.context import Value
from t2n.translate.families._common import operand
from t2n.translate.registry import translates

CELL = "t2n_selective_scan_cell"


@translates(torch.ops.t2n.selective_scan.default)
def selective_scan(ctx, x, dt, A, B, C, h0):
    """selective_scan(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor h0) -> (Tensor, Tensor)"""  # noqa: E501
    if not x.is_float:
        raise TranslationError(f"selective scan on a {x.dtype} input", "feed a float tensor")
    dtype = x.dtype
    x, dt, A, B, C, h0 = (operand(ctx, v, dtype) for v in (x, dt, A, B, C, h0))
    batch, length, groups, rows = x.shape
    state = tuple(h0.shape)                                     # [b, G, R, N]
    hint = ctx.node.name

    def unsqueeze(v, axes, shape, suffix):
        return ctx.op("unsqueeze", v, axes=axes, shape=shape, dtype=dtype,
                      name=f"{hint}_{suffix}")
    x5 = unsqueeze(x, [4], (batch, length, groups, rows, 1), "x")
    dt5 = unsqueeze(dt, [4], (batch, length, groups, rows, 1), "dt")
    b5 = unsqueeze(B, [3], (batch, length, groups, 1, B.shape[3]), "b")
    c5 = unsqueeze(C, [3], (batch, length, groups, 1, C.shape[3]), "c")
    a5 = unsqueeze(A, [0, 1], (1, 1) + tuple(A.shape), "a")
    h5 = unsqueeze(h0, [1], (state[0], 1) + state[1:], "h0")
    ctx.fragment(CELL)
    y5, last = ctx.op(
        "tract_core_scan", body=CELL,
        scan=[("x", x5, 1, 1), ("dt", dt5, 1, 1), ("b", b5, 1, 1), ("c", c5, 1, 1)],
        full=[("a", a5)],
        state=[("h", h5, "h_out")],
        output=[("y", "full", 1, 1), ("h_out", "last", 1, 1)],
        outputs=2, name=hint)
    y5 = Value(y5.name, (batch, length, groups, rows, 1), dtype)
    last = Value(last.name, (state[0], 1) + state[1:], dtype)
    y = ctx.op("squeeze", y5, axes=[4], shape=(batch, length, groups, rows), dtype=dtype,
               name=f"{hint}_y")
    h = ctx.op("squeeze", last, axes=[1], shape=state, dtype=dtype, name=f"{hint}_h")
    return y, h
