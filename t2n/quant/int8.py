"""8-bit per-tensor quantization as float modules with fake quantization.

Both sources of 8-bit models end up in the same form, which torch.export traces: every
quantized tensor is the output of ``aten.fake_quantize_per_tensor_affine`` (float values on the
grid ``scale * (q - zero_point)``, ``q`` within the 8-bit range). A fake-quantized parameter is a
quantized weight; a fake-quantized activation is a tensor tract holds as QU8/QI8. The
translators turn these markers into 8-bit ``.dat`` files and ``graph.quant`` lines.

- ``from_eager(model)`` rewrites a model converted by ``torch.ao.quantization`` (eager mode,
  QuantStub/DeQuantStub, per-tensor weights as the qnnpack engine makes them), whose packed
  modules torch.export cannot capture.
- t2n's own post-training quantization (``ptq_int8``) inserts the same modules from observed
  ranges (t2n/compress/ptq.py).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from t2n.errors import OptionError

__all__ = ["QRANGE", "fake_quant", "FakeQuant", "QuantizedLinear", "QuantizedConv",
           "QuantizedFunctional", "from_eager", "is_eager_quantized",
           "set_submodule"]

# the integer range of each 8-bit dtype (torch's quantized dtypes and their names in t2n)
QRANGE = {torch.quint8: (0, 255), torch.qint8: (-128, 127), "u8": (0, 255), "i8": (-128, 127)}


@torch.library.custom_op("t2n::fake_quant", mutates_args=())
def _fake_quant_op(x: torch.Tensor, scale: float, zero_point: int, quant_min: int,
                   quant_max: int) -> torch.Tensor:
    # torch.export keeps this op whole; aten's fake quantization can reach the graph as its
    # training variant (with a mask output), which torch.export cannot capture
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)


@_fake_quant_op.register_fake
def _(x, scale, zero_point, quant_min, quant_max):
    return torch.empty_like(x)


def fake_quant(x: torch.Tensor, scale: float, zero_point: int, dtype) -> torch.Tensor:
    """``x`` rounded to the 8-bit grid of ``scale``/``zero_point`` (values stay float)."""
    lo, hi = QRANGE[dtype]
    return _fake_quant_op(x, float(scale), int(zero_point), lo, hi)


class FakeQuant(nn.Module):
    """Quantize a float tensor (a QuantStub, or the input of a quantized layer)."""

    def __init__(self, scale: float, zero_point: int, dtype=torch.quint8):
        super().__init__()
        self.scale, self.zero_point, self.dtype = float(scale), int(zero_point), dtype

    def forward(self, x):
        return fake_quant(x, self.scale, self.zero_point, self.dtype)

    def extra_repr(self):
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}, dtype={self.dtype}"


class _QuantizedLayer(nn.Module):
    """``fake_quant(act(op(x, fake_quant(W))))`` with a per-tensor 8-bit weight (the float
    parameter holds grid values, the forward marks it). With ``in_qparams`` the input is
    quantized first (a layer after float ops); without ``out_qparams`` the output stays float
    (tract dequantizes the layer's i32 accumulator). qparams: (scale, zero_point, dtype)."""

    def __init__(self, w_qparams, out_qparams, relu: bool, in_qparams):
        super().__init__()
        self.w_qparams, self.out_qparams, self.in_qparams = w_qparams, out_qparams, in_qparams
        self.relu = relu

    def _apply_op(self, x, weight):
        raise NotImplementedError

    def forward(self, x):
        if self.in_qparams is not None:
            x = fake_quant(x, *self.in_qparams)
        y = self._apply_op(x, fake_quant(self.weight, *self.w_qparams))
        if self.relu:
            y = torch.relu(y)
        return y if self.out_qparams is None else fake_quant(y, *self.out_qparams)


class QuantizedLinear(_QuantizedLayer):
    """An 8-bit linear layer with a float bias."""

    def __init__(self, weight, bias, w_qparams, out_qparams, relu: bool = False,
                 in_qparams=None):
        super().__init__(w_qparams, out_qparams, relu, in_qparams)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def _apply_op(self, x, weight):
        return F.linear(x, weight, self.bias)


class QuantizedConv(_QuantizedLayer):
    """An 8-bit layer around a float Conv1d/Conv2d."""

    def __init__(self, conv: nn.Module, w_qparams, out_qparams, relu: bool = False,
                 in_qparams=None):
        super().__init__(w_qparams, out_qparams, relu, in_qparams)
        self.conv = conv
        self.weight = conv.weight

    def _apply_op(self, x, weight):
        return self.conv._conv_forward(x, weight, self.conv.bias)


class QuantizedFunctional(FakeQuant):
    """torch.ao's FloatFunctional/QFunctional: each result is quantized to one scale."""

    def add(self, x, y):
        return self(x + y)

    def add_relu(self, x, y):
        return self(torch.relu(x + y))

    def mul(self, x, y):
        return self(x * y)

    def add_scalar(self, x, y):
        return self(x + y)

    def mul_scalar(self, x, y):
        return self(x * y)

    def cat(self, xs, dim: int = 0):
        return self(torch.cat(xs, dim=dim))

    def matmul(self, x, y):
        return self(torch.matmul(x, y))


# ----------------------------------------------------------------------------------------------
# torch.ao eager-mode converted models

_QUANTIZED_NAMESPACES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                         "torch.nn.quantized", "torch.nn.intrinsic.quantized")


