"""Arithmetic, comparison, logic and unary math ops."""
from __future__ import annotations

import math

from t2n.errors import TranslationError
from t2n.translate.context import Value
from t2n.translate.families._common import broadcast_rank, operand, promote, same_dtype
from t2n.translate.registry import translates

aten = __import__("torch").ops.aten


# NNEF `and` is avoided: tract 0.23.9 folds and(x, y) to a wrong [1, ..., 1] shape when it can
# prove an operand uniformly true (e.g. range(0, S) >= 0). Bitwise and on bools is the same.
BOOL_AND = "tract_core_bitand"


def _binary(ctx, op: str, a, b):
    x, y = same_dtype(ctx, a, b, dtype=ctx.out.dtype)
    return ctx.op(op, x, y)


def _scaled(ctx, b, alpha, dtype):
    y = operand(ctx, b, dtype)
    if alpha == 1:
        return y
    return ctx.op("mul", y, operand(ctx, alpha, dtype), **ctx.like(y, dtype=dtype))


@translates(aten.add.Tensor, aten.add.Scalar)
def add(ctx, self, other, alpha=1):
    """add.Tensor(Tensor self, Tensor other, *, Scalar alpha=1) -> Tensor"""
    dtype = ctx.out.dtype
    if dtype == "bool":
        return ctx.op("or", *same_dtype(ctx, self, other, dtype="bool"))
    return ctx.op("add", *same_dtype(ctx, self, _scaled(ctx, other, alpha, dtype), dtype=dtype))


@translates(aten.sub.Tensor, aten.sub.Scalar)
def sub(ctx, self, other, alpha=1):
    """sub.Tensor(Tensor self, Tensor other, *, Scalar alpha=1) -> Tensor"""
    dtype = ctx.out.dtype
    return ctx.op("sub", *same_dtype(ctx, self, _scaled(ctx, other, alpha, dtype), dtype=dtype))


@translates(aten.rsub.Scalar, aten.rsub.Tensor)
def rsub(ctx, self, other, alpha=1):
    """rsub.Scalar(Tensor self, Scalar other, Scalar alpha=1) -> Tensor"""
    dtype = ctx.out.dtype
    return ctx.op("sub", *same_dtype(ctx, other, _scaled(ctx, self, alpha, dtype), dtype=dtype))


@translates(aten.mul.Tensor, aten.mul.Scalar)
def mul(ctx, self, other):
    """mul.Tensor(Tensor self, Tensor other) -> Tensor"""
    if ctx.out.dtype == "bool":
        return _binary(ctx, BOOL_AND, self, other)
    return _binary(ctx, "mul", self, other)


@translates(aten.div.Tensor, aten.div.Scalar)
def div(ctx, self, other):
    """div.Tensor(Tensor self, Tensor other) -> Tensor"""
    return _binary(ctx, "div", self, other)


@translates(aten.div.Tensor_mode, aten.div.Scalar_mode)
def div_mode(ctx, self, other, rounding_mode=None):
    """div.Tensor_mode(Tensor self, Tensor other, *, str? rounding_mode) -> Tensor"""
    dtype = ctx.out.dtype
    if rounding_mode is None:
        return _binary(ctx, "div", self, other)
    # integers are divided in f64 (exact below 2**53) and converted back
    work = dtype if dtype in ("f16", "f32", "f64") else "f64"
    shape = ctx.out.shape
    q = ctx.op("div", *same_dtype(ctx, self, other, dtype=work), dtype=work, shape=shape)
    q = ctx.op("floor", q, dtype=work, shape=shape) if rounding_mode == "floor" \
        else _trunc(ctx, q, work)
    return ctx.cast(q, dtype)


def _trunc(ctx, q, dtype=None):
    dtype = dtype or q.dtype
    neg = ctx.op("lt", q, operand(ctx, 0.0, dtype), dtype="bool")
    return ctx.op("select", neg, ctx.op("ceil", q, dtype=dtype), ctx.op("floor", q, dtype=dtype),
                  dtype=dtype, shape=q.shape)


@translates(aten.floor_divide.default, aten.floor_divide.Scalar)
def floor_divide(ctx, self, other):
    """floor_divide(Tensor self, Tensor other) -> Tensor"""
    return div_mode(ctx, self, other, rounding_mode="floor")


@translates(aten.remainder.Tensor, aten.remainder.Scalar)
def remainder(ctx, self, other):
    """remainder.Tensor(Tensor self, Tensor other) -> Tensor"""
    return _mod(ctx, self, other, floor=True)


