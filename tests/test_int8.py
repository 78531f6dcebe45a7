"""8-bit per-tensor graphs: torch.ao eager-mode quantized models and t2n's own ptq_int8,
run by tract in integers (graph.quant), compared with torch within one quantization step."""
from __future__ import annotations

import copy
import re
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import t2n
from t2n import verify
from t2n.bundles import tract_quantized_tensors
from t2n.quant.int8 import FakeQuant

warnings.filterwarnings("ignore", module="torch.ao")
BIN = Path(sys.executable).parent
QUANT_LINE = re.compile(r'^"(\w+)": zero_point_linear_quantize\(zero_point = (-?\d+), '
                        r'scale = ([0-9.e+-]+), bits = 8, signed = (true|false), '
                        r'symmetric = (true|false)\);$')


# -- models -----------------------------------------------------------------------------------
class TutorialConv1d(nn.Module):
    """Conv1d+ReLU twice between QuantStub/DeQuantStub (the classic eager-mode example)."""
    fuse = [["cnn1", "relu1"], ["cnn2", "relu2"]]

    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.cnn1, self.relu1 = nn.Conv1d(10, 10, 3), nn.ReLU()
        self.cnn2, self.relu2 = nn.Conv1d(10, 1, 3), nn.ReLU()
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.relu2(self.cnn2(self.relu1(self.cnn1(x))))
        return self.dequant(x)


class SmallCNN(nn.Module):
    fuse = [["c1", "r1"], ["c2", "r2"]]

    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.c1, self.r1, self.p1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.c2, self.r2 = nn.Conv2d(8, 16, 3, stride=2), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.p1(self.r1(self.c1(x)))
        x = self.pool(self.r2(self.c2(x)))
        return self.dequant(self.fc(torch.flatten(x, 1)))


class LinearOnly(nn.Module):
    fuse = [["fc1", "relu"]]

    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.fc1, self.relu, self.fc2 = nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc2(self.relu(self.fc1(self.quant(x)))))


def eager_quantized(model, example, engine_config="qnnpack"):
    """The torch.ao eager-mode recipe: fuse, prepare, calibrate, convert (qnnpack)."""
    torch.backends.quantized.engine = "qnnpack"
    model.eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine_config)
    model = torch.ao.quantization.fuse_modules(model, model.fuse)
    prepared = torch.ao.quantization.prepare(model)
    with torch.no_grad():
        for _ in range(8):
            prepared(example + 0.3 * torch.randn_like(example))
    return torch.ao.quantization.convert(prepared)


def output_scale(quantized: nn.Module) -> float:
    """The scale of the last quantized layer (the output's quantization step)."""
    return [m.scale for m in quantized.modules() if hasattr(m, "scale")
            and isinstance(getattr(m, "scale"), float)][-1]


def quant_lines(bundle: Path) -> dict:
    lines = (bundle / "graph.quant").read_text().splitlines()
    parsed = {}
    for line in lines:
        m = QUANT_LINE.match(line)
        assert m, f"malformed graph.quant line: {line}"
        parsed[m.group(1)] = (int(m.group(2)), float(m.group(3)), m.group(4) == "true")
    return parsed


def dat_item(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:128]
    bits, item_type = struct.unpack_from("<IH", head, 44)
    return bits, item_type


# -- eager-mode models ------------------------------------------------------------------------
@pytest.mark.parametrize("cls, shape", [(TutorialConv1d, (1, 10, 15)),
                                        (SmallCNN, (2, 3, 16, 16)),
                                        (LinearOnly, (4, 32))],
                         ids=["conv1d_relu_x2", "small_cnn", "linear_only"])
def test_eager_quantized_model_runs_in_integers(cls, shape, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    quantized = eager_quantized(cls(), x)
    result = t2n.export(quantized, x, tmp_path / "q8")
    assert result.verification.passed
    bundle = result.path

    # tract itself holds the weights and activations as 8-bit types
    held = tract_quantized_tensors(bundle)
    assert any(t.startswith("QI8") for t in held.values()), held     # weights
    assert any(t.startswith("QU8") for t in held.values()), held     # activations

    # graph.quant: one well-formed line per 8-bit tensor; weight .dat files hold 8-bit data
    lines = quant_lines(bundle)
    weights = [n for n in lines if n.endswith("weight_q")]
    assert len(weights) == sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
                               for m in cls().modules())
    for dat in bundle.rglob("*weight.dat"):
        assert dat_item(dat)[0] == 8

    # outputs: tract against torch's quantized model within one output step
    with torch.no_grad():
        expected = quantized(x).numpy()
    got, _ = verify.run_tract(bundle, [x.numpy()])
    step = output_scale(quantized)
    assert np.abs(got[0] - expected).max() <= step * 1.001


