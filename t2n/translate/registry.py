"""The one registry of translators: ATen op overload -> function emitting NNEF.

A translator mirrors its ATen schema: ``fn(ctx, *args, **kwargs)`` receives the node's
arguments with tensors replaced by :class:`~t2n.translate.context.Value` and symbolic sizes by
:class:`~t2n.nnef.graph.Dim`; its keyword defaults are the schema's defaults and its docstring
is the schema line. It returns a Value (or a tuple for multi-output ops).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Translator", "translates", "TRANSLATORS", "lookup", "op_name", "translates_8bit",
           "EIGHT_BIT"]


@dataclass(frozen=True)
class Translator:
    target: object
    fn: Callable
    family: str
    # receives 8-bit values as they are; other translators get them dequantized to float
    quantized: bool = False

    @property
    def name(self) -> str:
        return op_name(self.target)

    @property
    def schema(self) -> str:
        """The op's schema as torch declares it (the docstring's line for other callables)."""
        declared = getattr(self.target, "_schema", None)
        if declared is not None:
            return str(declared)
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


TRANSLATORS: dict[object, Translator] = {}
# 8-bit handlers, beside the translators: op -> fn(ctx, float_fn, *args, **kwargs). The engine
# calls one when the node reads an 8-bit value or its output is planned 8-bit; ``float_fn``
# is the op's translator of the moment (a user's own included), for what stays float.
EIGHT_BIT: dict[object, Callable] = {}


def op_name(target) -> str:
    """``aten.gelu.default`` for an OpOverload, the qualified name for a Python callable."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    module = getattr(target, "__module__", "") or ""
    return f"{module.replace('_operator', 'operator')}.{getattr(target, '__name__', target)}"


def translates(*targets, override: bool = False, quantized: bool = False):
    """Register the decorated function as the translator of each of ``targets``.

    ``quantized``: the function handles 8-bit inputs (Value.quant) itself; without it, t2n
    hands it float values (dequantized by a cast), so every op works on 8-bit graphs."""

    def register(fn):
        family = fn.__module__.rsplit(".", 1)[-1]
        for target in targets:
            if target in TRANSLATORS and not override:
                raise RuntimeError(f"{op_name(target)} already has a translator "
                                   f"({TRANSLATORS[target].fn.__module__}); pass override=True")
            TRANSLATORS[target] = Translator(target, fn, family, quantized)
        return fn

    return register


def translates_8bit(*targets):
    """Register the decorated ``fn(ctx, float_fn, *args, **kwargs)`` as the 8-bit handler of
    each of ``targets`` (see EIGHT_BIT). It does not replace their translators."""

    def register(fn):
        for target in targets:
            EIGHT_BIT[target] = fn
        return fn

    return register


def lookup(target) -> Translator | None:
    return TRANSLATORS.get(target)
