"""Linear layers and matrix products."""
from __future__ import annotations

import numpy as np

from t2n.errors import TranslationError
from t2n.translate.context import Value
from t2n.translate.families._common import operand
from t2n.translate.registry import translates

aten = __import__("torch").ops.aten


def _unsqueeze_to(ctx, x, rank: int):
    """Add leading axes to ``x`` until it has ``rank`` (tract's matmul wants equal ranks)."""
    if x.rank >= rank:
        return x
    n = rank - x.rank
    return ctx.op("unsqueeze", x, axes=list(range(n)),
                  shape=(1,) * n + tuple(x.shape), dtype=x.dtype, name=f"{x.name}_r{rank}")


def _matmul(ctx, a, b, transpose_b=False, dtype=None):
    """Batched a @ b with torch broadcasting of leading axes; returns the product."""
    dtype = dtype or ctx.out.dtype
    a, b = operand(ctx, a, dtype), operand(ctx, b, dtype)
    if a.rank == 1 or b.rank == 1:
        raise TranslationError("internal: 1-D operand reached _matmul", "report this")
    rank = max(a.rank, b.rank)
    a, b = _unsqueeze_to(ctx, a, rank), _unsqueeze_to(ctx, b, rank)
    return a, b, {"transposeB": True} if transpose_b else {}


@translates(aten.linear.default)
def linear(ctx, input, weight, bias=None):
    """linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor"""
    dtype = ctx.out.dtype
    x = operand(ctx, input, dtype)
    if x.rank == 1:
        x = ctx.op("unsqueeze", x, axes=[0], shape=(1,) + x.shape, dtype=dtype)
        y = linear_nd(ctx, x, weight, bias, out_shape=(1,) + tuple(ctx.out.shape))
        return ctx.op("squeeze", y, axes=[0])
    extra = list(range(x.rank - 3)) if x.rank > 3 else []
    if extra and all(x.shape[i] == 1 for i in extra):
        # leading axes of size 1 ([1, 1, S, K], latent attention's shared key) are dropped
        # around the matmul: tract 0.23.9's split of an attention product over a concatenated
        # key gets the ranks wrong when it reaches back into a rank-4 weight product
        x = ctx.op("squeeze", x, axes=extra, shape=tuple(x.shape[len(extra):]), dtype=dtype)
        y = linear_nd(ctx, x, weight, bias, out_shape=tuple(ctx.out.shape[len(extra):]))
        return ctx.op("unsqueeze", y, axes=extra)
    return linear_nd(ctx, x, weight, bias)


# tract 0.23.9 packs a constant matmul weight once, at load, only if the weight feeds nothing
# else or its packed copy fits a 4 MiB budget; slices of a constant are exempt. A weight shared
# with an embedding lookup (a tied lm_head) is otherwise packed again at every run: on
# SmolLM2-135M that took 34 ms of a 60 ms decoding step. Such a weight goes to its matmul in
# row pieces, each packed once when tract loads the bundle.
PACK_BUDGET = 4 << 20
_ITEM_BYTES = {"f16": 2, "f32": 4}


def _used_before(ctx, v: Value) -> bool:
    """Whether an operation already emitted reads ``v``."""
    def reads(arg):
        if isinstance(arg, (list, tuple)):
            return any(reads(a) for a in arg)
        return isinstance(arg, Value) and arg.name == v.name
    return any(reads(op.args) for op in ctx.graph.operations)


