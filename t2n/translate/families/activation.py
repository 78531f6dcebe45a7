"""Activation functions, softmax and log-softmax."""
from __future__ import annotations

import math

from t2n.errors import TranslationError
from t2n.translate.families._common import axis, operand, same_dtype
from t2n.translate.families.elementwise import clamp
from t2n.translate.registry import translates

aten = __import__("torch").ops.aten

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _input(ctx, self):
    """``self`` in the node's output dtype."""
    return operand(ctx, self, ctx.out.dtype)


def _wide(ctx, self):
    """``self`` for a composite formula: f16 goes to f32, as torch computes these in f32 and
    rounds once (in f16, log(1 + exp(-|x|)) alone is off by a few output ulps)."""
    return operand(ctx, self, "f32" if ctx.out.dtype == "f16" else ctx.out.dtype)


def _bin(ctx, op, x, other):
    """``op(x, other)`` for a tensor ``x`` and a tensor or Python scalar of x's dtype."""
    a, b = same_dtype(ctx, x, other, dtype=x.dtype)
    return ctx.op(op, a, b, **ctx.like(a if a.rank >= b.rank else b))


def _unary(ctx, op, x):
    return ctx.op(op, x, **ctx.like(x))


def _compare(ctx, op, x, value):
    """A bool tensor ``x op value``."""
    a, b = same_dtype(ctx, x, value, dtype=x.dtype)
    return ctx.op(op, a, b, **ctx.like(a if a.rank >= b.rank else b, dtype="bool"))


def _select(ctx, cond, a, b):
    """``cond ? a : b`` in the dtype of ``a``."""
    a, b = same_dtype(ctx, a, b, dtype=a.dtype)
    return ctx.op("select", cond, a, b, **ctx.like(a if a.rank >= b.rank else b))


def _softplus_unit(ctx, z):
    """log(1 + exp(z)) without overflow: max(z, 0) + log(1 + exp(-|z|))."""
    tail = _unary(ctx, "exp", _unary(ctx, "neg", _unary(ctx, "abs", z)))
    tail = _unary(ctx, "log", _bin(ctx, "add", tail, 1.0))
    return _bin(ctx, "add", _bin(ctx, "max", z, 0.0), tail)


@translates(aten.gelu.default)
def gelu(ctx, self, approximate="none"):
    """gelu(Tensor self, *, str approximate="none") -> Tensor"""
    if approximate == "tanh":  # tract's pow-3 form is torch's tanh formula
        return ctx.op("tract_core_gelu_approx", _input(ctx, self), fast_impl=False)
    if approximate != "none":
        raise TranslationError(f"gelu approximate={approximate!r}", "use 'none' or 'tanh'")
    x = _wide(ctx, self)
    erf = _unary(ctx, "tract_core_erf", _bin(ctx, "mul", x, math.sqrt(0.5)))
    y = _bin(ctx, "mul", _bin(ctx, "mul", x, 0.5), _bin(ctx, "add", erf, 1.0))
    return ctx.cast(y, ctx.out.dtype)


@translates(aten.silu.default)
def silu(ctx, self):
    """silu(Tensor self) -> Tensor"""
    return ctx.op("tract_core_silu", _input(ctx, self))


@translates(aten.hardswish.default)
def hardswish(ctx, self):
    """hardswish(Tensor self) -> Tensor"""
    return ctx.op("tract_core_hard_swish", _input(ctx, self))


@translates(aten.hardsigmoid.default)
def hardsigmoid(ctx, self):
    """hardsigmoid(Tensor self) -> Tensor"""
    x = _input(ctx, self)
    return clamp(ctx, _bin(ctx, "add", _bin(ctx, "div", x, 6.0), 0.5), min=0.0, max=1.0)


@translates(aten.relu6.default)
def relu6(ctx, self):
    """relu6(Tensor self) -> Tensor"""
    return clamp(ctx, self, min=0.0, max=6.0)


