"""Tracing aids: torch kernels swapped while torch.export runs, and only then.

torch.export computes the output shapes of ``aten.lstm``/``gru``/``rnn_*`` by running their
Python decomposition on fake tensors, which unrolls the time loop and fixes the sequence length
to the example's. While tracing, the kernels below answer shape-only calls (fake tensors, no
proxy tracer recording) with empty tensors of the right shapes, so the time axis stays
symbolic; every other call goes to torch's own kernel.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch._decomp.decompositions  # noqa: F401  (registers the kernels wrapped below)
from torch._C import DispatchKey
from torch._subclasses.fake_tensor import FakeTensor

__all__ = ["symbolic_rnn_shapes"]

aten = torch.ops.aten


def _shape_only_call(args) -> bool:
    proxy = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.PROXY)
    return isinstance(args[0], FakeTensor) and proxy is None


def _shape_kernel(states_of, original):
    """Wrap torch's kernel of an op whose arguments are (input, hx, params, has_biases,
    num_layers, dropout, train, bidirectional, batch_first)."""
    def kernel(*args, **kwargs):
        if kwargs or not _shape_only_call(args):
            return original(*args, **kwargs)
        input, states, bidirectional = args[0], states_of(args[1]), args[7]
        shape = list(input.shape)
        shape[-1] = (2 if bidirectional else 1) * states[0].shape[-1]
        return (input.new_empty(shape), *(s.new_empty(s.shape) for s in states))
    kernel.t2n_shape_kernel = True
    return kernel


@contextmanager
def symbolic_rnn_shapes():
    """Within this block, recurrent ops keep a symbolic time axis under torch.export."""
    ops = {aten.lstm.input: list, aten.gru.input: lambda h: [h],
           aten.rnn_tanh.input: lambda h: [h], aten.rnn_relu.input: lambda h: [h]}
    saved = []
    for op, states_of in ops.items():
        for key in (DispatchKey.CompositeImplicitAutograd, DispatchKey.Autograd):
            original = op.py_kernels.get(key)
            if original is None or getattr(original, "t2n_shape_kernel", False):
                continue
            saved.append((op, key, original))
            op.py_kernels[key] = _shape_kernel(states_of, original)
        op._dispatch_cache.clear()
    try:
        yield
    finally:
        for op, key, original in saved:
            op.py_kernels[key] = original
            op._dispatch_cache.clear()
