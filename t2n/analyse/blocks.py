"""The blocks the analyser decides on, grouped into units (tied weights are one decision), and
what each choice of a unit costs: bytes of the stored tensors, and weighted MACs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from t2n.errors import OptionError
from t2n.quant.q4_0 import Q4_0Tensor

__all__ = ["DEFAULT_CLASSES", "Unit", "find_units", "tensor_bytes", "module_bytes",
           "weight_bits", "count_macs"]

DEFAULT_CLASSES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)


@dataclass
class Unit:
    """One decision: the blocks (module names) sharing a weight, and their float modules."""
    blocks: list
    modules: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return "+".join(self.blocks)

    def changed(self, i: int, module: nn.Module) -> bool:
        """Whether a method's module for block ``i`` differs from the float one."""
        ref = self.modules[i]
        if type(module) is not type(ref):
            return True
        w, r = getattr(module, "weight", None), getattr(ref, "weight", None)
        if w is None or r is None:
            return False
        if type(w) is not type(r) or isinstance(w, Q4_0Tensor) or hasattr(w, "nbytes_packed"):
            return True
        return w.shape != r.shape or not torch.equal(w.detach(), r.detach())


def find_units(model: nn.Module, block_names=None) -> list[Unit]:
    """The units of ``model``: every Linear/Conv/Embedding by default, or the modules named
    (each once, none inside another); blocks holding the same weight tensor form one unit."""
    named = dict(model.named_modules())
    if block_names is None:
        names = [n for n, m in named.items() if isinstance(m, DEFAULT_CLASSES)]
    else:
        names = list(block_names)
        seen = set()
        for n in names:
            if n in seen:
                raise OptionError(f"block {n!r} is named twice", "name each block once")
            seen.add(n)
            if n not in named or not n:
                raise OptionError(f"the model has no module {n!r}",
                                  "name modules as model.named_modules() does, e.g. "
                                  + (next((k for k in named if k), "layer")))
        for a in names:
            for b in names:
                if a != b and b.startswith(a + "."):
                    raise OptionError(f"block {b!r} is inside block {a!r}",
                                      "give blocks that do not contain one another")
        plain = [n for n in names if getattr(named[n], "weight", None) is None]
        if plain:
            raise OptionError(f"block {plain[0]!r} has no weight to compress",
                              "name Linear, Conv or Embedding modules (or modules with .weight)")
    if not names:
        raise OptionError("the model has no Linear, Conv or Embedding module to analyse",
                          "name the blocks to decide on with block_names / --block")
    by_weight: dict[int, Unit] = {}
    units = []
    for n in names:
        w = getattr(named[n], "weight", None)
        key = id(w) if w is not None else id(named[n])
        if key in by_weight:
            by_weight[key].blocks.append(n)
            by_weight[key].modules.append(named[n])
        else:
            unit = Unit([n], [named[n]])
            by_weight[key] = unit
            units.append(unit)
    return units


def tensor_bytes(t: torch.Tensor, float_bytes: int) -> int:
    """Bytes of ``t`` in a bundle: Q4_0 18 per 32 values, 8-bit tensors 1 per value, float
    tensors ``float_bytes`` per value (4 for f32 exports, 2 for f16)."""
    if isinstance(t, Q4_0Tensor):
        return t.numel() // 32 * 18
    if hasattr(t, "nbytes_packed"):     # Q8_1 tables, int8-rows weights
        return int(t.nbytes_packed)
    if not t.is_floating_point():
        return t.numel() * t.element_size()
    return t.numel() * float_bytes


def module_bytes(modules, float_bytes: int) -> int:
    """Bytes of the distinct tensors of ``modules`` (an 8-bit layer's weight counts 1 per
    value: it is stored as 8-bit in the bundle)."""
    from t2n.quant.int8 import _QuantizedLayer
    seen, total = set(), 0
    for m in modules:
        eight_bit = isinstance(m, _QuantizedLayer)
        for name, t in m.named_parameters(recurse=True):
            if id(t) in seen:
                continue
            seen.add(id(t))
            if eight_bit and name.endswith("weight"):
                total += t.numel()
            else:
                total += tensor_bytes(t, float_bytes)
    return total


def weight_bits(modules, float_bits: int) -> float:
    """The bits per weight value a choice stores (4.5 for Q4_0, 8 for 8-bit, the float type's
    otherwise)."""
    from t2n.quant.int8 import _QuantizedLayer
    m = modules[0]
    if isinstance(m, _QuantizedLayer):
        return 8.0
    w = getattr(m, "weight", None)
    if isinstance(w, Q4_0Tensor):
        return 4.5
    if hasattr(w, "nbytes_packed") and w.numel():
        return 8.0 * int(w.nbytes_packed) / w.numel()
    return float(float_bits)


def count_macs(model: nn.Module, units: list[Unit], samples: list) -> dict:
    """Multiply-accumulates of each unit's blocks in one forward pass of the first sample
    (Linear: input rows x in x out; Conv: output values x in/groups x kernel; Embedding: 0)."""
    macs = {u.name: 0 for u in units}
    owner = {b: u.name for u in units for b in u.blocks}
    named = dict(model.named_modules())
    hooks = []
    for b, uname in owner.items():
        mod = named[b]

        def hook(m, args, out, uname=uname):
            x = args[0] if args else None
            if isinstance(m, nn.Linear) and x is not None:
                macs[uname] += x.numel() // m.in_features * m.in_features * m.out_features
            elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
                k = 1
                for d in m.kernel_size:
                    k *= d
                macs[uname] += out.numel() * (m.in_channels // m.groups) * k
        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            args, kwargs = samples[0]
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return macs
