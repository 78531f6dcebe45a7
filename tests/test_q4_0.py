"""Q4_0 weights: the byte layout, independent packers, and tract running the blocks."""
import copy
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tract
from t2n.nnef import dat
from t2n.quant import q4_0
from t2n.quant.q4_0 import Q4_0Tensor


# -- an independent reference: one block at a time, the arithmetic spelled out ---------------
def reference_pack(weight) -> bytes:
    """GGML's quantize_row_q4_0_ref as a loop: float32 arithmetic, nibble j | nibble j+16."""
    values = np.asarray(weight, dtype=np.float32).reshape(-1)
    out = bytearray()
    for start in range(0, len(values), 32):
        block = values[start:start + 32]
        amax, vmax = np.float32(0), np.float32(0)
        for v in block:
            if abs(v) > amax:
                amax, vmax = abs(v), v
        d = vmax / np.float32(-8)
        inv = np.float32(0) if d == 0 else np.float32(1) / d
        q = [min(15, int(v * inv + np.float32(8.5))) for v in block]
        out += struct.pack("<e", float(d))
        out += bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return bytes(out)


def reference_unpack(data: bytes) -> np.ndarray:
    """Float32 values of raw blocks, decoded byte by byte."""
    values = []
    for start in range(0, len(data), 18):
        (d,) = struct.unpack_from("<e", data, start)
        nibbles = data[start + 2:start + 18]
        q = [b & 0x0F for b in nibbles] + [b >> 4 for b in nibbles]
        values += [np.float32(qi - 8) * np.float32(d) for qi in q]
    return np.array(values, dtype=np.float32)


