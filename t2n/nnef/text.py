"""Render a :class:`~t2n.nnef.graph.Graph` as graph.nnef text (NNEF 1.0 with tract extensions)."""
from __future__ import annotations

import math
from importlib import resources

import numpy as np

from t2n.nnef.graph import Dim, Graph, Ref

__all__ = ["render", "literal", "fragment_text"]


def literal(value) -> str:
    """An NNEF literal for a Python value (``Ref`` and ``Dim`` are written as is)."""
    if isinstance(value, Ref):
        return value.name
    if isinstance(value, Dim):
        return value.expr
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"NNEF has no literal for {value}; store it as a tensor")
        text = repr(value)
        return text if ("." in text or "e" in text) else text + ".0"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(v) for v in value) + ")"
    raise TypeError(f"no NNEF literal for {type(value).__name__}: {value!r}")


def fragment_text(name: str) -> str:
    return resources.files("t2n.nnef").joinpath("fragments", f"{name}.nnef").read_text().strip()


def _properties(props: dict) -> str:
    items = ", ".join(f"({literal(k)}, {literal(v)})" for k, v in props.items())
    return ("fragment tract_core_properties(\n) -> (properties: (string, tensor<scalar>)[])\n"
            f"{{\n  properties = [{items}];\n}}")


def _external(inp) -> str:
    shape = literal(list(inp.shape))
    return f"  {inp.name} = tract_core_external(shape = {shape}, datum_type = {literal(inp.dtype)});"


def _variable(var) -> str:
    kind = "scalar" if var.dtype in ("f16", "f32", "f64") else (
        "logical" if var.dtype == "bool" else "integer")
    return (f"  {var.name} = variable<{kind}>(label = {literal(var.label)}, "
            f"shape = {literal(list(var.shape))});")


def _operation(op) -> str:
    if not op.op:  # plain assignment, used to name graph outputs
        return f"  {op.outputs[0]} = {literal(op.args[0])};"
    args = [literal(a) for a in op.args] + [f"{k} = {literal(v)}" for k, v in op.attrs.items()]
    lhs = op.outputs[0] if len(op.outputs) == 1 else "(" + ", ".join(op.outputs) + ")"
    return f"  {lhs} = {op.op}({', '.join(args)});"


def render(graph: Graph) -> str:
    lines = ["version 1.0;", ""]
    lines += [f"extension tract_registry {r};" for r in sorted(graph.registries)]
    lines += [f"extension tract_symbol {s};" for s in graph.symbols]
    lines += [f"extension tract_assert {a};" for a in graph.assertions]
    lines.append("")
    if graph.properties:
        lines += [_properties(graph.properties), ""]
    for name in graph.fragments:
        lines += [fragment_text(name), ""]
    ins = ", ".join(i.name for i in graph.inputs)
    outs = ", ".join(graph.outputs)
    lines += [f"graph {graph.name}({ins}) -> ({outs})", "{"]
    lines += [_external(i) for i in graph.inputs]
    lines += [_variable(v) for v in graph.variables]
    lines += [_operation(op) for op in graph.operations]
    lines += ["}", ""]
    return "\n".join(lines)
