"""8-bit weights: Q8_1 embedding tables (q8_1_embeddings) and int8 weights with a float32 scale
per row (w8_per_row, w8_per_row_all). The block layout by hand and against gguf's quantizer,
exports that tract runs (an MLP, a CNN, a tied tiny Llama), the .dat files they write, and
checkpoints that come back bit for bit."""
from __future__ import annotations

import copy
import logging
import struct
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import t2n
from t2n import compress, verify
from t2n.bundles import bundle_info
from t2n.checkpoint import load_quantized, save_quantized
from t2n.checkpoint.info import checkpoint_info
from t2n.llm import export_llm
from t2n.options import resolve_tolerance
from t2n.quant import q8_1
from t2n.quant.q8_1 import Q8_1Tensor
from t2n.quant.w8 import W8Tensor
from test_calibrated import tiny_llama
from test_calibrated_cli import t2n as run_t2n, tiny_folder  # noqa: F401

COMPRESSIONS = ["q8_1_embeddings", "w8_per_row", "w8_per_row_all"]
TR = 0x5452


# -- .dat headers, read here with struct (independent of t2n's reader) ------------------------
def dat_header(raw: bytes) -> dict:
    nbytes, rank = struct.unpack_from("<II", raw, 4)
    dims = struct.unpack_from("<8I", raw, 12)[:rank]
    bits, item, vendor = struct.unpack_from("<IHH", raw, 44)
    return {"nbytes": nbytes, "shape": tuple(dims), "bits": bits, "item": item,
            "vendor": vendor}


def dat_files(path) -> dict[str, bytes]:
    """label -> bytes of every .dat in a bundle folder or .tgz."""
    if path.is_dir():
        return {str(p.relative_to(path))[:-4]: p.read_bytes() for p in path.rglob("*.dat")}
    with tarfile.open(path) as tar:
        return {m.name[:-4]: tar.extractfile(m).read() for m in tar.getmembers()
                if m.isfile() and m.name.endswith(".dat")}


# -- Q8_1 blocks ----------------------------------------------------------------------------------
def test_q8_1_golden_block():
    # max |x| = 127, so d = 1.0 and q = x; s = d * sum(q) = -127
    x = np.concatenate([[-127.0], np.arange(-15, 16)]).astype(np.float32).reshape(1, 32)
    q, d = q8_1.quantize(x)
    assert d.dtype == np.float16 and d.tolist() == [1.0]
    assert q.dtype == np.int8 and q.tolist() == [x[0].astype(int).tolist()]
    block = q8_1.pack(q, d)
    assert len(block) == 36
    assert block[:2] == b"\x00\x3c"                                  # d = 1.0
    assert block[2:4] == np.float16(-127.0).tobytes() == b"\xf0\xd7"  # s = sum(q) * d
    assert block[4:] == bytes([0x81]) + bytes(b & 0xFF for b in range(-15, 16))


def test_q8_1_dat_header_golden():
    raw = q8_1.encode_dat(np.ones((3, 64), np.float32))
    assert len(raw) == 128 + 6 * 36
    assert raw[:4] == b"\x4e\xef\x01\x00"
    assert dat_header(raw) == {"nbytes": 216, "shape": (3, 64), "bits": 0xFFFFFFFF,
                               "item": 0x3080, "vendor": TR}
    assert raw[48:52] == b"\x80\x30\x52\x54"


def awkward(k=96) -> np.ndarray:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((12, k)).astype(np.float32)
    w[1] = 0                                   # all-zero blocks: d = 0, q = 0
    w[2, :32] = np.linspace(-127, 127, 32)     # exact halves: q = round half away from 0
    w[3] *= 1e-6
    w[4] *= 1e3
    w[5, :32] = -0.0
    return w


