"""Attention: scaled_dot_product_attention as matmul, softmax, matmul."""
from __future__ import annotations

import math

import numpy as np
import torch

from t2n.errors import TranslationError
from t2n.translate.context import Value
from t2n.translate.families._common import broadcast_rank, dim_mul, operand
from t2n.translate.registry import translates

aten = torch.ops.aten


def _same_dim(a, b) -> bool:
    return a == b if isinstance(a, int) or isinstance(b, int) else a.expr == b.expr


def _causal_mask(ctx, rows, cols, dtype):
    """Additive top-left causal mask [rows, cols]: 0 where j <= i, -inf above (torch's
    is_causal convention), from the lower triangle of a [rows, cols] tile of ones. (Comparing
    two tract_core_range index vectors instead makes tract 0.23.9 give the mask a wrong shape
    when rows or cols are symbols.)"""
    one = ctx.const(np.ones((1, 1), dtype=np.float32), "causal_one")
    ones = ctx.op("tile", one, repeats=[rows, cols], shape=(rows, cols), dtype="f32",
                  name="causal_ones")
    lower = ctx.op("tract_core_trilu", ones, upper=False, k=0, shape=(rows, cols), dtype="f32",
                   name="causal_lower")
    allowed = ctx.cast(lower, "bool")
    return _additive(ctx, allowed, dtype)


def _additive(ctx, allowed, dtype):
    """A boolean keep-mask as 0 / -inf of ``dtype``: log(1) = 0, log(0) = -inf. (tract
    0.23.9's optimiser rewrites ``select(mask, 0, -inf)`` wrongly when the mask compares two
    token-index vectors over a symbolic length, as transformers' causal masks do, and the
    scores are regrouped for grouped-query attention: the whole-sequence graph fails to load
    with "Incompatible reshape for shape [4, Broadcast([S, 2]), S]", or with a mask substituted
    by a [1, 1, 2, 1] table.)"""
    return ctx.op("log", ctx.cast(allowed, dtype), shape=allowed.shape, dtype=dtype,
                  name="attn_mask")


@translates(aten.scaled_dot_product_attention.default)
def scaled_dot_product_attention(ctx, query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, *, scale=None, enable_gqa=False):
    """scaled_dot_product_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, float dropout_p=0.0, bool is_causal=False, *, float? scale=None, bool enable_gqa=False) -> Tensor

    Written out as matmul, softmax, matmul: tract runs these faster than its fused SDPA
    operator (FlashSDPA), most of all for one-token decoding. Grouped-query attention keeps
    the key/value heads unrepeated: the query heads of a group share them as extra rows.
    """
    if dropout_p:
        raise TranslationError(f"attention dropout_p={dropout_p}",
                               "call model.eval() so that dropout is off before export")
    rank = query.rank
    if rank not in (3, 4) or key.rank != rank or value.rank != rank:
        raise TranslationError(f"attention on rank {rank} tensors",
                               "attention takes [B, S, D] or [B, H, S, D]")
    if attn_mask is not None and is_causal:
        raise TranslationError("attn_mask together with is_causal=True",
                               "torch rejects this too; pass one of them")
    out_dtype = ctx.out.dtype
    work = "f32" if (ctx.options.f32_attention and out_dtype == "f16") else out_dtype
    if rank == 4:
        key, value = _unrepeated_pair(ctx, query, key, value)
    q, k, v = (ctx.cast(operand(ctx, t, out_dtype), work) for t in (query, key, value))
    rows, cols = q.shape[-2], k.shape[-2]
    if scale is None:
        head_dim = q.shape[-1]
        if not isinstance(head_dim, int):
            raise TranslationError("a symbolic head size", "make the head size static")
        scale = 1.0 / math.sqrt(head_dim)
    mask = None
    if attn_mask is not None:
        mask = _additive(ctx, attn_mask, "f32") if attn_mask.dtype == "bool" \
            else ctx.cast(attn_mask, "f32")
    elif is_causal:
        mask = _causal_mask(ctx, rows, cols, "f32")

    score_shape = tuple(q.shape[:-1]) + (cols,)
    groups = 1
    if rank == 4 and not _same_dim(k.shape[1], q.shape[1]):
        heads, kv_heads = q.shape[1], k.shape[1]
        if not (isinstance(heads, int) and isinstance(kv_heads, int)) or heads % kv_heads:
            raise TranslationError(f"attention with {heads} query heads over {kv_heads} "
                                   "key/value heads", "make the head counts static, the query "
                                   "heads a multiple of the key/value heads")
        groups = heads // kv_heads
        # the G query heads sharing a key/value head become G x S rows of one matmul
        # ([B, H, S, D] -> [B, Hkv, G*S, D]): tract then runs Hkv matmuls of G*S rows
        # instead of H one-row matmuls over repeated keys (3x faster SmolLM2 decoding scores)
        q = _regroup(ctx, q, [kv_heads, dim_mul(groups, rows)])
    scores = ctx.op("matmul", q, k, transposeB=True, shape=q.shape[:-1] + (cols,), dtype=work,
                    name="attn_scores")
    scores = ctx.op("mul", scores, ctx.scalar(float(scale), work), shape=scores.shape,
                    dtype=work)
    # mask and softmax in f32 (as torch's kernels accumulate): tract's f16 softmax is also
    # ~30x slower than its f32 one (91 ms of a 660 ms SmolLM2 prefill)
    scores = ctx.cast(scores, "f32")
    if groups > 1:
        scores = _regroup(ctx, scores, list(score_shape[1:3]))
    if mask is not None:
        scores = ctx.op("add", scores, broadcast_rank(ctx, mask, len(score_shape)),
                        shape=score_shape, dtype="f32")
    probs = ctx.op("softmax", scores, axes=[len(score_shape) - 1], shape=score_shape,
                   dtype="f32", name="attn_probs")
    probs = ctx.cast(probs, work)
    if groups > 1:
        probs = _regroup(ctx, probs, list(q.shape[1:3]))
    out = ctx.op("matmul", probs, v, shape=probs.shape[:-1] + (v.shape[-1],), dtype=work)
    if groups > 1:
        out = _regroup(ctx, out, list(ctx.out.shape[1:3]))
    return ctx.cast(out, out_dtype)