@translates(aten.fmod.Tensor, aten.fmod.Scalar)
def fmod(ctx, self, other):
    """fmod.Tensor(Tensor self, Tensor other) -> Tensor"""
    return _mod(ctx, self, other, floor=False)


def _mod(ctx, self, other, floor: bool):
    dtype = ctx.out.dtype
    work = dtype if dtype in ("f16", "f32", "f64") else "f64"
    a, b = same_dtype(ctx, self, other, dtype=work)
    shape = ctx.out.shape
    q = ctx.op("div", a, b, dtype=work, shape=shape)
    q = ctx.op("floor", q, dtype=work, shape=shape) if floor else _trunc(ctx, q, work)
    r = ctx.op("sub", a, ctx.op("mul", q, b, dtype=work, shape=shape), dtype=work, shape=shape)
    return ctx.cast(r, dtype)


@translates(aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.pow.Scalar)
def pow(ctx, self, exponent):
    """pow.Tensor_Scalar(Tensor self, Scalar exponent) -> Tensor"""
    dtype = ctx.out.dtype
    if isinstance(exponent, (int, float)) and not isinstance(exponent, bool) \
            and isinstance(self, Value):
        x = operand(ctx, self, dtype)
        if exponent == 2:
            return ctx.op("sqr", x)
        if exponent == 0.5:
            return ctx.op("sqrt", x)
        if exponent == 1:
            return ctx.op("copy", x)
        if exponent == -1:
            return ctx.op("div", operand(ctx, 1.0, dtype), x)
        if exponent == -0.5:
            return ctx.op("rsqrt", x)
    return _binary(ctx, "pow", self, exponent)


@translates(aten.maximum.default, aten.max.other)
def maximum(ctx, self, other):
    """maximum(Tensor self, Tensor other) -> Tensor"""
    return _binary(ctx, "max", self, other)


@translates(aten.minimum.default, aten.min.other)
def minimum(ctx, self, other):
    """minimum(Tensor self, Tensor other) -> Tensor"""
    return _binary(ctx, "min", self, other)


_COMPARISONS = {"eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge"}


_ORDERINGS = ("lt", "le", "gt", "ge")
_INTEGERS = ("i64", "i32", "i16", "i8", "u8")


def _comparison(op):
    def compare(ctx, self, other):
        x, y = same_dtype(ctx, self, other, dtype=promote(self, other))
        if op in _ORDERINGS and x.dtype in _INTEGERS and x.rank and y.rank:
            # two index vectors compared: as their difference against 0 (tract 0.23.9's
            # optimiser gives select(le(range, range), ...) a wrong shape over a symbolic
            # length: XGLM's, BLOOM's causal masks)
            like = {"shape": ctx.out.shape, "dtype": x.dtype}
            return ctx.op(op, ctx.op("sub", x, y, **like), operand(ctx, 0, x.dtype))
        return ctx.op(op, x, y)
    compare.__name__ = op
    compare.__doc__ = f"{op}.Tensor(Tensor self, Tensor other) -> Tensor"
    return compare


for _name, _op in _COMPARISONS.items():
    _fn = getattr(aten, _name)
    translates(_fn.Tensor, _fn.Scalar)(_comparison(_op))


@translates(aten.logical_and.default, aten.__and__.Tensor, aten.bitwise_and.Tensor,
            aten.__and__.Scalar, aten.bitwise_and.Scalar)
def logical_and(ctx, self, other):
    """logical_and(Tensor self, Tensor other) -> Tensor"""
    return _logic(ctx, BOOL_AND, "tract_core_bitand", self, other)


@translates(aten.logical_or.default, aten.__or__.Tensor, aten.bitwise_or.Tensor,
            aten.__or__.Scalar, aten.bitwise_or.Scalar)
def logical_or(ctx, self, other):
    """logical_or(Tensor self, Tensor other) -> Tensor"""
    return _logic(ctx, "or", "tract_core_bitor", self, other)


@translates(aten.logical_xor.default, aten.__xor__.Tensor, aten.bitwise_xor.Tensor,
            aten.__xor__.Scalar, aten.bitwise_xor.Scalar)
def logical_xor(ctx, self, other):
    """logical_xor(Tensor self, Tensor other) -> Tensor"""
    return _logic(ctx, "tract_core_xor", "tract_core_bitxor", self, other)


def _logic(ctx, bool_op, int_op, self, other):
    if ctx.out.dtype == "bool":
        return ctx.op(bool_op, *same_dtype(ctx, self, other, dtype="bool"))
    return ctx.op(int_op, *same_dtype(ctx, self, other, dtype=ctx.out.dtype))


