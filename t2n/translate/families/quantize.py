"""8-bit per-tensor quantization: fake-quantize markers become tract's QU8/QI8 tensors.

A model reaches the translator as float ops plus ``aten.fake_quantize_per_tensor_affine``
markers (t2n/quant/int8.py). Here:

- a marker on a parameter makes an 8-bit variable (.dat of u8/i8, a ``graph.quant`` line);
- a marker on a float activation becomes a quantize cast (``tract_core_cast`` to u8/i8 whose
  output is declared in ``graph.quant``), on an 8-bit one with other parameters a requantize;
- Linear and Conv layers whose input and weight are 8-bit and whose output (possibly after a
  ReLU) is marked run in integers in tract: ``linear``/``conv`` with an i32 bias at scale
  ``input_scale * weight_scale``, the output requantized by tract to the marker's parameters.
  :func:`plan_quantization` finds those outputs before translation.
- shape ops, max pooling and ReLU keep 8-bit values 8-bit; every other op reads a float copy
  (the engine inserts the dequantize casts), so any model still translates.

tract facts these rules rest on (0.23.9): requantization rounds half to even, as torch;
``linear`` accepts u8/i8 inputs and weights with any zero points; ``conv`` needs its output
declared quantized (an undeclared output is not the real value), and a float bias is wrong
with a quantized output (an i32 bias is exact); ``matmul`` without transposeB mis-handles an
output zero point; ``pad`` fills quantized tensors with raw 0, not the zero point.
"""
from __future__ import annotations

import numpy as np
import torch

from t2n.errors import TranslationError
from t2n.translate.context import Value
from t2n.translate.families import conv as conv_family
from t2n.translate.registry import translates, translates_8bit

aten = torch.ops.aten

__all__ = ["QUANT_META", "plan_quantization"]

QUANT_META = "t2n_quant"   # fx node meta: (scale, zero_point, dtype) of an 8-bit output
import t2n.quant.int8  # noqa: E402,F401  (defines torch.ops.t2n.fake_quant)

# t2n's own marker (t2n/quant/int8.py) and aten's, as user code may call it
FAKE_QUANTS = (torch.ops.t2n.fake_quant.default, aten.fake_quantize_per_tensor_affine.default)
_RANGES = {(0, 255): "u8", (-128, 127): "i8"}
_INTEGER_LAYERS = (aten.linear.default, aten.conv1d.default, aten.conv2d.default)
_SAME_GRID = (aten.relu.default,)   # fake_quant(relu(y)) == relu(fake_quant(y)): 0 is on grid


def _marker_qparams(node) -> tuple | None:
    scale, zero_point, qmin, qmax = node.args[1:5]
    dtype = _RANGES.get((int(qmin), int(qmax)))
    return None if dtype is None else (float(scale), int(zero_point), dtype)


def plan_quantization(fx_graph) -> None:
    """Mark the nodes whose outputs tract computes in 8 bits: a Linear/Conv (and a ReLU right
    after it) whose only reader is a fake-quantize marker gets the marker's parameters."""
    for node in fx_graph.nodes:
        if node.op != "call_function" or node.target not in FAKE_QUANTS:
            continue
        qparams = _marker_qparams(node)
        chain, x = [], node.args[0]
        while isinstance(x, torch.fx.Node) and x.op == "call_function" and len(x.users) == 1:
            chain.append(x)
            if x.target in _INTEGER_LAYERS:
                break
            if x.target not in _SAME_GRID:
                chain = []
                break
            x = x.args[0]
        if qparams and chain and chain[-1].target in _INTEGER_LAYERS:
            for n in chain:
                n.meta[QUANT_META] = qparams


def _variable(ctx, v: Value):
    for var in ctx.graph.variables:
        if var.name == v.name:
            return var
    return None


def _quantize_array(array, scale, zero_point, dtype):
    lo, hi = (0, 255) if dtype == "u8" else (-128, 127)
    q = np.rint(np.asarray(array, dtype=np.float64) / scale) + zero_point
    return np.clip(q, lo, hi).astype(np.uint8 if dtype == "u8" else np.int8)


