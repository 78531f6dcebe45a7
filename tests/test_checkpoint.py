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


def test_eight_bit_compressions_are_refused_before_anything_is_written():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with pytest.raises(CompressionError, match="8-bit modules"):
        quantize(model, "ptq_int8", calibration=[{"input": torch.randn(2, 16)}],
                 lm=False, args=(torch.randn(2, 16),))


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