@translates(aten.leaky_relu.default)
def leaky_relu(ctx, self, negative_slope=0.01):
    """leaky_relu(Tensor self, Scalar negative_slope=0.01) -> Tensor"""
    return ctx.op("leaky_relu", _input(ctx, self), alpha=float(negative_slope))


@translates(aten.rrelu.default)
def rrelu(ctx, self, lower=0.125, upper=1.0 / 3.0, training=False, generator=None):
    """rrelu(Tensor self, Scalar lower=0.125, Scalar upper=0.3333333333333333, bool training=False, Generator? generator=None) -> Tensor"""  # noqa: E501
    if training:
        raise TranslationError("rrelu in training mode draws random slopes",
                               "call model.eval() before export")
    return leaky_relu(ctx, self, (lower + upper) / 2)


@translates(aten.elu.default)
def elu(ctx, self, alpha=1, scale=1, input_scale=1):
    """elu(Tensor self, Scalar alpha=1, Scalar scale=1, Scalar input_scale=1) -> Tensor"""
    x = _wide(ctx, self)
    neg = _bin(ctx, "mul", _bin(ctx, "min", x, 0.0), float(input_scale))  # no overflow in exp
    neg = _bin(ctx, "mul", _bin(ctx, "sub", _unary(ctx, "exp", neg), 1.0), float(alpha * scale))
    pos = _bin(ctx, "mul", x, float(scale)) if scale != 1 else x
    return ctx.cast(_select(ctx, _compare(ctx, "gt", x, 0.0), pos, neg), ctx.out.dtype)


@translates(aten.celu.default)
def celu(ctx, self, alpha=1.0):
    """celu(Tensor self, Scalar alpha=1.) -> Tensor"""
    if alpha == 0:
        raise TranslationError("celu with alpha=0", "torch rejects it too: use alpha != 0")
    return elu(ctx, self, alpha=alpha, input_scale=1.0 / alpha)


@translates(aten.selu.default)
def selu(ctx, self):
    """selu(Tensor self) -> Tensor"""
    return elu(ctx, self, alpha=_SELU_ALPHA, scale=_SELU_SCALE)


@translates(aten.softplus.default)
def softplus(ctx, self, beta=1, threshold=20):
    """softplus(Tensor self, Scalar beta=1, Scalar threshold=20) -> Tensor"""
    x = _wide(ctx, self)
    z = _bin(ctx, "mul", x, float(beta)) if beta != 1 else x
    soft = _softplus_unit(ctx, z)
    soft = _bin(ctx, "div", soft, float(beta)) if beta != 1 else soft
    return ctx.cast(_select(ctx, _compare(ctx, "gt", z, float(threshold)), x, soft),
                    ctx.out.dtype)


@translates(aten.mish.default)
def mish(ctx, self):
    """mish(Tensor self) -> Tensor"""
    x = _wide(ctx, self)
    y = _bin(ctx, "mul", x, _unary(ctx, "tanh", _softplus_unit(ctx, x)))
    return ctx.cast(y, ctx.out.dtype)


@translates(aten.log_sigmoid.default)
def log_sigmoid(ctx, self):
    """log_sigmoid(Tensor self) -> Tensor"""
    x = _wide(ctx, self)
    y = _unary(ctx, "neg", _softplus_unit(ctx, _unary(ctx, "neg", x)))
    return ctx.cast(y, ctx.out.dtype)


@translates(aten._prelu_kernel.default)
def _prelu_kernel(ctx, self, weight):
    """_prelu_kernel(Tensor self, Tensor weight) -> Tensor"""
    x = _input(ctx, self)
    return _select(ctx, _compare(ctx, "lt", x, 0.0), _bin(ctx, "mul", x, weight), x)