def test_per_channel_weights_are_refused(tmp_path):
    x = torch.randn(1, 10, 15)
    quantized = eager_quantized(TutorialConv1d(), x, engine_config="fbgemm")
    with pytest.raises(t2n.OptionError, match="per-channel"):
        t2n.export(quantized, x, tmp_path / "q8")
    assert not (tmp_path / "q8").exists()


# -- ptq_int8 ---------------------------------------------------------------------------------
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.GELU(),
                         nn.Linear(256, 10)).eval()


@pytest.mark.parametrize("observer", ["minmax", "percentile"])
def test_ptq_int8_mlp_matches_fake_quantized_torch(observer, tmp_path):
    model = _mlp()
    x = torch.randn(4, 64)
    with torch.no_grad():
        float_out = model(x).numpy()
    samples = [torch.randn(4, 64) for _ in range(16)]
    result = t2n.export(copy.deepcopy(model), x, tmp_path / "ptq", compression="ptq_int8",
                        calibration_data=samples, observer=observer)
    assert result.verification.passed
    (check,) = result.verification.outputs  # tract's integers against torch's fake quantization
    assert check.cosine > 0.99999 and check.outliers == 0
    (err,) = result.quantization  # the 8-bit model against the float one, reported
    assert err.cosine > 0.99
    got, _ = verify.run_tract(result.path, [x.numpy()])
    assert np.abs(got[0] - float_out).max() < 0.05
    lines = quant_lines(result.path)
    assert sum(n.endswith("weight_q") for n in lines) == 3
    assert {"QI8", "QU8"} <= {t[:3] for t in tract_quantized_tensors(result.path).values()}


def test_percentile_observer_clips_outliers():
    from t2n.compress.ptq import Calibration, ptq_int8
    model = nn.Sequential(nn.Linear(8, 8)).eval()
    samples = [((torch.randn(64, 8),), {}) for _ in range(4)]
    samples.append(((torch.full((1, 8), 1000.0),), {}))  # one outlier
    ranges = {}
    for observer in ("minmax", "percentile"):
        q = ptq_int8(copy.deepcopy(model), calibration=Calibration(samples, observer, 99.0))
        ranges[observer] = q[0].in_qparams[0]  # input scale
    assert ranges["percentile"] < ranges["minmax"] / 10


