"""Float16 arithmetic computed in float32.

tract 0.23.9 has no vectorized float16 path for element-wise arithmetic on x86: a float16
``mul`` of 1,536 values takes ~10 us where the float32 one takes 0.5 us, and a float16 graph
spends a tenth of its decoding time there. This pass rewrites every element-wise arithmetic
operation on float16 tensors as the same operation on float32 copies, followed by a cast back
to float16 under the original name. A float16 value that is a rounded float32 one (a cast) is
read as that float32 value, and a cast of a widened value to float32 reads the widened value,
so chains of arithmetic (a residual stream, rotary embeddings, a gated MLP's product) stay in
float32 between the matmuls; casts nobody reads any more are pruned afterwards. Softmax is
widened too (tract's float16 one is ~30x slower, and torch accumulates it in float32).
Matmul inputs, stored weights and graph outputs keep their float16 type. The results are those of float32
arithmetic on the float16 operands: torch's float16 ones are within rounding of them.
"""
from __future__ import annotations

import math

from t2n.nnef.graph import Graph, Operation, Ref, ref_names, renamed
from t2n.translate.context import Value

__all__ = ["widen_f16_arithmetic"]

# a stored weight read by arithmetic gets an f32 copy (tract folds the cast at load): above
# this many values, the op stays f16 rather than double the weight's memory
LARGE_WEIGHT = 1 << 20

ARITHMETIC = frozenset({
    "add", "sub", "mul", "div", "pow", "min", "max", "neg", "abs", "exp", "log", "log2",
    "sqrt", "rsqrt", "sqr", "sin", "cos", "tanh", "sigmoid", "tract_core_erf", "tract_core_silu",
    "tract_core_gelu_approx", "softmax", "tract_core_log_softmax",
})
# operations that only move values: given float32 copies of all their inputs, they also get
# a float32 copy, so that a slice-negate-concat (rotate_half) needs no casts
MOVEMENT = frozenset({
    "slice", "concat", "reshape", "transpose", "unsqueeze", "squeeze", "tile",
    "tract_core_broadcast",
})


def widen_f16_arithmetic(graph: Graph, results: list) -> None:
    """Rewrite ``graph.operations`` in place; ``results``: the graph's output values (their
    types are needed for tensors that no operation reads)."""
    dtypes = _known_dtypes(graph, results)
    names = set(dtypes) | {o for op in graph.operations for o in op.outputs}
    wide: dict[str, Value] = {}      # float16 tensor -> float32 tensor of (at least) its value
    renames: dict[str, Value] = {}   # a dropped float16 -> float32 cast -> the float32 tensor
    kept_outputs = {v.name for v in results if isinstance(v, Ref)}
    large = {v.name for v in graph.variables if math.prod(v.shape) > LARGE_WEIGHT}
    rewritten: list[Operation] = []

    def fresh(base: str) -> str:
        name, n = f"{base}_w32", 1
        while name in names:
            n += 1
            name = f"{base}_w32_{n}"
        names.add(name)
        return name

    def dtype_of(arg) -> str | None:
        return arg.dtype if isinstance(arg, Value) and arg.dtype else dtypes.get(arg.name)

    def widened(arg):
        if not isinstance(arg, Ref):
            return arg  # a literal
        if arg.name not in wide:
            out = Value(fresh(arg.name), getattr(arg, "shape", None), "f32")
            rewritten.append(Operation([out.name], "tract_core_cast", [arg], {"to": "f32"}))
            wide[arg.name] = out
        return wide[arg.name]

    for op in graph.operations:
        args = [renamed(a, renames) for a in op.args]
        out = op.outputs[0] if len(op.outputs) == 1 else None
        if op.op == "tract_core_cast" and out is not None and isinstance(args[0], Ref):
            source, to = args[0], op.attrs.get("to")
            if to == "f16" and dtype_of(source) == "f32":
                wide[out] = _typed(source, "f32")
            elif to == "f32" and source.name in wide and out not in kept_outputs:
                renames[out] = wide[source.name]
                continue
        elif op.op in ARITHMETIC and out is not None and dtypes.get(out) == "f16" and all(
                not isinstance(a, Ref) or dtype_of(a) == "f16" and a.name not in large
                for a in args) and any(isinstance(a, Ref) for a in args):
            result = Value(fresh(out), None, "f32")
            rewritten.append(Operation([result.name], op.op, [widened(a) for a in args],
                                       dict(op.attrs)))
            rewritten.append(Operation([out], "tract_core_cast", [result], {"to": "f16"}))
            wide[out] = result
            continue
        op.args = args
        op.attrs = {k: renamed(v, renames) for k, v in op.attrs.items()}
        rewritten.append(op)
        read = ref_names(args)
        if op.op in MOVEMENT and out is not None and dtypes.get(out) == "f16" and read \
                and read <= wide.keys():
            result = Value(fresh(out), None, "f32")
            rewritten.append(Operation([result.name], op.op, renamed(args, wide),
                                       dict(op.attrs)))
            wide[out] = result
    graph.operations = rewritten


def _typed(ref: Ref, dtype: str) -> Value:
    return ref if isinstance(ref, Value) else Value(ref.name, None, dtype)


def _known_dtypes(graph: Graph, results: list) -> dict[str, str]:
    dtypes = {i.name: i.dtype for i in graph.inputs}
    dtypes.update((v.name, v.dtype) for v in graph.variables)

    def visit(value):
        if isinstance(value, Value) and value.dtype is not None:
            dtypes.setdefault(value.name, value.dtype)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    for op in graph.operations:
        visit(op.args)
        visit(list(op.attrs.values()))
    visit(results)
    return dtypes