@translates(aten.prelu.default)
def prelu(ctx, self, weight):
    """prelu(Tensor self, Tensor weight) -> Tensor"""
    w = operand(ctx, weight, ctx.out.dtype)
    if self.rank >= 2 and w.rank == 1:  # one slope per channel, on axis 1
        trailing = list(range(1, self.rank - 1))
        if trailing:
            w = ctx.op("unsqueeze", w, axes=trailing,
                       **ctx.like(w, shape=tuple(w.shape) + (1,) * len(trailing)))
    elif self.rank == 0:  # the weight holds one slope
        w = ctx.op("squeeze", w, axes=[0], **ctx.like(w, shape=()))
    return _prelu_kernel(ctx, self, w)


@translates(aten.glu.default)
def glu(ctx, self, dim=-1):
    """glu(Tensor self, int dim=-1) -> Tensor"""
    x = _input(ctx, self)
    d = axis(dim, x.rank)
    half = ctx.out.shape[d]
    a = ctx.op("slice", x, axes=[d], begin=[0], end=[half], **ctx.like(x, shape=ctx.out.shape))
    b = ctx.op("slice", x, axes=[d], begin=[half], end=[x.shape[d]],
               **ctx.like(x, shape=ctx.out.shape))
    return ctx.op("mul", a, ctx.op("sigmoid", b, **ctx.like(b)))


@translates(aten.hardshrink.default)
def hardshrink(ctx, self, lambd=0.5):
    """hardshrink(Tensor self, Scalar lambd=0.5) -> Tensor"""
    x = _input(ctx, self)
    return _select(ctx, _compare(ctx, "gt", _unary(ctx, "abs", x), float(lambd)), x, 0.0)


@translates(aten.softshrink.default)
def softshrink(ctx, self, lambd=0.5):
    """softshrink(Tensor self, Scalar lambd=0.5) -> Tensor"""
    x = _input(ctx, self)
    inner = clamp(ctx, x, min=-float(lambd), max=float(lambd))
    return ctx.op("sub", x, inner)


@translates(aten.threshold.default)
def threshold(ctx, self, threshold, value):
    """threshold(Tensor self, Scalar threshold, Scalar value) -> Tensor"""
    x = _input(ctx, self)
    return _select(ctx, _compare(ctx, "gt", x, threshold), x, value)


# -- softmax ---------------------------------------------------------------------------------
def _softmax_like(ctx, op, self, dim):
    """``op`` over axis ``dim`` of ``self`` converted to the output dtype first (so
    half_to_float and dtype= compute in the wider type, as torch does)."""
    x = _input(ctx, self)
    if x.rank == 0:  # one element: tract wants an axis, so go through shape [1]
        x1 = ctx.op("unsqueeze", x, axes=[0], **ctx.like(x, shape=(1,)))
        return ctx.op("squeeze", ctx.op(op, x1, axes=[0], **ctx.like(x1)), axes=[0])
    return ctx.op(op, x, axes=[axis(dim, x.rank)])


@translates(aten.softmax.int)
def softmax(ctx, self, dim, dtype=None):
    """softmax.int(Tensor self, int dim, ScalarType? dtype=None) -> Tensor"""
    return _softmax_like(ctx, "softmax", self, dim)


@translates(aten._softmax.default)
def _softmax(ctx, self, dim, half_to_float):
    """_softmax(Tensor self, int dim, bool half_to_float) -> Tensor"""
    return _softmax_like(ctx, "softmax", self, dim)


@translates(aten.log_softmax.int)
def log_softmax(ctx, self, dim, dtype=None):
    """log_softmax.int(Tensor self, int dim, ScalarType? dtype=None) -> Tensor"""
    return _softmax_like(ctx, "tract_core_log_softmax", self, dim)


@translates(aten._log_softmax.default)
def _log_softmax(ctx, self, dim, half_to_float):
    """_log_softmax(Tensor self, int dim, bool half_to_float) -> Tensor"""
    return _softmax_like(ctx, "tract_core_log_softmax", self, dim)
