"""ptq_int8: post-training 8-bit quantization, per tensor, calibrated on representative inputs.

Linear, Conv1d and Conv2d layers get 8-bit weights (signed, symmetric, one scale per tensor:
tract runs per-tensor 8-bit only) and 8-bit input activations (unsigned, affine, ranges observed
on the calibration inputs). tract multiplies in integers; a Conv's output is requantized to an
observed 8-bit range (tract needs it), a Linear's is the exact accumulator turned to float. Everything else stays in float; tract
converts between the two with explicit quantize/dequantize casts. The result is a float model
with fake quantization (t2n/quant/int8.py), which the exporter writes as 8-bit tensors and
``graph.quant`` lines.

Observers: ``minmax`` (the observed extremes) and ``percentile`` (the ``percentile``-th
percentile of the values at each end, clipping rare outliers).
"""
from __future__ import annotations

import logging
import torch
from torch import nn

from t2n.calibrate.data import OBSERVERS, Calibration, calibration_from
from t2n.compress.registry import BUILTIN
from t2n.errors import CompressionError
from t2n.quant.int8 import QuantizedConv, QuantizedLinear, set_submodule

__all__ = ["Calibration", "OBSERVERS", "ptq_int8", "activation_qparams", "weight_qparams",
           "calibration_from"]

log = logging.getLogger("t2n.compress")

ACT_DTYPE, WEIGHT_DTYPE = torch.quint8, torch.qint8
_SAMPLE_CAP = 1 << 20   # values kept per tensor for the percentile observer


class _Observer:
    def __init__(self, kind: str, percentile: float):
        self.kind, self.percentile = kind, percentile
        self.lo, self.hi = float("inf"), float("-inf")
        self.values: list[torch.Tensor] = []
        self.kept = 0

    def __call__(self, t: torch.Tensor) -> None:
        t = t.detach().float()
        if not t.numel():
            return
        finite = t[torch.isfinite(t)]
        if finite.numel():
            self.lo = min(self.lo, float(finite.min()))
            self.hi = max(self.hi, float(finite.max()))
        if self.kind == "percentile" and self.kept < _SAMPLE_CAP:
            flat = finite.reshape(-1)
            step = max(1, flat.numel() // (_SAMPLE_CAP // 8))
            self.values.append(flat[::step].clone())
            self.kept += self.values[-1].numel()

    def range(self) -> tuple[float, float]:
        if self.lo > self.hi:
            raise CompressionError("a quantized layer saw no values during calibration",
                                   "check that the calibration inputs reach every layer")
        if self.kind == "minmax" or not self.values:
            return self.lo, self.hi
        values = torch.cat(self.values)  # at most ~_SAMPLE_CAP values: quantile handles them
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], dtype=values.dtype)
        lo, hi = torch.quantile(values, q).tolist()
        return lo, hi


def activation_qparams(lo: float, hi: float, dtype=ACT_DTYPE) -> tuple[float, int, object]:
    """Affine 8-bit parameters covering [lo, hi] and zero (which must stay exact)."""
    qmin, qmax = (0, 255) if dtype == torch.quint8 else (-128, 127)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (qmax - qmin)
    if scale <= 0 or not torch.isfinite(torch.tensor(scale)):
        return 1.0, qmin if dtype == torch.quint8 else 0, dtype
    zero_point = int(min(qmax, max(qmin, round(qmin - lo / scale))))
    return float(scale), zero_point, dtype


def weight_qparams(weight: torch.Tensor) -> tuple[float, int, object]:
    """Symmetric signed 8-bit, one scale for the tensor (levels -127..127)."""
    peak = float(weight.detach().abs().max()) if weight.numel() else 0.0
    return (peak / 127 if peak > 0 else 1.0), 0, WEIGHT_DTYPE


def _on_grid(weight: torch.Tensor, qparams) -> torch.Tensor:
    scale, zp, dtype = qparams
    lo, hi = (-128, 127) if dtype == torch.qint8 else (0, 255)
    return ((torch.round(weight.detach().float() / scale) + zp).clamp(lo, hi) - zp) * scale


QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def ptq_int8(model: nn.Module, tokenizer=None, export_dirpath=None, local_dir=None, *,
             calibration: Calibration | None = None, **_):
    """8-bit PTQ, per tensor: Linear/Conv weights and their input/output activations"""
    if calibration is not None and not calibration.data_free:
        calibration.load(128)
    if calibration is None or calibration.data_free or not calibration.samples:
        raise CompressionError("ptq_int8 needs calibration inputs",
                               "pass --calibration-data FILE (.npz of inputs, or a text file "
                               "for a model with a tokenizer)")
    # an inference model: with gradients on, torch.export would trace fake quantization as
    # its training variant (a mask output), which it cannot capture
    for param in model.parameters():
        param.requires_grad_(False)
    layers = {name: m for name, m in model.named_modules() if type(m) in QUANTIZABLE}
    if not layers:
        raise CompressionError("ptq_int8 found no Linear, Conv1d or Conv2d layer",
                               "this model has nothing ptq_int8 quantizes")
    observers = {name: (_Observer(calibration.observer, calibration.percentile),
                        _Observer(calibration.observer, calibration.percentile))
                 for name in layers}
    hooks = []
    for name, module in layers.items():
        def hook(mod, args, out, name=name):
            observers[name][0](args[0])
            observers[name][1](out)
        hooks.append(module.register_forward_hook(hook))
    try:
        model.eval()
        with torch.no_grad():
            for args, kwargs in calibration.samples:
                model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    for name, module in layers.items():
        in_q = activation_qparams(*observers[name][0].range())
        out_q = activation_qparams(*observers[name][1].range())
        w_q = weight_qparams(module.weight)
        weight = _on_grid(module.weight, w_q)
        if isinstance(module, nn.Linear):
            # the output stays float: tract dequantizes the exact i32 accumulator, so no
            # output rounding (layers after attention or FFNs have wide, outlier-heavy ranges)
            bias = None if module.bias is None else module.bias.detach().float()
            new = QuantizedLinear(weight, bias, w_q, None, in_qparams=in_q)
        else:
            module.weight = nn.Parameter(weight, requires_grad=False)
            new = QuantizedConv(module, w_q, out_q, in_qparams=in_q)
        set_submodule(model, name, new)
    log.info("ptq_int8: %d layer(s) in 8 bits, %s observer, %d calibration sample(s)",
             len(layers), calibration.observer, len(calibration.samples))
    return model


BUILTIN["ptq_int8"] = ptq_int8
