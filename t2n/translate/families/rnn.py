"""Recurrent layers: nn.LSTM, nn.GRU and nn.RNN (tanh / relu) as tract scans over time.

Each layer and direction becomes one ``tract_core_scan``: the input projection of every time
step is one matmul before the loop, and the loop body (a static NNEF fragment in
``t2n/nnef/fragments/t2n_rnn_*_cell.nnef``, generic in batch and hidden sizes) does the
recurrent matmul and the gates. The reverse direction scans with step -1, so the time length
may stay symbolic.
"""
from __future__ import annotations

import numpy as np
import torch

from t2n.errors import TranslationError
from t2n.nnef.graph import DTYPES
from t2n.translate.context import Value
from t2n.translate.families._common import operand
from t2n.translate.registry import translates

aten = torch.ops.aten


@translates(aten.lstm.input)
def lstm(ctx, input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
         batch_first):
    """lstm.input(Tensor input, Tensor[] hx, Tensor[] params, bool has_biases, int num_layers, float dropout, bool train, bool bidirectional, bool batch_first) -> (Tensor, Tensor, Tensor)"""  # noqa: E501
    return _rnn(ctx, "lstm", input, list(hx), params, has_biases, num_layers, dropout, train,
                bidirectional, batch_first)


@translates(aten.gru.input)
def gru(ctx, input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
        batch_first):
    """gru.input(Tensor input, Tensor hx, Tensor[] params, bool has_biases, int num_layers, float dropout, bool train, bool bidirectional, bool batch_first) -> (Tensor, Tensor)"""  # noqa: E501
    return _rnn(ctx, "gru", input, [hx], params, has_biases, num_layers, dropout, train,
                bidirectional, batch_first)


@translates(aten.rnn_tanh.input)
def rnn_tanh(ctx, input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
             batch_first):
    """rnn_tanh.input(Tensor input, Tensor hx, Tensor[] params, bool has_biases, int num_layers, float dropout, bool train, bool bidirectional, bool batch_first) -> (Tensor, Tensor)"""  # noqa: E501
    return _rnn(ctx, "tanh", input, [hx], params, has_biases, num_layers, dropout, train,
                bidirectional, batch_first)


@translates(aten.rnn_relu.input)
def rnn_relu(ctx, input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
             batch_first):
    """rnn_relu.input(Tensor input, Tensor hx, Tensor[] params, bool has_biases, int num_layers, float dropout, bool train, bool bidirectional, bool batch_first) -> (Tensor, Tensor)"""  # noqa: E501
    return _rnn(ctx, "relu", input, [hx], params, has_biases, num_layers, dropout, train,
                bidirectional, batch_first)


def _rnn(ctx, kind, input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
         batch_first):
    if train and dropout > 0 and num_layers > 1:
        raise TranslationError("recurrent dropout in training mode",
                               "call model.eval() before export")
    if not input.is_float:
        raise TranslationError(f"recurrent layer on a {input.dtype} input",
                               "feed a float tensor")
    dtype = input.dtype
    dirs = 2 if bidirectional else 1
    proj = kind == "lstm" and hx[0].shape[2] != hx[1].shape[2]
    per_dir = 2 + (2 if has_biases else 0) + (1 if proj else 0)
    if len(params) != per_dir * num_layers * dirs:
        raise TranslationError(f"{len(params)} weights for {num_layers} layer(s) and "
                               f"{dirs} direction(s)", "report the model")
    states = [operand(ctx, h, dtype) for h in hx]
    x = operand(ctx, input, dtype)
    if batch_first:
        x = _transpose01(ctx, x)
    finals = [[] for _ in states]
    for layer in range(num_layers):
        ys = []
        for d in range(dirs):
            k = layer * dirs + d
            weights = [operand(ctx, w, dtype) for w in params[k * per_dir:(k + 1) * per_dir]]
            init = [_state(ctx, s, k) for s in states]
            y, *last = _scan(ctx, kind, x, init, weights, has_biases, proj, reverse=d == 1,
                             hint=f"{ctx.node.name}_l{layer}{'_rev' if d else ''}")
            ys.append(y)
            for f, s in zip(finals, last):
                f.append(s)
        x = ys[0] if dirs == 1 else ctx.op(
            "concat", ys, axis=2, shape=ys[0].shape[:2] + (ys[0].shape[2] * 2,), dtype=dtype)
    metas = ctx.out
    out = _transpose01(ctx, x) if batch_first else x
    return (Value(out.name, metas[0].shape, dtype),
            *(_stack(ctx, f, m) for f, m in zip(finals, metas[1:])))


