"""Reductions (sum, mean, max, arg-max, any, var, norms, ...), top-k and sorting, cumsum.

NNEF reductions keep the reduced axes with size 1; they are squeezed when keepdim is False.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from t2n.nnef.graph import FLOAT_DTYPES, Dim
from t2n.errors import TranslationError
from t2n.translate.families._common import axis, dim_sub, is_static, operand
from t2n.translate.registry import translates

aten = __import__("torch").ops.aten


# -- helpers --------------------------------------------------------------------------------
def _axes(x, dim) -> list[int]:
    """Sorted axes named by ``dim`` (an int, a list, or None / [] for all axes)."""
    if x.rank == 0:
        return []
    if dim is None or (isinstance(dim, (list, tuple)) and not dim):
        return list(range(x.rank))
    dims = [dim] if isinstance(dim, int) else dim
    return sorted({axis(d, x.rank) for d in dims})


def _kept(x, axes) -> tuple:
    return tuple(1 if i in axes else s for i, s in enumerate(x.shape))


def _squeezed(ctx, y, axes, keepdim):
    """``y`` (reduced axes of size 1) without those axes unless ``keepdim``."""
    if keepdim or not axes:
        return y
    shape = tuple(s for i, s in enumerate(y.shape) if i not in axes)
    return ctx.op("squeeze", y, axes=axes, shape=shape, dtype=y.dtype)


def _reduce(ctx, op, x, axes, keepdim):
    """``op`` (an NNEF reduction) of ``x`` over ``axes``."""
    if not axes:
        return x
    y = ctx.op(op, x, axes=axes, shape=_kept(x, axes), dtype=x.dtype)
    return _squeezed(ctx, y, axes, keepdim)


def _count(shape, axes):
    """Number of elements over ``axes`` (an int, or a Dim when an axis is symbolic)."""
    sizes = [shape[a] for a in axes]
    static = math.prod(s for s in sizes if isinstance(s, int))
    dynamic = [s.expr for s in sizes if isinstance(s, Dim)]
    if not dynamic:
        return static
    return Dim("(" + " * ".join(dynamic + ([str(static)] if static != 1 else [])) + ")")


def _numeric(ctx, x):
    """Booleans as u8, for the reductions tract only runs on numbers."""
    return ctx.cast(x, "u8") if x.dtype == "bool" else x


def _nonzero(ctx, x):
    """``x != 0`` as a boolean tensor."""
    if x.dtype == "bool":
        return x
    return ctx.op("ne", x, operand(ctx, 0, x.dtype), **ctx.like(x, dtype="bool"))


def _int_sum(ctx, x, axes, keepdim):
    """Exact integer sum: tract's sum_reduce accumulates integers in i32, so each axis is
    summed by an i64 cumulative sum whose last element is kept."""
    for a in axes:
        size = x.shape[a]
        c = ctx.op("tract_core_cumsum", x, axis=a, exclusive=False, reverse=False,
                   **ctx.like(x))
        x = ctx.op("slice", c, axes=[a], begin=[dim_sub(size, 1)], end=[size],
                   **ctx.like(x, shape=_kept(x, [a])))
    return _squeezed(ctx, x, axes, keepdim)


def _accumulate(ctx, op, x, axes, keepdim):
    """A sum, mean or product. f16 accumulates in f32, as torch does: tract's own f16 sums
    only do so over the single innermost axis."""
    if x.dtype != "f16" or (axes == [x.rank - 1] and op != "tract_core_product_reduce"):
        return _reduce(ctx, op, x, axes, keepdim)
    return ctx.cast(_reduce(ctx, op, ctx.cast(x, "f32"), axes, keepdim), "f16")


def _sum(ctx, x, axes, keepdim):
    """Sum of ``x`` in its own dtype (floats, or i64 computed exactly)."""
    if x.dtype in FLOAT_DTYPES:
        return _accumulate(ctx, "sum_reduce", x, axes, keepdim)
    return _int_sum(ctx, x, axes, keepdim)


def _size(x, d):
    return x.shape[d] if x.rank else 1


def _with_meta(v, meta):
    return dataclasses.replace(v, shape=meta.shape, dtype=meta.dtype)


# -- sums and means -------------------------------------------------------------------------
@translates(aten.sum.dim_IntList, aten.sum.default)
def sum_(ctx, self, dim=None, keepdim=False, dtype=None):
    """sum.dim_IntList(Tensor self, int[1]? dim, bool keepdim=False, *, ScalarType? dtype=None) -> Tensor"""
    x = ctx.cast(self, ctx.out.dtype)
    return _sum(ctx, x, _axes(x, dim), keepdim)


@translates(aten.mean.dim, aten.mean.default)
def mean(ctx, self, dim=None, keepdim=False, dtype=None):
    """mean.dim(Tensor self, int[1]? dim, bool keepdim=False, *, ScalarType? dtype=None) -> Tensor"""
    x = ctx.cast(self, ctx.out.dtype)
    return _accumulate(ctx, "mean_reduce", x, _axes(x, dim), keepdim)


@translates(aten.prod.dim_int, aten.prod.default)
def prod(ctx, self, dim=None, keepdim=False, dtype=None):
    """prod.dim_int(Tensor self, int dim, bool keepdim=False, *, ScalarType? dtype=None) -> Tensor"""
    x = ctx.cast(self, ctx.out.dtype)
    return _accumulate(ctx, "tract_core_product_reduce", x, _axes(x, dim), keepdim)


@translates(aten.count_nonzero.default, aten.count_nonzero.dim_IntList)
def count_nonzero(ctx, self, dim=None):
    """count_nonzero(Tensor self, int? dim=None) -> Tensor"""
    x = ctx.cast(_nonzero(ctx, self), "i64")
    return _int_sum(ctx, x, _axes(x, dim), False)


@translates(aten.logsumexp.default)
def logsumexp(ctx, self, dim, keepdim=False):
    """logsumexp(Tensor self, int[1] dim, bool keepdim=False) -> Tensor"""
    x = ctx.cast(self, ctx.out.dtype)
    axes = _axes(x, dim)
    if not axes:
        return x
    kept = ctx.like(x, shape=_kept(x, axes))
    m = ctx.op("max_reduce", x, axes=axes, **kept)
    # an infinite max is replaced by 0, as torch does, so that x - m has no inf - inf
    m = ctx.op("select", ctx.op("tract_core_is_inf", m, **ctx.like(m, dtype="bool")),
               operand(ctx, 0.0, x.dtype), m, **kept)
    e = ctx.op("exp", ctx.op("sub", x, m, **ctx.like(x)), **ctx.like(x))
    s = ctx.op("log", _accumulate(ctx, "sum_reduce", e, axes, True), **kept)
    return _squeezed(ctx, ctx.op("add", s, m, **kept), axes, keepdim)


# -- extrema --------------------------------------------------------------------------------
def _extremum(ctx, op, self, dim, keepdim):
    x = _numeric(ctx, self)
    return ctx.cast(_reduce(ctx, op, x, _axes(x, dim), keepdim), self.dtype)


@translates(aten.amax.default, aten.max.default)
def amax(ctx, self, dim=(), keepdim=False):
    """amax(Tensor self, int[1] dim=[], bool keepdim=False) -> Tensor"""
    return _extremum(ctx, "max_reduce", self, dim, keepdim)


@translates(aten.amin.default, aten.min.default)
def amin(ctx, self, dim=(), keepdim=False):
    """amin(Tensor self, int[1] dim=[], bool keepdim=False) -> Tensor"""
    return _extremum(ctx, "min_reduce", self, dim, keepdim)


@translates(aten.aminmax.default)
def aminmax(ctx, self, dim=None, keepdim=False):
    """aminmax(Tensor self, *, int? dim=None, bool keepdim=False) -> (Tensor min, Tensor max)"""
    return (_extremum(ctx, "min_reduce", self, dim, keepdim),
            _extremum(ctx, "max_reduce", self, dim, keepdim))


def _arg(ctx, op, self, dim, keepdim):
    """Index of the first extremum (tract's argmax_reduce keeps the first, as torch does);
    over all axes, the index into the flattened tensor."""
    x = _numeric(ctx, self)
    axes = _axes(x, dim)
    if not axes:
        return ctx.scalar(0, "i64")
    y = ctx.op(op, x, axes=axes, shape=_kept(x, axes), dtype="i64")
    return _squeezed(ctx, y, axes, keepdim)


@translates(aten.argmax.default)
def argmax(ctx, self, dim=None, keepdim=False):
    """argmax(Tensor self, int? dim=None, bool keepdim=False) -> Tensor"""
    return _arg(ctx, "argmax_reduce", self, dim, keepdim)


@translates(aten.argmin.default)
def argmin(ctx, self, dim=None, keepdim=False):
    """argmin(Tensor self, int? dim=None, bool keepdim=False) -> Tensor"""
    return _arg(ctx, "argmin_reduce", self, dim, keepdim)


@translates(aten.max.dim)
def max_dim(ctx, self, dim, keepdim=False):
    """max.dim(Tensor self, int dim, bool keepdim=False) -> (Tensor values, Tensor indices)"""
    return (_extremum(ctx, "max_reduce", self, dim, keepdim),
            _arg(ctx, "argmax_reduce", self, dim, keepdim))


@translates(aten.min.dim)
def min_dim(ctx, self, dim, keepdim=False):
    """min.dim(Tensor self, int dim, bool keepdim=False) -> (Tensor values, Tensor indices)"""
    return (_extremum(ctx, "min_reduce", self, dim, keepdim),
            _arg(ctx, "argmin_reduce", self, dim, keepdim))


# -- logical --------------------------------------------------------------------------------
def _logical(ctx, op, self, dim, keepdim):
    x = _nonzero(ctx, self)
    # unlike the other reductions, any/all over an empty list of dims reduce nothing
    axes = [] if isinstance(dim, (list, tuple)) and not dim else _axes(x, dim)
    return ctx.cast(_reduce(ctx, op, x, axes, keepdim), ctx.out.dtype)


@translates(aten.any.dim, aten.any.dims, aten.any.default)
def any_(ctx, self, dim=None, keepdim=False):
    """any.dims(Tensor self, int[]? dim=None, bool keepdim=False) -> Tensor"""
    return _logical(ctx, "any_reduce", self, dim, keepdim)


@translates(aten.all.dim, aten.all.dims, aten.all.default)
def all_(ctx, self, dim=None, keepdim=False):
    """all.dims(Tensor self, int[]? dim=None, bool keepdim=False) -> Tensor"""
    return _logical(ctx, "all_reduce", self, dim, keepdim)


# -- variance -------------------------------------------------------------------------------
def _var_mean(ctx, self, dim, correction, keepdim, root=False):
    """(variance, mean) of ``self`` over ``dim`` with ``correction`` (None: 1), the standard
    deviation instead of the variance if ``root``; f16 is computed in f32, as torch does."""
    dtype = (ctx.out[0] if isinstance(ctx.out, tuple) else ctx.out).dtype
    x = ctx.cast(self, "f32" if dtype == "f16" else dtype)
    axes = _axes(x, dim)
    kept = ctx.like(x, shape=_kept(x, axes))
    m = ctx.op("mean_reduce", x, axes=axes, **kept)
    d = ctx.op("sqr", ctx.op("sub", x, m, **ctx.like(x)), **ctx.like(x))
    v = ctx.op("mean_reduce", d, axes=axes, **kept)
    correction = 1 if correction is None else correction
    if correction != 0:
        # v + v * c / (n - c): tract folds constant factors into the mean of squares and then
        # replaces a sum(sqr(d)) * k with a mean whenever k is close to 1/n (dropping c)
        n = _count(x.shape, axes)
        if isinstance(n, int):
            k = operand(ctx, correction / (n - correction), x.dtype)
        else:
            nc = ctx.op("sub", operand(ctx, n, x.dtype), operand(ctx, float(correction), x.dtype),
                        shape=(), dtype=x.dtype)
            k = ctx.op("div", operand(ctx, float(correction), x.dtype), nc, shape=(),
                       dtype=x.dtype)
        v = ctx.op("add", v, ctx.op("mul", v, k, **kept), **kept)
    if root:
        v = ctx.op("sqrt", v, **kept)
    return (ctx.cast(_squeezed(ctx, v, axes, keepdim), dtype),
            ctx.cast(_squeezed(ctx, m, axes, keepdim), dtype))


def _correction(unbiased):
    return 1 if unbiased else 0


@translates(aten.var.correction)
def var(ctx, self, dim=None, correction=None, keepdim=False):
    """var.correction(Tensor self, int[1]? dim=None, *, Scalar? correction=None, bool keepdim=False) -> Tensor"""
    return _var_mean(ctx, self, dim, correction, keepdim)[0]


@translates(aten.var.dim)
def var_dim(ctx, self, dim, unbiased=True, keepdim=False):
    """var.dim(Tensor self, int[1]? dim, bool unbiased=True, bool keepdim=False) -> Tensor"""
    return var(ctx, self, dim, _correction(unbiased), keepdim)


@translates(aten.var.default)
def var_default(ctx, self, unbiased=True):
    """var(Tensor self, bool unbiased=True) -> Tensor"""
    return var(ctx, self, None, _correction(unbiased))


@translates(aten.std.correction)
def std(ctx, self, dim=None, correction=None, keepdim=False):
    """std.correction(Tensor self, int[1]? dim=None, *, Scalar? correction=None, bool keepdim=False) -> Tensor"""
    return _var_mean(ctx, self, dim, correction, keepdim, root=True)[0]


@translates(aten.std.dim)
def std_dim(ctx, self, dim, unbiased=True, keepdim=False):
    """std.dim(Tensor self, int[1]? dim, bool unbiased=True, bool keepdim=False) -> Tensor"""
    return std(ctx, self, dim, _correction(unbiased), keepdim)


@translates(aten.std.default)
def std_default(ctx, self, unbiased=True):
    """std(Tensor self, bool unbiased=True) -> Tensor"""
    return std(ctx, self, None, _correction(unbiased))


@translates(aten.var_mean.correction)
def var_mean(ctx, self, dim=None, correction=None, keepdim=False):
    """var_mean.correction(Tensor self, int[1]? dim=None, *, Scalar? correction=None, bool keepdim=False) -> (Tensor, Tensor)"""
    return _var_mean(ctx, self, dim, correction, keepdim)


@translates(aten.var_mean.dim)
def var_mean_dim(ctx, self, dim, unbiased=True, keepdim=False):
    """var_mean.dim(Tensor self, int[1]? dim, bool unbiased=True, bool keepdim=False) -> (Tensor, Tensor)"""
    return _var_mean(ctx, self, dim, _correction(unbiased), keepdim)


@translates(aten.var_mean.default)
def var_mean_default(ctx, self, unbiased=True):
    """var_mean(Tensor self, bool unbiased=True) -> (Tensor, Tensor)"""
    return _var_mean(ctx, self, None, _correction(unbiased), False)


@translates(aten.std_mean.correction)
def std_mean(ctx, self, dim=None, correction=None, keepdim=False):
    """std_mean.correction(Tensor self, int[1]? dim=None, *, Scalar? correction=None, bool keepdim=False) -> (Tensor, Tensor)"""
    return _var_mean(ctx, self, dim, correction, keepdim, root=True)


@translates(aten.std_mean.dim)
def std_mean_dim(ctx, self, dim, unbiased=True, keepdim=False):
    """std_mean.dim(Tensor self, int[1]? dim, bool unbiased=True, bool keepdim=False) -> (Tensor, Tensor)"""
    return std_mean(ctx, self, dim, _correction(unbiased), keepdim)


@translates(aten.std_mean.default)
def std_mean_default(ctx, self, unbiased=True):
    """std_mean(Tensor self, bool unbiased=True) -> (Tensor, Tensor)"""
    return std_mean(ctx, self, None, _correction(unbiased))


# -- norms ----------------------------------------------------------------------------------
@translates(aten.linalg_vector_norm.default)
def linalg_vector_norm(ctx, self, ord=2, dim=None, keepdim=False, dtype=None):
    """linalg_vector_norm(Tensor self, Scalar ord=2, int[1]? dim=None, bool keepdim=False, *, ScalarType? dtype=None) -> Tensor"""
    out = ctx.out.dtype
    x = ctx.cast(self, "f32" if out == "f16" else out)  # f16 in f32, as torch does
    return ctx.cast(_norm(ctx, x, ord, _axes(x, dim), keepdim), out)


def _norm(ctx, x, ord, axes, keepdim):
    like = ctx.like(x)
    if ord == 0:
        return _sum(ctx, ctx.cast(_nonzero(ctx, x), x.dtype), axes, keepdim)
    a = ctx.op("abs", x, **like)
    if ord == math.inf:
        return _reduce(ctx, "max_reduce", a, axes, keepdim)
    if ord == -math.inf:
        return _reduce(ctx, "min_reduce", a, axes, keepdim)
    if ord == 1:
        return _reduce(ctx, "sum_reduce", a, axes, keepdim)
    if ord == 2:
        s = _reduce(ctx, "sum_reduce", ctx.op("sqr", x, **like), axes, keepdim)
        return ctx.op("sqrt", s, **ctx.like(s))
    p = operand(ctx, float(ord), x.dtype)
    s = _reduce(ctx, "sum_reduce", ctx.op("pow", a, p, **like), axes, keepdim)
    return ctx.op("pow", s, operand(ctx, 1.0 / ord, x.dtype), **ctx.like(s))


# -- top-k, sorting, cumulative sums --------------------------------------------------------
def _topk(ctx, x, k, d, largest):
    """(values, indices) of the ``k`` largest or smallest along axis ``d``, sorted; tract
    sorts stably, so equal values keep their order (as torch.sort does)."""
    if x.dtype == "bool":  # sorted as u8
        v, i = _topk(ctx, ctx.cast(x, "u8"), k, d, largest)
        return ctx.cast(dataclasses.replace(v, dtype="u8"), "bool"), i
    if x.rank == 0:  # tract's topk needs an axis
        return x, ctx.scalar(0, "i64")
    kk = ctx.scalar(k, "i64") if isinstance(k, int) else operand(ctx, k, "i64")
    return ctx.op("tract_core_topk", x, k=kk, axis=d, largest=largest, outputs=2)


@translates(aten.topk.default)
def topk(ctx, self, k, dim=-1, largest=True, sorted=True):
    """topk(Tensor self, SymInt k, int dim=-1, bool largest=True, bool sorted=True) -> (Tensor values, Tensor indices)"""
    # sorted=False leaves the order to the implementation: tract's sorted order is one of them
    return _topk(ctx, self, k, axis(dim, self.rank), largest)


@translates(aten.sort.default, aten.sort.stable)
def sort(ctx, self, dim=-1, descending=False, stable=None):
    """sort(Tensor self, int dim=-1, bool descending=False) -> (Tensor values, Tensor indices)"""
    d = axis(dim, self.rank)
    return _topk(ctx, self, _size(self, d), d, descending)


@translates(aten.argsort.default, aten.argsort.stable)
def argsort(ctx, self, dim=-1, descending=False, stable=None):
    """argsort(Tensor self, int dim=-1, bool descending=False) -> Tensor"""
    d = axis(dim, self.rank)
    return _with_meta(_topk(ctx, self, _size(self, d), d, descending)[1], ctx.out)


@translates(aten.cumsum.default)
def cumsum(ctx, self, dim, dtype=None):
    """cumsum(Tensor self, int dim, *, ScalarType? dtype=None) -> Tensor"""
    out = ctx.out.dtype
    x = ctx.cast(self, "f32" if out == "f16" else out)  # f16 accumulates in f32, as in torch
    if x.rank == 0:
        return ctx.cast(x, out)
    y = ctx.op("tract_core_cumsum", x, axis=axis(dim, x.rank), exclusive=False, reverse=False,
               **ctx.like(x))
    return ctx.cast(y, out)


@translates(aten.cumprod.default)
def cumprod(ctx, self, dim, dtype=None):
    """cumprod(Tensor self, int dim, *, ScalarType? dtype=None) -> Tensor"""
    out = ctx.out.dtype
    x = ctx.cast(self, "f32" if out == "f16" else out)
    if x.rank == 0:
        return ctx.cast(x, out)
    d = axis(dim, x.rank)
    n = x.shape[d]
    if not is_static(n):
        raise TranslationError("cumprod along a dynamic axis",
                               "make that axis static (its products are taken as a mask)")
    # y[.., j, ..] = prod_i where(i <= j, x[.., i, ..], 1): x repeated along a new axis j
    # before axis i, masked by the lower triangle, and multiplied out along i
    grid = list(x.shape[:d]) + [n, n] + list(x.shape[d + 1:])
    xi = ctx.op("unsqueeze", x, axes=[d], **ctx.like(x, shape=tuple(
        list(x.shape[:d]) + [1] + list(x.shape[d:]))))
    mask = np.tril(np.ones((n, n), dtype=bool)).reshape([1] * d + [n, n] +
                                                        [1] * (x.rank - d - 1))
    one = operand(ctx, 1.0 if x.dtype in FLOAT_DTYPES else 1, x.dtype)
    masked = ctx.op("select", ctx.const(mask, "tril"), xi, one,
                    **ctx.like(x, shape=tuple(grid)))
    y = ctx.op("tract_core_product_reduce", masked, axes=[d + 1],
               **ctx.like(x, shape=tuple(grid[:d + 1] + [1] + grid[d + 2:])))
    y = ctx.op("squeeze", y, axes=[d + 1], **ctx.like(x))
    return ctx.cast(y, out)