def is_eager_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds modules made by ``torch.ao.quantization.convert``."""
    return any(type(m).__module__.startswith(_QUANTIZED_NAMESPACES) for m in model.modules())


def _weight_qparams(name: str, w: torch.Tensor):
    if w.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        raise OptionError(f"{name} has per-channel quantized weights ({w.qscheme()}), and tract "
                          "runs 8-bit weights per tensor only",
                          "quantize with torch.ao.quantization.get_default_qconfig('qnnpack')")
    return float(w.q_scale()), int(w.q_zero_point()), w.dtype


def _float_conv(q, dims: int) -> nn.Module:
    cls = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    w = q.weight()
    conv = cls(q.in_channels, q.out_channels, q.kernel_size, stride=q.stride,
               padding=q.padding, dilation=q.dilation, groups=q.groups,
               bias=q.bias() is not None, padding_mode=q.padding_mode)
    conv.weight = nn.Parameter(w.dequantize(), requires_grad=False)
    if q.bias() is not None:
        conv.bias = nn.Parameter(q.bias().detach().float(), requires_grad=False)
    return conv.eval()


def _replacement(name: str, module: nn.Module, act_dtype):
    """The float module standing for one converted module, or None to keep it."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    def out(q):
        return float(q.scale), int(q.zero_point), act_dtype

    if isinstance(module, nnq.Quantize):
        return FakeQuant(float(module.scale), int(module.zero_point), module.dtype)
    if isinstance(module, nnq.DeQuantize):
        return nn.Identity()
    if type(module) in (nnq.Linear, nniq.LinearReLU):
        w = module.weight()
        bias = module.bias()
        return QuantizedLinear(w.dequantize(), None if bias is None else bias.detach().float(),
                               _weight_qparams(name, w), out(module),
                               relu=isinstance(module, nniq.LinearReLU))
    convs = {nnq.Conv1d: (1, False), nnq.Conv2d: (2, False), nniq.ConvReLU1d: (1, True),
             nniq.ConvReLU2d: (2, True)}
    if type(module) in convs:
        dims, relu = convs[type(module)]
        return QuantizedConv(_float_conv(module, dims), _weight_qparams(name, module.weight()),
                             out(module), relu=relu)
    if isinstance(module, nnq.QFunctional):
        return QuantizedFunctional(float(module.scale), int(module.zero_point), act_dtype)
    if isinstance(module, nnq.ReLU6):
        return nn.ReLU6()
    return "unsupported"


def from_eager(model: nn.Module) -> nn.Module:
    """A float copy of a torch.ao eager-mode quantized model, with fake quantization where the
    original holds quantized tensors. Raises OptionError naming modules it cannot rewrite."""
    import copy
    stubs = [m for m in model.modules() if type(m).__name__ == "Quantize"
             and type(m).__module__.startswith(_QUANTIZED_NAMESPACES)]
    dtypes = {m.dtype for m in stubs}
    if len(dtypes) > 1:
        raise OptionError("the model quantizes its inputs to both quint8 and qint8",
                          "use one activation dtype (the qnnpack qconfig uses quint8)")
    act_dtype = dtypes.pop() if dtypes else torch.quint8
    model = copy.deepcopy(model)
    unsupported = []
    for name, module in list(model.named_modules()):
        if not name or not type(module).__module__.startswith(_QUANTIZED_NAMESPACES):
            continue
        if _inside_replaced(model, name):
            continue
        new = _replacement(name, module, act_dtype)
        if isinstance(new, str):
            unsupported.append(f"{name} ({type(module).__module__}.{type(module).__name__})")
            continue
        set_submodule(model, name, new)
    for param in model.parameters():  # inference only (see t2n.compress.ptq)
        param.requires_grad_(False)
    if unsupported:
        raise OptionError("quantized modules t2n cannot rewrite for tract: "
                          + ", ".join(unsupported),
                          "keep them in float (no qconfig on them) or report the module type")
    return model.eval()


def _inside_replaced(model, name: str) -> bool:
    """Submodules of a module already replaced (e.g. a Linear's packed params) are gone."""
    try:
        model.get_submodule(name)
        return False
    except AttributeError:
        return True


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