def _cast_quantized(ctx, x: Value, qparams, name=None) -> Value:
    """Quantize a float value, or requantize an 8-bit one, to ``qparams``."""
    dtype = qparams[2]
    out = ctx.op("tract_core_cast", x, to=dtype, shape=x.shape, dtype=dtype,
                 name=name or f"{x.name}_q")
    return ctx.quantized(out, qparams)


@translates(*FAKE_QUANTS, quantized=True)
def fake_quantize_per_tensor_affine(ctx, self, scale, zero_point, quant_min, quant_max):
    """fake_quantize_per_tensor_affine(Tensor self, float scale, int zero_point, int quant_min, int quant_max) -> Tensor"""  # noqa: E501
    dtype = _RANGES.get((int(quant_min), int(quant_max)))
    if dtype is None:
        raise TranslationError(f"fake quantization to [{quant_min}, {quant_max}] is not 8-bit",
                               "tract runs 8-bit per-tensor quantization (0..255 or -128..127)")
    qparams = (float(scale), int(zero_point), dtype)
    if self.quant is not None and self.quant == qparams[:2] and self.dtype == dtype:
        return self   # already on this grid (an integer layer's requantized output)
    var = _variable(ctx, self) if self.quant is None else None
    if var is not None and var.storage in ("f32", "f16", "f64"):
        data = var.data
        name = ctx.fresh(f"{self.name}_q")
        label, var.label = var.label, f"{var.label}.float"   # the float one is pruned
        q = ctx.variable(name, label, var.shape, dtype,
                         lambda: _quantize_array(data() if callable(data) else data,
                                                 scale, zero_point, dtype))
        return ctx.quantized(q, qparams)
    if not self.is_float and self.quant is None:
        raise TranslationError(f"fake quantization of a {self.dtype} tensor",
                               "quantize float tensors only")
    q = _cast_quantized(ctx, self, qparams, name=ctx.node.name)
    ctx.graph.activation_steps[q.name] = float(scale)
    return q


def _i32_bias(ctx, bias, x: Value, w: Value, shape=None):
    """The float bias as i32 at scale x_scale * w_scale (what tract adds to the accumulator);
    False when the bias is not a stored float tensor."""
    if bias is None:
        return None
    var = _variable(ctx, bias) if isinstance(bias, Value) else None
    if var is None or var.storage not in ("f32", "f16", "f64"):
        return False
    acc_scale = x.quant[0] * w.quant[0]
    data = var.data

    shape = tuple(shape or var.shape)

    def produce():
        b = np.asarray(data() if callable(data) else data, dtype=np.float64)
        return np.rint(b / acc_scale).astype(np.int32).reshape(shape)
    return ctx.variable(ctx.fresh(f"{bias.name}_i32"), f"{var.label}.i32", shape, "i32",
                        produce)


def _reshaped_variable(ctx, v: Value, shape) -> Value:
    """A stored 8-bit tensor stored again under another shape (same data and label)."""
    var = _variable(ctx, v)
    data = var.data
    label, var.label = var.label, f"{var.label}.{len(v.shape)}d"   # the old one is pruned
    new = ctx.variable(ctx.fresh(f"{v.name}_{len(shape)}d"), label, shape, v.dtype,
                       lambda: np.reshape(data() if callable(data) else data, shape))
    return ctx.quantized(new, (*v.quant, v.dtype))


def _integer_operands(ctx, x, w) -> bool:
    """An 8-bit input and a stored 8-bit weight: what tract's integer linear/conv take."""
    return (isinstance(x, Value) and x.quant is not None and isinstance(w, Value)
            and w.quant is not None and _variable(ctx, w) is not None)


def _float_then_quantize(ctx, float_fn, *args, **kwargs):
    """The float translation, its result quantized when the node's output is planned 8-bit."""
    y = float_fn(ctx, *ctx.dequantize_all(args), **ctx.dequantize_all(kwargs))
    if ctx.out_quant is not None:
        return _cast_quantized(ctx, y, ctx.out_quant)
    return y


