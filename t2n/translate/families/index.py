"""Indexing: gathers, scatters, selects by mask, flips, rolls and triangles."""
from __future__ import annotations

import numpy as np
import torch

from t2n.errors import TranslationError
from t2n.translate.context import Value
from t2n.translate.families._common import (
    axis, broadcast_rank, dim_add, dim_mul, dim_sub, operand, outputs_read, same_dtype)
from t2n.translate.families.shape import slice_axis
from t2n.translate.registry import translates
from t2n.translate.weights import gather_rows

aten = torch.ops.aten

_MASKS = ("bool", "u8")


def _with(shape, d: int, size) -> tuple:
    """``shape`` with axis ``d`` replaced by ``size``."""
    return tuple(shape[:d]) + (size,) + tuple(shape[d + 1:])



def _numel(shape):
    n = 1
    for s in shape:
        n = dim_mul(n, s)
    return n


def _flat(ctx, x: Value) -> Value:
    n = _numel(x.shape)
    return ctx.op("reshape", x, attrs={"shape": [n]}, shape=(n,), dtype=x.dtype)


def _transpose(ctx, x: Value, perm: list[int]) -> Value:
    if perm == list(range(x.rank)):
        return x
    return ctx.op("transpose", x, axes=perm, shape=tuple(x.shape[p] for p in perm),
                  dtype=x.dtype)


def _broadcast_to(ctx, x: Value, shape) -> Value:
    """``x`` broadcast (torch rules) to ``shape``."""
    shape = tuple(shape)
    x = broadcast_rank(ctx, x, len(shape))
    if tuple(x.shape) == shape:
        return x
    return ctx.op("tract_core_broadcast", x, attrs={"shape": list(shape)}, shape=shape,
                  dtype=x.dtype)


