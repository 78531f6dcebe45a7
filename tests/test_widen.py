import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import t2n
from helpers import Lambda, assert_bundle_matches
from t2n import verify
from t2n.nnef.graph import Graph, Input, Operation, Variable
from t2n.translate.context import Value
from t2n.translate.engine import _prune
from t2n.translate.widen import widen_f16_arithmetic


def test_arithmetic_chain_stays_in_f32_between_casts():
    a = Value("a", (2, 64), "f16")
    b, c, d = Value("b", (2, 64), "f16"), Value("c", (2, 64), "f16"), Value("d", (2, 64), "f32")
    graph = Graph(inputs=[Input("a", "f16", (2, 64))], operations=[
        Operation(["b"], "mul", [a, a]),
        Operation(["c"], "add", [b, a]),
        Operation(["d"], "tract_core_cast", [c], {"to": "f32"}),
        Operation(["e"], "mul", [d, 2.0]),
    ], outputs=["c", "e"])
    widen_f16_arithmetic(graph, [c, Value("e", (2, 64), "f32")])
    _prune(graph)
    ops = {op.outputs[0]: op for op in graph.operations}
    # one cast of the input, mul and add in f32 (the add reads the f32 product), the f16
    # output cast from the f32 sum, and the f32 consumer reads the sum without a round trip
    assert [op.op for op in graph.operations] == [
        "tract_core_cast", "mul", "add", "tract_core_cast", "mul"]
    widened_a = graph.operations[0].outputs[0]
    mul, add = graph.operations[1], graph.operations[2]
    assert [r.name for r in mul.args] == [widened_a, widened_a]
    assert [r.name for r in add.args] == [mul.outputs[0], widened_a]
    assert ops["c"].op == "tract_core_cast" and ops["c"].args[0].name == add.outputs[0]
    assert ops["e"].args[0].name == add.outputs[0]


def test_arithmetic_on_a_large_weight_stays_f16():
    # an f32 copy of a stored weight would double its memory: that op keeps f16
    x = Value("x", (1024, 1025), "f16")
    graph = Graph(inputs=[Input("x", "f16", (1024, 1025))], operations=[
        Operation(["y"], "add", [x, Value("w", (1024, 1025), "f16")]),
        Operation(["z"], "mul", [x, Value("v", (1, 1025), "f16")]),
    ], outputs=["y", "z"])
    graph.variables = [Variable("w", "w", (1024, 1025), "f16", None),
                       Variable("v", "v", (1, 1025), "f16", None)]
    widen_f16_arithmetic(graph, [Value("y", (1024, 1025), "f16"), Value("z", (1024, 1025), "f16")])
    ops = {op.outputs[0]: op for op in graph.operations}
    assert ops["y"].op == "add" and ops["z"].op == "tract_core_cast"


class _Rotary(torch.nn.Module):
    def forward(self, x, cos, sin):
        rotated = torch.cat((-x[..., 32:], x[..., :32]), dim=-1)
        y = x * cos + rotated * sin
        return F.silu(y) * y + x


def _f16_nodes(path, inputs) -> list[str]:
    runnable = verify.load_tract_model(path).into_runnable()
    profile = json.loads(runnable.profile_json([np.asarray(i) for i in inputs]))
    return [n["node_name"] for n in profile["nodes"]
            if any("F16" in k for k in n.get("cost", {}))]