def test_q8_1_matches_gguf_q8_0_quantizer():
    """GGML's Q8_0 block is Q8_1 without s: d and q must be bit-identical to gguf-py's
    quantizer (bit-exact with ggml-quants.c)."""
    from gguf import GGMLQuantizationType, quants
    w = awkward()
    ref = quants.quantize(w, GGMLQuantizationType.Q8_0).reshape(-1, 34)
    q, d = q8_1.quantize(w)
    assert d.view(np.uint8).reshape(-1, 2).tobytes() == ref[:, :2].tobytes()
    assert q.view(np.uint8).tobytes() == ref[:, 2:].tobytes()


def test_q8_1_round_trip_and_error_bound():
    w = awkward()
    q, d = q8_1.quantize(w)
    raw = q8_1.pack(q, d)
    q2, d2 = q8_1.unpack(raw, len(q))
    assert np.array_equal(q2, q) and np.array_equal(d2.view(np.uint16), d.view(np.uint16))
    deq = q8_1.dequantize(q, d, w.shape).reshape(-1, 32)
    x = w.reshape(-1, 32)
    d32 = np.abs(x).max(axis=1) / np.float32(127)
    bound = d32 * 0.5 * (1 + 1e-5) + 127 * np.abs(d32 - d.astype(np.float32))
    assert (np.abs(deq - x) <= bound[:, None] + 1e-30).all()
    tensor = Q8_1Tensor.from_float(torch.from_numpy(w))
    assert tensor.packed.numpy().tobytes() == raw
    assert torch.equal(tensor.dequantize(), torch.from_numpy(q8_1.dequantize(q, d, w.shape)))


@pytest.mark.parametrize("weight,match", [
    (torch.ones(4, 48), "multiple of 32"), (torch.ones(64), "rank >= 2"),
    (torch.tensor([[float("nan")] * 32]), "non-finite"),
    (torch.full((1, 32), 1e9), "overflows float16")],
    ids=["k48", "rank1", "nan", "overflow"])
def test_q8_1_rejects(weight, match):
    with pytest.raises(ValueError, match=match):
        Q8_1Tensor.from_float(weight)


@pytest.mark.parametrize("cls", [Q8_1Tensor, W8Tensor], ids=lambda c: c.__name__)
def test_tensor_behaves_as_a_read_only_float_tensor(cls):
    w = torch.randn(20, 64)
    t = cls.from_float(w)
    ids = torch.tensor([[3, 0], [19, 3]])
    assert torch.equal(F.embedding(ids, t), t.dequantize()[ids])   # only the looked-up rows
    half = t.to(torch.float16)
    assert type(half) is cls and half.dtype == torch.float16
    assert torch.equal(half.dequantize(), t.dequantize().half())
    assert type(copy.deepcopy(nn.Parameter(t, requires_grad=False))) is cls
    lin = nn.Linear(64, 20)
    lin.weight = nn.Parameter(t, requires_grad=False)
    x = torch.randn(2, 64)
    assert torch.equal(lin(x), F.linear(x, t.dequantize(), lin.bias))
    with pytest.raises(RuntimeError, match="read-only"):
        t.add_(1)
    with pytest.raises(RuntimeError, match="read-only"):
        t[0] = 0


# -- int8 rows ------------------------------------------------------------------------------------
def test_w8_levels_and_scales():
    w = torch.from_numpy(awkward(k=40))
    t = W8Tensor.from_float(w)
    assert t.levels.dtype == torch.int8 and t.scales.dtype == torch.float32
    assert tuple(t.scales.shape) == (12,) and tuple(t.scale_shape) == (12, 1)
    assert int(t.levels.abs().max()) == 127 and int(t.levels.min()) >= -127
    nonzero = w.abs().amax(dim=1) > 0
    assert (t.levels.abs().amax(dim=1)[nonzero] == 127).all() and int(nonzero.sum()) == 11
    assert t.scales[1] == 0 and (t.levels[1] == 0).all()     # an all-zero row
    assert torch.equal(t.scales, w.abs().amax(dim=1) / 127)
    assert torch.equal(t.dequantize(), t.levels.float() * t.scales[:, None])   # exactly q * s
    assert ((t.dequantize() - w).abs() <= t.scales[:, None] * 0.5 * (1 + 1e-6)).all()
    assert t.nbytes_packed == 12 * 40 + 12 * 4


