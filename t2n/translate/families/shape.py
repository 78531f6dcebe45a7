"""Reshaping, axis moves, slicing, joining and splitting, and dtype conversions."""
from __future__ import annotations

import numpy as np
import torch

from t2n.errors import TranslationError
from t2n.nnef.graph import Dim
from t2n.translate.context import Value
from t2n.translate.families._common import axis, dim_add, dim_sub, operand
from t2n.translate.registry import translates

aten = torch.ops.aten

_INT_MAX = 2**62


# -- identities and conversions -------------------------------------------------------------
@translates(aten.contiguous.default, aten.clone.default, aten.detach.default,
            aten.alias.default, aten.lift_fresh_copy.default, aten.detach_.default)
def identity(ctx, self, *args, **kwargs):
    """clone(Tensor self, *, MemoryFormat? memory_format=None) -> Tensor"""
    return self


@translates(aten.copy.default, aten.copy_.default)
def copy(ctx, self, src, non_blocking=False):
    """copy_(Tensor(a!) self, Tensor src, bool non_blocking=False) -> Tensor(a!)"""
    x = ctx.cast(operand(ctx, src, self.dtype), self.dtype)
    return expand(ctx, x, self.shape)


@translates(aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default)
def dropout(ctx, input, p, train):
    """dropout(Tensor input, float p, bool train) -> Tensor"""
    if train and p > 0:
        raise TranslationError("dropout in training mode", "call model.eval() before export")
    return input


@translates(aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default,
            aten.type_as.default, aten.to.other)
def to(ctx, self, *args, **kwargs):
    """to.dtype(Tensor self, ScalarType dtype, bool non_blocking=False, bool copy=False, ...) -> Tensor"""
    return ctx.cast(self, ctx.out.dtype)


# -- reshapes -------------------------------------------------------------------------------
def _unsqueezed_from(ctx, x: Value):
    """The input of the unsqueeze that made ``x``, if one did (the latest operations first)."""
    for op in reversed(ctx.graph.operations[-64:]):
        if x.name in op.outputs:
            arg = op.args[0] if op.op == "unsqueeze" and op.args else None
            return arg if isinstance(arg, Value) else None
    return None


def _reshape(ctx, x: Value, shape):
    shape = list(shape)
    if tuple(shape) == tuple(x.shape or ()):
        return x
    if not shape:  # to rank 0: tract's reshape wants a non-empty shape
        return ctx.op("squeeze", x, axes=list(range(x.rank)))
    # a reshape reads an unsqueeze's input directly (the same values in the same order):
    # tract 0.23.9's split of an attention product over a concatenated key gets the ranks
    # wrong through reshape(unsqueeze(matmul)) (latent attention's key expansion)
    x = _unsqueezed_from(ctx, x) or x
    return ctx.op("reshape", x, attrs={"shape": shape})


