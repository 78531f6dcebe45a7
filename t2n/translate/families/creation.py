"""Tensors made from sizes and values: arange, full, zeros/ones, *_like, new_*, fill."""
from __future__ import annotations

import torch

from t2n.errors import TranslationError
from t2n.nnef.graph import Dim
from t2n.translate.families._common import dim_add, operand
from t2n.translate.registry import translates

aten = torch.ops.aten

_INTEGER = (int, Dim)


def _filled(ctx, value):
    """A tensor of the node's shape and dtype holding ``value`` everywhere."""
    return ctx.op("tract_core_broadcast", operand(ctx, value, ctx.out.dtype),
                  attrs={"shape": list(ctx.out.shape)})


# -- ranges ---------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, _INTEGER) and not isinstance(v, bool)


def _arange(ctx, start, end, step):
    dtype, n = ctx.out.dtype, ctx.out.shape[0]
    integer = dtype not in ("f16", "f32", "f64")
    if integer and not (_is_int(start) and _is_int(step)):
        start, step = int(start), int(step)  # torch converts them to the integer dtype
    if _is_int(start) and _is_int(step):
        if not _is_int(end):  # a float end (so a static length): only the length counts
            end = dim_add(start, n * step)
        r = ctx.op("tract_core_range", start, end, step, shape=(n,), dtype="i64")
        return ctx.cast(r, dtype)
    # float start or step: start + i * step, computed in f32 (f64 for f64)
    work = "f64" if dtype == "f64" else "f32"
    i = ctx.cast(ctx.op("tract_core_range", 0, n, 1, shape=(n,), dtype="i64"), work)
    y = ctx.op("mul", i, operand(ctx, step, work), shape=(n,), dtype=work)
    y = ctx.op("add", y, operand(ctx, start, work), shape=(n,), dtype=work)
    return ctx.cast(y, dtype)


@translates(aten.arange.default)
def arange(ctx, end, dtype=None, layout=None, device=None, pin_memory=None):
    """arange(Scalar end, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None) -> Tensor"""
    return _arange(ctx, 0, end, 1)


@translates(aten.arange.start)
def arange_start(ctx, start, end, dtype=None, layout=None, device=None, pin_memory=None):
    """arange.start(Scalar start, Scalar end, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None) -> Tensor"""
    return _arange(ctx, start, end, 1)


@translates(aten.arange.start_step)
def arange_start_step(ctx, start, end, step=1, dtype=None, layout=None, device=None,
                      pin_memory=None):
    """arange.start_step(Scalar start, Scalar end, Scalar step=1, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None) -> Tensor"""
    return _arange(ctx, start, end, step)


# -- filled tensors -------------------------------------------------------------------------
@translates(aten.full.default)
def full(ctx, size, fill_value, dtype=None, layout=None, device=None, pin_memory=None):
    """full(SymInt[] size, Scalar fill_value, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None) -> Tensor"""
    return _filled(ctx, fill_value)


@translates(aten.zeros.default)
def zeros(ctx, size, dtype=None, layout=None, device=None, pin_memory=None):
    """zeros(SymInt[] size, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None) -> Tensor"""
    return _filled(ctx, 0)


@translates(aten.ones.default)
def ones(ctx, size, dtype=None, layout=None, device=None, pin_memory=None):
    """ones(SymInt[] size, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None) -> Tensor"""
    return _filled(ctx, 1)


@translates(aten.full_like.default)
def full_like(ctx, self, fill_value, dtype=None, layout=None, device=None, pin_memory=None,
              memory_format=None):
    """full_like(Tensor self, Scalar fill_value, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None, MemoryFormat? memory_format=None) -> Tensor"""
    return _filled(ctx, fill_value)


@translates(aten.zeros_like.default, aten.empty_like.default)
def zeros_like(ctx, self, dtype=None, layout=None, device=None, pin_memory=None,
               memory_format=None):
    """zeros_like(Tensor self, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None, MemoryFormat? memory_format=None) -> Tensor"""
    return _filled(ctx, 0)


@translates(aten.ones_like.default)
def ones_like(ctx, self, dtype=None, layout=None, device=None, pin_memory=None,
              memory_format=None):
    """ones_like(Tensor self, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None, MemoryFormat? memory_format=None) -> Tensor"""
    return _filled(ctx, 1)


@translates(aten.new_zeros.default, aten.new_empty.default)
def new_zeros(ctx, self, size, dtype=None, layout=None, device=None, pin_memory=None):
    """new_zeros(Tensor self, SymInt[] size, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None) -> Tensor"""
    return _filled(ctx, 0)


@translates(aten.new_ones.default)
def new_ones(ctx, self, size, dtype=None, layout=None, device=None, pin_memory=None):
    """new_ones(Tensor self, SymInt[] size, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None) -> Tensor"""
    return _filled(ctx, 1)


@translates(aten.new_full.default)
def new_full(ctx, self, size, fill_value, dtype=None, layout=None, device=None,
             pin_memory=None):
    """new_full(Tensor self, SymInt[] size, Scalar fill_value, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None) -> Tensor"""
    return _filled(ctx, fill_value)


@translates(aten.scalar_tensor.default)
def scalar_tensor(ctx, s, dtype=None, layout=None, device=None, pin_memory=None):
    """scalar_tensor(Scalar s, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None) -> Tensor"""
    return _filled(ctx, s)


@translates(aten.fill.Scalar, aten.fill.Tensor, aten.fill_.Scalar, aten.fill_.Tensor)
def fill(ctx, self, value):
    """fill.Scalar(Tensor self, Scalar value) -> Tensor"""
    return _filled(ctx, value)


@translates(aten.zero_.default, aten.zero.default)
def zero_(ctx, self):
    """zero_(Tensor(a!) self) -> Tensor(a!)"""
    return _filled(ctx, 0)


# Ops that overwrite every element of their first argument (in-place, or their functional
# forms once torch has functionalized the graph).
_OVERWRITES = (aten.fill_.Scalar, aten.fill_.Tensor, aten.zero_.default, aten.copy_.default,
               aten.fill.Scalar, aten.fill.Tensor, aten.zero.default, aten.copy.default)


@translates(aten.empty.memory_format)
def empty(ctx, size, dtype=None, layout=None, device=None, pin_memory=None,
          memory_format=None):
    """empty.memory_format(SymInt[] size, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None, MemoryFormat? memory_format=None) -> Tensor"""
    users = list(ctx.node.users)
    if not users or not all(_writes_into(u, ctx.node) for u in users):
        raise TranslationError("torch.empty whose uninitialized values are read",
                               "create it with torch.zeros, or fill it before use")
    return _filled(ctx, 0)


@translates(aten.empty_strided.default)
def empty_strided(ctx, size, stride, dtype=None, layout=None, device=None, pin_memory=None):
    """empty_strided(SymInt[] size, SymInt[] stride, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None) -> Tensor"""  # noqa: E501
    # strides only lay out memory; a bundle's tensors have none
    return empty(ctx, size)


def _writes_into(user, node) -> bool:
    """Whether ``user`` of an empty tensor only writes into it: an overwrite, a functional
    slice/select scatter into it (the rest kept, written by later scatters: a pad's
    decomposition), or a slice of it whose only use is to be overwritten by a copy."""
    if user.args[0] is not node:
        return False
    if user.target in _OVERWRITES or user.target in (aten.slice_scatter.default,
                                                     aten.select_scatter.default):
        return True
    return user.target is aten.slice.Tensor and bool(user.users) and all(
        u.target in (aten.copy.default, aten.copy_.default) and u.args[0] is user
        for u in user.users)