# -- exports verified in tract ------------------------------------------------------------------
class TokenMLP(nn.Module):
    """Embedding -> Linear -> ReLU -> Linear; k = 64 and 96 (multiples of 32)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(100, 64)
        self.up = nn.Linear(64, 96)
        self.down = nn.Linear(96, 10)

    def forward(self, ids):
        return self.down(torch.relu(self.up(self.emb(ids))))


# what each compression turns into int8 rows / Q8_1 (labels of .dat files)
_INT8 = {"q8_1_embeddings": set(), "w8_per_row": {"up.weight", "down.weight"},
         "w8_per_row_all": {"emb.weight", "up.weight", "down.weight"}}
_Q8_1 = {"q8_1_embeddings": {"emb.weight"}, "w8_per_row": set(), "w8_per_row_all": set()}


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_export_token_mlp(compression, dtype, tmp_path):
    """tract against the compressed torch model at 'approximate' (f32: the weights decode to
    the same float values in both) or 'very' (f16 matmuls accumulate differently); every
    stored tensor in its expected format, at its expected size."""
    model = TokenMLP()
    ids = torch.randint(0, 100, (2, 7))
    tolerance = "approximate" if dtype == "f32" else "very"
    result = t2n.export(model, (ids,), tmp_path / "b", compression=compression, dtype=dtype,
                        check_io=tolerance, input_names=["ids"],
                        dynamic_axes={"ids": {1: "S"}})
    assert result.verification.passed, result.verification.summary()
    other = torch.tensor([[5, 99, 0], [1, 0, 42]])   # another length: the dynamic axis
    with torch.no_grad():
        want = model(other).numpy()
    assert verify.check(result.path, [other.numpy()], [want], result.output_names,
                        tolerance).passed
    files = dat_files(result.path)
    numel = {n: p.numel() for n, p in TokenMLP().named_parameters()}
    for label, raw in files.items():
        head = dat_header(raw)
        if label in _Q8_1[compression]:
            assert (head["item"], head["vendor"], head["bits"]) == (0x3080, TR, 0xFFFFFFFF)
            assert (len(raw) - 128) / numel[label] == 1.125
        else:   # never Q8_1: a Linear weight, a bias, a scale
            assert head["item"] != 0x3080 and head["vendor"] == 0, label
        if label in _INT8[compression]:
            assert (head["item"], head["bits"]) == (4, 8), label
            scale = dat_header(files[label + ".scale"])
            rows, k = head["shape"]
            assert scale == {"nbytes": rows * 4, "shape": (rows, 1), "bits": 32, "item": 0,
                             "vendor": 0}
            stored = len(raw) - 128 + len(files[label + ".scale"]) - 128
            assert stored / numel[label] == pytest.approx(1 + 4 / k)
        elif label.endswith(".weight"):
            assert head["bits"] in (32, 16, 0xFFFFFFFF) and head["item"] in (0, 0x3080), label
    text = bundle_info(result.path).text()
    assert ("q8_1 " in text) == bool(_Q8_1[compression])
    n_int8 = len(_INT8[compression])
    assert (f"int8 weights, float activations: {n_int8} tensors" in text) == bool(n_int8)


def test_a_wrong_scale_fails_the_check(tmp_path):
    """The check can fail: one row scale of the bundle doubled."""
    model = compress.apply(TokenMLP(), "w8_per_row")
    ids = torch.randint(0, 100, (2, 7))
    result = t2n.export(model, (ids,), tmp_path / "b", check_io="approximate")
    path = result.path / "up.weight.scale.dat"
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, 128, 2 * struct.unpack_from("<f", raw, 128)[0])
    path.write_bytes(bytes(raw))
    got = verify.check(result.path, [ids.numpy()], [model(ids).detach().numpy()],
                       result.output_names, "very")
    assert not got.passed


def test_w8_per_row_all_on_convolutions(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                          nn.Flatten(2), nn.Conv1d(8, 4, 5), nn.Flatten(), nn.Linear(4 * 140, 6))
    x = torch.randn(1, 3, 16, 16)
    compress.apply(model, "w8_per_row_all")
    assert all(isinstance(m.weight, W8Tensor) for m in model if hasattr(m, "weight"))
    result = t2n.export(model, (x,), tmp_path / "cnn", check_io="approximate")
    assert result.verification.passed, result.verification.summary()
    heads = {k: dat_header(v) for k, v in dat_files(result.path).items()}
    assert heads["0.weight"]["item"] == 4 and heads["0.weight.scale"]["shape"] == (8, 1, 1, 1)
    assert heads["4.weight.scale"]["shape"] == (4, 1, 1)


def test_a_large_weight_is_cut_into_pieces_tract_folds(tmp_path):
    """[1056, 1024] holds more than 2^20 values: tract would dequantize it at every run, so
    it reaches its matmul in row pieces of at most 2^20 values (each folded at load)."""
    torch.manual_seed(0)
    model = compress.apply(nn.Sequential(nn.Linear(1024, 1056, bias=False)), "w8_per_row")
    result = t2n.export(model, (torch.randn(3, 1024),), tmp_path / "big",
                        check_io="approximate")
    assert result.verification.passed, result.verification.summary()
    text = (result.path / "graph.nnef").read_text()
    assert text.count("slice(") == 2 and "concat(" in text
    assert text.count('variable<integer>(label = "0.weight"') == 1


def test_a_q8_1_table_read_by_a_matmul_is_written_in_float(tmp_path, caplog):
    """A look-alike that must not become Q8_1: a table also read by F.linear in forward (no
    module shares it, so the compression cannot untie it). tract cannot multiply by Q8_1:
    the table is written in float (its Q8_1 values), with a log line."""
    class FunctionalHead(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = nn.Embedding(50, 32)

        def forward(self, ids):
            return F.linear(self.emb(ids), self.emb.weight)

    model = compress.apply(FunctionalHead(), "q8_1_embeddings")
    assert isinstance(model.emb.weight, Q8_1Tensor)
    with caplog.at_level(logging.INFO, logger="t2n"):
        result = t2n.export(model, (torch.randint(0, 50, (1, 6)),), tmp_path / "b",
                            check_io="approximate")
    assert result.verification.passed, result.verification.summary()
    head = dat_header(dat_files(result.path)["emb.weight"])
    assert (head["item"], head["bits"], head["vendor"]) == (0, 32, 0)
    assert "emb.weight: q8_1 table also read by aten.linear.default, not only by embedding " \
        "lookups: written in float" in caplog.text


# -- a tied tiny Llama ----------------------------------------------------------------------------
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_export_llm_tied_tiny_llama(compression, tmp_path):
    """Tied embeddings: q8_1_embeddings unties (the head keeps the float weight, tract cannot
    multiply by Q8_1); w8_per_row leaves the tied weight in float (also an Embedding's, not
    selected); w8_per_row_all shares one int8 weight between the lookup (int8 rows gathered)
    and the head. tract against torch at 'approximate' on the example, a prompt and a decode
    step."""
    model = tiny_llama(layers=1)
    head = model.lm_head.weight.detach().clone()
    result = export_llm(model, None, tmp_path / "llm", compression=compression,
                        check_io="approximate")
    assert result.export.verification.passed, result.export.verification.summary()
    assert all(v.passed for v in result.modes.values())
    embed, lm_head = model.model.embed_tokens.weight, model.lm_head.weight
    files = dat_files(result.path)
    heads = {k: dat_header(v) for k, v in files.items()}
    if compression == "q8_1_embeddings":
        assert isinstance(embed, Q8_1Tensor) and lm_head is not embed
        assert type(lm_head) is nn.Parameter and torch.equal(lm_head, head)
        assert heads["model.model.embed_tokens.weight"]["item"] == 0x3080
        raw = files["model.lm_head.weight"]
        assert heads["model.lm_head.weight"]["bits"] == 32
        assert np.array_equal(np.frombuffer(raw, np.float32, offset=128).reshape(256, 64),
                              head.numpy())
    elif compression == "w8_per_row":
        assert lm_head is embed and type(embed) is nn.Parameter
        assert isinstance(model.model.layers[0].mlp.up_proj.weight, W8Tensor)
    else:
        assert lm_head is embed and isinstance(embed, W8Tensor)
        with tarfile.open(result.path) as tar:
            text = tar.extractfile("graph.nnef").read().decode()
        assert "tract_core_gather(model_lm_head_weight, " in text   # int8 rows looked up
    assert not any(h["item"] == 0x3080 for k, h in heads.items()
                   if k != "model.model.embed_tokens.weight")


def test_default_tolerance_is_the_4_bit_one():
    for name in COMPRESSIONS:
        assert resolve_tolerance("auto", None, name) == "very"
        assert resolve_tolerance("auto", "f16", name) == "super"
    names = dict(compress.describe(compress.BUILTIN))
    assert set(COMPRESSIONS) <= set(names)


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_checkpoint_round_trip_is_bit_exact(compression, tmp_path):
    model = compress.apply(tiny_llama(layers=1), compression)
    model.t2n_quantization = {"compression": compression}
    path = save_quantized(model, tmp_path / "ckpt")
    ck = load_quantized(path)
    loaded = dict(ck.module.named_parameters(remove_duplicate=False))
    for name, p in model.named_parameters(remove_duplicate=False):
        q = loaded[name]
        assert type(q) is type(p), name
        if isinstance(p, Q8_1Tensor):
            assert torch.equal(q.packed, p.packed), name
        elif isinstance(p, W8Tensor):
            assert torch.equal(q.levels, p.levels) and torch.equal(q.scales, p.scales), name
        else:
            assert torch.equal(q, p), name
    assert (ck.module.lm_head.weight is ck.module.model.embed_tokens.weight) == \
        (model.lm_head.weight is model.model.embed_tokens.weight)
    ids = torch.randint(0, 256, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ck.module(ids).logits, model(ids).logits)
    storage = {"q8_1_embeddings": "q8_1", "w8_per_row": "w8_per_row",
               "w8_per_row_all": "w8_per_row"}[compression]
    assert f"  {storage} " in checkpoint_info(path)
    half = load_quantized(path, dtype="f16").module
    w = half.model.embed_tokens.weight if compression != "w8_per_row" \
        else half.model.layers[0].mlp.up_proj.weight
    assert w.dtype == torch.float16 and type(w) in (Q8_1Tensor, W8Tensor)
    if compression == "w8_per_row":
        return   # its bundle path is w8_per_row_all's
    # the bundle of the checkpoint is byte-identical to a direct export
    direct = export_llm(model, None, tmp_path / "direct", check_io=None,
                        quantized_with=compression)
    again = export_llm(ck.module, None, tmp_path / "again", check_io=None,
                       quantized_with=compression)
    assert direct.path.read_bytes() == again.path.read_bytes()


@pytest.mark.slow   # three t2n processes
def test_quantize_cli_then_info_and_export(tiny_folder, tmp_path):
    proc = run_t2n(tmp_path, "quantize", tiny_folder, "-c", "q8_1_embeddings", "-o", "ckpt")
    assert proc.returncode == 0, proc.stderr
    proc = run_t2n(tmp_path, "info", "ckpt")
    assert proc.returncode == 0 and "q8_1" in proc.stdout, proc.stderr
    proc = run_t2n(tmp_path, "export", "ckpt", "out.tgz")
    assert proc.returncode == 0, proc.stderr