@translates(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def view(ctx, self, size):
    """view(Tensor(a) self, SymInt[] size) -> Tensor(a)"""
    return _reshape(ctx, self, ctx.out.shape if any(isinstance(s, Dim) for s in size)
                    and -1 in size else size)


@translates(aten.flatten.using_ints, aten.unflatten.int)
def flatten(ctx, self, *args):
    """flatten.using_ints(Tensor(a) self, int start_dim=0, int end_dim=-1) -> Tensor(a)"""
    return _reshape(ctx, self, ctx.out.shape)


@translates(aten.transpose.int)
def transpose(ctx, self, dim0, dim1):
    """transpose.int(Tensor(a) self, int dim0, int dim1) -> Tensor(a)"""
    rank = self.rank
    perm = list(range(rank))
    a, b = axis(dim0, rank), axis(dim1, rank)
    if a == b:
        return self
    perm[a], perm[b] = perm[b], perm[a]
    return ctx.op("transpose", self, axes=perm)


@translates(aten.t.default)
def t(ctx, self):
    """t(Tensor(a) self) -> Tensor(a)"""
    return self if self.rank < 2 else ctx.op("transpose", self, axes=[1, 0])


@translates(aten.permute.default)
def permute(ctx, self, dims):
    """permute(Tensor(a) self, int[] dims) -> Tensor(a)"""
    perm = [axis(d, self.rank) for d in dims]
    if perm == list(range(self.rank)):
        return self
    return ctx.op("transpose", self, axes=perm)


@translates(aten.unsqueeze.default)
def unsqueeze(ctx, self, dim):
    """unsqueeze(Tensor(a) self, int dim) -> Tensor(a)"""
    return ctx.op("unsqueeze", self, axes=[axis(dim, self.rank + 1)])


@translates(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def squeeze(ctx, self, dim=None):
    """squeeze.dims(Tensor(a) self, int[] dim) -> Tensor(a)"""
    dims = range(self.rank) if dim is None else ([dim] if isinstance(dim, int) else dim)
    axes = sorted({axis(d, self.rank) for d in dims if self.shape[axis(d, self.rank)] == 1})
    if not axes:
        return self
    return ctx.op("squeeze", self, axes=axes)


@translates(aten.expand.default, aten.broadcast_to.default)
def expand(ctx, self, size, implicit=False):
    """expand(Tensor(a) self, SymInt[] size, *, bool implicit=False) -> Tensor(a)"""
    out = list(ctx.out.shape)
    x = self
    if x.rank < len(out):
        n = len(out) - x.rank
        x = ctx.op("unsqueeze", x, axes=list(range(n)), shape=(1,) * n + tuple(x.shape),
                   dtype=x.dtype)
    if tuple(x.shape) == tuple(out):
        return x
    return ctx.op("tract_core_broadcast", x, attrs={"shape": out})


@translates(aten.expand_as.default)
def expand_as(ctx, self, other):
    """expand_as(Tensor(a) self, Tensor other) -> Tensor(a)"""
    return expand(ctx, self, other.shape)


@translates(aten.repeat.default)
def repeat(ctx, self, repeats):
    """repeat(Tensor self, SymInt[] repeats) -> Tensor"""
    x = self
    if len(repeats) > x.rank:
        n = len(repeats) - x.rank
        x = ctx.op("unsqueeze", x, axes=list(range(n)), shape=(1,) * n + tuple(x.shape),
                   dtype=x.dtype)
    if all(r == 1 for r in repeats):
        return x
    return ctx.op("tile", x, repeats=list(repeats))


# -- slicing --------------------------------------------------------------------------------
def _bound(value, size, default):
    """A slice bound normalized like Python: negatives count from the end, clamped to size."""
    if value is None:
        return default
    if isinstance(value, int):
        if value >= _INT_MAX or (isinstance(size, int) and value >= size):
            return size
        if value < 0:
            if isinstance(size, int):
                return max(0, size + value)
            return dim_add(size, value)
        return value
    return value  # symbolic: assume in range, as torch.export's guards did


def slice_axis(ctx, x: Value, dim: int, start, end, step=1, shape=None):
    size = x.shape[dim]
    begin, stop = _bound(start, size, 0), _bound(end, size, size)
    if begin == 0 and stop == size and step == 1:
        return x
    attrs = {"stride": [step]} if step != 1 else {}
    return ctx.op("slice", x, axes=[dim], begin=[begin], end=[stop], **attrs,
                  **({"shape": shape, "dtype": x.dtype} if shape is not None else {}))


@translates(aten.slice.Tensor)
def slice(ctx, self, dim=0, start=None, end=None, step=1):
    """slice.Tensor(Tensor(a) self, int dim=0, SymInt? start=None, SymInt? end=None, SymInt step=1) -> Tensor(a)"""
    if step < 1:
        raise TranslationError(f"slice step {step}", "torch only allows positive steps")
    d = axis(dim, self.rank)
    if isinstance(start, Dim) and step == 1 and ctx.out.shape is not None:
        # a symbolic start may count from the end (x[:, -S:], ZAYA's router states): the end
        # less the size torch worked out for the output is the start either way
        stop = _bound(end, self.shape[d], self.shape[d])
        start = dim_sub(stop, ctx.out.shape[d])
    return slice_axis(ctx, self, d, start, end, step, shape=ctx.out.shape)


@translates(aten.narrow.default)
def narrow(ctx, self, dim, start, length):
    """narrow(Tensor(a) self, int dim, SymInt start, SymInt length) -> Tensor(a)"""
    d = axis(dim, self.rank)
    start = _bound(start, self.shape[d], 0)
    return slice_axis(ctx, self, d, start, dim_add(start, length), shape=ctx.out.shape)


@translates(aten.select.int)
def select(ctx, self, dim, index):
    """select.int(Tensor(a) self, int dim, SymInt index) -> Tensor(a)"""
    d = axis(dim, self.rank)
    size = self.shape[d]
    begin = _bound(index, size, 0)
    shape = tuple(self.shape[:d]) + (1,) + tuple(self.shape[d + 1:])
    x = ctx.op("slice", self, axes=[d], begin=[begin], end=[dim_add(begin, 1)],
               shape=shape, dtype=self.dtype)
    return ctx.op("squeeze", x, axes=[d])


# -- joining and splitting -------------------------------------------------------------------
@translates(aten.cat.default, aten.concat.default, aten.concatenate.default)
def cat(ctx, tensors, dim=0):
    """cat(Tensor[] tensors, int dim=0) -> Tensor"""
    dtype = ctx.out.dtype
    rank = len(ctx.out.shape)
    xs = [operand(ctx, t, dtype) for t in tensors
          if not (t.rank == 1 and t.shape[0] == 0 and rank != 1)]
    xs = [x for x in xs if not any(s == 0 for s in x.shape)] or xs[:1]
    if len(xs) == 1:
        return xs[0]
    return ctx.op("concat", xs, axis=axis(dim, rank))


@translates(aten.stack.default)
def stack(ctx, tensors, dim=0):
    """stack(Tensor[] tensors, int dim=0) -> Tensor"""
    dtype = ctx.out.dtype
    xs = [operand(ctx, t, dtype) for t in tensors]
    d = axis(dim, len(ctx.out.shape))
    parts = [ctx.op("unsqueeze", x, axes=[d], dtype=dtype,
                    shape=tuple(x.shape[:d]) + (1,) + tuple(x.shape[d:])) for x in xs]
    return parts[0] if len(parts) == 1 else ctx.op("concat", parts, axis=d)


def _split(ctx, x: Value, sizes: list, dim: int):
    d = axis(dim, x.rank)
    outs, begin = [], 0
    metas = ctx.out if isinstance(ctx.out, tuple) else ()
    for i, size in enumerate(sizes):
        end = dim_add(begin, size)
        shape = metas[i].shape if i < len(metas) else None
        outs.append(slice_axis(ctx, x, d, begin, end, shape=shape)
                    if len(sizes) > 1 else x)
        begin = end
    return tuple(outs)


def _static(size, what):
    if not isinstance(size, int):
        raise TranslationError(f"{what} along a dynamic axis", "make that axis static")
    return size


def _traced_sizes(ctx, x: Value, dim: int, what: str) -> list | None:
    """The part sizes torch worked out for a split of a dynamic axis into a number of parts
    fixed while tracing (ProphetNet's streams: chunk(1 + ngram) of the tokens), or None when
    the axis is static."""
    d = axis(dim, x.rank)
    if isinstance(x.shape[d], int):
        return None
    metas = ctx.out if isinstance(ctx.out, tuple) else ()
    if not metas or any(m.shape is None for m in metas):
        raise TranslationError(f"{what} along a dynamic axis", "make that axis static")
    return [m.shape[d] for m in metas]


@translates(aten.split.Tensor)
def split(ctx, self, split_size, dim=0):
    """split.Tensor(Tensor(a -> *) self, SymInt split_size, int dim=0) -> Tensor(a)[]"""
    sizes = _traced_sizes(ctx, self, dim, "split")
    if sizes is not None:
        return _split(ctx, self, sizes, dim)
    total = _static(self.shape[axis(dim, self.rank)], "split")
    sizes = [min(split_size, total - i) for i in range(0, total, split_size)]
    return _split(ctx, self, sizes, dim)


@translates(aten.split_with_sizes.default, aten.split.sizes)
def split_with_sizes(ctx, self, split_sizes, dim=0):
    """split_with_sizes(Tensor(a -> *) self, SymInt[] split_sizes, int dim=0) -> Tensor(a)[]"""
    return _split(ctx, self, list(split_sizes), dim)


@translates(aten.chunk.default)
def chunk(ctx, self, chunks, dim=0):
    """chunk(Tensor(a -> *) self, int chunks, int dim=0) -> Tensor(a)[]"""
    sizes = _traced_sizes(ctx, self, dim, "chunk")
    if sizes is not None:
        return _split(ctx, self, sizes, dim)
    total = _static(self.shape[axis(dim, self.rank)], "chunk")
    size = -(-total // chunks)
    return split(ctx, self, size, dim)


@translates(aten.unbind.int)
def unbind(ctx, self, dim=0):
    """unbind.int(Tensor(a -> *) self, int dim=0) -> Tensor(a)[]"""
    d = axis(dim, self.rank)
    n = _static(self.shape[d], "unbind")
    outs = []
    for i in range(n):
        shape = tuple(self.shape[:d]) + (1,) + tuple(self.shape[d + 1:])
        part = ctx.op("slice", self, axes=[d], begin=[i], end=[i + 1], shape=shape,
                      dtype=self.dtype)
        outs.append(ctx.op("squeeze", part, axes=[d], shape=shape[:d] + shape[d + 1:],
                           dtype=self.dtype))
    return tuple(outs)


@translates(aten.diff.default)
def diff(ctx, self, n=1, dim=-1, prepend=None, append=None):
    """diff(Tensor self, int n=1, int dim=-1, Tensor? prepend=None, Tensor? append=None) -> Tensor"""
    d = axis(dim, self.rank)
    x = self
    parts = [p for p in (prepend, x, append) if p is not None]
    if len(parts) > 1:
        size = 0
        for p in parts:
            size = dim_add(size, p.shape[d])
        shape = tuple(x.shape[:d]) + (size,) + tuple(x.shape[d + 1:])
        x = ctx.op("concat", [operand(ctx, p, x.dtype) for p in parts], axis=d, shape=shape,
                   dtype=x.dtype)
    op = "ne" if x.dtype == "bool" else "sub"
    for _ in range(n):
        size = x.shape[d]
        shorter = tuple(x.shape[:d]) + (dim_sub(size, 1),) + tuple(x.shape[d + 1:])
        head = slice_axis(ctx, x, d, 1, size, shape=shorter)
        tail = slice_axis(ctx, x, d, 0, dim_sub(size, 1), shape=shorter)
        x = ctx.op("tract_core_xor" if op == "ne" else "sub", head, tail, shape=shorter,
                   dtype=x.dtype)
    return x


# -- strided views ---------------------------------------------------------------------------
@translates(aten.diagonal.default, aten.diagonal_copy.default, aten.linalg_diagonal.default)
def diagonal(ctx, self, offset=0, dim1=0, dim2=1):
    """diagonal(Tensor(a) self, int offset=0, int dim1=0, int dim2=1) -> Tensor(a)"""
    rank = self.rank
    a, b = axis(dim1, rank), axis(dim2, rank)
    rows, cols = _static(self.shape[a], "diagonal"), _static(self.shape[b], "diagonal")
    length = ctx.out.shape[-1]
    if length == 0:
        raise TranslationError(f"diagonal with offset {offset} of a {rows}x{cols} matrix is "
                               "empty", "tract has no empty tensors: choose an offset inside")
    perm = [i for i in range(rank) if i not in (a, b)] + [a, b]
    x = self if perm == list(range(rank)) else ctx.op(
        "transpose", self, axes=perm, shape=tuple(self.shape[i] for i in perm), dtype=self.dtype)
    # the two axes as one of rows * cols: the diagonal is every (cols + 1)-th element from
    # the offset's first one, gathered (tract 0.23.9's optimiser fails on a strided slice
    # after this reshape: "Invalid axis")
    flat = ctx.op("reshape", x, [rows * cols], axis_start=rank - 2, axis_count=2,
                  shape=tuple(x.shape[:-2]) + (rows * cols,), dtype=x.dtype)
    start = offset if offset >= 0 else -offset * cols
    index = ctx.const(start + np.arange(length, dtype=np.int64) * (cols + 1), "diagonal")
    return ctx.op("tract_core_gather", flat, index, axis=rank - 2, shape=ctx.out.shape,
                  dtype=self.dtype)


@translates(aten.as_strided.default, aten.as_strided_copy.default)
def as_strided(ctx, self, size, stride, storage_offset=None):
    """as_strided(Tensor(a) self, SymInt[] size, SymInt[] stride, SymInt? storage_offset=None) -> Tensor(a)

    The graph's tensors are contiguous: the view's elements are gathered from the flattened
    input at the positions its strides name (static shapes only)."""
    dims = [_static(s, "as_strided") for s in (*self.shape, *size, *stride)]
    numel = int(np.prod(dims[:self.rank], dtype=np.int64))
    positions = np.full(tuple(size), int(storage_offset or 0), dtype=np.int64)
    for d, (n, step) in enumerate(zip(size, stride)):
        positions += (np.arange(n, dtype=np.int64) * step).reshape(
            [n if i == d else 1 for i in range(len(size))])
    if positions.size == 0 or positions.min() < 0 or positions.max() >= numel:
        raise TranslationError(f"as_strided(size={list(size)}, stride={list(stride)}) reads "
                               f"outside the input's {numel} elements or nothing",
                               "use a view inside the tensor")
    flat = self if self.rank == 1 else ctx.op("reshape", self, attrs={"shape": [numel]},
                                              shape=(numel,), dtype=self.dtype)
    index = ctx.const(positions if positions.ndim else positions.reshape(1), "strided")
    out = ctx.op("tract_core_gather", flat, index, axis=0,
                 shape=tuple(size) if size else (1,), dtype=self.dtype)
    return out if size else ctx.op("squeeze", out, axes=[0], shape=(), dtype=self.dtype)
