"""The export API end to end: verification, errors, names, dtypes, dynamic axes, io dumps."""
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import t2n
from t2n import verify
from t2n.bundles import check_bundle
from t2n.translate import TRANSLATORS, translates
from helpers import Lambda, assert_bundle_matches, run_bundle


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def test_result_reports_diffs_and_timings(tmp_path):
    result = t2n.export(MLP(), torch.randn(3, 16), tmp_path / "mlp")
    assert result.verification.passed
    (diff,) = result.diffs
    assert diff.max_abs < 1e-5 and diff.cosine > 0.99999
    assert {"trace", "translate", "write", "verify"} <= set(result.timings)
    assert (result.path / "fc1.weight.dat").exists()  # labels come from parameter names


def test_check_fails_on_perturbed_reference(tmp_path):
    """The tract check is real: a reference off by 1e-3 fails under 'approximate'."""
    x, model = torch.randn(3, 16), MLP()
    result = t2n.export(model, x, tmp_path / "mlp")
    with torch.no_grad():
        model_out = model(x).numpy()   # torch's output: tract is never checked against itself
    ok = verify.check(result.path, [x.numpy()], [model_out], ["y"], "approximate")
    assert ok.passed
    bad = verify.check(result.path, [x.numpy()], [model_out + 1e-3], ["y"], "approximate")
    assert not bad.passed and bad.outputs[0].outliers > 0


def _with_sin_as(emit):
    """A context: aten.sin translated by ``emit(ctx, x)`` (a deliberately wrong translator)."""
    import contextlib
    target = torch.ops.aten.sin.default

    @contextlib.contextmanager
    def patched():
        saved = TRANSLATORS[target]
        translates(target, override=True)(lambda ctx, self: emit(ctx, self))
        try:
            yield
        finally:
            TRANSLATORS[target] = saved
    return patched()


def test_mismatch_raises_and_publishes_nothing(tmp_path):
    """A wrong translator (sin emitted as cos) is caught, named a translation bug (no advice
    to loosen the tolerance) and nothing is written."""
    with _with_sin_as(lambda ctx, x: ctx.op("cos", x)), \
            pytest.raises(t2n.VerificationError) as err:
        t2n.export(Lambda(torch.sin), torch.randn(4, 4), tmp_path / "out")
    message = str(err.value)
    assert "far beyond any tolerance" in message and "translation bug" in message
    assert "looser" not in message and "-v" in message and "--dump-io" in message
    assert list(tmp_path.iterdir()) == []


def test_small_mismatch_suggests_a_looser_level(tmp_path):
    """Off by 2e-3 (0.1% of the output's range): a tolerance matter, not a translation bug."""
    def slightly_off(ctx, x):
        y = ctx.op("sin", x, shape=x.shape, dtype=x.dtype)
        return ctx.op("add", y, ctx.scalar(2e-3, x.dtype))
    with _with_sin_as(slightly_off), pytest.raises(t2n.VerificationError) as err:
        t2n.export(Lambda(torch.sin), torch.randn(4, 4) * 3, tmp_path / "out")
    assert "looser --check-io level" in str(err.value)
    assert "translation bug" not in str(err.value)
    with _with_sin_as(slightly_off):  # and the looser level passes
        t2n.export(Lambda(torch.sin), torch.randn(4, 4) * 3, tmp_path / "out", check_io="very")


def test_mismatch_with_dump_io_keeps_the_failing_bundle_aside(tmp_path):
    with _with_sin_as(lambda ctx, x: ctx.op("cos", x)), \
            pytest.raises(t2n.VerificationError, match="kept in .*out.failed"):
        t2n.export(Lambda(torch.sin), torch.randn(4, 4), tmp_path / "out", dump_io=True)
    assert not (tmp_path / "out").exists()
    report = check_bundle(tmp_path / "out.failed")
    assert not report.passed and report.outputs[0].gross


def test_report_names_the_worst_element():
    got, want = np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)
    want[1, 2], want[0, 0] = 4.0, -1.0
    result = verify.compare([got], [want], ["y"], "approximate")
    (diff,) = result.outputs
    assert diff.worst == (1, 2) and diff.worst_values == (0.0, 4.0) and diff.span == 5.0
    assert diff.gross and "worst at [1, 2]: tract 0 torch 4" in result.report()


def test_existing_destination_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(t2n.WriteError, match="already exists"):
        t2n.export(MLP(), torch.randn(3, 16), tmp_path / "out")
    t2n.export(MLP(), torch.randn(3, 16), tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "graph.nnef").exists()