@translates(aten.logical_not.default, aten.bitwise_not.default)
def logical_not(ctx, self):
    """logical_not(Tensor self) -> Tensor"""
    if ctx.out.dtype == "bool":
        return ctx.op("not", operand(ctx, self, "bool"))
    return ctx.op("tract_core_bitnot", self)


_UNARY = {
    aten.neg.default: "neg", aten.abs.default: "abs", aten.exp.default: "exp",
    aten.log.default: "log", aten.sqrt.default: "sqrt", aten.rsqrt.default: "rsqrt",
    aten.sin.default: "sin", aten.cos.default: "cos", aten.tanh.default: "tanh",
    aten.sigmoid.default: "sigmoid", aten.relu.default: "relu", aten.floor.default: "floor",
    aten.ceil.default: "ceil", aten.sign.default: "sign",
    aten.erf.default: "tract_core_erf", aten.round.default: "tract_core_round_even",
    aten.log2.default: "log2", aten.square.default: "sqr",
    aten.atan.default: "atan", aten.asin.default: "asin", aten.acos.default: "acos",
}


def _unary(op):
    def unary(ctx, self):
        return ctx.op(op, operand(ctx, self, ctx.out.dtype))
    unary.__doc__ = f"{op}(Tensor self) -> Tensor"
    return unary


for _target, _op in _UNARY.items():
    translates(_target)(_unary(_op))


@translates(aten.reciprocal.default)
def reciprocal(ctx, self):
    """reciprocal(Tensor self) -> Tensor"""
    return ctx.op("div", operand(ctx, 1.0, ctx.out.dtype), operand(ctx, self, ctx.out.dtype))


@translates(aten.tan.default)
def tan(ctx, self):
    """tan(Tensor self) -> Tensor"""
    x = operand(ctx, self, ctx.out.dtype)
    return ctx.op("div", ctx.op("sin", x, **ctx.like(x)), ctx.op("cos", x, **ctx.like(x)))


@translates(aten.exp2.default)
def exp2(ctx, self):
    """exp2(Tensor self) -> Tensor"""
    return ctx.op("pow", operand(ctx, 2.0, ctx.out.dtype), operand(ctx, self, ctx.out.dtype))


@translates(aten.log1p.default)
def log1p(ctx, self):
    """log1p(Tensor self) -> Tensor"""
    x = operand(ctx, self, ctx.out.dtype)
    return ctx.op("log", ctx.op("add", x, operand(ctx, 1.0, x.dtype), **ctx.like(x)))


@translates(aten.trunc.default)
def trunc(ctx, self):
    """trunc(Tensor self) -> Tensor"""
    return _trunc(ctx, operand(ctx, self, ctx.out.dtype))


@translates(aten.clamp.default, aten.clamp.Tensor, aten.clip.default)
def clamp(ctx, self, min=None, max=None):
    """clamp(Tensor self, Scalar? min=None, Scalar? max=None) -> Tensor"""
    dtype = ctx.out.dtype
    x = operand(ctx, self, dtype)
    if min is not None:
        x = ctx.op("max", *same_dtype(ctx, x, min, dtype=dtype), **ctx.like(x))
    if max is not None:
        x = ctx.op("min", *same_dtype(ctx, x, max, dtype=dtype), **ctx.like(x))
    if min is None and max is None:
        raise TranslationError("clamp without min or max", "give at least one bound")
    return x


@translates(aten.hardtanh.default)
def hardtanh(ctx, self, min_val=-1, max_val=1):
    """hardtanh(Tensor self, Scalar min_val=-1, Scalar max_val=1) -> Tensor"""
    return clamp(ctx, self, min=min_val, max=max_val)


@translates(aten.clamp_min.default, aten.clamp_min.Tensor)
def clamp_min(ctx, self, min):
    """clamp_min(Tensor self, Scalar min) -> Tensor"""
    return clamp(ctx, self, min=min)


@translates(aten.clamp_max.default, aten.clamp_max.Tensor)
def clamp_max(ctx, self, max):
    """clamp_max(Tensor self, Scalar max) -> Tensor"""
    return clamp(ctx, self, max=max)


@translates(aten.hypot.default)
def hypot(ctx, self, other):
    """hypot(Tensor self, Tensor other) -> Tensor"""
    x, y = same_dtype(ctx, self, other, dtype=ctx.out.dtype)
    like = ctx.like(ctx.out)
    return ctx.op("sqrt", ctx.op("add", ctx.op("sqr", x, **ctx.like(x)),
                                 ctx.op("sqr", y, **ctx.like(y)), **like), **like)


