"""Quantized checkpoints: quantize once, save, reload (no unpickling), export from the checkpoint
with the bundle byte-identical to a direct export, `t2n info`, and one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from t2n import compress
from t2n.checkpoint import load_quantized, save_quantized
from t2n.checkpoint.api import quantize
from t2n.errors import CompressionError, LoadError, WriteError
from t2n.quant.q4_0 import Q4_0Tensor
from test_calibrated import tiny_llama, windows
from test_calibrated_cli import PROSE, assert_user_error, t2n, tiny_folder  # noqa: F401


def test_save_and_load_keep_the_q4_0_blocks_the_ties_and_the_outputs(tmp_path):
    model = tiny_llama()
    cal = windows()
    model = compress.apply(model, "gptq_q4_0_all", calibration=cal)
    save_quantized(model, tmp_path / "ckpt", record={"compression": "gptq_q4_0_all"})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors", "quantization.json"]   # nothing pickled
    ck = load_quantized(tmp_path / "ckpt")
    assert ck.compression == "gptq_q4_0_all"
    loaded = dict(ck.module.named_parameters(remove_duplicate=False))
    for name, p in model.named_parameters(remove_duplicate=False):
        q = loaded[name]
        assert type(q) is type(p) or isinstance(p, nn.Parameter), name
        if isinstance(p, Q4_0Tensor):
            assert isinstance(q, Q4_0Tensor) and torch.equal(q.packed, p.packed), name
        else:
            assert torch.equal(q, p), name
    assert ck.module.lm_head.weight is ck.module.model.embed_tokens.weight
    qmap = json.loads((tmp_path / "ckpt" / "quantization.json").read_text())
    assert qmap["tensors"]["lm_head.weight"] == {"tied_to": "model.embed_tokens.weight",
                                                 "kind": "param"}
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ck.module(ids).logits, model(ids).logits)
    # f16: the float tensors cast, the Q4_0 blocks kept
    half = load_quantized(tmp_path / "ckpt", dtype="f16").module
    assert half.model.norm.weight.dtype == torch.float16
    assert torch.equal(half.lm_head.weight.packed, model.lm_head.weight.packed)


def test_a_damaged_checkpoint_is_refused_with_the_fix(tmp_path):
    model = compress.apply(tiny_llama(layers=1), "min_max_q4_0_all")
    path = save_quantized(model, tmp_path / "ckpt", record={"compression": "min_max_q4_0_all"})
    qmap_path = path / "quantization.json"
    qmap = json.loads(qmap_path.read_text())
    qmap["tensors"]["model.norm.weight"]["shape"] = [7]
    qmap_path.write_text(json.dumps(qmap))
    with pytest.raises(LoadError, match="model.norm.weight is \\[64\\], the map says \\[7\\]"):
        load_quantized(path)
    qmap_path.write_text("{}")
    with pytest.raises(LoadError, match="not a t2n quantization map"):
        load_quantized(path)
    with pytest.raises(WriteError, match="already exists"):
        save_quantized(model, path)


CNN = """import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)
    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))