def awkward_weight(dtype=np.float32) -> np.ndarray:
    """[16, 64] rows that stress the quantizer: zeros, sign ties, exact half levels, tiny and
    large scales, plus random rows."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    w[1] = 0
    w[2, :32] = np.where(np.arange(32) == 3, -3.0, np.where(np.arange(32) == 9, 3.0, 0.1))
    w[2, 32:] = np.where(np.arange(32) == 3, 3.0, np.where(np.arange(32) == 9, -3.0, -0.1))
    w[3] = np.linspace(-3, 3, 64)
    w[4] *= 1e-6
    w[5] *= 1000
    w[6] = np.arange(-8, 8, 0.25)
    w[7, 32:] = 0
    return w.astype(dtype)


# -- the layout, by hand -------------------------------------------------------------------------
# np.arange(-8, 8, 0.5): max = -8 (first of largest magnitude), d = -8 / -8 = 1.0, and
# q[i] = min(15, floor(x[i] + 8.5)) = min(15, (i + 1) // 2): 0 1 1 2 2 ... 15 15 15.
# Byte j = q[j] | q[j+16] << 4: (0,8) (1,9) (1,9) (2,10) (2,10) ... (7,15) (8,15).
# Negated, max = +8 so d = -1.0 and the nibbles are the same.
_GOLDEN_NIBBLES = bytes.fromhex("80 91 91 a2 a2 b3 b3 c4 c4 d5 d5 e6 e6 f7 f7 f8")


@pytest.mark.parametrize("sign,scale_bytes", [(1, b"\x00\x3c"), (-1, b"\x00\xbc")],
                         ids=["ascending_d_plus_1", "descending_d_minus_1"])
def test_golden_block(sign, scale_bytes):
    w = (sign * np.arange(-8, 8, 0.5, dtype=np.float32)).reshape(1, 32)
    q, d = q4_0.quantize(w)
    assert q.tolist() == [[min(15, (i + 1) // 2) for i in range(32)]]
    assert d.dtype == np.float16 and d.tolist() == [float(sign)]
    data = q4_0.pack(q, d)
    assert data == scale_bytes + _GOLDEN_NIBBLES
    decoded = q4_0.dequantize(q, d, (1, 32))
    expected = sign * np.array([(min(15, (i + 1) // 2) - 8) for i in range(32)], np.float32)
    np.testing.assert_array_equal(decoded[0], expected)


def test_golden_dat_header():
    w = np.arange(-8, 8, 0.5, dtype=np.float32).reshape(1, 2, 16)
    file = q4_0.encode_dat(w)
    expected_header = (b"\x4e\xef\x01\x00" + struct.pack("<II", 18, 3)
                       + struct.pack("<8I", 1, 2, 16, 0, 0, 0, 0, 0)
                       + struct.pack("<IHH", 0xFFFFFFFF, 0x3040, 0x5452) + bytes(76))
    assert file == expected_header + b"\x00\x3c" + _GOLDEN_NIBBLES


# -- independent packers -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64], ids=lambda t: t.__name__)
def test_matches_reference_packer(dtype):
    w = awkward_weight(dtype)
    assert q4_0.pack(*q4_0.quantize(w)) == reference_pack(w)


@pytest.mark.parametrize("shape", [(16, 64), (3, 4, 8), (300, 96)], ids=lambda s: str(s))
def test_matches_gguf(shape):
    import gguf.quants as gguf_quants  # the models extra (scripts/setup.sh) installs gguf
    from gguf import GGMLQuantizationType
    w = np.random.default_rng(3).standard_normal(shape).astype(np.float32) * 0.05
    w.reshape(-1, 32)[::7] = 0
    ours = q4_0.pack(*q4_0.quantize(w))
    theirs = gguf_quants.quantize(w.reshape(shape[0], -1), GGMLQuantizationType.Q4_0)
    assert ours == theirs.tobytes()
    np.testing.assert_array_equal(
        q4_0.dequantize(*q4_0.quantize(w), shape).reshape(shape[0], -1),
        gguf_quants.dequantize(theirs, GGMLQuantizationType.Q4_0))


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_matches_tract_quantizer(dtype, tmp_path):
    """tract's own block_quant transform quantizes a plain weight and writes it as NNEF: the
    .dat file (header included) is byte-identical to ours."""
    w = awkward_weight(np.float16 if dtype == "f16" else np.float32)
    folder = tmp_path / "plain"
    folder.mkdir()
    dat.write_array(folder / "w.dat", w)
    (folder / "graph.nnef").write_text(
        "version 1.0;\nextension tract_registry tract_core;\ngraph g(x) -> (y) {\n"
        f"  x = tract_core_external(shape = [5, 64], datum_type = '{dtype}');\n"
        '  w = variable<scalar>(label = "w", shape = [16, 64]);\n'
        "  y = matmul(x, w, transposeB = true);\n}\n")
    nnef = tract.nnef().with_tract_extra().with_tract_transformers()
    model = nnef.load(str(folder))
    model.transform("block_quant")
    nnef.write_model_to_dir(model, str(tmp_path / "out"))
    assert (tmp_path / "out" / "w.bq.dat").read_bytes() == q4_0.encode_dat(w)


def test_round_trip():
    w = awkward_weight()
    q, d = q4_0.quantize(w)
    data = q4_0.pack(q, d)
    q2, d2 = q4_0.unpack(data, len(q))
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(d2.view(np.uint16), d.view(np.uint16))
    decoded = q4_0.dequantize(q, d, w.shape)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded.reshape(-1), reference_unpack(data))
    # min-max quantization of an already quantized weight changes nothing
    assert q4_0.pack(*q4_0.quantize(decoded)) == data
    assert q4_0.pack(*q4_0.quantize(decoded, scales=d)) == data


def test_error_is_bounded_by_half_a_step():
    w = np.random.default_rng(5).standard_normal((64, 128)).astype(np.float32)
    q, d = q4_0.quantize(w)
    err = np.abs(q4_0.dequantize(q, d, w.shape) - w).reshape(-1, 32)
    step = np.abs(d.astype(np.float32))[:, None]
    levels = (w.reshape(-1, 32) / d.astype(np.float32)[:, None])
    # on the grid's span [-8, 7.5] steps: half a step (1% for d's float16 rounding); beyond,
    # on the short side (7.5 to 8 steps), clipped to level 7
    inside = levels <= 7.5
    assert (err[inside] <= (step * 0.505 + 1e-12).repeat(32, 1)[inside]).all()
    assert (err <= step * 1.01).all()


# -- zeros, scales, bad input --------------------------------------------------------------------
def test_zero_blocks():
    w = np.zeros((2, 64), np.float32)
    w[0, 32:] = -0.0
    w[1, 32:] = np.linspace(-1, 1, 32)
    q, d = q4_0.quantize(w)
    assert d.tolist()[:3] == [0.0, 0.0, 0.0] and d[3] != 0
    assert (q[:3] == 8).all()
    assert q4_0.pack(q[:1], d[:1]) == b"\x00\x80" + b"\x88" * 16  # d = 0 / -8 = -0.0
    decoded = q4_0.dequantize(q, d, w.shape)
    assert not np.isnan(decoded).any() and (decoded[0] == 0).all() and (decoded[1, :32] == 0).all()


def test_caller_scales():
    w = np.tile(np.linspace(-1, 1, 32, dtype=np.float32), (2, 1))
    scales = np.array([[0.1], [-0.05]], np.float32)
    q, d = q4_0.quantize(w, scales=scales)
    np.testing.assert_array_equal(d, scales.reshape(-1).astype(np.float16))
    d32 = d.astype(np.float32)[:, None]
    expected = np.clip(np.floor(w * (np.float32(1) / d32) + np.float32(8.5)), 0, 15)
    np.testing.assert_array_equal(q, expected)
    assert (q.min(1) == 0).all() and (q.max(1) == 15).all()  # clipped at both ends
    zero_scale_q, _ = q4_0.quantize(w, scales=[0.0, 0.0])
    assert (zero_scale_q == 8).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "minus_inf"])
def test_rejects_non_finite(bad):
    w = np.ones((4, 32), np.float32)
    w[2, 5] = bad
    with pytest.raises(ValueError, match=r"non-finite.*1 NaN/inf.*index \[2, 5\]"):
        q4_0.quantize(w)


@pytest.mark.parametrize("shape,match", [
    ((4, 48), r"multiple of 32: shape \(4, 48\) has k = 48"),
    ((2, 3, 5), r"multiple of 32: shape \(2, 3, 5\) has k = 15"),
    ((64,), r"rank >= 2"),
], ids=["k_48", "k_15_rank3", "rank1"])
def test_rejects_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        q4_0.quantize(np.ones(shape, np.float32))


def test_rejects_bad_arguments():
    with pytest.raises(TypeError, match="float weights"):
        q4_0.quantize(np.ones((2, 32), np.int64))
    with pytest.raises(ValueError, match="overflows float16"):
        q4_0.quantize(np.full((1, 32), 1e6, np.float32))
    with pytest.raises(ValueError, match="one scale per block.*2 blocks, got 3"):
        q4_0.quantize(np.ones((2, 32), np.float32), scales=[1, 1, 1])
    with pytest.raises(ValueError, match="finite float16"):
        q4_0.quantize(np.ones((1, 32), np.float32), scales=[1e6])
    with pytest.raises(ValueError, match="0..15"):
        q4_0.pack(np.full((1, 32), 16, np.uint8), np.ones(1, np.float16))
    with pytest.raises(ValueError, match="take 36 bytes, got 18"):
        q4_0.unpack(bytes(18), 2)
    q, d = q4_0.quantize(np.ones((2, 32), np.float32))
    with pytest.raises(ValueError, match=r"do not make a \(3, 32\) weight"):
        q4_0.encode_dat((q, d, (3, 32)))


def test_encode_dat_sources_agree():
    w = torch.randn(8, 2, 32)
    expected = q4_0.encode_dat(w.numpy())
    assert q4_0.encode_dat(w) == expected
    assert q4_0.encode_dat(Q4_0Tensor.from_float(w)) == expected
    assert q4_0.encode_dat((*q4_0.quantize(w), w.shape)) == expected


# -- tract runs the blocks -----------------------------------------------------------------------
def _write_bundle(folder, body: str, inputs: dict, q4: dict, plain: dict | None = None,
                  symbols=()):
    """graph.nnef + .dat files. inputs: name -> (dtype, shape); q4: name -> Q4_0Tensor;
    plain: name -> numpy array."""
    folder.mkdir()
    lines = ["version 1.0;", "extension tract_registry tract_core;"]
    lines += [f"extension tract_symbol {s};" for s in symbols]
    lines.append(f"graph g({', '.join(inputs)}) -> (y) {{")
    for name, (dtype, shape) in inputs.items():
        dims = ", ".join(map(str, shape))
        lines.append(f"  {name} = tract_core_external(shape = [{dims}], datum_type = '{dtype}');")
    for name, t in q4.items():
        (folder / f"{name}.dat").write_bytes(q4_0.encode_dat(t))
        lines.append(f'  {name} = variable<scalar>(label = "{name}", shape = {list(t.shape)});')
    for name, array in (plain or {}).items():
        dat.write_array(folder / f"{name}.dat", array)
        kind = "integer" if array.dtype.kind == "i" else "scalar"
        lines.append(f'  {name} = variable<{kind}>(label = "{name}", '
                     f'shape = {list(array.shape)});')
    (folder / "graph.nnef").write_text("\n".join(lines + [body, "}", ""]))
    return folder


def _run(folder, *arrays):
    model = tract.nnef().with_tract_extra().with_tract_transformers().load(str(folder))
    return [o.to_numpy() for o in model.into_runnable().run([np.asarray(a) for a in arrays])]


def _assert_close(got, want, rel):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    assert got.shape == want.shape and got.dtype == want.dtype
    err = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
    assert err <= rel * np.abs(want.astype(np.float64)).max(), err


def _quantized(module: nn.Module) -> nn.Module:
    module.weight = nn.Parameter(Q4_0Tensor.from_float(module.weight), requires_grad=False)
    return module


_NP = {"f32": np.float32, "f16": np.float16}
_TORCH = {"f32": torch.float32, "f16": torch.float16}
_REL = {"f32": 1e-5, "f16": 4e-3}


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("lead", [(5,), (2, 5), (2, 3, 5)], ids=["x_rank2", "x_rank3", "x_rank4"])
def test_tract_linear(lead, dtype, tmp_path):
    """t2n's linear: ``matmul(x, w, transposeB = true)``, w unsqueezed to x's rank."""
    lin = _quantized(nn.Linear(96, 40)).to(_TORCH[dtype])
    x = torch.randn(*lead, 96).to(_TORCH[dtype])
    rank = len(lead) + 1
    body = []
    w = "w"
    if rank > 2:
        body.append(f"  w{rank} = unsqueeze(w, axes = {list(range(rank - 2))});")
        w = f"w{rank}"
    body.append(f"  mm = matmul(x, {w}, transposeB = true);")
    body.append("  y = add(mm, b);")
    bias = lin.bias.detach().numpy().reshape((1,) * (rank - 1) + (40,))
    folder = _write_bundle(tmp_path / "b", "\n".join(body), {"x": (dtype, x.shape)},
                           {"w": lin.weight}, {"b": bias})
    (y,) = _run(folder, x.numpy())
    with torch.no_grad():
        _assert_close(y, lin(x), _REL[dtype])


def test_tract_linear_dynamic(tmp_path):
    lin = _quantized(nn.Linear(64, 24, bias=False))
    folder = _write_bundle(tmp_path / "b", "  w3 = unsqueeze(w, axes = [0]);\n"
                           "  y = matmul(x, w3, transposeB = true);",
                           {"x": ("f32", ("2", "S", "64"))}, {"w": lin.weight}, symbols=["S"])
    for n in (7, 3):
        x = torch.randn(2, n, 64)
        (y,) = _run(folder, x.numpy())
        with torch.no_grad():
            _assert_close(y, lin(x), 1e-5)


@pytest.mark.parametrize("x_shape,body", [
    ((64, 5), "  y = matmul(w, x);"),
    ((2, 64, 5), "  w3 = unsqueeze(w, axes = [0]);\n  y = matmul(w3, x);"),
], ids=["rank2", "rank3"])
def test_tract_weight_on_the_left(x_shape, body, tmp_path):
    """``matmul(w, x)``, w [m, k] the left operand, no transpose: also right."""
    w = Q4_0Tensor.from_float(torch.randn(16, 64))
    x = torch.randn(x_shape)
    (y,) = _run(_write_bundle(tmp_path / "b", body, {"x": ("f32", x_shape)}, {"w": w}), x.numpy())
    _assert_close(y, w @ x, 1e-5)


def test_tract_reshape_after_variable(tmp_path):
    """A Q4_0 variable of rank 3 reshaped to the matrix the matmul needs."""
    w = Q4_0Tensor.from_float(torch.randn(16, 2, 32))
    x = torch.randn(5, 64)
    body = "  w2 = reshape(w, shape = [16, 64]);\n  y = matmul(x, w2, transposeB = true);"
    (y,) = _run(_write_bundle(tmp_path / "b", body, {"x": ("f32", (5, 64))}, {"w": w}),
                x.numpy())
    _assert_close(y, x @ w.reshape(16, 64).T, 1e-5)


_CONVS = {
    "conv1d_stride_pad": (lambda: nn.Conv1d(4, 8, 8, stride=2, padding=1), (2, 4, 20)),
    "conv1d_groups2": (lambda: nn.Conv1d(4, 8, 16, groups=2, bias=False), (1, 4, 20)),
    "conv1d_depthwise_x2": (lambda: nn.Conv1d(4, 8, 32, groups=4), (1, 4, 40)),
    "conv2d_stride_dilation": (lambda: nn.Conv2d(4, 8, (4, 2), stride=(1, 2), padding=(1, 0),
                                                 dilation=(2, 1)), (2, 4, 9, 9)),
    "conv2d_1x1": (lambda: nn.Conv2d(32, 8, 1), (1, 32, 5, 5)),
}


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("case", list(_CONVS))
def test_tract_conv(case, dtype, tmp_path):
    """``conv(x, w, b, ...)`` with a Q4_0 filter [O, I/groups, *kernel]."""
    make, x_shape = _CONVS[case]
    conv = _quantized(make()).to(_TORCH[dtype])
    x = torch.randn(x_shape).to(_TORCH[dtype])
    attrs = (f"stride = {list(conv.stride)}, padding = {[(p, p) for p in conv.padding]}, "
             f"dilation = {list(conv.dilation)}, groups = {conv.groups}, border = 'constant'")
    bias = {} if conv.bias is None else {"b": conv.bias.detach().numpy()}
    args = "x, w" + (", b" if bias else "")
    folder = _write_bundle(tmp_path / "b", f"  y = conv({args}, {attrs});",
                           {"x": (dtype, x_shape)}, {"w": conv.weight}, bias)
    (y,) = _run(folder, x.numpy())
    with torch.no_grad():
        want = conv(x) if dtype == "f32" else conv.float()(x.float()).half()
    _assert_close(y, want, _REL[dtype])


def test_tract_conv_dynamic(tmp_path):
    conv = _quantized(nn.Conv1d(4, 8, 8, padding=2))
    body = ("  y = conv(x, w, b, stride = [1], padding = [(2, 2)], dilation = [1], groups = 1, "
            "border = 'constant');")
    folder = _write_bundle(tmp_path / "b", body, {"x": ("f32", ("1", "4", "S"))},
                           {"w": conv.weight}, {"b": conv.bias.detach().numpy()}, symbols=["S"])
    for n in (20, 9):
        x = torch.randn(1, 4, n)
        (y,) = _run(folder, x.numpy())
        with torch.no_grad():
            _assert_close(y, conv(x), 1e-5)


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_tract_embedding(dtype, tmp_path):
    """``tract_core_gather(w, ids, axis = 0, datum_type = ...)``: the datum_type is required."""
    emb = _quantized(nn.Embedding(50, 64)).to(_TORCH[dtype])
    ids = torch.tensor([[1, 2, 49], [0, 0, 7]])
    body = f"  y = tract_core_gather(w, ids, axis = 0, datum_type = '{dtype}');"
    folder = _write_bundle(tmp_path / "b", body, {"ids": ("i64", (2, 3))}, {"w": emb.weight})
    (y,) = _run(folder, ids.numpy())
    _assert_close(y, emb(ids), 0.0)  # the dequantized rows, bit for bit


def test_tract_tied_embedding_and_head(tmp_path):
    """One Q4_0 variable used by the embedding gather and the output projection."""
    emb = _quantized(nn.Embedding(40, 64))
    ids = torch.tensor([[3, 1, 39]])
    body = ("  e = tract_core_gather(w, ids, axis = 0, datum_type = 'f32');\n"
            "  w3 = unsqueeze(w, axes = [0]);\n  y = matmul(e, w3, transposeB = true);")
    folder = _write_bundle(tmp_path / "b", body, {"ids": ("i64", (1, 3))}, {"w": emb.weight})
    (y,) = _run(folder, ids.numpy())
    _assert_close(y, emb(ids) @ emb.weight.T, 1e-5)


@pytest.mark.parametrize("declared", ["matrix", "filter"])
def test_tract_dequantize_through_gather(declared, tmp_path):
    """Workaround for ops that refuse Q4_0 (here a depthwise conv, which crashes tract): gather
    every row to a plain f32 tensor (tract folds it into a constant at load, so the bundle
    stays small but the memory is f32), from a [C, k] variable or a reshaped [C, 1, k] one."""
    w = Q4_0Tensor.from_float(torch.randn(4, 1, 32))
    x = torch.randn(1, 4, 40)
    flat = "w" if declared == "matrix" else "w2"
    body = ("" if declared == "matrix" else "  w2 = reshape(w, shape = [4, 32]);\n") + (
        f"  wd = tract_core_gather({flat}, ids, axis = 0, datum_type = 'f32');\n"
        "  w3 = reshape(wd, shape = [4, 1, 32]);\n"
        "  y = conv(x, w3, stride = [1], padding = [(0, 0)], dilation = [1], groups = 4, "
        "border = 'constant');")
    stored = Q4_0Tensor(w.packed, (4, 32), w.dtype) if declared == "matrix" else w
    folder = _write_bundle(tmp_path / "b", body, {"x": ("f32", (1, 4, 40))}, {"w": stored},
                           {"ids": np.arange(4, dtype=np.int64)})
    (y,) = _run(folder, x.numpy())
    _assert_close(y, F.conv1d(x, w, groups=4), 1e-5)


# Forms tract 0.23.9 refuses, computes wrongly, or crashes on, with a Q4_0 variable `w`.
# t2n must not emit them; a case that starts passing means tract changed.
_REJECTED = {
    "gather_without_datum_type": ((10, 64), {"ids": ("i64", (2,))},
                                  "  y = tract_core_gather(w, ids, axis = 0);",
                                  "requires an explicit datum_type attribute"),
    "gather_axis_1": ((10, 64), {"ids": ("i64", (2,))},
                      "  y = tract_core_gather(w, ids, axis = 1, datum_type = 'f32');",
                      "Condition failed: `self.axis == 0`"),
    "transpose_then_matmul": ((16, 64), {"x": ("f32", (5, 16))},
                              "  wt = transpose(w, axes = [1, 0]);\n  y = matmul(x, wt);",
                              "Condition failed: `k % self.block_len() == 0`"),
    "elementwise_mul": ((16, 64), {"x": ("f32", (16, 64))}, "  y = mul(w, x);",
                        "Exotic tensor requires an exotic_fact"),
    "cast": ((16, 64), {"x": ("f32", (1,))}, "  y = tract_core_cast(w, to = 'f32');",
             "Exotic tensor requires an exotic_fact"),
    "weight_as_output": ((16, 64), {"x": ("f32", (1,))}, "  y = copy(w);",
                         "Tensor storage is not plain"),
}


@pytest.mark.parametrize("case", list(_REJECTED))
def test_tract_rejects(case, tmp_path):
    shape, inputs, body, error = _REJECTED[case]
    w = Q4_0Tensor.from_float(torch.randn(shape))
    folder = _write_bundle(tmp_path / "b", body, inputs, {"w": w})
    arrays = [np.zeros(s, _NP.get(t, np.int64)) for t, s in inputs.values()]
    with pytest.raises(Exception) as info:
        _run(folder, *arrays)
    assert type(info.value).__name__ == "TractError" and error in str(info.value)


def test_tract_silently_wrong(tmp_path):
    """No error, wrong numbers: matmul without transposeB computes x @ w.T (a [k, n] weight
    cannot be the right operand as is); a rank-3 gather table loses its inner axes; a declared
    shape other than the .dat's is not checked."""
    w = Q4_0Tensor.from_float(torch.randn(64, 64))
    x = torch.randn(5, 64)
    folder = _write_bundle(tmp_path / "nt", "  y = matmul(x, w);", {"x": ("f32", (5, 64))},
                           {"w": w})
    (y,) = _run(folder, x.numpy())
    _assert_close(y, x @ w.T, 1e-5)
    assert np.abs(y - (x @ w).numpy()).max() > 1

    table = Q4_0Tensor.from_float(torch.randn(10, 2, 32))
    folder = _write_bundle(tmp_path / "g3", "  y = tract_core_gather(w, ids, axis = 0, "
                           "datum_type = 'f32');", {"ids": ("i64", (2,))}, {"w": table})
    (y,) = _run(folder, np.array([1, 2]))
    assert y.shape == (2, 32)  # torch: (2, 2, 32)

    small = Q4_0Tensor.from_float(torch.randn(16, 64))
    folder = _write_bundle(tmp_path / "decl", "  y = matmul(x, w, transposeB = true);",
                           {"x": ("f32", (5, 64))}, {"w": small})
    text = (folder / "graph.nnef").read_text().replace("shape = [16, 64]", "shape = [16, 2, 32]")
    (folder / "graph.nnef").write_text(text)
    (y,) = _run(folder, x.numpy())
    assert y.shape != (5, 16)