@translates(aten.atan2.default, aten.arctan2.default)
def atan2(ctx, self, other):
    """atan2(Tensor self, Tensor other) -> Tensor"""
    y, x = same_dtype(ctx, self, other, dtype=ctx.out.dtype)
    like = ctx.like(ctx.out)
    zero = operand(ctx, 0.0, y.dtype)

    def test(op, v):
        return ctx.op(op, v, zero, shape=v.shape, dtype="bool")

    x_zero = test("eq", x)
    # atan(y / x) where x != 0; x = 0 reads sign(y) pi/2 (0 at the origin, as torch)
    safe_x = ctx.op("select", x_zero, operand(ctx, 1.0, x.dtype), x, **ctx.like(x))
    base = ctx.op("atan", ctx.op("div", y, safe_x, **like), **like)
    turn = ctx.op("select", test("ge", y), operand(ctx, math.pi, y.dtype),
                  operand(ctx, -math.pi, y.dtype), **ctx.like(y))
    left = ctx.op("add", base, turn, **like)        # x < 0: the other half-plane
    axis = ctx.op("mul", ctx.op("sign", y, **ctx.like(y)), operand(ctx, math.pi / 2, y.dtype),
                  **ctx.like(y))
    out = ctx.op("select", test("lt", x), left, base, **like)
    return ctx.op("select", x_zero, axis, out, **like)


@translates(aten.angle.default)
def angle(ctx, self):
    """angle(Tensor self) -> Tensor  (real input: pi below zero, else 0; nan stays nan)"""
    x = _float_operand(ctx, self)
    like = ctx.like(x)
    negative = ctx.op("lt", x, operand(ctx, 0.0, x.dtype), shape=x.shape, dtype="bool")
    out = ctx.op("select", negative, operand(ctx, math.pi, x.dtype),
                 operand(ctx, 0.0, x.dtype), **like)
    return ctx.op("select", ctx.op("ne", x, x, shape=x.shape, dtype="bool"), x, out, **like)


@translates(aten.isnan.default)
def isnan(ctx, self):
    """isnan(Tensor self) -> Tensor"""
    return ctx.op("ne", self, self, shape=ctx.out.shape, dtype="bool")


def _shift(ctx, self, other, left: bool):
    dtype = ctx.out.dtype
    if dtype in ("f16", "f32", "f64", "bool"):
        raise TranslationError(f"bit shift of a {dtype} tensor", "shift integer tensors")
    if left and isinstance(other, int):   # a product in the integer type: wraps as torch does
        return ctx.op("mul", operand(ctx, self, dtype), operand(ctx, 2 ** other, dtype))
    # other shifts as products with powers of two in f64 (right: floor division, as an
    # arithmetic shift rounds towards -inf), exact for values below 2**53
    work = "f64"
    factor = ctx.op("pow", operand(ctx, 2.0, work), operand(ctx, other, work),
                    dtype=work, shape=other.shape if isinstance(other, Value) else ())
    x = operand(ctx, self, work)
    factor = broadcast_rank(ctx, factor, x.rank)
    if left:
        return ctx.cast(ctx.op("mul", x, factor, **ctx.like(ctx.out, dtype=work)), dtype)
    q = ctx.op("div", x, factor, **ctx.like(ctx.out, dtype=work))
    return ctx.cast(ctx.op("floor", q, **ctx.like(q)), dtype)


@translates(aten.__lshift__.Scalar, aten.__lshift__.Tensor, aten.bitwise_left_shift.Tensor,
            aten.bitwise_left_shift.Tensor_Scalar)
def lshift(ctx, self, other):
    """__lshift__.Scalar(Tensor self, Scalar other) -> Tensor"""
    return _shift(ctx, self, other, left=True)


@translates(aten.__rshift__.Scalar, aten.__rshift__.Tensor, aten.bitwise_right_shift.Tensor,
            aten.bitwise_right_shift.Tensor_Scalar)
def rshift(ctx, self, other):
    """__rshift__.Scalar(Tensor self, Scalar other) -> Tensor"""
    return _shift(ctx, self, other, left=False)


# -- functions of exp and log that tract has no operator for --------------------------------
# Each is its textbook formula, with its Taylor series below SMALL, where the formula loses the
# relative precision torch keeps (exp(x) - 1 at x = 1e-7 is 1.19e-7 in f32); the series is
# taken to a term below f32's resolution at SMALL.
SMALL = 0.1