def _row_pieces(ctx, weight, dtype) -> list[tuple[int, int]] | None:
    """Row ranges cutting a shared stored float weight [N, K] into pieces that fit
    PACK_BUDGET, or None when tract packs the weight once as it is."""
    if not isinstance(weight, Value) or weight.dtype != dtype or weight.rank != 2 \
            or ctx.storage(weight) not in _ITEM_BYTES:
        return None
    n, k = weight.shape
    row_bytes = k * _ITEM_BYTES[dtype] if isinstance(k, int) else 0
    if not isinstance(n, int) or not row_bytes or n * row_bytes <= PACK_BUDGET \
            or not _used_before(ctx, weight):
        return None
    rows = int(PACK_BUDGET * 0.9) // row_bytes // 16 * 16  # whole kernel panels, some slack
    if rows < 16:
        return None
    per_piece = -(-n // -(-n // rows))  # spread the rows evenly over the pieces ...
    rows = -(-per_piece // 16) * 16      # ... in whole panels
    return [(start, min(n, start + rows)) for start in range(0, n, rows)]


def _linear_in_pieces(ctx, x, weight, pieces, out_shape):
    """x @ weight.T as one matmul per row range of the weight, concatenated on the last axis."""
    dtype = x.dtype
    outs = []
    for start, end in pieces:
        w = ctx.op("slice", weight, axes=[0], begin=[start], end=[end],
                   shape=(end - start, weight.shape[1]), dtype=dtype,
                   name=f"{weight.name}_rows{start}")
        xa, w, attrs = _matmul(ctx, x, w, transpose_b=True, dtype=dtype)
        outs.append(ctx.op("matmul", xa, w, **attrs, shape=tuple(out_shape[:-1])
                           + (end - start,), dtype=dtype))
    return ctx.op("concat", outs, axis=len(out_shape) - 1, shape=out_shape, dtype=dtype)


# tract 0.23.9 folds a computation on constants into a constant, at load, only when its result
# holds at most 2^20 values: an int8 weight dequantized in the graph (t2n.translate.weights) of
# [1024, 1024] is folded, one of [1024, 1056] is dequantized again at every run (1.2 ms instead
# of 0.07 ms at one token; [2048, 2048]: 12 ms instead of 0.23). Such a weight goes to its
# matmul in row pieces of at most 2^20 values, each folded when tract loads the bundle.
FOLD_VALUES = 1 << 20


def _fold_pieces(ctx, weight, dtype) -> list[tuple[int, int]] | None:
    """Row ranges of at most FOLD_VALUES values of an int8-rows weight [N, K] above that
    size, or None."""
    if not isinstance(weight, Value) or weight.name not in ctx.int8_rows \
            or weight.dtype != dtype or weight.rank != 2:
        return None
    n, k = weight.shape
    if not isinstance(n, int) or not isinstance(k, int) or n * k <= FOLD_VALUES \
            or k > FOLD_VALUES:
        return None
    rows = FOLD_VALUES // k
    count = -(-n // rows)
    rows = -(-n // count)   # spread the rows evenly over the pieces
    return [(start, min(n, start + rows)) for start in range(0, n, rows)]


def linear_nd(ctx, x, weight, bias, out_shape=None):
    dtype = x.dtype
    pieces = _row_pieces(ctx, weight, dtype) or _fold_pieces(ctx, weight, dtype)
    if pieces is not None:
        full = tuple(out_shape or ctx.out.shape)
        y = _linear_in_pieces(ctx, x, weight, pieces, full)
        if bias is None:
            return y
        b = _unsqueeze_to(ctx, operand(ctx, bias, dtype), y.rank)
        return ctx.op("add", y, b, shape=full, dtype=dtype)
    w = operand(ctx, weight, dtype)
    x, w, attrs = _matmul(ctx, x, w, transpose_b=True, dtype=dtype)
    if bias is None:
        return ctx.op("matmul", x, w, **attrs, **({"shape": out_shape, "dtype": dtype}
                                                  if out_shape else {}))
    y = ctx.op("matmul", x, w, **attrs, shape=out_shape or ctx.out.shape, dtype=dtype)
    b = _unsqueeze_to(ctx, operand(ctx, bias, dtype), y.rank)
    return ctx.op("add", y, b, **({"shape": out_shape, "dtype": dtype} if out_shape else {}))


@translates(aten.matmul.default, aten.mm.default, aten.bmm.default)
def matmul(ctx, self, other):
    """matmul(Tensor self, Tensor other) -> Tensor"""
    dtype = ctx.out.dtype
    a, b = operand(ctx, self, dtype), operand(ctx, other, dtype)
    squeeze = []
    if a.rank == 1:
        a = ctx.op("unsqueeze", a, axes=[0], shape=(1,) + a.shape, dtype=dtype)
        squeeze.append(-2)
    if b.rank == 1:
        b = ctx.op("unsqueeze", b, axes=[1], shape=b.shape + (1,), dtype=dtype)
        squeeze.append(-1)
    a, b, attrs = _matmul(ctx, a, b, dtype=dtype)
    if not squeeze:
        return ctx.op("matmul", a, b, **attrs)
    y = ctx.op("matmul", a, b, **attrs, dtype=dtype)
    rank = max(a.rank, b.rank)
    return ctx.op("squeeze", y, axes=sorted(ax % rank for ax in squeeze))


@translates(aten.addmm.default)
def addmm(ctx, self, mat1, mat2, beta=1, alpha=1):
    """addmm(Tensor self, Tensor mat1, Tensor mat2, *, Scalar beta=1, Scalar alpha=1) -> Tensor"""
    dtype = ctx.out.dtype
    a, b, attrs = _matmul(ctx, mat1, mat2, dtype=dtype)
    y = ctx.op("matmul", a, b, **attrs, shape=ctx.out.shape, dtype=dtype)
    if alpha != 1:
        y = ctx.op("mul", y, operand(ctx, alpha, dtype), **ctx.like(y))
    c = operand(ctx, self, dtype)
    if beta != 1:
        c = ctx.op("mul", c, operand(ctx, beta, dtype), **ctx.like(c))
    return ctx.op("add", y, _unsqueeze_to(ctx, c, 2))


@translates(aten.baddbmm.default)
def baddbmm(ctx, self, batch1, batch2, beta=1, alpha=1):
    """baddbmm(Tensor self, Tensor batch1, Tensor batch2, *, Scalar beta=1, Scalar alpha=1) -> Tensor"""
    dtype = ctx.out.dtype
    a, b, attrs = _matmul(ctx, batch1, batch2, dtype=dtype)
    y = ctx.op("matmul", a, b, **attrs, shape=ctx.out.shape, dtype=dtype)
    if alpha != 1:
        y = ctx.op("mul", y, operand(ctx, alpha, dtype), **ctx.like(y))
    c = operand(ctx, self, dtype)
    if beta == 0:
        return ctx.op("copy", y)
    if beta != 1:
        c = ctx.op("mul", c, operand(ctx, beta, dtype), **ctx.like(c))
    return ctx.op("add", y, _unsqueeze_to(ctx, c, 3))


@translates(aten.einsum.default)
def einsum(ctx, equation, tensors, path=None):
    """einsum(str equation, Tensor[] tensors, *, int[]? path=None) -> Tensor"""
    dtype = ctx.out.dtype
    xs = [operand(ctx, t, dtype) for t in tensors]
    expr = equation.replace(" ", "")
    if "..." in expr:
        expr = _spelled_out(expr, [x.rank for x in xs])
    if "->" not in expr:  # implicit output: letters seen once, in alphabetical order
        letters = expr.replace(",", "")
        expr += "->" + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return ctx.op("tract_core_einsum", xs, expr=expr, acc=dtype if dtype != "f16" else "f32",
                  output="")


def _spelled_out(expr: str, ranks: list[int]) -> str:
    """An einsum equation with each '...' replaced by letters of its own: the axes it covers in
    each operand (rank minus the operand's letters), aligned from the right as torch
    broadcasts them; the output's '...' (or an implicit output's leading axes) gets them all."""
    inputs, arrow, output = expr.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(ranks):
        raise TranslationError(f"einsum equation {expr!r} has {len(terms)} operands for "
                               f"{len(ranks)} tensors", "fix the equation")
    spans = [rank - len(t.replace("...", "")) if "..." in t else 0
             for t, rank in zip(terms, ranks)]
    width = max(spans)
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in expr]
    if width > len(free):
        raise TranslationError(f"einsum {expr!r}: '...' covers too many axes", "spell them out")
    letters = "".join(free[:width])
    terms = [t.replace("...", letters[width - n:]) for t, n in zip(terms, spans)]
    if arrow:
        return ",".join(terms) + "->" + output.replace("...", letters)
    singles = sorted(c for c in set("".join(terms)) if "".join(terms).count(c) == 1 and c not in letters)
    return ",".join(terms) + "->" + letters + "".join(singles)


@translates(aten._cdist_forward.default)
def cdist(ctx, x1, x2, p, compute_mode=None):
    """_cdist_forward(Tensor x1, Tensor x2, float p, int? compute_mode) -> Tensor"""
    return _distances(ctx, x1, x2, p, ctx.out.shape)


@translates(aten._pdist_forward.default)
def pdist(ctx, self, p=2.0):
    """_pdist_forward(Tensor self, float p=2) -> Tensor

    The distances of every pair of rows i < j, row-major: the full [N, N] distance matrix,
    flattened, gathered at its upper triangle (static N)."""
    n = self.shape[0]
    if not isinstance(n, int) or n < 1:
        raise TranslationError(f"pdist of {n} rows", "give a static number of rows")
    full = _distances(ctx, self, self, p, (n, n))
    flat = ctx.op("reshape", full, attrs={"shape": [n * n]}, shape=(n * n,), dtype=full.dtype)
    rows, cols = np.triu_indices(n, 1)
    return ctx.op("tract_core_gather", flat, ctx.const((rows * n + cols).astype(np.int64),
                                                       "pairs"), axis=0)


def _distances(ctx, x1, x2, p, out_shape):
    dtype = ctx.out.dtype
    a, b = operand(ctx, x1, dtype), operand(ctx, x2, dtype)
    rank = max(a.rank, b.rank)
    a, b = _unsqueeze_to(ctx, a, rank), _unsqueeze_to(ctx, b, rank)
    # every pair's difference [.., P, R, M], then its p-norm along M (exact, not torch's
    # matrix-product shortcut for p = 2, which rounds differently)
    ea = ctx.op("unsqueeze", a, axes=[rank - 1], **ctx.like(a, shape=a.shape[:-1] + (1,) +
                                                           a.shape[-1:]))
    eb = ctx.op("unsqueeze", b, axes=[rank - 2], **ctx.like(b, shape=b.shape[:-2] + (1,) +
                                                           b.shape[-2:]))
    lead = tuple(x if x != 1 else y for x, y in zip(a.shape[:-2], b.shape[:-2]))
    pairs = lead + (a.shape[-2], b.shape[-2], a.shape[-1])
    diff = ctx.op("abs", ctx.op("sub", ea, eb, shape=pairs, dtype=dtype), shape=pairs,
                  dtype=dtype)
    summed = pairs[:-1] + (1,)
    keep = {"shape": summed, "dtype": dtype}
    if p == 0:
        nonzero = ctx.op("ne", diff, operand(ctx, 0.0, dtype), shape=pairs, dtype="bool")
        y = ctx.op("sum_reduce", ctx.cast(nonzero, dtype), axes=[rank], **keep)
    elif p == 1:
        y = ctx.op("sum_reduce", diff, axes=[rank], **keep)
    elif p == 2:
        y = ctx.op("sqrt", ctx.op("sum_reduce", ctx.op("sqr", diff, shape=pairs, dtype=dtype),
                                  axes=[rank], **keep), **keep)
    elif p == float("inf"):
        y = ctx.op("max_reduce", diff, axes=[rank], **keep)
    elif p > 0:
        powered = ctx.op("pow", diff, operand(ctx, float(p), dtype), shape=pairs, dtype=dtype)
        y = ctx.op("pow", ctx.op("sum_reduce", powered, axes=[rank], **keep),
                   operand(ctx, 1.0 / p, dtype), **keep)
    else:
        raise TranslationError(f"cdist with p={p}", "use p >= 0")
    return ctx.op("squeeze", y, axes=[rank], shape=tuple(out_shape), dtype=dtype)