_CRASH = """
import sys, numpy as np, tract
model = tract.nnef().with_tract_extra().with_tract_transformers().load(sys.argv[1])
model.into_runnable().run([np.zeros([int(s) for s in sys.argv[2:]], np.float32)])
"""


@pytest.mark.parametrize("shape,x_shape,body,signal", [
    ((4, 1, 32), (1, 4, 40), "  y = conv(x, w, stride = [1], padding = [(0, 0)], dilation = [1], "
     "groups = 4, border = 'constant');", "Tensor storage is not plain"),
    ((4, 1, 4, 8), (1, 4, 9, 9), "  y = conv(x, w, stride = [1, 1], padding = [(0, 0), (0, 0)], "
     "dilation = [1, 1], groups = 4, border = 'constant');", "Tensor storage is not plain"),
    ((16, 64), (16, 5), "  y = matmul(w, x, transposeA = true);", None),
], ids=["conv1d_depthwise", "conv2d_depthwise", "matmul_transposeA"])
def test_tract_crashes(shape, x_shape, body, signal, tmp_path):
    """These abort or segfault the process (run in a child): depthwise convs (groups = C = O)
    panic, transposeA on a Q4_0 left operand segfaults."""
    w = Q4_0Tensor.from_float(torch.randn(shape))
    folder = _write_bundle(tmp_path / "b", body, {"x": ("f32", x_shape)}, {"w": w})
    done = subprocess.run([sys.executable, "-c", _CRASH, str(folder), *map(str, x_shape)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode < 0
    assert signal is None or signal in done.stderr


# -- Q4_0Tensor ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda t: str(t).split(".")[1])
def test_tensor_from_float(dtype):
    w = torch.randn(8, 3, 32).to(dtype)
    t = Q4_0Tensor.from_float(w)
    assert isinstance(t, torch.Tensor) and t.shape == w.shape and t.dtype == dtype
    q, d = q4_0.quantize(w)
    np.testing.assert_array_equal(t.blocks[0], q)
    np.testing.assert_array_equal(t.blocks[1].view(np.uint16), d.view(np.uint16))
    assert t.nbytes_packed == 24 * 18
    plain = t.dequantize()
    assert type(plain) is torch.Tensor and plain.dtype == dtype
    expected = torch.from_numpy(q4_0.dequantize(q, d, w.shape)).to(dtype)
    assert torch.equal(plain, expected)
    if dtype != torch.bfloat16:  # .numpy() is the dequantized copy (numpy has no bfloat16)
        np.testing.assert_array_equal(t.numpy(), plain.numpy())
    assert "Q4_0Tensor(shape=[8, 3, 32]" in repr(t)


def test_tensor_from_float_scales():
    w = torch.randn(2, 64)
    scales = torch.full((4,), 0.05)
    t = Q4_0Tensor.from_float(w, scales=scales)
    assert q4_0.encode_dat(t) == q4_0.encode_dat((*q4_0.quantize(w, scales), w.shape))


def test_tensor_from_float_in_chunks():
    # a chunk of 3 blocks cuts rows in the middle: the blocks are the same as in one pass
    w = torch.randn(6, 96).half()  # 18 blocks
    whole = Q4_0Tensor.from_float(w)
    assert torch.equal(Q4_0Tensor.from_float(w, chunk=3).packed, whole.packed)
    calls = []

    def halved(blocks):  # a scale function sees float32 blocks, at most `chunk` at a time
        calls.append(blocks.shape)
        return np.abs(blocks).max(axis=1) / np.float32(-16)
    t = Q4_0Tensor.from_float(w, scales=halved, chunk=4)
    assert calls == [(4, 32)] * 4 + [(2, 32)]
    d = np.abs(w.float().reshape(-1, 32).numpy()).max(axis=1) / np.float32(-16)
    assert torch.equal(t.packed, Q4_0Tensor.from_float(w, scales=d).packed)
    with pytest.raises(ValueError, match="non-finite"):
        Q4_0Tensor.from_float(torch.tensor([[float("nan")] + [0.0] * 31]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_tensor_embedding_decodes_looked_up_rows(dtype):
    table = Q4_0Tensor.from_float(torch.randn(50, 64).to(dtype))
    ids = torch.tensor([[3, 49, 3], [0, 7, 12]])
    rows = F.embedding(ids, table)
    assert type(rows) is torch.Tensor and rows.dtype == dtype and rows.shape == (2, 3, 64)
    assert torch.equal(rows, F.embedding(ids, table.dequantize()))


_MODULES = {
    "linear": (lambda: nn.Linear(64, 10), lambda m, w, x: F.linear(x, w, m.bias), (3, 5, 64)),
    "embedding": (lambda: nn.Embedding(20, 32), lambda m, w, x: F.embedding(x, w),
                  torch.tensor([[1, 19], [4, 4]])),
    "conv1d": (lambda: nn.Conv1d(4, 6, 8, padding=2),
               lambda m, w, x: F.conv1d(x, w, m.bias, padding=2), (2, 4, 11)),
    "conv2d": (lambda: nn.Conv2d(2, 6, 4, stride=2),
               lambda m, w, x: F.conv2d(x, w, m.bias, stride=2), (1, 2, 9, 9)),
}


@pytest.mark.parametrize("kind", list(_MODULES))
def test_tensor_in_modules(kind):
    make, functional, x = _MODULES[kind]
    module = make()
    shape, dtype = module.weight.shape, module.weight.dtype
    _quantized(module)
    assert isinstance(module.weight, Q4_0Tensor) and isinstance(module.weight, nn.Parameter)
    assert module.weight.shape == shape and module.weight.dtype == dtype
    x = torch.randn(x) if isinstance(x, tuple) else x
    with torch.no_grad():
        got = module(x)
        assert type(got) is torch.Tensor
        assert torch.equal(got, functional(module, module.weight.dequantize(), x))


def test_tensor_gradient_flows_to_the_input():
    lin = _quantized(nn.Linear(32, 4))
    x = torch.randn(3, 32, requires_grad=True)
    lin(x).sum().backward()
    assert torch.allclose(x.grad, lin.weight.dequantize().sum(0).expand(3, 32))


_WRITES = {
    "add_": lambda t: t.add_(1),
    "copy_": lambda t: t.copy_(torch.zeros(t.shape)),
    "zero_": lambda t: t.zero_(),
    "setitem": lambda t: t.__setitem__(0, 1.0),
    "data_setter": lambda t: setattr(t, "data", torch.zeros(t.shape)),
    "out_argument": lambda t: torch.add(torch.ones(t.shape), 1, out=t),
    "init_normal": lambda t: nn.init.normal_(t),
}


@pytest.mark.parametrize("write", list(_WRITES))
def test_tensor_is_read_only(write):
    t = nn.Parameter(Q4_0Tensor.from_float(torch.randn(4, 32)), requires_grad=False)
    before = t.packed.clone()
    with torch.no_grad(), pytest.raises(RuntimeError, match="Q4_0Tensor is read-only"):
        _WRITES[write](t)
    assert torch.equal(t.packed, before)


def test_tensor_stays_quantized():
    lin = _quantized(nn.Linear(32, 4))
    packed = lin.weight.packed
    for kept in (lin.weight.detach(), lin.weight.clone(), lin.weight.to("cpu"),
                 copy.deepcopy(lin).weight, lin.weight.data):
        assert isinstance(kept, Q4_0Tensor) and torch.equal(kept.packed, packed)
    assert lin.weight.clone().packed.data_ptr() != packed.data_ptr()
    assert type(lin.weight.t()) is torch.Tensor and type(lin.weight + 1) is torch.Tensor
    lin.half()
    assert isinstance(lin.weight, Q4_0Tensor) and lin.weight.dtype == torch.float16
    assert torch.equal(lin.weight.packed, packed)
    assert lin(torch.randn(2, 32).half()).dtype == torch.float16


def test_tensor_survives_torch_export():
    """torch.export keeps aten.linear and hands the Q4_0Tensor over in the state dict."""
    lin = _quantized(nn.Linear(32, 4, bias=False))
    program = torch.export.export(lin, (torch.randn(2, 32),), strict=False)
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.aten.linear.default]
    assert isinstance(program.state_dict["weight"], Q4_0Tensor)


def test_tensor_rejects_bad_parts():
    with pytest.raises(ValueError, match=r"needs packed uint8 \[2, 18\]"):
        Q4_0Tensor(torch.zeros(3, 18, dtype=torch.uint8), (2, 32), torch.float32)
    with pytest.raises(TypeError, match="float tensor"):
        Q4_0Tensor(torch.zeros(2, 18, dtype=torch.uint8), (2, 32), torch.int64)
    with pytest.raises(ValueError, match=r"multiple of 32, not shape \(1, 40\)"):
        Q4_0Tensor(torch.zeros(1, 18, dtype=torch.uint8), (1, 40), torch.float32)