@pytest.mark.slow   # starts several t2n processes: with the real-model tests
def test_ptq_int8_cli_with_npz_calibration(tmp_path):
    torch.manual_seed(0)
    model_file = tmp_path / "mlp_model.py"
    model_file.write_text(
        "import torch\nfrom torch import nn\n"
        "def build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))\n")
    np.savez(tmp_path / "calib.npz", input_0=np.random.randn(20, 1, 64).astype(np.float32)
             .reshape(20, 64))
    out = tmp_path / "mlp.tgz"
    proc = subprocess.run([BIN / "t2n", "export", "mlp_model:build", out, "--input-shape",
                           "x=1,64", "-c", "ptq_int8", "--calibration-data",
                           tmp_path / "calib.npz", "--calibration-samples", "8",
                           "--observer", "percentile"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract" in proc.stdout and "8 calibration sample(s)" in proc.stderr
    info = subprocess.run([BIN / "t2n", "info", out], capture_output=True, text=True)
    assert "i8 " in info.stdout and "8-bit in tract:" in info.stdout

    missing = subprocess.run([BIN / "t2n", "export", "mlp_model:build", tmp_path / "m2.tgz",
                              "--input-shape", "x=1,64", "-c", "ptq_int8"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "--calibration-data" in missing.stderr
    errors = [ln for ln in missing.stderr.splitlines() if not ln.startswith("t2n: ")]
    assert len(errors) == 1 and not (tmp_path / "m2.tgz").exists()  # one error line


# -- the 8-bit check gates ------------------------------------------------------------------
@pytest.mark.parametrize("amplitude, problem", [(4, "SQNR"), (100, "mean shifted")],
                         ids=["4_steps", "100_steps"])
def test_within_one_step_but_shifted_everywhere_fails(amplitude, problem):
    """Every value off by 0.9 of a step (what a wrong zero point does) passes the step bound
    alone, not the SQNR floor (small outputs) or the mean-shift bound (large ones); on an
    output spanning 200 levels, a few values one level off either way pass all three."""
    step = 0.1
    torch_out = np.linspace(-amplitude, amplitude, 40).round().astype(np.float32) * step
    shifted = torch_out + 0.9 * step
    (diff,) = verify.compare([shifted], [torch_out], ["y"], "approximate", {"y": step}).outputs
    assert diff.outliers == 0 and not diff.passed and problem in diff.problem
    if amplitude < 100:
        return
    flipped = torch_out.copy()
    flipped[[3, 30]] += step
    flipped[17] -= step
    assert verify.compare([flipped], [torch_out], ["y"], "approximate", {"y": step}).passed


class TwoHeads(nn.Module):
    """A coarse 8-bit activation feeds one output; the other is computed in float only."""

    def __init__(self):
        super().__init__()
        self.coarse = FakeQuant(0.5, 0, torch.quint8)
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        return self.a(self.coarse(x)), self.b(x)


def test_each_output_gets_the_step_of_its_own_8bit_ancestors(tmp_path):
    torch.manual_seed(0)
    result = t2n.export(TwoHeads(), torch.rand(3, 8) * 4, tmp_path / "b", dump_io=True)
    assert result.verification.passed
    meta = __import__("json").loads((tmp_path / "b" / "t2n.json").read_text())
    names = result.output_names
    assert meta["output_steps"][names[0]][0] == pytest.approx(0.5)
    assert names[1] not in meta["output_steps"]   # float only: checked as float


def test_a_users_linear_translator_keeps_8bit_linears(tmp_path):
    """8-bit handling is dispatched by the engine beside the translators: a user's own
    translator for aten.linear serves float linears and 8-bit graphs keep integer ones."""
    from t2n.translate import TRANSLATORS, translates
    target = torch.ops.aten.linear.default
    saved, calls = TRANSLATORS[target], []

    @translates(target, override=True)
    def my_linear(ctx, input, weight, bias=None):
        calls.append(ctx.node.name)
        return saved.fn(ctx, input, weight, bias)
    try:
        torch.manual_seed(0)
        x = torch.randn(4, 32)
        result = t2n.export(eager_quantized(LinearOnly(), x), x, tmp_path / "q8")
        assert calls == []    # both linears ran in integers
        t2n.export(nn.Linear(8, 4), torch.randn(2, 8), tmp_path / "float")
        assert len(calls) == 1
    finally:
        TRANSLATORS[target] = saved
    held = tract_quantized_tensors(result.path)
    assert sum(t.startswith("QI8") for t in held.values()) == 2, held   # both weights


class _LinearThen(nn.Module):
    """An 8-bit linear whose output marker is reached through ``between``, or read by a
    second consumer beside its marker (look-alikes of an integer linear's output)."""

    def __init__(self, between=None, shared=False):
        super().__init__()
        torch.manual_seed(0)
        w = torch.randn(16, 32) * 0.1
        scale = float(w.abs().max()) / 127
        self.fc = t2n.quant.int8.QuantizedLinear((w / scale).round() * scale, torch.zeros(16),
                                                 (scale, 0, "i8"), None,
                                                 in_qparams=(0.02, 128, "u8"))
        self.between, self.shared = between, shared

    def forward(self, x):
        y = self.fc(x)
        z = self.between(y) if self.between is not None else y
        q = t2n.quant.int8.fake_quant(z, 0.05, 128, "u8")
        return q + y if self.shared else q


@pytest.mark.parametrize("between, shared, integer", [
    (None, False, True), (torch.relu, False, True), (torch.sigmoid, False, False),
    (None, True, False)], ids=["marker", "relu_marker", "sigmoid_marker", "shared_output"])
def test_integer_linear_output_only_where_the_marker_reads_it_alone(between, shared, integer,
                                                                    tmp_path):
    """The linear's output is requantized by tract only when its marker (through a ReLU at
    most) is its sole reader; a sigmoid between them or a second reader keeps it float. All
    match the fake-quantized torch model."""
    model = _LinearThen(between, shared)
    result = t2n.export(model, torch.rand(4, 32) * 4, tmp_path / "b")
    assert result.verification.passed
    graph = (tmp_path / "b" / "graph.nnef").read_text()
    quantized_linear = re.search(r"(\w+) = linear\(", graph).group(1) in quant_lines(
        tmp_path / "b")
    assert quantized_linear == integer, graph