def test_unsupported_ops_listed_together(tmp_path):
    def fn(x):
        return torch.linalg.inv(x) + torch.logcumsumexp(x, 0) + torch.linalg.inv(x * 2)
    with pytest.raises(t2n.UnsupportedOpsError) as err:
        t2n.export(Lambda(fn), torch.randn(3, 3), tmp_path / "out")
    message = str(err.value)
    assert "2 ops have no NNEF translator" in message
    assert "aten.linalg_inv.default (x2" in message and "aten.logcumsumexp.default (x1" in message
    forward_line = inspect.getsourcelines(Lambda.forward)[1] + 1  # its `return self.fn(...)`
    assert f"helpers.py:{forward_line}" in message  # where it comes from: the calling forward
    assert sorted(err.value.missing) == ["aten.linalg_inv.default", "aten.logcumsumexp.default"]
    assert list(tmp_path.iterdir()) == []


def test_names_and_dynamic_axes(tmp_path):
    model = Lambda(lambda a, b: (a * b, a + 1))
    result = t2n.export(model, (torch.randn(2, 5), torch.randn(2, 5)), tmp_path / "b",
                        input_names=["left", "right"], output_names=["prod", "inc"],
                        dynamic_axes={"left": {0: "N"}, "right": {0: "N"}})
    assert result.input_names == ["left", "right"] and result.output_names == ["prod", "inc"]
    model_tract = verify.load_tract_model(result.path)
    assert str(model_tract.input_fact(0)) == "N,5,f32"
    a, b = np.random.rand(7, 5).astype(np.float32), np.random.rand(7, 5).astype(np.float32)
    prod, inc = run_bundle(result.path, a, b)
    np.testing.assert_allclose(prod, a * b, rtol=1e-6)
    np.testing.assert_allclose(inc, a + 1, rtol=1e-6)


def test_kwargs_and_dict_outputs(tmp_path):
    class M(nn.Module):
        def forward(self, x, scale):
            return {"scaled": x * scale, "first": (x * scale)[..., :1]}
    result = t2n.export(M(), (), tmp_path / "b", kwargs={"x": torch.randn(2, 3),
                                                         "scale": torch.randn(3)})
    assert result.output_names == ["scaled", "first"] and result.verification.passed


@pytest.mark.parametrize("bad,match", [
    ({"dtype": "bf16"}, "unknown dtype"),
    ({"check_io": "loose"}, "unknown tolerance"),
    ({"dynamic_axes": {"x": {1: "1S"}}}, "bad dynamic axes"),
    ({"dynamic_axes": {"nope": {0: "S"}}}, "unknown input"),
    ({"f32_norm": True}, "only apply to an f16 export"),
    ({"compression": "nope"}, "unknown compression"),
    ({"compression": "x", "compression_registry": "no_such_mod:REG"}, "cannot import"),
], ids=["dtype", "tolerance", "axes", "axes_name", "f32_norm", "compression", "registry"])
def test_bad_options(bad, match, tmp_path):
    with pytest.raises(t2n.T2NError, match=match):
        t2n.export(Lambda(torch.relu), (torch.randn(2, 3),), tmp_path / "out", **bad)
    assert list(tmp_path.iterdir()) == []


def test_f16_export(tmp_path):
    result = assert_bundle_matches(MLP(), (torch.randn(3, 16),), tmp_path, dtype="f16")
    assert verify.load_tract_model(result.path).input_fact(0).__str__() == "3,16,f16"
    assert (result.path / "fc1.weight.dat").stat().st_size == 128 + 32 * 16 * 2


@pytest.mark.parametrize("suffix", [".tgz", ".tar", ""], ids=["tgz", "tar", "dir"])
def test_dump_io_then_check(suffix, tmp_path):
    result = t2n.export(MLP(), torch.randn(3, 16), tmp_path / f"b{suffix}", dump_io=True)
    again = check_bundle(result.path)
    assert again.passed and again.outputs[0].max_abs < 1e-5