# -- gathers --------------------------------------------------------------------------------
@translates(aten.embedding.default)
def embedding(ctx, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    """embedding(Tensor weight, Tensor indices, SymInt padding_idx=-1, bool scale_grad_by_freq=False, bool sparse=False) -> Tensor"""
    rows = gather_rows(ctx, weight, indices)
    if rows is not None:  # int8 rows and their scales gathered, then dequantized
        return rows
    if ctx.block_quantized(weight):  # tract decodes the rows; it needs the output type
        return ctx.op("tract_core_gather", weight, indices, axis=0, datum_type=weight.dtype)
    return ctx.op("tract_core_gather", weight, indices, axis=0)


# -- embedding bags --------------------------------------------------------------------------
_BAG_MODES = {0: "sum", 1: "mean", 2: "max"}


def _embedding_bag(ctx, weight, indices, offsets, mode, per_sample_weights,
                   include_last_offset, padding_idx):
    """Bags of rows reduced by sum, mean or max. Offsets are data, so every (bag, position)
    pair gets a membership mask (offset[b] <= position < next offset, the padding index left
    out): sums and means are the mask times the gathered rows, maxima a masked max. An empty
    bag gives zeros, as torch does. Only the bags are given: offset2bag, bag sizes and the max
    positions (the op's other outputs) are refused when read."""
    read = outputs_read(ctx)
    if read is None or read - {0}:
        raise TranslationError("embedding_bag's offset2bag, bag_size and max_indices outputs",
                               "use only the bags (the op's first output)")
    mode = _BAG_MODES.get(int(mode))
    if mode is None:
        raise TranslationError("an embedding_bag mode other than sum, mean and max",
                               "use mode 'sum', 'mean' or 'max'")
    out = ctx.out[0] if isinstance(ctx.out, tuple) else ctx.out
    dtype = out.dtype
    if indices.rank != 1 or offsets is None:
        raise TranslationError("embedding_bag without 1-D indices and offsets",
                               "pass 1-D indices with offsets (torch's 2-D form becomes that)")
    length, count = indices.shape[0], offsets.shape[0]
    bags = dim_sub(count, 1) if include_last_offset else count
    idx = ctx.cast(indices, "i64")
    offs = ctx.cast(offsets, "i64")
    starts = slice_axis(ctx, offs, 0, 0, bags, shape=(bags,))
    if include_last_offset:
        ends = slice_axis(ctx, offs, 0, 1, count, shape=(bags,))
    else:
        tail = ctx.op("reshape", operand(ctx, length, "i64"), attrs={"shape": [1]},
                      shape=(1,), dtype="i64")
        ends = ctx.op("concat", [slice_axis(ctx, offs, 0, 1, count, shape=(dim_sub(count, 1),)),
                                 tail], axis=0, shape=(bags,), dtype="i64")
    pos = ctx.op("tract_core_range", 0, length, 1, shape=(length,), dtype="i64")
    pos = ctx.op("unsqueeze", pos, axes=[0], shape=(1, length), dtype="i64")
    grid = (bags, length)
    # differences compared with 0 (tract 0.23.9 mis-shapes an ordering of two index vectors)
    after = ctx.op("ge", ctx.op("sub", pos, ctx.op("unsqueeze", starts, axes=[1], shape=(bags, 1),
                                                 dtype="i64"), shape=grid, dtype="i64"),
                   operand(ctx, 0, "i64"), shape=grid, dtype="bool")
    before = ctx.op("lt", ctx.op("sub", pos, ctx.op("unsqueeze", ends, axes=[1], shape=(bags, 1),
                                                  dtype="i64"), shape=grid, dtype="i64"),
                    operand(ctx, 0, "i64"), shape=grid, dtype="bool")
    member = ctx.op("and", after, before, shape=grid, dtype="bool")
    if padding_idx is not None and padding_idx >= 0:
        kept = ctx.op("ne", idx, operand(ctx, int(padding_idx), "i64"), shape=(length,),
                      dtype="bool")
        member = ctx.op("and", member, ctx.op("unsqueeze", kept, axes=[0], shape=(1, length),
                                              dtype="bool"), shape=grid, dtype="bool")
    width = weight.shape[1]
    rows = ctx.cast(ctx.op("tract_core_gather", weight, idx, axis=0,
                           shape=(length, width), dtype=weight.dtype), dtype)
    if per_sample_weights is not None:
        if mode != "sum":
            raise TranslationError("per_sample_weights with a mode other than sum",
                                   "torch only allows them with mode='sum'")
        w = ctx.op("unsqueeze", operand(ctx, per_sample_weights, dtype), axes=[1],
                   shape=(length, 1), dtype=dtype)
        rows = ctx.op("mul", rows, w, shape=(length, width), dtype=dtype)
    zero, one = operand(ctx, 0.0, dtype), operand(ctx, 1.0, dtype)
    weights = ctx.op("select", member, one, zero, shape=grid, dtype=dtype)
    sizes = ctx.op("sum_reduce", weights, axes=[1], shape=(bags, 1), dtype=dtype)
    if mode == "max":
        low = operand(ctx, float("-inf"), dtype)
        spread = ctx.op("select", ctx.op("unsqueeze", member, axes=[2], shape=grid + (1,),
                                         dtype="bool"),
                        ctx.op("unsqueeze", rows, axes=[0], shape=(1, length, width),
                               dtype=dtype), low, shape=grid + (width,), dtype=dtype)
        top = ctx.op("max_reduce", spread, axes=[1], shape=(bags, 1, width), dtype=dtype)
        top = ctx.op("squeeze", top, axes=[1], shape=(bags, width), dtype=dtype)
        full = ctx.op("gt", sizes, zero, shape=(bags, 1), dtype="bool")
        return ctx.op("select", full, top, zero, shape=(bags, width), dtype=dtype), None, None, None
    total = ctx.op("matmul", weights, rows, shape=(bags, width), dtype=dtype)
    if mode == "mean":
        total = ctx.op("div", total, ctx.op("max", sizes, one, shape=(bags, 1), dtype=dtype),
                       shape=(bags, width), dtype=dtype)
    return total, None, None, None


@translates(aten.embedding_bag.padding_idx)
def embedding_bag_padding_idx(ctx, weight, indices, offsets, scale_grad_by_freq, mode, sparse,
                              per_sample_weights, include_last_offset, padding_idx):
    """embedding_bag.padding_idx(Tensor weight, Tensor indices, Tensor offsets, bool scale_grad_by_freq, int mode, bool sparse, Tensor? per_sample_weights, bool include_last_offset, int? padding_idx) -> (Tensor, Tensor, Tensor, Tensor)"""  # noqa: E501
    return _embedding_bag(ctx, weight, indices, offsets, mode, per_sample_weights,
                          include_last_offset, padding_idx)


@translates(aten.embedding_bag.default)
def embedding_bag(ctx, weight, indices, offsets, scale_grad_by_freq=False, mode=0, sparse=False,
                  per_sample_weights=None, include_last_offset=False):
    """embedding_bag(Tensor weight, Tensor indices, Tensor offsets, bool scale_grad_by_freq=False, int mode=0, bool sparse=False, Tensor? per_sample_weights=None, bool include_last_offset=False) -> (Tensor, Tensor, Tensor, Tensor)"""  # noqa: E501
    return _embedding_bag(ctx, weight, indices, offsets, mode, per_sample_weights,
                          include_last_offset, None)


@translates(aten._embedding_bag.default, aten._embedding_bag_forward_only.default)
def _embedding_bag_op(ctx, weight, indices, offsets, scale_grad_by_freq=False, mode=0,
                      sparse=False, per_sample_weights=None, include_last_offset=False,
                      padding_idx=-1):
    """_embedding_bag(Tensor weight, Tensor indices, Tensor offsets, bool scale_grad_by_freq=False, int mode=0, bool sparse=False, Tensor? per_sample_weights=None, bool include_last_offset=False, int padding_idx=-1) -> (Tensor, Tensor, Tensor, Tensor)"""  # noqa: E501
    return _embedding_bag(ctx, weight, indices, offsets, mode, per_sample_weights,
                          include_last_offset, padding_idx)


@translates(aten.index_select.default)
def index_select(ctx, self, dim, index):
    """index_select(Tensor self, int dim, Tensor index) -> Tensor"""
    if index.rank == 0:
        index = ctx.op("unsqueeze", index, axes=[0], shape=(1,), dtype=index.dtype)
    return ctx.op("tract_core_gather", self, index, axis=axis(dim, self.rank))


@translates(aten.gather.default)
def gather(ctx, self, dim, index, sparse_grad=False):
    """gather(Tensor self, int dim, Tensor index, *, bool sparse_grad=False) -> Tensor"""
    return ctx.op("tract_core_gather_elements", self, index, axis=axis(dim, self.rank))


def _positions(indices) -> list[int]:
    """Axes indexed by a tensor; boolean masks have data-dependent results."""
    pos = [i for i, t in enumerate(indices) if t is not None]
    if any(indices[p].dtype in _MASKS for p in pos):
        raise TranslationError("indexing with a boolean mask gives a data-dependent shape",
                               "use torch.where or masked_fill instead of x[mask]")
    return pos


def _wrapped(ctx, index: Value, size) -> Value:
    """``index`` as i64 with negative entries counted from the end (gather_nd needs it)."""
    i = ctx.cast(index, "i64")
    n = operand(ctx, size, "i64")
    neg = ctx.op("lt", i, operand(ctx, 0, "i64"), shape=i.shape, dtype="bool")
    return ctx.op("select", neg, ctx.op("add", i, n, **ctx.like(i)), i, **ctx.like(i))


def _broadcast_shape(shapes) -> tuple:
    rank = max(len(s) for s in shapes)
    out = []
    for k in range(rank):
        sizes = [s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0]
        out.append(next((d for d in sizes if d != 1), 1))
    return tuple(out)


def _adjacent(pos: list[int]) -> bool:
    return pos == list(range(pos[0], pos[0] + len(pos)))


def _nd_operands(ctx, self: Value, indices, pos: list[int]):
    """The operands of a gather_nd/scatter_nd over the indexed axes moved to the front:
    (data, [*B, k] indices, B, the other axes' sizes, the permutation applied to self)."""
    others = [a for a in range(self.rank) if a not in pos]
    perm = pos + others
    data = _transpose(ctx, self, perm)
    idx = [_wrapped(ctx, indices[p], self.shape[p]) for p in pos]
    b = _broadcast_shape([i.shape for i in idx])
    parts = []
    for i in idx:
        i = _broadcast_to(ctx, i, b)
        parts.append(ctx.op("unsqueeze", i, axes=[len(b)], shape=b + (1,), dtype="i64"))
    nd = ctx.op("concat", parts, axis=len(b), shape=b + (len(pos),), dtype="i64")
    return data, nd, b, tuple(self.shape[a] for a in others), perm


def _b_inside(pos: list[int]) -> bool:
    """torch puts the broadcast index axes where the indexed axes were when they are adjacent,
    in front otherwise."""
    return _adjacent(pos) and pos[0] > 0


@translates(aten.index.Tensor)
def index(ctx, self, indices):
    """index.Tensor(Tensor self, Tensor?[] indices) -> Tensor"""
    pos = _positions(indices)
    if not pos:
        return self
    if len(pos) == 1:
        return ctx.op("tract_core_gather", self, indices[pos[0]], axis=pos[0])
    data, nd, b, rest, _ = _nd_operands(ctx, self, indices, pos)
    y = ctx.op("tract_core_gather_nd", data, nd, batch_dims=0, shape=b + rest, dtype=self.dtype)
    if not _b_inside(pos):
        return y
    nb, p = len(b), pos[0]
    perm = list(range(nb, nb + p)) + list(range(nb)) + list(range(nb + p, y.rank))
    return ctx.op("transpose", y, axes=perm)


# -- scatters -------------------------------------------------------------------------------
@translates(aten.index_put.default, aten.index_put_.default)
def index_put(ctx, self, indices, values, accumulate=False):
    """index_put(Tensor self, Tensor?[] indices, Tensor values, bool accumulate=False) -> Tensor"""
    pos = [i for i, t in enumerate(indices) if t is not None]
    if any(indices[p].dtype in _MASKS for p in pos):
        return _masked_put(ctx, self, indices, pos, values, accumulate)
    data, nd, b, rest, perm = _nd_operands(ctx, self, indices, pos)
    v = operand(ctx, values, self.dtype)
    if _b_inside(pos):
        p = pos[0]
        v = _broadcast_to(ctx, v, rest[:p] + b + rest[p:])
        nb = len(b)
        v = _transpose(ctx, v, list(range(p, p + nb)) + list(range(p)) +
                       list(range(p + nb, v.rank)))
    else:
        v = _broadcast_to(ctx, v, b + rest)
    y = ctx.op("tract_core_scatter_nd", data, nd, v,
               reduction="add" if accumulate else "none", **ctx.like(data))
    inverse = [perm.index(a) for a in range(self.rank)]
    return _transpose(ctx, y, inverse)


def _masked_put(ctx, self, indices, pos, values, accumulate):
    """x[mask] = v with one value for every selected element: a select."""
    if len(pos) != 1:
        raise TranslationError("index_put mixing a boolean mask with other indices",
                               "use torch.where with a mask covering the whole tensor")
    if not isinstance(values, Value) or any(s != 1 for s in values.shape):
        raise TranslationError("x[mask] = tensor of several values is data-dependent",
                               "assign a single value, or use torch.where")
    p, mask = pos[0], operand(ctx, indices[pos[0]], "bool")
    trailing = self.rank - p - mask.rank
    if trailing:
        mask = ctx.op("unsqueeze", mask, axes=list(range(mask.rank, mask.rank + trailing)),
                      shape=tuple(mask.shape) + (1,) * trailing, dtype="bool")
    v = operand(ctx, values, self.dtype)
    if v.rank:
        v = ctx.op("squeeze", v, axes=list(range(v.rank)), shape=(), dtype=v.dtype)
    mask = broadcast_rank(ctx, mask, self.rank)
    if not accumulate:
        return ctx.op("select", mask, v, self)
    added = ctx.op("select", mask, v, operand(ctx, 0, self.dtype), shape=mask.shape,
                   dtype=self.dtype)
    return ctx.op("add", self, added)


def _scatter(ctx, self, dim, index, src, reduction):
    d = axis(dim, self.rank)
    if isinstance(src, Value):
        updates = operand(ctx, src, self.dtype)
        for a in range(index.rank):  # torch only reads src where index has entries
            if updates.shape[a] != index.shape[a]:
                updates = slice_axis(ctx, updates, a, 0, index.shape[a],
                                     shape=_with(updates.shape, a, index.shape[a]))
    else:
        updates = _broadcast_to(ctx, operand(ctx, src, self.dtype), index.shape)
    return ctx.op("tract_core_scatter_elements", self, index, updates, axis=d,
                  reduction=reduction)


@translates(aten.scatter.src, aten.scatter.value)
def scatter(ctx, self, dim, index, src):
    """scatter.src(Tensor self, int dim, Tensor index, Tensor src) -> Tensor"""
    return _scatter(ctx, self, dim, index, src, "none")


@translates(aten.scatter_add.default)
def scatter_add(ctx, self, dim, index, src):
    """scatter_add(Tensor self, int dim, Tensor index, Tensor src) -> Tensor"""
    return _scatter(ctx, self, dim, index, src, "add")


_REDUCTIONS = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min"}


@translates(aten.scatter_reduce.two)
def scatter_reduce(ctx, self, dim, index, src, reduce, include_self=True):
    """scatter_reduce.two(Tensor self, int dim, Tensor index, Tensor src, str reduce, *, bool include_self=True) -> Tensor"""
    if reduce not in _REDUCTIONS or not include_self:
        raise TranslationError(f"scatter_reduce with reduce={reduce!r}, "
                               f"include_self={include_self}",
                               "use sum/prod/amax/amin with include_self=True")
    return _scatter(ctx, self, dim, index, src, _REDUCTIONS[reduce])


def _bound(value, size, default):
    if value is None:
        return default
    if isinstance(value, int) and value < 0:
        return max(0, size + value) if isinstance(size, int) else dim_add(size, value)
    if isinstance(value, int) and isinstance(size, int):
        return min(value, size)
    return value


@translates(aten.slice_scatter.default)
def slice_scatter(ctx, self, src, dim=0, start=None, end=None, step=1):
    """slice_scatter(Tensor self, Tensor src, int dim=0, SymInt? start=None, SymInt? end=None, SymInt step=1) -> Tensor"""
    d = axis(dim, self.rank)
    size = self.shape[d]
    begin, stop = _bound(start, size, 0), _bound(end, size, size)
    if step != 1:
        return _strided_scatter(ctx, self, src, d, begin, step)
    parts = [operand(ctx, src, self.dtype)]
    if begin != 0:
        parts.insert(0, slice_axis(ctx, self, d, 0, begin, shape=_with(self.shape, d, begin)))
    if stop != size:
        parts.append(slice_axis(ctx, self, d, stop, size,
                                shape=_with(self.shape, d, dim_sub(size, stop))))
    return parts[0] if len(parts) == 1 else ctx.op("concat", parts, axis=d)


def _strided_scatter(ctx, self, src, d: int, begin, step: int):
    """slice_scatter with a step (interleaved rotary sections): along the static axis ``d``,
    every step-th position from ``begin`` takes the next row of ``src``: ``src`` gathered to
    the axis' length, then selected by a constant mask."""
    size, count = self.shape[d], src.shape[d]
    if not all(isinstance(v, int) for v in (size, count, begin)):
        raise TranslationError(f"slice_scatter with step {step} along a dynamic axis",
                               "make that axis static")
    positions = begin + step * np.arange(count)
    row = np.zeros(size, dtype=np.int64)
    row[positions] = np.arange(count)
    taken = np.zeros(size, dtype=bool)
    taken[positions] = True
    spread = ctx.op("tract_core_gather", operand(ctx, src, self.dtype), ctx.const(row, "rows"),
                    axis=d, **ctx.like(self))
    mask = ctx.const(taken.reshape([size if i == d else 1 for i in range(self.rank)]), "taken")
    return ctx.op("select", mask, spread, self)


@translates(aten.select_scatter.default)
def select_scatter(ctx, self, src, dim, index):
    """select_scatter(Tensor self, Tensor src, int dim, SymInt index) -> Tensor"""
    d = axis(dim, self.rank)
    begin = _bound(index, self.shape[d], 0)
    src = ctx.op("unsqueeze", src, axes=[d], shape=_with(self.shape, d, 1), dtype=src.dtype)
    return slice_scatter(ctx, self, src, d, begin, dim_add(begin, 1))


# -- selects --------------------------------------------------------------------------------
@translates(aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def where(ctx, condition, self, other):
    """where.self(Tensor condition, Tensor self, Tensor other) -> Tensor"""
    rank = len(ctx.out.shape)
    a, b = same_dtype(ctx, self, other, dtype=ctx.out.dtype)
    cond = operand(ctx, condition, "bool")
    return ctx.op("select", *(broadcast_rank(ctx, v, rank) for v in (cond, a, b)))


@translates(aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.masked_fill_.Scalar,
            aten.masked_fill_.Tensor)
def masked_fill(ctx, self, mask, value):
    """masked_fill.Scalar(Tensor self, Tensor mask, Scalar value) -> Tensor"""
    return where(ctx, mask, value, self)


@translates(aten.masked_scatter.default)
def masked_scatter(ctx, self, mask, source):
    """masked_scatter(Tensor self, Tensor mask, Tensor source) -> Tensor

    Where the mask is set, the source's elements in order: each position's rank among the set
    positions (an exclusive running count over the flattened mask) indexes the flattened source.
    Static shapes only."""
    shape = tuple(ctx.out.shape)
    if not all(isinstance(d, int) for d in (*shape, *source.shape)):
        raise TranslationError("masked_scatter over a dynamic axis", "make the axes static")
    n, available = int(np.prod(shape, dtype=np.int64)), int(np.prod(source.shape, dtype=np.int64))
    rank = len(shape)
    m = broadcast_rank(ctx, operand(ctx, mask, "bool"), rank)
    kept = broadcast_rank(ctx, operand(ctx, self, ctx.out.dtype), rank)
    if available == 0:   # nothing to scatter: a mask with no set position
        return ctx.op("select", m, kept, kept)
    if tuple(m.shape) != shape:
        m = ctx.op("tract_core_broadcast", m, attrs={"shape": list(shape)}, shape=shape,
                   dtype="bool")
    counts = ctx.op("select", m, operand(ctx, 1, "i64"), operand(ctx, 0, "i64"), shape=shape,
                    dtype="i64")
    flat = ctx.op("reshape", counts, attrs={"shape": [n]}, shape=(n,), dtype="i64")
    rank_of = ctx.op("tract_core_cumsum", flat, axis=0, exclusive=True, reverse=False,
                     shape=(n,), dtype="i64")
    # unset positions past the last source element read any valid one: select drops them
    rank_of = ctx.op("min", rank_of, operand(ctx, available - 1, "i64"), shape=(n,), dtype="i64")
    src = operand(ctx, source, ctx.out.dtype)
    src = src if src.rank == 1 else ctx.op("reshape", src, attrs={"shape": [available]},
                                           shape=(available,), dtype=src.dtype)
    taken = ctx.op("tract_core_gather", src, rank_of, axis=0, shape=(n,), dtype=src.dtype)
    taken = ctx.op("reshape", taken, attrs={"shape": list(shape)}, shape=shape, dtype=src.dtype)
    return ctx.op("select", m, taken, kept)


# -- reorderings ----------------------------------------------------------------------------
@translates(aten.flip.default)
def flip(ctx, self, dims):
    """flip(Tensor self, int[] dims) -> Tensor"""
    axes = sorted({axis(d, self.rank) for d in dims if self.shape[axis(d, self.rank)] != 1})
    if not axes:
        return self
    return ctx.op("slice", self, axes=axes, begin=[0] * len(axes),
                  end=[self.shape[a] for a in axes], stride=[-1] * len(axes))


def _roll_axis(ctx, x: Value, shift: int, d: int) -> Value:
    n = x.shape[d]
    if shift == 0 or (isinstance(n, int) and shift % n == 0):
        return x
    if isinstance(n, int):
        s = shift % n
        tail = slice_axis(ctx, x, d, n - s, n, shape=_with(x.shape, d, s))
        head = slice_axis(ctx, x, d, 0, n - s, shape=_with(x.shape, d, n - s))
        return ctx.op("concat", [tail, head], axis=d, **ctx.like(x))
    # symbolic size: out[i] = x[(i - shift) mod n], from a range starting at a non-negative
    # number congruent to -shift
    start = dim_mul(dim_sub(n, 1), shift) if shift >= 0 else -shift
    r = ctx.op("tract_core_range", start, dim_add(start, n), 1, shape=(n,), dtype="i64")
    size = operand(ctx, n, "i64")
    q = ctx.op("div", r, size, **ctx.like(r))
    i = ctx.op("sub", r, ctx.op("mul", q, size, **ctx.like(r)), **ctx.like(r))
    return ctx.op("tract_core_gather", x, i, axis=d, **ctx.like(x))


@translates(aten.roll.default)
def roll(ctx, self, shifts, dims=()):
    """roll(Tensor self, SymInt[1] shifts, int[1] dims=[]) -> Tensor"""
    if any(not isinstance(s, int) for s in shifts):
        raise TranslationError("roll by a symbolic shift", "roll by a constant")
    if not dims:
        flat = _flat(ctx, self)
        y = _roll_axis(ctx, flat, shifts[0], 0)
        return ctx.op("reshape", y, attrs={"shape": list(self.shape)})
    x = self
    for s, d in zip(shifts, dims):
        x = _roll_axis(ctx, x, s, axis(d, self.rank))
    return x


@translates(aten.tril.default)
def tril(ctx, self, diagonal=0):
    """tril(Tensor self, SymInt diagonal=0) -> Tensor"""
    return ctx.op("tract_core_trilu", self, operand(ctx, diagonal, "i64"), upper=False)


@translates(aten.triu.default)
def triu(ctx, self, diagonal=0):
    """triu(Tensor self, SymInt diagonal=0) -> Tensor"""
    return ctx.op("tract_core_trilu", self, operand(ctx, diagonal, "i64"), upper=True)


@translates(aten.repeat_interleave.self_int)
def repeat_interleave(ctx, self, repeats, dim=None, output_size=None):
    """repeat_interleave.self_int(Tensor self, SymInt repeats, int? dim=None, *, SymInt? output_size=None) -> Tensor"""
    if not isinstance(repeats, int):
        raise TranslationError("repeat_interleave by a symbolic count", "repeat a constant")
    x = self
    if dim is None:
        x = _flat(ctx, x)
    d = 0 if dim is None else axis(dim, x.rank)
    shape = tuple(x.shape)
    x = ctx.op("unsqueeze", x, axes=[d + 1], shape=shape[:d + 1] + (1,) + shape[d + 1:],
               dtype=x.dtype)
    x = _broadcast_to(ctx, x, shape[:d + 1] + (repeats,) + shape[d + 1:])
    return ctx.op("reshape", x, attrs={"shape": list(ctx.out.shape)})


@translates(aten.one_hot.default)
def one_hot(ctx, self, num_classes=-1):
    """one_hot(Tensor self, int num_classes=-1) -> Tensor"""
    if num_classes < 0:
        raise TranslationError("one_hot without num_classes has a data-dependent shape",
                               "pass num_classes")
    y = ctx.op("tract_core_one_hot", self, axis=self.rank, dim=num_classes, value_off=0,
               value_on=1, shape=ctx.out.shape, dtype="i32")
    return ctx.cast(y, ctx.out.dtype)