def _scan(ctx, kind, x, init, weights, has_biases, proj, reverse, hint):
    """One layer in one direction over time-major ``x`` [T, B, I]: (y [T, B, H], *last states)."""
    dtype = x.dtype
    w_ih, w_hh = weights[:2]
    b_ih, b_hh = weights[2:4] if has_biases else (None, None)
    size = w_ih.shape[0]
    bias = b_ih
    if has_biases and kind != "gru":  # the recurrent bias is outside the gates: fold it in
        bias = ctx.op("add", b_ih, b_hh, shape=(size,), dtype=dtype, name=f"{hint}_bias")
    xw = _input_projection(ctx, x, w_ih, bias, hint)
    full = [("r", w_hh)]
    if kind == "gru":
        if has_biases:
            b = ctx.op("unsqueeze", b_hh, axes=[0], shape=(1, size), dtype=dtype,
                       name=f"{hint}_rbias")
        else:
            b = ctx.const(np.zeros((1, size), DTYPES[dtype]), f"{hint}_rbias")
        full.append(("b", b))
    if proj:
        full.append(("hr", weights[-1]))
    step = -1 if reverse else 1
    names = ["h", "c"][:len(init)]
    ctx.fragment(f"t2n_rnn_{kind}{'_proj' if proj else ''}_cell")
    outs = ctx.op(
        "tract_core_scan",
        body=f"t2n_rnn_{kind}{'_proj' if proj else ''}_cell",
        scan=[("x", xw, 0, step)],
        full=full,
        state=[(n, s, f"{n}_out") for n, s in zip(names, init)],
        output=[("y", "full", 0, step)] + [(f"{n}_out", "last", 0, 1) for n in names],
        outputs=1 + len(init), name=hint)
    t, b = x.shape[:2]
    shapes = [(t, b, init[0].shape[1])] + [s.shape for s in init]
    return [Value(o.name, s, dtype) for o, s in zip(outs, shapes)]


def _input_projection(ctx, x, w_ih, bias, hint):
    """x [T, B, I] @ w_ih^T (+ bias) -> [T, B, G] for every time step at once."""
    dtype = x.dtype
    size, features = w_ih.shape
    shape = tuple(x.shape[:2]) + (size,)
    w = ctx.op("unsqueeze", w_ih, axes=[0], shape=(1, size, features), dtype=dtype,
               name=f"{hint}_wih")
    xw = ctx.op("matmul", x, w, transposeB=True, shape=shape, dtype=dtype, name=f"{hint}_xw")
    if bias is None:
        return xw
    b = ctx.op("unsqueeze", bias, axes=[0, 1], shape=(1, 1, size), dtype=dtype,
               name=f"{hint}_bih")
    return ctx.op("add", xw, b, shape=shape, dtype=dtype, name=f"{hint}_xwb")


def _state(ctx, states: Value, k: int) -> Value:
    """Initial state ``k`` (layer * directions + direction) of a [L*D, B, H] tensor: [B, H]."""
    one = ctx.op("slice", states, axes=[0], begin=[k], end=[k + 1],
                 shape=(1,) + tuple(states.shape[1:]), dtype=states.dtype,
                 name=f"{states.name}_{k}")
    return ctx.op("squeeze", one, axes=[0], shape=tuple(states.shape[1:]), dtype=states.dtype,
                  name=f"{states.name}_{k}")


def _stack(ctx, finals: list, meta: Value) -> Value:
    """Final states [B, H] of every layer and direction as one [L*D, B, H] tensor."""
    if len(finals) == 1:
        return ctx.op("unsqueeze", finals[0], axes=[0], shape=meta.shape, dtype=meta.dtype)
    parts = [ctx.op("unsqueeze", f, axes=[0], shape=(1,) + tuple(f.shape), dtype=f.dtype,
                    name=f"{f.name}_n") for f in finals]
    return ctx.op("concat", parts, axis=0, shape=meta.shape, dtype=meta.dtype)


def _transpose01(ctx, x: Value) -> Value:
    shape = (x.shape[1], x.shape[0]) + tuple(x.shape[2:])
    return ctx.op("transpose", x, axes=[1, 0, 2], shape=shape, dtype=x.dtype,
                  name=f"{x.name}_t")


# -- tracing with a symbolic time axis ------------------------------------------------------
# torch.export keeps aten.lstm/gru/rnn_* as single nodes, but computes their output shapes by
# running the Python decomposition on fake tensors, which unrolls the time loop and pins the
# time length to the example's. For that shape-only call (fake inputs, no tracer recording)
# the wrappers below answer with empty tensors of the right shapes; real and traced calls go
# to torch's own kernels unchanged.
