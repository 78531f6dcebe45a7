"""Normalization layers: layer, RMS, group, batch and instance norms, and weight norm.

With the ``f32_norm`` option an f16 graph computes these in f32 (input, weight and bias cast
up, result cast back): f16 sums over long rows lose most of their precision.
"""
from __future__ import annotations

import torch

from t2n.errors import TranslationError
from t2n.translate.context import Value
from t2n.translate.families._common import operand, outputs_read, same_dtype
from t2n.translate.registry import translates

aten = torch.ops.aten


# -- shared pieces ---------------------------------------------------------------------------
def _work_dtype(ctx, dtype: str) -> str:
    """The dtype a norm computes in: f32 for f16 under ``f32_norm``, else the input's."""
    return "f32" if ctx.options.f32_norm and dtype == "f16" else dtype


def _metas(ctx) -> tuple:
    """The node's output metas as a tuple (single-output ops give a 1-tuple)."""
    return ctx.out if isinstance(ctx.out, tuple) else (ctx.out,)


def _reduced(shape, axes) -> tuple:
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def _bin(ctx, op, x, other):
    """``op(x, other)`` in x's dtype, operands aligned on the right as torch does."""
    a, b = same_dtype(ctx, x, other, dtype=x.dtype)
    return ctx.op(op, a, b, **ctx.like(a if a.rank >= b.rank else b))


def _normalize(ctx, x, axes: list[int], eps: float):
    """(x - mean) * rstd over ``axes``, with mean and rstd (reduced axes kept as size 1)."""
    kept = _reduced(x.shape, axes)
    mean = ctx.op("mean_reduce", x, axes=axes, **ctx.like(x, shape=kept))
    centered = _bin(ctx, "sub", x, mean)
    square = ctx.op("sqr", centered, **ctx.like(x))
    var = ctx.op("mean_reduce", square, axes=axes, **ctx.like(x, shape=kept))
    rstd = ctx.op("rsqrt", _bin(ctx, "add", var, float(eps)), **ctx.like(var))
    return _bin(ctx, "mul", centered, rstd), mean, rstd


def _per_channel(ctx, p: Value, rank: int) -> Value:
    """A [C] parameter shaped [C, 1, ..., 1] so it lines up with axis 1 of a rank-``rank``
    tensor (same_dtype then adds the leading unit axis)."""
    trailing = list(range(1, rank - 1))
    if not trailing:
        return p
    return ctx.op("unsqueeze", p, axes=trailing,
                  **ctx.like(p, shape=tuple(p.shape) + (1,) * len(trailing)))


def _affine(ctx, y, weight, bias, channel: bool):
    """``y * weight + bias`` (either may be None); ``channel``: [C] parameters on axis 1,
    otherwise parameters of the trailing normalized shape."""
    for param, op in ((weight, "mul"), (bias, "add")):
        if param is None:
            continue
        p = operand(ctx, param, y.dtype)
        y = _bin(ctx, op, y, _per_channel(ctx, p, y.rank) if channel else p)
    return y


def _finish(ctx, values):
    """Cast each result to its output meta's dtype; a tuple for multi-output nodes."""
    outs = tuple(ctx.cast(v, m.dtype) for v, m in zip(values, _metas(ctx)))
    return outs if isinstance(ctx.out, tuple) else outs[0]


def _reshape(ctx, x, dims: list, axis_start: int, axis_count: int, shape):
    """Reshape ``axis_count`` axes from ``axis_start`` into ``dims``, leaving the others (the
    target dims go positionally: ctx.op's own ``shape`` keyword is the output meta)."""
    return ctx.op("reshape", x, list(dims), axis_start=axis_start, axis_count=axis_count,
                  **ctx.like(x, shape=shape))


def _static(size, what: str) -> int:
    if not isinstance(size, int):
        raise TranslationError(f"{what} is symbolic ({size.expr})", "make that axis static")
    return size


# -- layer norm ------------------------------------------------------------------------------
def _layer_norm(ctx, input, normalized_shape, weight, bias, eps):
    x = operand(ctx, input, _work_dtype(ctx, _metas(ctx)[0].dtype))
    axes = list(range(x.rank - len(normalized_shape), x.rank))
    y, mean, rstd = _normalize(ctx, x, axes, eps)
    return _affine(ctx, y, weight, bias, False), mean, rstd