def _near_zero(ctx, x, series, formula):
    like = ctx.like(x)
    small = ctx.op("lt", ctx.op("abs", x, **like), operand(ctx, SMALL, x.dtype),
                   shape=x.shape, dtype="bool")
    return ctx.op("select", small, series, formula, **like)


def _float_operand(ctx, self):
    return operand(ctx, self, ctx.out.dtype)


def _horner(ctx, x, power, coefficients):
    """x * (c0 + c1 p + c2 p^2 + ...) with p = ``power`` (x or x^2)."""
    like = ctx.like(x)
    acc = operand(ctx, float(coefficients[-1]), x.dtype)
    for c in reversed(coefficients[:-1]):
        acc = ctx.op("add", ctx.op("mul", acc, power, **like), operand(ctx, float(c), x.dtype),
                     **like)
    return ctx.op("mul", x, acc, **like)


def _odd(ctx, x, coefficients):
    return _horner(ctx, x, ctx.op("sqr", x, **ctx.like(x)), coefficients)


@translates(aten.log10.default)
def log10(ctx, self):
    """log10(Tensor self) -> Tensor"""
    x = _float_operand(ctx, self)
    return ctx.op("div", ctx.op("log", x, **ctx.like(x)),
                  operand(ctx, 2.302585092994046, x.dtype))


@translates(aten.expm1.default)
def expm1(ctx, self):
    """expm1(Tensor self) -> Tensor"""
    x = _float_operand(ctx, self)
    like = ctx.like(x)
    formula = ctx.op("sub", ctx.op("exp", x, **like), operand(ctx, 1.0, x.dtype), **like)
    series = _horner(ctx, x, x, [1.0, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720])
    return _near_zero(ctx, x, series, formula)


def _exp_pair(ctx, x, sign: float):
    like = ctx.like(x)
    e = ctx.op("exp", x, **like)
    inv = ctx.op("exp", ctx.op("neg", x, **like), **like)
    total = ctx.op("add" if sign > 0 else "sub", e, inv, **like)
    return ctx.op("mul", total, operand(ctx, 0.5, x.dtype), **like)


@translates(aten.sinh.default)
def sinh(ctx, self):
    """sinh(Tensor self) -> Tensor"""
    x = _float_operand(ctx, self)
    series = _odd(ctx, x, [1.0, 1 / 6, 1 / 120, 1 / 5040])
    return _near_zero(ctx, x, series, _exp_pair(ctx, x, -1.0))


@translates(aten.cosh.default)
def cosh(ctx, self):
    """cosh(Tensor self) -> Tensor"""
    return _exp_pair(ctx, _float_operand(ctx, self), 1.0)


@translates(aten.asinh.default)
def asinh(ctx, self):
    """asinh(Tensor self) -> Tensor"""
    x = _float_operand(ctx, self)
    like = ctx.like(x)
    a = ctx.op("abs", x, **like)
    root = ctx.op("sqrt", ctx.op("add", ctx.op("sqr", a, **like), operand(ctx, 1.0, x.dtype),
                                 **like), **like)
    # sign(x) log(|x| + sqrt(x^2 + 1)): no cancellation for negative x
    formula = ctx.op("mul", ctx.op("sign", x, **like),
                     ctx.op("log", ctx.op("add", a, root, **like), **like), **like)
    series = _odd(ctx, x, [1.0, -1 / 6, 3 / 40, -15 / 336, 105 / 3456])
    return _near_zero(ctx, x, series, formula)


@translates(aten.acosh.default)
def acosh(ctx, self):
    """acosh(Tensor self) -> Tensor"""
    x = _float_operand(ctx, self)
    like = ctx.like(x)
    root = ctx.op("sqrt", ctx.op("sub", ctx.op("sqr", x, **like), operand(ctx, 1.0, x.dtype),
                                 **like), **like)
    return ctx.op("log", ctx.op("add", x, root, **like), **like)


@translates(aten.atanh.default)
def atanh(ctx, self):
    """atanh(Tensor self) -> Tensor"""
    x = _float_operand(ctx, self)
    like = ctx.like(x)
    one = operand(ctx, 1.0, x.dtype)
    ratio = ctx.op("div", ctx.op("add", one, x, **like), ctx.op("sub", one, x, **like), **like)
    formula = ctx.op("mul", ctx.op("log", ratio, **like), operand(ctx, 0.5, x.dtype), **like)
    series = _odd(ctx, x, [1.0, 1 / 3, 1 / 5, 1 / 7, 1 / 9, 1 / 11])
    return _near_zero(ctx, x, series, formula)
