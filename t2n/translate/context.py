"""What a translator works with: values (wires) and the context that emits NNEF operations."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from t2n.errors import TranslationError
from t2n.nnef.graph import DTYPES, FLOAT_DTYPES, Graph, Operation, Ref, Variable

__all__ = ["Value", "Ctx", "Options"]


@dataclass(frozen=True)
class Value(Ref):
    """A tensor in the NNEF graph: its identifier, and its shape and dtype when known."""

    shape: tuple | None = None
    dtype: str | None = None
    # 8-bit per-tensor quantized values (dtype u8/i8): (scale, zero_point); graph.quant has it
    quant: tuple | None = None

    @property
    def rank(self) -> int:
        if self.shape is None:
            raise TranslationError(f"rank of {self.name} is unknown", "report this as a t2n bug")
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class Options:
    """Translation choices that change the emitted graph."""

    f32_attention: bool = False   # sdpa computed in f32 inside an f16 graph
    f32_norm: bool = False        # layer/rms/group/batch norms computed in f32 in an f16 graph
    f16_arithmetic: str = "f32"   # f16 element-wise arithmetic on f32 copies, or "native"


class Ctx:
    """Emits operations into a graph on behalf of translators."""

    def __init__(self, graph: Graph, options: Options | None = None):
        self.graph = graph
        self.options = options or Options()
        self.node = None          # the fx node being translated
        self.out: Any = None      # its output meta: Value-like shape/dtype (or a tuple of them)
        self._names: dict[str, int] = {}
        self._consts: dict[tuple, Value] = {}
        self.out_quant = None     # (scale, zero_point, dtype) when the node's output is 8-bit
        self._dequantized: dict[str, Value] = {}
        # weights dequantized in the graph from int8 rows (t2n.translate.weights): the float
        # weight's name -> (levels variable, scales variable)
        self.int8_rows: dict[str, tuple[Value, Value]] = {}
        # names inside tract's stdlib fragments: a graph.quant entry under one of them would
        # also apply inside every fragment (linear, relu, pools), so no tensor gets them
        for name in _FRAGMENT_INTERNAL_NAMES:
            self.reserve(name)

    # -- names ---------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A new identifier based on ``hint`` (the first use gets ``hint`` itself)."""
        base = "".join(c if (c.isalnum() or c == "_") else "_" for c in hint) or "t"
        if base[0].isdigit():
            base = "t_" + base
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        name = base if n == 0 else f"{base}_{n}"
        while name in self._names and n > 0:
            n += 1
            name = f"{base}_{n}"
        self._names.setdefault(name, 1)
        return name

    def reserve(self, name: str) -> None:
        self._names.setdefault(name, 1)

    # -- emitting ------------------------------------------------------------------------
    def op(self, op: str, *args, shape=None, dtype=None, name: str | None = None, outputs: int = 1,
           attrs: dict | None = None, **kwattrs) -> Value | tuple[Value, ...]:
        """Emit ``op(args, attrs)``. ``shape``/``dtype`` describe the OUTPUT: without them it
        takes the node's own meta, which is right for the final op of a translator; pass them
        for intermediate values. NNEF attributes go as keywords, or in ``attrs`` for names that
        clash with these parameters (reshape's and broadcast's ``shape``)."""
        attrs = {**kwattrs, **(attrs or {})}
        hint = name or (self.node.name if self.node is not None else op)
        if outputs == 1:
            if shape is None and dtype is None and isinstance(self.out, Value):
                shape, dtype = self.out.shape, self.out.dtype
            out = Value(self.fresh(hint), tuple(shape) if shape is not None else None, dtype)
            self.graph.operations.append(Operation([out.name], op, list(args), attrs))
            return out
        metas = self.out if isinstance(self.out, tuple) else (None,) * outputs
        outs = []
        for i in range(outputs):
            m = metas[i] if i < len(metas) and isinstance(metas[i], Value) else None
            outs.append(Value(self.fresh(f"{hint}_{i}"), m.shape if m else None, m.dtype if m else None))
        self.graph.operations.append(Operation([o.name for o in outs], op, list(args), attrs))
        return tuple(outs)

    def like(self, v: Value, *, shape=None, dtype=None) -> dict:
        """shape/dtype keywords for an intermediate value derived from ``v``."""
        return {"shape": v.shape if shape is None else shape, "dtype": v.dtype if dtype is None else dtype}

    def cast(self, v, dtype: str) -> Value:
        """``v`` converted to ``dtype`` (no-op when it already is)."""
        if not isinstance(v, Value):
            return self.scalar(v, dtype)
        if v.dtype == dtype:
            return v
        return self.op("tract_core_cast", v, to=dtype, shape=v.shape, dtype=dtype,
                       name=f"{v.name}_{dtype}")

    # -- 8-bit quantized values ------------------------------------------------------------
    def quantized(self, v: Value, quant: tuple) -> Value:
        """``v`` declared as 8-bit in graph.quant: ``quant`` is (scale, zero_point, dtype)."""
        scale, zero_point, dtype = quant
        if v.name in _FRAGMENT_INTERNAL_NAMES or v.name in ("output", "input", "x"):
            raise TranslationError(f"internal: 8-bit tensor named {v.name!r}",
                                   "report this as a t2n bug")
        signed = dtype == "i8"
        self.graph.quant[v.name] = (
            f"zero_point_linear_quantize(zero_point = {int(zero_point)}, scale = "
            f"{float(scale)!r}, bits = 8, signed = {'true' if signed else 'false'}, "
            f"symmetric = {'true' if zero_point == 0 else 'false'})")
        return Value(v.name, v.shape, dtype, (float(scale), int(zero_point)))

    def dequantize(self, v: Value, dtype: str = "f32") -> Value:
        """A float copy of a quantized value (one cast, shared by its float readers)."""
        if v.quant is None:
            return v
        key = f"{v.name}:{dtype}"
        if key not in self._dequantized:
            self._dequantized[key] = self.op("tract_core_cast", v, to=dtype, shape=v.shape,
                                             dtype=dtype, name=f"{v.name}_{dtype}")
        return self._dequantized[key]

    def dequantize_all(self, value):
        """``value`` (a Value, or lists/tuples/dicts of them) with every 8-bit Value replaced
        by its float copy."""
        if isinstance(value, Value):
            return self.dequantize(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self.dequantize_all(v) for v in value)
        if isinstance(value, dict):
            return {k: self.dequantize_all(v) for k, v in value.items()}
        return value

    def scalar(self, value, dtype: str) -> Value:
        """A rank-0 constant of ``dtype`` (an NNEF literal, cast when it is not f32)."""
        if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            if dtype in ("f16", "f32", "f64"):
                lit = _literal_name(float(value))
            else:
                lit = str(int(value)) if dtype != "bool" else ("1" if value else "0")
            if dtype == "f32":
                return Value(lit, (), "f32")
            key = ("scalar", dtype, lit)
            if key not in self._consts:
                self._consts[key] = self.op("tract_core_cast", Ref(lit), to=dtype, shape=(),
                                            dtype=dtype, name=f"c_{dtype}")
            return self._consts[key]
        return self.const(np.array(value, dtype=DTYPES[dtype]))

    def const(self, array: np.ndarray, hint: str = "const") -> Value:
        """A constant tensor stored in the bundle (deduplicated by content for small ones)."""
        array = np.asarray(array)
        dtype = _dtype_name(array.dtype)
        key = None
        if array.size <= 64:
            key = (dtype, array.shape, array.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.fresh(hint)
        if array.ndim == 0:  # .dat files hold rank >= 1: store [1] and squeeze it
            stored = Variable(name + "_1", f"constants/{name}", (1,), dtype, array.reshape(1))
            self.graph.variables.append(stored)
            self.graph.operations.append(Operation([name], "squeeze", [Ref(stored.name)],
                                                   {"axes": [0]}))
        else:
            self.graph.variables.append(Variable(name, f"constants/{name}", array.shape, dtype,
                                                 array))
        v = Value(name, tuple(array.shape), dtype)
        if key is not None:
            self._consts[key] = v
        return v

    def variable(self, name: str, label: str, shape, dtype: str, data, **kw) -> Value:
        self.reserve(name)
        if tuple(shape) == ():  # .dat files hold rank >= 1: store [1] and squeeze it
            stored = self.fresh(name + "_1")
            flat = (lambda: np.reshape(data(), (1,))) if callable(data) else np.reshape(data, (1,))
            self.graph.variables.append(Variable(stored, label, (1,), dtype, flat, **kw))
            self.graph.operations.append(Operation([name], "squeeze", [Ref(stored)], {"axes": [0]}))
            return Value(name, (), dtype)
        self.graph.variables.append(Variable(name, label, tuple(shape), dtype, data, **kw))
        return Value(name, tuple(shape), dtype)

    def storage(self, v) -> str | None:
        """The storage format of a stored tensor (e.g. ``q4_0``), None for other values."""
        if not isinstance(v, Value):
            return None
        for var in self.graph.variables:
            if var.name == v.name:
                return var.storage
        return None

    def block_quantized(self, v) -> bool:
        """Whether ``v`` is a block-quantized stored tensor, which tract only accepts as a
        matmul's right operand (transposed), a conv filter, or a gather table (axis 0)."""
        storage = self.storage(v)
        return storage is not None and storage not in DTYPES

    def fragment(self, name: str) -> None:
        """Declare that graph.nnef needs ``t2n/nnef/fragments/{name}.nnef``."""
        if name not in self.graph.fragments:
            self.graph.fragments.append(name)

    def registry(self, name: str) -> None:
        self.graph.registries.add(name)


_FRAGMENT_INTERNAL_NAMES = ("y", "z", "index")


def _literal_name(value: float) -> str:
    text = repr(value)
    return text if ("." in text or "e" in text) else text + ".0"


_NP_TO_NAME = {np.dtype(v): k for k, v in DTYPES.items()}


def _dtype_name(dtype) -> str:
    return _NP_TO_NAME[np.dtype(dtype)]
