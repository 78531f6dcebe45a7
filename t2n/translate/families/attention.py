"""Attention: scaled_dot_product_attention onto tract's own SDPA operator."""
from __future__ import annotations

import math

import torch

from t2n.errors import TranslationError
from t2n.translate.families._common import broadcast_rank, operand
from t2n.translate.registry import translates

aten = torch.ops.aten


def _same_dim(a, b) -> bool:
    return a == b if isinstance(a, int) or isinstance(b, int) else a.expr == b.expr


def _causal_mask(ctx, rows, cols, dtype):
    """Additive top-left causal mask [rows, cols]: 0 where j <= i, -inf above (torch's
    is_causal convention; tract's own causal flag aligns bottom-right)."""
    i = ctx.op("tract_core_range", start=0, end=rows, step=1, shape=(rows,), dtype="i64",
               name="causal_rows")
    j = ctx.op("tract_core_range", start=0, end=cols, step=1, shape=(cols,), dtype="i64",
               name="causal_cols")
    i = ctx.op("unsqueeze", i, axes=[1], shape=(rows, 1), dtype="i64")
    j = ctx.op("unsqueeze", j, axes=[0], shape=(1, cols), dtype="i64")
    allowed = ctx.op("le", j, i, shape=(rows, cols), dtype="bool")
    return _additive(ctx, allowed, dtype)


def _additive(ctx, allowed, dtype):
    """A boolean keep-mask as 0 / -inf of ``dtype``."""
    zero = operand(ctx, 0.0, dtype)
    minus_inf = ctx.scalar(-math.inf, dtype)
    return ctx.op("select", allowed, zero, minus_inf, shape=allowed.shape, dtype=dtype,
                  name="attn_mask")


@translates(aten.scaled_dot_product_attention.default)
def scaled_dot_product_attention(ctx, query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, *, scale=None, enable_gqa=False):
    """scaled_dot_product_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, float dropout_p=0.0, bool is_causal=False, *, float? scale=None, bool enable_gqa=False) -> Tensor"""
    if dropout_p:
        raise TranslationError(f"attention dropout_p={dropout_p}",
                               "call model.eval() so that dropout is off before export")
    rank = query.rank
    if rank not in (3, 4) or key.rank != rank or value.rank != rank:
        raise TranslationError(f"attention on rank {rank} tensors",
                               "tract's SDPA takes [B, S, D] or [B, H, S, D]")
    out_dtype = ctx.out.dtype
    work = "f32" if (ctx.options.f32_attention and out_dtype == "f16") else out_dtype
    acc = "f32" if work in ("f16", "f32") else work
    q, k, v = (ctx.cast(operand(ctx, t, out_dtype), work) for t in (query, key, value))
    if rank == 4 and k.shape[1] != q.shape[1] and not isinstance(k.shape[1], int):
        raise TranslationError("a symbolic number of heads", "make the head count static")
    rows, cols = q.shape[-2], k.shape[-2]
    mask = None
    if attn_mask is not None:
        if attn_mask.dtype == "bool":
            mask = _additive(ctx, attn_mask, work)
        else:
            mask = ctx.cast(attn_mask, work)
        if is_causal:
            raise TranslationError("attn_mask together with is_causal=True",
                                   "torch rejects this too; pass one of them")
    causal_flag = False
    if is_causal:
        if _same_dim(rows, cols):
            causal_flag = True
        else:
            mask = _causal_mask(ctx, rows, cols, work)
    if mask is not None:
        mask = broadcast_rank(ctx, mask, rank)  # tract wants the mask with q's rank
        if not (_same_dim(mask.shape[-2], rows) and _same_dim(mask.shape[-1], cols)):
            # tract's flash kernel reads the mask as [.., rows, cols]: no broadcast there
            full = tuple(mask.shape[:-2]) + (rows, cols)
            mask = ctx.op("tract_core_broadcast", mask, attrs={"shape": list(full)},
                          shape=full, dtype=work, name="attn_mask_full")
    attrs = {"datum_type": work, "acc_datum_type": acc, "is_causal": causal_flag}
    if scale is not None:
        attrs["scale"] = float(scale)
    else:
        head_dim = q.shape[-1]
        if not isinstance(head_dim, int):
            raise TranslationError("a symbolic head size", "make the head size static")
        attrs["scale"] = 1.0 / math.sqrt(head_dim)
    ctx.registry("tract_transformers")
    args = [q, k, v] + ([mask] if mask is not None else [])
    if work == out_dtype:
        return ctx.op("tract_transformers_sdpa", *args, **attrs)
    out = ctx.op("tract_transformers_sdpa", *args, **attrs, shape=ctx.out.shape, dtype=work)
    return ctx.cast(out, out_dtype)
