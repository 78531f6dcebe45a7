"""Real models shipped on PyPI, exported and run in tract."""
import os

import numpy as np
import pytest
import torch

import t2n
from t2n import verify
from t2n.load import load_model

from helpers import MINILM_FOLDER, SMOLLM2_GGUF, packaged_file

MINILM = str(packaged_file(*MINILM_FOLDER))
AXES = {name: {1: "S"} for name in ("input_ids", "token_type_ids", "attention_mask")}


def test_minilm_dynamic_sequence(tmp_path):
    loaded = load_model(MINILM)
    assert type(loaded.module).__name__ == "BertModel" and loaded.tokenizer is not None
    result = t2n.export(loaded.module, (), tmp_path / "minilm.tgz", kwargs=loaded.kwargs,
                        dynamic_axes=AXES)
    assert result.verification.passed
    assert result.output_names == ["last_hidden_state", "pooler_output"]
    for sentence in ["short one", "a much longer sentence, " * 12]:
        enc = loaded.tokenizer([sentence], return_tensors="pt")
        inputs = {k: enc[k] for k in loaded.kwargs}
        with torch.no_grad():
            out = loaded.module(**inputs)
        expected = [out.last_hidden_state.numpy(), out.pooler_output.numpy()]
        got = verify.check(result.path, [v.numpy() for v in inputs.values()], expected,
                           result.output_names, "approximate")
        assert got.passed, got.summary()
        assert all(o.cosine >= 0.99999 for o in got.outputs), got.summary()


@pytest.mark.slow
def test_demo_command_exports_and_checks_minilm(tmp_path):
    """What the README's first command runs, through the real CLI."""
    import subprocess
    import sys
    from pathlib import Path
    t2n_cli = str(Path(sys.executable).with_name("t2n"))
    dest = tmp_path / "minilm.tgz"
    axes = [a for n in AXES for a in ("--dynamic-axes", f"{n}:1=S")]
    proc = subprocess.run([t2n_cli, "export", MINILM, str(dest), "--dump-io", *axes],
                          capture_output=True, text=True, env={**os.environ,
                                                               "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract (approximate)" in proc.stdout
    check = subprocess.run([t2n_cli, "check", str(dest)], capture_output=True, text=True)
    assert check.returncode == 0 and "ok (approximate)" in check.stdout
    assert dest.stat().st_size < 100e6


def test_minilm_q4_0_all_is_small_and_verified(tmp_path):
    loaded = load_model(MINILM)
    f32 = t2n.export(loaded.module, (), tmp_path / "f32.tgz", kwargs=loaded.kwargs,
                     dynamic_axes=AXES, check_io=None)
    q4 = t2n.export(loaded.module, (), tmp_path / "q4.tgz", kwargs=loaded.kwargs,
                    dynamic_axes=AXES, compression="min_max_q4_0_all")
    assert q4.verification.passed  # tract vs the quantized torch model, "approximate"
    ratio = q4.path.stat().st_size / f32.path.stat().st_size
    assert ratio <= 0.2, ratio
    embedding = {d.name: d for d in q4.quantization}["last_hidden_state"]
    assert embedding.cosine > 0.9  # quantization error vs float (measured 0.963), reported


SMOLLM_GGUF = str(packaged_file(*SMOLLM2_GGUF))


@pytest.mark.slow
@pytest.mark.parametrize("compression", [None, "min_max_q4_0_all", "grid_mse_q4_0_all"],
                         ids=["f32", "min_max", "grid_mse"])
def test_smollm2_exports_run_in_tract(compression, tmp_path):
    loaded = load_model(SMOLLM_GGUF)
    axes = {"input_ids": {1: "S"}, "attention_mask": {1: "S"}}
    result = t2n.export(loaded.module, (), tmp_path / "smol.tgz", kwargs=loaded.kwargs,
                        dynamic_axes=axes, compression=compression)
    assert result.verification.passed, result.verification.summary()
    ids = loaded.tokenizer(["The licence grants you the freedom to share"],
                           return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = loaded.module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    # another length through the same bundle: 30 layers of f32 rounding put a few near-zero
    # logits (of magnitudes up to ~20) beyond approximate's atol 1e-4, so: very, and cosine
    got = verify.check(result.path, [ids.numpy(), np.ones_like(ids.numpy())],
                       [expected.numpy()], ["logits"], "very")
    assert got.passed and got.outputs[0].cosine > 0.99999, got.summary()
    assert got.outputs[0].max_abs < 2e-3, got.summary()


@pytest.mark.slow
def test_minilm_ptq_int8_passes_the_8bit_gates_at_two_lengths(tmp_path):
    """A six-layer 8-bit graph carries level flips on (tract against the fake-quantized torch
    model: cosine ~0.99, SQNR 17-19 dB): the 8-bit gates accept it, at the traced length and
    at the second one with a padded mask."""
    import pydoc_data.topics

    from t2n.compress.ptq import calibration_from
    loaded = load_model(str(packaged_file(*MINILM_FOLDER)))
    lines = [ln for ln in "\n".join(pydoc_data.topics.topics.values()).splitlines()
             if len(ln) > 40][:32]
    (tmp_path / "calib.txt").write_text("\n".join(lines))
    calibration = calibration_from(tmp_path / "calib.txt", samples=32, kwargs=loaded.kwargs,
                                   tokenizer=loaded.tokenizer)
    axes = {n: {1: "S"} for n in ("input_ids", "token_type_ids", "attention_mask")}
    result = t2n.export(loaded.module, (), tmp_path / "q8", kwargs=loaded.kwargs,
                        dynamic_axes=axes, compression="ptq_int8",
                        calibration_data=[kw for _, kw in calibration.samples])
    assert result.verification.passed and result.resized.passed
    assert all(o.cosine > 0.98 for o in result.verification.outputs + result.resized.outputs)