def _regroup(ctx, x, sizes: list):
    """``x`` [B, A, R, N] reshaped to [B, sizes[0], sizes[1], N] (heads <-> grouped rows)."""
    shape = tuple(x.shape[:1]) + tuple(sizes) + tuple(x.shape[3:])
    return ctx.op("reshape", x, shape=shape, dtype=x.dtype, name=f"{x.name}_g",
                  attrs={"shape": sizes, "axis_start": 1, "axis_count": 2})


def _unrepeated_pair(ctx, query, key, value):
    """The key and value before a grouped-query repetition, when both were repeated so that
    query head h reads key/value head h // G: transformers' repeat_kv (unsqueeze at 2,
    broadcast [B, Hkv, 1, T, D] -> [B, Hkv, G, T, D], reshape to [B, Hkv*G, T, D]),
    ``repeat_interleave(G, dim=1)`` (the same three ops) or the same with a tile along the new
    axis. Any other repetition (a tile along the heads, h % Hkv) is left as it is and
    translated literally. Else ``key`` and ``value`` as given."""
    pair = (_unrepeated(ctx, key), _unrepeated(ctx, value))
    if None in pair or not _same_dim(pair[0].shape[1], pair[1].shape[1]):
        return key, value
    return pair


def _unrepeated(ctx, x):
    """``x``'s source [B, Hkv, T, D] if ``x`` [B, Hkv*G, T, D] repeats each of its heads G
    times in a row (head h is source head h // G), else None."""
    if x.shape is None or len(x.shape) != 4:
        return None
    made = _producer(ctx, x)
    if made is None or made.op != "reshape":
        return None
    spread = _producer(ctx, made.args[0])
    if spread is None or spread.op not in ("tract_core_broadcast", "tile"):
        return None
    lifted = _producer(ctx, spread.args[0])
    if lifted is None or lifted.op != "unsqueeze" or lifted.attrs.get("axes") != [2]:
        return None
    source = lifted.args[0]
    if not isinstance(source, Value) or source.shape is None or len(source.shape) != 4:
        return None
    b, kv_heads, t, d = source.shape
    heads = x.shape[1]
    if not (isinstance(kv_heads, int) and isinstance(heads, int)) or heads % kv_heads \
            or not all(_same_dim(a, c) for a, c in zip((b, t, d), (x.shape[0], *x.shape[2:]))):
        return None
    groups = heads // kv_heads
    # the repetition must be along the new axis 2 only: [B, Hkv, 1, T, D] -> [B, Hkv, G, T, D]
    if spread.op == "tile" and list(spread.attrs.get("repeats", ())) != [1, 1, groups, 1, 1]:
        return None
    if spread.op == "tract_core_broadcast":
        target = spread.attrs.get("shape")
        if target is None or len(target) != 5 or target[2] != groups or not all(
                _same_dim(a, c) for a, c in zip((b, kv_heads, t, d), (*target[:2], *target[3:]))):
            return None
    return source


def _producer(ctx, v):
    """The operation that computed ``v`` in the graph so far (None for inputs/variables)."""
    if not isinstance(v, Value):
        return None
    for op in reversed(ctx.graph.operations):
        if v.name in op.outputs:
            return op
    return None