"""


def test_eight_bit_weights_keep_their_grid_and_the_bundle_is_byte_identical(tmp_path,
                                                                           monkeypatch):
    import copy

    import t2n
    from t2n.checkpoint.info import checkpoint_info
    from t2n.quant.int8 import QuantizedConv, QuantizedLinear
    (tmp_path / "ckpt_cnn.py").write_text(CNN)
    monkeypatch.syspath_prepend(str(tmp_path))
    from ckpt_cnn import Net
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    model = quantize(Net().eval(), "ptq_int8", lm=False, args=(x,),
                     calibration=[torch.randn(1, 3, 8, 8, generator=gen) for _ in range(8)])
    path = save_quantized(model, tmp_path / "ckpt", source="ckpt_cnn:Net")
    qmap = json.loads((path / "quantization.json").read_text())
    assert qmap["tensors"]["fc.weight"]["storage"] == "int8"
    assert qmap["tensors"]["conv.conv.weight"] == {"tied_to": "conv.weight", "kind": "param"}
    assert qmap["int8_layers"]["conv"]["output"][2] == "quint8"
    from safetensors.torch import load_file
    stored = load_file(path / "model.safetensors")
    assert stored["fc.weight.int8_levels"].dtype == torch.int8 and "fc.weight" not in stored
    ck = load_quantized(path)
    assert type(ck.module.conv) is QuantizedConv and type(ck.module.fc) is QuantizedLinear
    assert ck.module.conv.out_qparams == model.conv.out_qparams
    assert ck.module.conv.weight is ck.module.conv.conv.weight
    for name, p in model.named_parameters():
        assert torch.equal(dict(ck.module.named_parameters())[name], p), name
    with torch.no_grad():
        assert torch.equal(ck.module(x), model(x))
    a = t2n.export(copy.deepcopy(model), x, tmp_path / "direct")
    b = t2n.export(ck.module, x, tmp_path / "from_ckpt")
    assert a.verification.passed and b.verification.passed
    ours, direct = _files(tmp_path / "from_ckpt"), _files(tmp_path / "direct")
    assert ours.keys() == direct.keys() and "graph.quant" in ours
    assert [k for k in ours if ours[k] != direct[k]] == []
    info = checkpoint_info(path)
    assert "int8       2 tensor(s)" in info and "method: ptq_int8" in info
    # a weight moved off its 8-bit grid is refused rather than stored rounded
    with torch.no_grad():
        model.fc.weight.add_(1e-4)
    with pytest.raises(WriteError, match="fc.weight is not on its grid"):
        save_quantized(model, tmp_path / "bad", source="ckpt_cnn:Net")
    assert not (tmp_path / "bad").exists()


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow   # starts several t2n processes: with the real-model tests
def test_quantize_once_then_export_is_byte_identical_to_a_direct_export(tiny_folder, tmp_path):
    (tmp_path / "calib.txt").write_text(PROSE)
    cal = ["--calibration-data", "calib.txt", "--calibration-samples", "4",
           "--calibration-seqlen", "32"]
    proc = t2n(tmp_path, "quantize", tiny_folder, "-c", "gptq_q4_0_all", "-o", "ckpt", *cal)
    assert proc.returncode == 0, proc.stderr
    assert "gptq_q4_0_all in" in proc.stdout
    assert (tmp_path / "ckpt" / "tokenizer.json").exists()
    axes = ["--dynamic-axes", "input_ids:1=S", "--dynamic-axes", "attention_mask:1=S"]
    proc = t2n(tmp_path, "export", "ckpt", "from_ckpt", *axes)
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract (very)" in proc.stdout
    proc = t2n(tmp_path, "export", tiny_folder, "direct", *axes, "-c", "gptq_q4_0_all", *cal)
    assert proc.returncode == 0, proc.stderr
    ours, direct = _files(tmp_path / "from_ckpt"), _files(tmp_path / "direct")
    assert ours.keys() == direct.keys() and any(k.endswith(".dat") for k in ours)
    assert [k for k in ours if ours[k] != direct[k]] == []
    # f16 from the same checkpoint, without quantizing again
    proc = t2n(tmp_path, "export", "ckpt", "half.tgz", *axes, "--dtype", "f16")
    assert proc.returncode == 0 and "verified in tract" in proc.stdout, proc.stderr
    info = t2n(tmp_path, "info", "ckpt")
    assert info.returncode == 0, info.stderr
    assert "q4_0" in info.stdout and "method: gptq_q4_0_all" in info.stdout
    assert "tied" in info.stdout and "calibration: calib.txt: 4 windows" in info.stdout


@pytest.mark.slow
def test_export_llm_from_a_checkpoint_is_byte_identical_to_a_direct_export(tiny_folder,
                                                                          tmp_path):
    (tmp_path / "calib.txt").write_text(PROSE)
    cal = ["--calibration-data", "calib.txt", "--calibration-samples", "4",
           "--calibration-seqlen", "32"]
    assert t2n(tmp_path, "quantize", tiny_folder, "-c", "imatrix_q4_0_all", "-o", "ckpt",
               *cal).returncode == 0
    proc = t2n(tmp_path, "export-llm", "-s", "ckpt", "-e", "a")
    assert proc.returncode == 0 and "verified in tract" in proc.stdout, proc.stderr
    proc = t2n(tmp_path, "export-llm", "-s", tiny_folder, "-e", "b", "-c", "imatrix_q4_0_all",
               *cal)
    assert proc.returncode == 0, proc.stderr
    a = (tmp_path / "a" / "model" / "model.nnef.tgz").read_bytes()
    b = (tmp_path / "b" / "model" / "model.nnef.tgz").read_bytes()
    assert a == b


@pytest.mark.parametrize("case", ["compress-again", "exists", "no-compression"])
def test_checkpoint_misuse_is_one_line_error_and_nothing_written(tiny_folder, tmp_path, case):
    ckpt = tmp_path / "ckpt"
    save_quantized(compress.apply(tiny_llama(layers=1), "min_max_q4_0_all"), ckpt,
                   record={"compression": "min_max_q4_0_all"})
    if case == "compress-again":
        proc = t2n(tmp_path, "export", "ckpt", "out", "-c", "imatrix_q4_0_all")
        assert_user_error(proc, "already quantized with min_max_q4_0_all", "drop -c")
        assert not (tmp_path / "out").exists()
    elif case == "exists":
        before = (ckpt / "model.safetensors").read_bytes()
        proc = t2n(tmp_path, "quantize", tiny_folder, "-c", "min_max_q4_0_all", "-o", "ckpt")
        assert_user_error(proc, "ckpt already exists", "--overwrite")
        assert (ckpt / "model.safetensors").read_bytes() == before
    else:
        proc = t2n(tmp_path, "quantize", tiny_folder, "-o", "new")
        assert_user_error(proc, "needs MODEL, -o CHECKPOINT and -c COMPRESSION")
        assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".t2n-tmp")]