@translates_8bit(aten.linear.default)
def linear(ctx, float_fn, input, weight, bias=None):
    """linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor"""
    if not _integer_operands(ctx, input, weight):
        return _float_then_quantize(ctx, float_fn, input, weight, bias)
    # tract's linear wants the weight and the bias stored at the input's rank
    lead = (1,) * (input.rank - 2)
    b = _i32_bias(ctx, bias, input, weight, shape=lead + (1, weight.shape[0]))
    if b is False:
        return _float_then_quantize(ctx, float_fn, input, weight, bias)
    w = _reshaped_variable(ctx, weight, lead + tuple(weight.shape)) if lead else weight
    args = [input, w] + ([b] if b is not None else [])
    if ctx.out_quant is not None:   # requantized by tract to the output's parameters
        y = ctx.op("linear", *args, shape=ctx.out.shape, dtype=ctx.out_quant[2],
                   name=f"q_{ctx.node.name}")
        return ctx.quantized(y, ctx.out_quant)
    # an undeclared output is the i32 accumulator at scale x_scale * w_scale: a cast to float
    # gives the real values
    acc = ctx.op("linear", *args, shape=ctx.out.shape, dtype="i32", name=f"acc_{ctx.node.name}")
    return ctx.op("tract_core_cast", acc, to=ctx.out.dtype)


def _integer_conv(ctx, input, weight, bias, stride, pads, dilation, groups):
    b = _i32_bias(ctx, bias, input, weight)
    if b is False:
        return None
    n = weight.rank - 2
    dtype = ctx.out_quant[2]
    attrs = {"border": "constant", "padding": pads, "stride": conv_family.spatial(stride, n),
             "dilation": conv_family.spatial(dilation, n), "groups": groups}
    args = [weight] + ([b] if b is not None else [])
    out = Value(ctx.out.name, ctx.out.shape, dtype)
    y = conv_family.batched(ctx, input, n, out,
                            lambda x, meta: ctx.op("conv", x, *args, **attrs, **meta))
    return ctx.quantized(y, ctx.out_quant)


@translates_8bit(aten.conv1d.default, aten.conv2d.default)
def conv(ctx, float_fn, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d(Tensor input, Tensor weight, Tensor? bias=None, SymInt[2] stride=[1, 1], SymInt[2] padding=[0, 0], SymInt[2] dilation=[1, 1], SymInt groups=1) -> Tensor"""  # noqa: E501
    if _integer_operands(ctx, input, weight) and ctx.out_quant is not None:  # tract needs it
        pads = [(p, p) for p in conv_family.spatial(padding, weight.rank - 2)]
        y = _integer_conv(ctx, input, weight, bias, stride, pads, dilation, groups)
        if y is not None:
            return y
    return _float_then_quantize(ctx, float_fn, input, weight, bias, stride, padding,
                                dilation, groups)


@translates_8bit(aten.relu.default)
def relu(ctx, float_fn, self):
    """relu(Tensor self) -> Tensor"""
    if isinstance(self, Value) and self.quant is not None:
        # max(q, zero_point) in integers: tract's relu on an 8-bit tensor
        qparams = (*self.quant, self.dtype)
        y = ctx.op("relu", self, shape=self.shape, dtype=self.dtype)
        y = ctx.quantized(y, qparams)
        if ctx.out_quant is not None and ctx.out_quant != qparams:
            y = _cast_quantized(ctx, y, ctx.out_quant)
        return y
    y = float_fn(ctx, self)
    return _cast_quantized(ctx, y, ctx.out_quant) if ctx.out_quant is not None else y


@translates_8bit(aten.view.default, aten.reshape.default, aten._unsafe_view.default,
                 aten.flatten.using_ints, aten.transpose.int, aten.permute.default,
                 aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
                 aten.squeeze.default, aten.max_pool1d.default, aten.max_pool2d.default)
def keeps_grid(ctx, float_fn, self, *args, **kwargs):
    """Ops that move or select values (shape ops, max pooling): an 8-bit input gives an
    8-bit output on the same grid, computed by the op's own translator on the 8-bit values."""
    if not isinstance(self, Value) or self.quant is None:
        return float_fn(ctx, *ctx.dequantize_all((self,) + args), **ctx.dequantize_all(kwargs))
    ctx.out = Value(ctx.out.name, ctx.out.shape, self.dtype) if isinstance(
        ctx.out, Value) else ctx.out
    y = float_fn(ctx, self, *args, **kwargs)
    if not isinstance(y, Value):
        raise TranslationError("internal: an 8-bit shape op returned several values",
                               "report this as a t2n bug")
    return ctx.quantized(Value(y.name, y.shape, self.dtype), (*self.quant, self.dtype))