def test_custom_registry_function_runs(tmp_path, monkeypatch):
    """A registry given by dotted path is imported and its function applied before export."""
    mod = tmp_path / "my_reg.py"
    mod.write_text(
        "import torch\n"
        "def halve(model, tokenizer, export_dirpath, local_dir):\n"
        "    '''Halve every Linear weight.'''\n"
        "    with torch.no_grad():\n"
        "        for m in model.modules():\n"
        "            if isinstance(m, torch.nn.Linear):\n"
        "                m.weight.mul_(0.5)\n"
        "    return model\n"
        "REG = {'halve': halve}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = MLP()
    w = model.fc1.weight.detach().clone()
    result = t2n.export(model, torch.randn(2, 16), tmp_path / "b", compression="halve",
                        compression_registry="my_reg:REG")
    assert result.verification.passed
    from t2n.nnef.dat import read_array
    np.testing.assert_allclose(read_array(result.path / "fc1.weight.dat"), w.numpy() * 0.5)
    props = (result.path / "graph.nnef").read_text()
    assert '("t2n_compression", "halve")' in props


def test_dynamic_axis_the_model_fixes_is_refused(tmp_path):
    model = Lambda(lambda x: x.reshape(2, 30))  # only valid when axis 1 has size 6
    with pytest.raises(t2n.TraceError, match="fixed axis 1 of input input_0 to 6"):
        t2n.export(model, torch.randn(2, 6, 5), tmp_path / "b",
                   dynamic_axes={"input_0": {1: "S"}})


@pytest.mark.parametrize("dtype, level", [(None, "approximate"), ("f16", "very")],
                         ids=["f32", "f16"])
def test_api_tolerance_defaults_to_the_clis(dtype, level, tmp_path):
    result = t2n.export(MLP(), torch.randn(3, 16), tmp_path / "mlp", dtype=dtype)
    assert result.verification.tolerance == level


def test_callers_model_keeps_its_dtype_and_modes(tmp_path):
    model = MLP().train()
    model.fc2.eval()   # a mixed-mode model comes back mixed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t2n.export(model, torch.randn(3, 16), tmp_path / "mlp", dtype="f16")
    assert model.training and model.fc1.training and not model.fc2.training
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, before[key]), key


def test_translator_crash_is_a_translation_error_naming_the_op(tmp_path):
    """An unexpected exception inside a translator: one TranslationError naming the op and
    where it comes from, with the report hint; the CLI prints one line and exits 2."""
    from click.testing import CliRunner

    from t2n.cli import main

    def crash(ctx, x):
        return {}["no such key"]
    with _with_sin_as(crash):
        with pytest.raises(t2n.TranslationError) as err:
            t2n.export(Lambda(torch.sin), torch.randn(4, 4), tmp_path / "out")
        message = str(err.value)
        assert message.startswith("aten.sin.default in ") and "helpers.py:" in message
        assert "failed with KeyError" in message and "please report" in message
        assert "-v" in message
        (tmp_path / "sinmod.py").write_text(
            "import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
            "        return torch.sin(x)\n")
        import sys
        sys.path.insert(0, str(tmp_path))
        try:
            out = CliRunner().invoke(main, ["export", "sinmod:M", str(tmp_path / "cli"),
                                            "--input-shape", "x=2,3"])
        finally:
            sys.path.remove(str(tmp_path))
    assert out.exit_code == 2, out.output
    lines = [ln for ln in out.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "aten.sin.default" in lines[0]
    assert "Traceback" not in out.output and not (tmp_path / "cli").exists()


def test_write_failure_is_a_write_error_and_leaves_nothing(tmp_path, monkeypatch):
    from t2n.nnef import dat

    def full_disk(path, array):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(dat, "write_array", full_disk)
    with pytest.raises(t2n.WriteError, match=r"cannot write .*fc1\.weight\.dat: No space left"):
        t2n.export(MLP(), torch.randn(3, 16), tmp_path / "mlp")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", ["", ".tgz"], ids=["dir", "tgz"])
def test_failed_overwrite_restores_the_old_bundle(suffix, tmp_path, monkeypatch):
    from t2n.nnef import bundle as bundle_mod
    dest = tmp_path / f"mlp{suffix}"
    t2n.export(MLP(), torch.randn(3, 16), dest)
    before = dest.read_bytes() if suffix else (dest / "graph.nnef").read_bytes()
    real_replace = bundle_mod.os.replace

    def failing_replace(src, dst):
        if Path(dst) == dest and ".t2n-old" not in str(src):
            raise OSError(13, "Permission denied")   # the new bundle cannot take its place
        return real_replace(src, dst)
    monkeypatch.setattr(bundle_mod.os, "replace", failing_replace)
    with pytest.raises(t2n.WriteError, match="cannot publish"):
        t2n.export(MLP(), torch.randn(3, 16), dest, overwrite=True)
    monkeypatch.undo()
    after = dest.read_bytes() if suffix else (dest / "graph.nnef").read_bytes()
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == [dest.name]