@pytest.mark.parametrize("static", [True, False], ids=["static", "symbolic_S"])
def test_f16_arithmetic_runs_in_f32_in_tract(static, tmp_path):
    """tract has no vectorized f16 element-wise kernels: an f16 graph's arithmetic is
    computed on f32 copies, its inputs and outputs stay f16. The result is the f32 arithmetic
    on the f16 inputs, rounded once to f16 (torch's f16 arithmetic rounds at every step, and
    differs from it by up to 0.05 here: checked at `very`, the CLI's level for f16)."""
    torch.manual_seed(0)
    args = (torch.randn(1, 4, 5, 64), torch.randn(1, 1, 5, 64), torch.randn(1, 1, 5, 64))
    kw = {} if static else {"dynamic_axes": {n: {2: "S"} for n in ("x", "cos", "sin")},
                            "input_names": ["x", "cos", "sin"], "symbol_min": {"S": 1}}
    result = assert_bundle_matches(_Rotary(), args, tmp_path, dtype="f16", tolerance="very",
                                   **kw)
    half = [a.half().numpy() for a in args]
    assert _f16_nodes(result.path, half) == []
    model = verify.load_tract_model(result.path)
    assert str(model.input_fact(0)).endswith("f16") and str(model.output_fact(0)).endswith("f16")
    runs = [half]
    if not static:
        assert "extension tract_assert S >= 1;" in (result.path / "graph.nnef").read_text()
        runs.append([a[:, :, :1] for a in half])
    for inputs in runs:
        out, _ = verify.run_tract(result.path, inputs)
        with torch.no_grad():
            expected = _Rotary()(*[torch.from_numpy(a).float() for a in inputs]).numpy()
        np.testing.assert_allclose(out[0].astype(np.float32), expected, atol=1e-3, rtol=1e-3)


def test_symbol_min_names_a_dynamic_symbol(tmp_path):
    with pytest.raises(t2n.T2NError, match="bad smallest size"):
        t2n.export(Lambda(torch.relu), (torch.randn(2, 3),), tmp_path / "out",
                   dynamic_axes={"input_0": {1: "S"}}, symbol_min={"T": 1})
    assert list(tmp_path.iterdir()) == []


def test_native_f16_arithmetic_keeps_f16_and_is_recorded(tmp_path):
    """--f16-arithmetic native (CPUs with f16 arithmetic): no f32 copies, tract computes in
    f16, and the bundle's properties say which was chosen."""
    torch.manual_seed(0)
    args = (torch.randn(1, 4, 5, 64), torch.randn(1, 1, 5, 64), torch.randn(1, 1, 5, 64))
    native = assert_bundle_matches(_Rotary(), args, tmp_path, dtype="f16", tolerance="very",
                                   f16_arithmetic="native", name="native")
    widened = assert_bundle_matches(_Rotary(), args, tmp_path, dtype="f16", tolerance="very",
                                    name="widened")
    half = [a.half().numpy() for a in args]
    assert _f16_nodes(native.path, half) and not _f16_nodes(widened.path, half)
    assert "tract_core_cast" not in (native.path / "graph.nnef").read_text()
    for bundle, choice in ((native, "native"), (widened, "f32")):
        properties = (bundle.path / "graph.nnef").read_text()
        assert f'("t2n_f16_arithmetic", "{choice}")' in properties, properties[:2000]


def test_f16_arithmetic_choice_is_validated(tmp_path):
    with pytest.raises(t2n.OptionError, match="unknown f16 arithmetic 'fast'"):
        t2n.export(Lambda(torch.relu), (torch.randn(2, 3),), tmp_path / "out", dtype="f16",
                   f16_arithmetic="fast")
    assert list(tmp_path.iterdir()) == []


def test_a_cast_from_integers_is_not_read_as_an_f32_source():
    """Look-alike of a rounded f32 value: an f16 cast of an i64 tensor. The widened product
    must read a cast of the f16 value, never the integer tensor as if it were f32."""
    i = Value("i", (2, 64), "i64")
    h, y = Value("h", (2, 64), "f16"), Value("y", (2, 64), "f16")
    graph = Graph(inputs=[Input("i", "i64", (2, 64))], operations=[
        Operation(["h"], "tract_core_cast", [i], {"to": "f16"}),
        Operation(["y"], "mul", [h, h]),
    ], outputs=["y"])
    widen_f16_arithmetic(graph, [y])
    mul = next(op for op in graph.operations if op.op == "mul")
    sources = {op.outputs[0]: op for op in graph.operations}
    for arg in mul.args:
        cast = sources[arg.name]
        assert cast.op == "tract_core_cast" and cast.args[0].name == "h", graph.operations


def test_integer_arithmetic_in_an_f16_graph_is_left_alone():
    i, j = Value("i", (2, 64), "i64"), Value("j", (2, 64), "i64")
    graph = Graph(inputs=[Input("i", "i64", (2, 64))], operations=[
        Operation(["j"], "add", [i, i])], outputs=["j"])
    widen_f16_arithmetic(graph, [j])
    assert [(op.op, op.outputs) for op in graph.operations] == [("add", ["j"])]