@translates(aten.layer_norm.default)
def layer_norm(ctx, input, normalized_shape, weight=None, bias=None, eps=1e-05,
               cudnn_enable=True):
    """layer_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight=None, Tensor? bias=None, float eps=1e-05, bool cudnn_enable=True) -> Tensor"""  # noqa: E501
    y, _, _ = _layer_norm(ctx, input, normalized_shape, weight, bias, eps)
    return _finish(ctx, [y])


@translates(aten.native_layer_norm.default)
def native_layer_norm(ctx, input, normalized_shape, weight, bias, eps):
    """native_layer_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)"""  # noqa: E501
    return _finish(ctx, _layer_norm(ctx, input, normalized_shape, weight, bias, eps))


# -- RMS norm --------------------------------------------------------------------------------
@translates(aten.rms_norm.default)
def rms_norm(ctx, input, normalized_shape, weight=None, eps=None):
    """rms_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight=None, float? eps=None) -> Tensor"""  # noqa: E501
    x = operand(ctx, input, _work_dtype(ctx, ctx.out.dtype))
    if eps is None:  # torch uses the epsilon of the type it computes in (f32 for f16)
        eps = torch.finfo(torch.float64 if x.dtype == "f64" else torch.float32).eps
    start = x.rank - len(normalized_shape)
    if len(normalized_shape) > 1:  # tract normalizes over one axis: merge the trailing ones
        size = 1
        for d in x.shape[start:]:
            size *= _static(d, "a normalized axis of rms_norm")
        flat = _reshape(ctx, x, [size], start, len(normalized_shape), x.shape[:start] + (size,))
        y = ctx.op("tract_core_rms_norm", flat, axis=start, eps=float(eps), **ctx.like(flat))
        y = _reshape(ctx, y, list(x.shape[start:]), start, 1, x.shape)
    else:
        y = ctx.op("tract_core_rms_norm", x, axis=start, eps=float(eps), **ctx.like(x))
    return _finish(ctx, [_affine(ctx, y, weight, None, False)])


