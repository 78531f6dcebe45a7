"""Dataclasses for an NNEF graph: what the translator builds and the writers read.

Argument values inside an :class:`Operation` are plain Python data: ``Ref`` names a tensor,
``Dim`` is a raw integer expression (a tract symbol such as ``S`` or ``S + 1``), ``str`` is a
string literal, and bool/int/float/list/tuple are NNEF literals.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["Ref", "Dim", "Input", "Variable", "Operation", "Graph", "DTYPES", "renamed",
           "ref_names"]

# t2n dtype name -> numpy dtype. The names are tract's datum type names.
DTYPES = {
    "f16": np.float16, "f32": np.float32, "f64": np.float64,
    "i8": np.int8, "i16": np.int16, "i32": np.int32, "i64": np.int64,
    "u8": np.uint8, "u16": np.uint16, "u32": np.uint32, "u64": np.uint64,
    "bool": np.bool_,
}
FLOAT_DTYPES = ("f16", "f32", "f64")


@dataclass(frozen=True)
class Ref:
    """A tensor identifier in graph.nnef."""

    name: str


@dataclass(frozen=True)
class Dim:
    """An integer expression written as is (tract symbols and arithmetic on them)."""

    expr: str


@dataclass
class Input:
    name: str
    dtype: str
    shape: tuple  # ints or Dim


@dataclass
class Variable:
    """A stored tensor: ``name`` in the graph, ``label`` names its ``.dat`` file.

    ``data`` is an array, or a callable returning one, so large weights are produced one at a
    time while the bundle is written. ``storage`` says how it is encoded (a dtype name or a
    block format such as ``q4_0``); ``encode`` turns the array into that storage's bytes.
    """

    name: str
    label: str
    shape: tuple
    dtype: str
    data: Any
    storage: str = ""
    encode: Callable[[Any], bytes] | None = None

    def __post_init__(self):
        if not self.storage:
            self.storage = self.dtype

    def array(self):
        return self.data() if callable(self.data) else self.data


@dataclass
class Operation:
    outputs: list[str]
    op: str
    args: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)


@dataclass
class Graph:
    name: str = "network"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    variables: list[Variable] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)
    registries: set[str] = field(default_factory=lambda: {"tract_core"})
    symbols: list[str] = field(default_factory=list)
    assertions: list[str] = field(default_factory=list)  # tract_assert facts, e.g. "S >= 1"
    fragments: list[str] = field(default_factory=list)  # names of t2n/nnef/fragments/*.nnef
    properties: dict[str, Any] = field(default_factory=dict)
    quant: dict[str, str] = field(default_factory=dict)  # tensor name -> graph.quant expression
    # outputs dequantized from 8-bit tensors: name -> quantization step (scale)
    output_steps: dict[str, float] = field(default_factory=dict)
    # 8-bit graphs: activation quantized from float -> its scale
    activation_steps: dict[str, float] = field(default_factory=dict)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.operations:
            counts[op.op] = counts.get(op.op, 0) + 1
        return counts


def renamed(value, renames: dict):
    """``value`` (an argument: a Ref, a literal, or lists/tuples of them) with the Refs named
    in ``renames`` replaced by the new name (a str) or tensor (a Ref)."""
    if isinstance(value, Ref):
        if value.name not in renames:
            return value
        new = renames[value.name]
        return new if isinstance(new, Ref) else Ref(new)
    if isinstance(value, list):
        return [renamed(v, renames) for v in value]
    if isinstance(value, tuple):
        return tuple(renamed(v, renames) for v in value)
    return value


def ref_names(value, into: set | None = None) -> set:
    """Names of the tensors ``value`` (an argument) refers to, added to ``into``."""
    into = set() if into is None else into
    if isinstance(value, Ref):
        into.add(value.name)
    elif isinstance(value, (list, tuple)):
        for v in value:
            ref_names(v, into)
    return into
