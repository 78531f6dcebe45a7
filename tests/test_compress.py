"""Compression registries and Q4_0 exports, run in tract."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import t2n
from t2n.compress import BUILTIN, apply, load_registry, scales
from t2n.errors import CompressionError
from t2n.quant import Q4_0Tensor

ROOT = Path(__file__).parent.parent
T2N = str(Path(sys.executable).with_name("t2n"))


class TinyLM(nn.Module):
    """Embedding tied with the output head, a conv, a depthwise conv and an odd-sized layer."""

    def __init__(self, tie=True):
        super().__init__()
        self.emb = nn.Embedding(50, 64)
        self.conv = nn.Conv1d(64, 64, 3, padding=1)
        self.depthwise = nn.Conv1d(64, 64, 3, padding=1, groups=64)
        self.fc = nn.Linear(64, 96)
        self.odd = nn.Linear(96, 40)      # k = 96: fits 32-blocks
        self.odder = nn.Linear(40, 64)    # k = 40: does not
        self.head = nn.Linear(64, 50, bias=False)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, ids):
        x = self.emb(ids)
        x = x + self.depthwise(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.head(self.odder(torch.relu(self.odd(torch.relu(self.fc(x))))))


def _quantized(model):
    return {n for n, p in model.named_parameters(remove_duplicate=False)
            if isinstance(p, Q4_0Tensor)}


def test_min_max_q4_0_selects_linear_only():
    model = apply(TinyLM(tie=False), "min_max_q4_0")
    assert _quantized(model) == {"fc.weight", "odd.weight", "head.weight"}


def test_all_quantizes_once_shared_and_skips_what_tract_cannot_run(caplog):
    model = TinyLM()
    with caplog.at_level(logging.INFO, logger="t2n.compress"):
        model = apply(model, "min_max_q4_0_all")
    assert _quantized(model) == {"emb.weight", "head.weight", "conv.weight", "fc.weight",
                                 "odd.weight"}
    assert model.emb.weight is model.head.weight  # tied: one quantized tensor, still shared
    assert "odder.weight left in float" in caplog.text
    assert "depthwise.weight left in float" in caplog.text


def test_shared_weight_with_unselected_kind_stays_float(caplog):
    model = TinyLM()  # the embedding table is also the head: Linear only must not take it
    with caplog.at_level(logging.INFO, logger="t2n.compress"):
        model = apply(model, "min_max_q4_0")
    assert "head.weight" not in _quantized(model)
    assert "head.weight left in float: also used by emb" in caplog.text


@pytest.mark.parametrize("name", ["min_max_q4_0_all", "grid_mse_q4_0_all",
                                  "min_max_q4_0_with_embeddings_99"])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_compressed_export_runs_in_tract(name, dtype, tmp_path):
    ids = torch.randint(0, 50, (1, 9))
    result = t2n.export(TinyLM(), ids, tmp_path / "b.tgz", compression=name, dtype=dtype,
                        dynamic_axes={"ids": {1: "S"}},
                        check_io="approximate" if dtype == "f32" else "very")
    assert result.verification.passed, result.verification.summary()
    assert result.bundle.bytes_by_storage["q4_0"] > 0
    (quant,) = result.quantization  # compressed torch vs float torch, shown not gated
    assert 0.9 < quant.cosine < 1.0


def test_grid_mse_beats_min_max_on_every_block():
    blocks = np.random.default_rng(0).standard_t(3, size=(4096, 32)).astype(np.float32)
    err_min_max = scales._error(blocks, scales.min_max(blocks))
    err_grid = scales._error(blocks, scales.grid_mse(blocks))
    assert (err_grid <= err_min_max + 1e-12).all()
    assert err_grid.sum() < 0.97 * err_min_max.sum()  # measured: 0.94


def test_min_max_is_absmax_over_minus_8_and_signed_max_is_tracts_rule():
    blocks = np.zeros((2, 32), np.float32)
    blocks[0, 3], blocks[1, 5] = 4.0, -4.0
    np.testing.assert_array_equal(scales.min_max(blocks), [-0.5, -0.5])
    np.testing.assert_array_equal(scales.signed_max(blocks), [-0.5, 0.5])


def test_percentile_clips():
    blocks = np.ones((1, 32), np.float32)
    blocks[0, 0] = 100.0
    assert abs(scales.percentile(0.9)(blocks)[0]) < abs(scales.min_max(blocks)[0])


def test_unknown_name_suggests_closest():
    with pytest.raises(CompressionError, match="did you mean 'min_max_q4_0_all'") as err:
        apply(TinyLM(), "minmax_q4_0_all")
    assert "grid_mse_q4_0" in str(err.value)  # and lists the rest


@pytest.mark.parametrize("path,match", [
    ("no_such_pkg.mod:REG", "cannot import module"),
    ("t2n.compress.registry:BUILTINS", "has no attribute"),
    ("t2n.compress.registry:describe", "not a mapping"),
    ("t2n.compress:__all__", "not a mapping"),
], ids=["import", "attribute", "function", "list"])
def test_bad_registry(path, match):
    with pytest.raises(CompressionError, match=match):
        load_registry(path)


def test_registry_of_non_callables(tmp_path, monkeypatch):
    (tmp_path / "badreg.py").write_text("REG = {'x': 3}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CompressionError, match="not callable: x"):
        load_registry("badreg:REG")


def test_failing_import_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "brokenreg.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CompressionError, match="importing 'brokenreg' failed: RuntimeError"):
        load_registry("brokenreg.REG")


def test_torch_to_nnef_style_registry_function(tmp_path, monkeypatch):
    """Existing registries written as fn(model, **kwargs) receive keywords and work."""
    (tmp_path / "oldreg.py").write_text(
        "from t2n.compress import quantize_q4_0\n"
        "import torch.nn as nn\n"
        "def q(model, **kwargs):\n"
        "    assert set(kwargs) == {'tokenizer', 'export_dirpath', 'local_dir'}\n"
        "    return quantize_q4_0(model, (nn.Linear,))\n"
        "REG = {'q': q}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = apply(TinyLM(tie=False), "q", registry_path="oldreg.REG")
    assert "fc.weight" in _quantized(model)


def _cli(*args, cwd=ROOT):
    return subprocess.run([T2N, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ}, timeout=600)


def test_cli_compressions_and_unknown_name(tmp_path):
    listing = _cli("compressions")
    assert listing.returncode == 0
    for name in BUILTIN:
        assert name in listing.stdout
    custom = _cli("compressions", "--compression-registry",
                  "registries.percentile_sweep:REGISTRY")
    assert "percentile_sweep_q4_0" in custom.stdout
    (tmp_path / "m.py").write_text("import torch\nM = lambda: torch.nn.Linear(64, 8)\n")
    bad = _cli("export", "m:M", "out", "--input-shape", "x=1,64", "-c", "min_max_q40",
               cwd=tmp_path)
    assert bad.returncode == 2 and "did you mean 'min_max_q4_0'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "out").exists()


def test_cli_example_registry_by_dotted_path(tmp_path):
    (tmp_path / "tiny.py").write_text(
        "import torch\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),\n"
        "                               torch.nn.Linear(128, 8))\n")
    proc = subprocess.run(
        [T2N, "export", "tiny:make", str(tmp_path / "out.tgz"), "--input-shape", "x=3,64",
         "--compression-registry", "registries.percentile_sweep:REGISTRY",
         "-c", "percentile_sweep_q4_0"], capture_output=True, text=True, timeout=600,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract" in proc.stdout and "quantized" in proc.stderr
    info = _cli("info", str(tmp_path / "out.tgz"))
    assert "q4_0" in info.stdout


@pytest.mark.parametrize("registry,match", [
    ("no_such_pkg.mod:REG", "cannot import module"),
    ("t2n.compress.registry:describe", "not a mapping"),
], ids=["import", "not_mapping"])
def test_cli_bad_registry_is_one_line(registry, match, tmp_path):
    (tmp_path / "m.py").write_text("import torch\nM = lambda: torch.nn.Linear(64, 8)\n")
    proc = _cli("export", "m:M", "out", "--input-shape", "x=1,64", "-c", "anything",
                "--compression-registry", registry, cwd=tmp_path)
    assert proc.returncode == 2 and match in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]) == 1
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