# -- group norm ------------------------------------------------------------------------------
def _group_norm(ctx, input, weight, bias, groups: int, eps: float):
    """Normalized output, and mean and rstd of shape [N, groups]."""
    x = operand(ctx, input, _work_dtype(ctx, _metas(ctx)[0].dtype))
    channels = _static(x.shape[1], "the channel axis of group_norm")
    if channels % groups:
        raise TranslationError(f"group_norm of {channels} channels in {groups} groups",
                               "the channel count must be a multiple of the groups")
    grouped_shape = (x.shape[0], groups, channels // groups) + tuple(x.shape[2:])
    grouped = _reshape(ctx, x, [groups, channels // groups], 1, 1, grouped_shape)
    axes = list(range(2, len(grouped_shape)))
    y, mean, rstd = _normalize(ctx, grouped, axes, eps)
    y = _reshape(ctx, y, [channels], 1, 2, x.shape)
    y = _affine(ctx, y, weight, bias, True)
    stat = (x.shape[0], groups)
    mean, rstd = (ctx.op("squeeze", s, axes=axes, **ctx.like(s, shape=stat)) for s in (mean, rstd))
    return y, mean, rstd


@translates(aten.group_norm.default)
def group_norm(ctx, input, num_groups, weight=None, bias=None, eps=1e-05, cudnn_enabled=True):
    """group_norm(Tensor input, int num_groups, Tensor? weight=None, Tensor? bias=None, float eps=1e-05, bool cudnn_enabled=True) -> Tensor"""  # noqa: E501
    y, _, _ = _group_norm(ctx, input, weight, bias, num_groups, eps)
    return _finish(ctx, [y])


@translates(aten.native_group_norm.default)
def native_group_norm(ctx, input, weight, bias, N, C, HxW, group, eps):
    """native_group_norm(Tensor input, Tensor? weight, Tensor? bias, SymInt N, SymInt C, SymInt HxW, int group, float eps) -> (Tensor, Tensor, Tensor)"""  # noqa: E501
    return _finish(ctx, _group_norm(ctx, input, weight, bias, group, eps))


# -- batch and instance norms ----------------------------------------------------------------
def _batch_norm(ctx, input, weight, bias, running_mean, running_var, batch_stats: bool,
                eps: float, axes: list[int]):
    """Normalized output, with its statistics (reduced axes kept) when ``batch_stats`` asks
    for them to be computed over ``axes`` instead of taken from the running ones."""
    x = operand(ctx, input, _work_dtype(ctx, _metas(ctx)[0].dtype))
    if batch_stats:
        y, mean, rstd = _normalize(ctx, x, axes, eps)
        return _affine(ctx, y, weight, bias, True), mean, rstd
    if running_mean is None or running_var is None:
        raise TranslationError("batch norm in inference mode without running statistics",
                               "export a model whose norms track running statistics")
    mean = _per_channel(ctx, operand(ctx, running_mean, x.dtype), x.rank)
    var = _per_channel(ctx, operand(ctx, running_var, x.dtype), x.rank)
    rstd = ctx.op("rsqrt", _bin(ctx, "add", var, float(eps)), **ctx.like(var))
    y = _bin(ctx, "mul", _bin(ctx, "sub", x, mean), rstd)
    return _affine(ctx, y, weight, bias, True), None, None


def _batch_axes(input) -> list[int]:
    """All axes but the channel one."""
    return [0] + list(range(2, input.rank))


def _empty_stats(ctx, running_mean):
    """The [0]-shaped placeholders torch returns for the statistics of inference mode."""
    empty = ctx.op("slice", running_mean, axes=[0], begin=[0], end=[0],
                   **ctx.like(running_mean, shape=(0,)))
    return [empty, empty]


@translates(aten.batch_norm.default)
def batch_norm(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps,
               cudnn_enabled):
    """batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, bool training, float momentum, float eps, bool cudnn_enabled) -> Tensor"""  # noqa: E501
    y, _, _ = _batch_norm(ctx, input, weight, bias, running_mean, running_var, training, eps,
                          _batch_axes(input))
    return _finish(ctx, [y])


@translates(aten._native_batch_norm_legit_no_training.default)
def _native_batch_norm_legit_no_training(ctx, input, weight, bias, running_mean, running_var,
                                         momentum, eps):
    """_native_batch_norm_legit_no_training(Tensor input, Tensor? weight, Tensor? bias, Tensor running_mean, Tensor running_var, float momentum, float eps) -> (Tensor, Tensor, Tensor)"""  # noqa: E501
    y, _, _ = _batch_norm(ctx, input, weight, bias, running_mean, running_var, False, eps, [])
    return _finish(ctx, [y, *_empty_stats(ctx, running_mean)])


@translates(aten.native_batch_norm.default)
def native_batch_norm(ctx, input, weight, bias, running_mean, running_var, training, momentum,
                      eps):
    """native_batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, bool training, float momentum, float eps) -> (Tensor, Tensor, Tensor)"""  # noqa: E501
    axes = _batch_axes(input)
    y, mean, rstd = _batch_norm(ctx, input, weight, bias, running_mean, running_var, training,
                                eps, axes)
    if not training:
        return _finish(ctx, [y, *_empty_stats(ctx, running_mean)])
    stat = (input.shape[1],)  # training mode also returns the batch statistics, as [C]
    mean, rstd = (ctx.op("squeeze", s, axes=axes, **ctx.like(s, shape=stat)) for s in (mean, rstd))
    return _finish(ctx, [y, mean, rstd])


@translates(aten._native_batch_norm_legit.default)
def _native_batch_norm_legit(ctx, input, weight, bias, running_mean, running_var, training,
                             momentum, eps):
    """_native_batch_norm_legit(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!) running_mean, Tensor(b!) running_var, bool training, float momentum, float eps) -> (Tensor, Tensor, Tensor)"""  # noqa: E501
    # training mode normalizes with the batch's own statistics; the running ones it would
    # update in place are not a bundle's output (an inference graph computes the same values)
    return native_batch_norm(ctx, input, weight, bias, running_mean, running_var, training,
                             momentum, eps)


@translates(aten._native_batch_norm_legit.no_stats)
def _native_batch_norm_legit_no_stats(ctx, input, weight, bias, training, momentum, eps):
    """_native_batch_norm_legit.no_stats(Tensor input, Tensor? weight, Tensor? bias, bool training, float momentum, float eps) -> (Tensor, Tensor, Tensor)"""  # noqa: E501
    if not training:
        raise TranslationError("batch norm in inference mode without running statistics",
                               "export a model whose norms track running statistics")
    return native_batch_norm(ctx, input, weight, bias, None, None, True, momentum, eps)


@translates(aten._native_batch_norm_legit_functional.default)
def _native_batch_norm_legit_functional(ctx, input, weight, bias, running_mean, running_var,
                                        training, momentum, eps):
    """_native_batch_norm_legit_functional(Tensor input, Tensor? weight, Tensor? bias, Tensor running_mean, Tensor running_var, bool training, float momentum, float eps) -> (Tensor, Tensor, Tensor, Tensor running_mean_out, Tensor running_var_out)"""  # noqa: E501
    y, mean, rstd = native_batch_norm(ctx, input, weight, bias, running_mean, running_var,
                                      training, momentum, eps)
    new_mean = new_var = None
    read = outputs_read(ctx)
    if read is None or read & {3, 4}:
        new_mean, new_var = _updated_stats(ctx, input, running_mean, running_var, mean, rstd,
                                           training, momentum, eps)
    return y, mean, rstd, new_mean, new_var


def _updated_stats(ctx, input, running_mean, running_var, mean, rstd, training, momentum, eps):
    """The running statistics after this step: unchanged in inference mode; in training mode
    (1 - momentum) * running + momentum * batch, the batch variance unbiased (n / (n - 1))."""
    metas = _metas(ctx)
    if not training:
        return running_mean, running_var
    n = 1
    for ax in _batch_axes(input):
        n *= _static(input.shape[ax], "the batch axes of a training-mode batch norm")
    square = _bin(ctx, "mul", rstd, rstd)
    var = _bin(ctx, "sub", ctx.op("div", 1.0, square, **ctx.like(square)), float(eps))
    var = _bin(ctx, "mul", var, n / max(n - 1, 1))
    out = []
    for running, batch, meta in ((running_mean, mean, metas[3]), (running_var, var, metas[4])):
        r = operand(ctx, running, batch.dtype)
        mixed = _bin(ctx, "add", _bin(ctx, "mul", r, 1.0 - float(momentum)),
                     _bin(ctx, "mul", batch, float(momentum)))
        out.append(ctx.cast(mixed, meta.dtype))
    return out


@translates(aten.instance_norm.default)
def instance_norm(ctx, input, weight, bias, running_mean, running_var, use_input_stats,
                  momentum, eps, cudnn_enabled):
    """instance_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, bool use_input_stats, float momentum, float eps, bool cudnn_enabled) -> Tensor"""  # noqa: E501
    y, _, _ = _batch_norm(ctx, input, weight, bias, running_mean, running_var, use_input_stats,
                          eps, list(range(2, input.rank)))
    return _finish(ctx, [y])


# -- weight norm -----------------------------------------------------------------------------
def _weight_normalized(ctx, v, g, dim: int):
    """``v * (g / ||v||)`` and the norm: the 2-norm of ``v`` over every axis but ``dim`` (over
    all of them for dim -1, as torch's norm_except_dim), reduced axes kept as size 1. f16
    weights are normalized in f32."""
    dtype = _metas(ctx)[0].dtype
    x = operand(ctx, v, "f32" if dtype == "f16" else dtype)
    keep = None if dim == -1 else dim % x.rank
    axes = [i for i in range(x.rank) if i != keep]
    square = ctx.op("sqr", x, **ctx.like(x))
    total = ctx.op("sum_reduce", square, axes=axes, **ctx.like(x, shape=_reduced(x.shape, axes)))
    norm = ctx.op("sqrt", total, **ctx.like(total))
    return _bin(ctx, "mul", x, _bin(ctx, "div", operand(ctx, g, x.dtype), norm)), norm


@translates(aten._weight_norm.default)
def _weight_norm(ctx, v, g, dim=0):
    """_weight_norm(Tensor v, Tensor g, int dim=0) -> Tensor"""
    w, _ = _weight_normalized(ctx, v, g, dim)
    return _finish(ctx, [w])


@translates(aten._weight_norm_interface.default)
def _weight_norm_interface(ctx, v, g, dim=0):
    """_weight_norm_interface(Tensor v, Tensor g, int dim=0) -> (Tensor, Tensor)"""
    return _finish(ctx, _weight_normalized(ctx, v, g, dim))
