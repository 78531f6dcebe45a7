import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import t2n
from helpers import Lambda, assert_bundle_matches, run_bundle

aten = torch.ops.aten


def _randomize(module: nn.Module) -> nn.Module:
    """Non-trivial affine parameters and running statistics, so each of them matters."""
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if p.is_floating_point():
                p.copy_(torch.rand_like(p) + 0.5 if "var" in name else torch.randn_like(p))
    return module.eval()


LAYER_NORMS = {
    "last_axis": nn.LayerNorm(6),
    "last_axis_no_affine": nn.LayerNorm(6, elementwise_affine=False),
    "last_axis_no_bias": nn.LayerNorm(6, bias=False),
    "two_axes": nn.LayerNorm([4, 6]),
    "two_axes_no_affine": nn.LayerNorm([4, 6], elementwise_affine=False, eps=1e-3),
}


@pytest.mark.parametrize("name", LAYER_NORMS)
def test_layer_norm(name, tmp_path):
    assert_bundle_matches(_randomize(LAYER_NORMS[name]), (torch.randn(2, 4, 6) * 3 + 1,),
                          tmp_path)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_native_layer_norm_all_outputs(affine, tmp_path):
    w, b = (torch.randn(6), torch.randn(6)) if affine else (None, None)
    fn = Lambda(lambda x: aten.native_layer_norm(x, [6], w, b, 1e-5))
    assert_bundle_matches(fn, (torch.randn(2, 4, 6) * 2 + 3,), tmp_path)


def test_layer_norm_dynamic_axis(tmp_path):
    assert_bundle_matches(_randomize(nn.LayerNorm(8)), (torch.randn(2, 5, 8),), tmp_path,
                          dynamic_axes={"input": {0: "B", 1: "S"}},
                          other_args=[torch.randn(3, 11, 8)])


def test_layer_norm_f16(tmp_path):
    assert_bundle_matches(_randomize(nn.LayerNorm(16)), (torch.randn(2, 3, 16),), tmp_path,
                          dtype="f16")


def _max_error(model, x, path, **kwargs):
    """Max abs difference between an f16 bundle and f32 arithmetic on the same f16 inputs and
    f16-rounded weights (the export converts a copy: the caller's model stays f32)."""
    result = t2n.export(model, (x,), path, dtype="f16", check_io=None, **kwargs)
    (got,) = run_bundle(result.path, x.half().numpy())
    with torch.no_grad():
        want = copy.deepcopy(model).half().float()(x.half().float()).numpy()
    return float(np.abs(got.astype(np.float32) - want).max())


@pytest.mark.parametrize("offset", [20.0, 500.0], ids=["offset20", "offset500"])
def test_layer_norm_f32_norm_is_at_least_as_accurate(offset, tmp_path):
    model = _randomize(nn.LayerNorm(256))
    x = torch.randn(4, 256) * 3 + offset  # at 500 the f16 row sums overflow to inf
    plain = _max_error(model, x, tmp_path / "plain")
    wide = _max_error(model, x, tmp_path / "wide", f32_norm=True)
    assert not wide > plain  # NaN (overflow) in the plain graph counts as worse
    assert wide < 2e-3, wide  # f16 rounding of outputs of magnitude ~4: as good as torch's f16
    assert 'to = "f32"' in (tmp_path / "wide" / "graph.nnef").read_text()
    # and the f32_norm bundle passes the usual f16 check against torch's own f16 model
    assert_bundle_matches(model.float(), (x,), tmp_path, dtype="f16", f32_norm=True)


RMS_NORMS = {
    "weight": nn.RMSNorm(8),
    "no_weight": nn.RMSNorm(8, elementwise_affine=False),
    "eps": nn.RMSNorm(8, eps=1e-3),
    "two_axes": nn.RMSNorm([3, 8]),
}


@pytest.mark.parametrize("name", RMS_NORMS)
def test_rms_norm(name, tmp_path):
    assert_bundle_matches(_randomize(RMS_NORMS[name]), (torch.randn(2, 3, 8),), tmp_path)


def test_rms_norm_default_eps_matters(tmp_path):
    # tiny inputs: eps None is torch.finfo(float32).eps, a larger eps would show
    assert_bundle_matches(nn.RMSNorm(8, elementwise_affine=False), (torch.randn(2, 8) * 1e-4,),
                          tmp_path)


def test_rms_norm_dynamic_axis(tmp_path):
    assert_bundle_matches(_randomize(nn.RMSNorm(8)), (torch.randn(2, 5, 8),), tmp_path,
                          dynamic_axes={"x": {1: "S"}}, other_args=[torch.randn(2, 9, 8)])


@pytest.mark.parametrize("f32_norm", [False, True], ids=["f16", "f16_f32_norm"])
def test_rms_norm_f16(f32_norm, tmp_path):
    assert_bundle_matches(_randomize(nn.RMSNorm(64)), (torch.randn(2, 3, 64) * 0.01,), tmp_path,
                          dtype="f16", f32_norm=f32_norm)


GROUP_NORMS = {
    "2d": (nn.GroupNorm(2, 6), (2, 6, 5, 4)),
    "2d_no_affine": (nn.GroupNorm(3, 6, affine=False), (2, 6, 5, 4)),
    "1d": (nn.GroupNorm(2, 4, eps=1e-3), (3, 4, 7)),
    "no_spatial": (nn.GroupNorm(2, 4), (3, 4)),
    "instance_like": (nn.GroupNorm(4, 4), (2, 4, 3, 3)),
}


@pytest.mark.parametrize("name", GROUP_NORMS)
def test_group_norm(name, tmp_path):
    module, shape = GROUP_NORMS[name]
    assert_bundle_matches(_randomize(module), (torch.randn(*shape) * 2 + 1,), tmp_path)


def test_native_group_norm_all_outputs(tmp_path):
    w, b = torch.randn(6), torch.randn(6)
    fn = Lambda(lambda x: aten.native_group_norm(x, w, b, 2, 6, 20, 3, 1e-5))
    assert_bundle_matches(fn, (torch.randn(2, 6, 5, 4) + 2,), tmp_path)


def test_group_norm_dynamic_axes(tmp_path):
    assert_bundle_matches(_randomize(nn.GroupNorm(2, 4)), (torch.randn(2, 4, 6, 5),), tmp_path,
                          dynamic_axes={"input": {2: "H", 3: "W"}},
                          other_args=[torch.randn(2, 4, 3, 8)])


@pytest.mark.parametrize("f32_norm", [False, True], ids=["f16", "f16_f32_norm"])
def test_group_norm_f16(f32_norm, tmp_path):
    assert_bundle_matches(_randomize(nn.GroupNorm(2, 4)), (torch.randn(2, 4, 6, 5),), tmp_path,
                          dtype="f16", f32_norm=f32_norm)


BATCH_NORMS = {
    "1d": (nn.BatchNorm1d(4), (3, 4)),
    "1d_seq": (nn.BatchNorm1d(4), (3, 4, 5)),
    "1d_no_affine": (nn.BatchNorm1d(4, affine=False), (3, 4, 5)),
    "2d": (nn.BatchNorm2d(4, eps=1e-3), (2, 4, 5, 3)),
    "2d_no_affine": (nn.BatchNorm2d(4, affine=False), (2, 4, 5, 3)),
    "3d": (nn.BatchNorm3d(3), (2, 3, 2, 3, 4)),
    "batch_stats": (nn.BatchNorm2d(4, track_running_stats=False), (3, 4, 5, 3)),
}


@pytest.mark.parametrize("name", BATCH_NORMS)
def test_batch_norm(name, tmp_path):
    module, shape = BATCH_NORMS[name]
    assert_bundle_matches(_randomize(module), (torch.randn(*shape) * 2 + 1,), tmp_path)


def test_batch_norm_dynamic_axes(tmp_path):
    assert_bundle_matches(_randomize(nn.BatchNorm2d(4)), (torch.randn(2, 4, 6, 5),), tmp_path,
                          dynamic_axes={"input": {0: "N", 2: "H"}},
                          other_args=[torch.randn(3, 4, 2, 5)])


@pytest.mark.parametrize("f32_norm", [False, True], ids=["f16", "f16_f32_norm"])
def test_batch_norm_f16(f32_norm, tmp_path):
    assert_bundle_matches(_randomize(nn.BatchNorm2d(4)), (torch.randn(2, 4, 6, 5),), tmp_path,
                          dtype="f16", f32_norm=f32_norm)


def _bn_params():
    return torch.randn(4), torch.randn(4), torch.randn(4), torch.rand(4) + 0.5


def test_native_batch_norm_legit_no_training(tmp_path):
    w, b, rm, rv = _bn_params()
    fn = Lambda(lambda x: aten._native_batch_norm_legit_no_training(x, w, b, rm, rv, 0.1, 1e-5))
    assert_bundle_matches(fn, (torch.randn(2, 4, 3, 3),), tmp_path)


@pytest.mark.parametrize("training", [False, True], ids=["running_stats", "batch_stats"])
def test_native_batch_norm(training, tmp_path):
    w, b, rm, rv = _bn_params()
    fn = Lambda(lambda x: aten.native_batch_norm(x, w, b, rm.clone(), rv.clone(), training,
                                                 0.1, 1e-5))
    assert_bundle_matches(fn, (torch.randn(3, 4, 5),), tmp_path)


INSTANCE_NORMS = {
    "2d": (nn.InstanceNorm2d(4), (2, 4, 5, 3)),
    "2d_affine": (nn.InstanceNorm2d(4, affine=True), (2, 4, 5, 3)),
    "1d": (nn.InstanceNorm1d(4, eps=1e-3), (2, 4, 7)),
    "2d_running_stats": (nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
                         (2, 4, 5, 3)),
}


@pytest.mark.parametrize("name", INSTANCE_NORMS)
def test_instance_norm(name, tmp_path):
    module, shape = INSTANCE_NORMS[name]
    assert_bundle_matches(_randomize(module), (torch.randn(*shape) * 2 + 1,), tmp_path)


def test_instance_norm_dynamic_axes(tmp_path):
    assert_bundle_matches(nn.InstanceNorm2d(4), (torch.randn(2, 4, 6, 5),), tmp_path,
                          dynamic_axes={"input": {2: "H", 3: "W"}},
                          other_args=[torch.randn(2, 4, 3, 8)])


def test_functional_norms_with_tensor_inputs(tmp_path):
    """Weights that are graph inputs rather than stored parameters."""
    fn = Lambda(lambda x, w, b: (F.layer_norm(x, [5], w, b), F.rms_norm(x, [5], w),
                                 F.group_norm(x.transpose(1, 2), 5, w, b)))
    assert_bundle_matches(fn, (torch.randn(2, 3, 5), torch.randn(5), torch.randn(5)), tmp_path)


def _not_decomposed(caplog):
    """Translated directly: torch's decomposition (the fallback) was not needed."""
    assert not any("decomposed (no translator)" in r.message for r in caplog.records)


@pytest.mark.parametrize("training", [False, True], ids=["running_stats", "batch_stats"])
def test_native_batch_norm_legit(training, tmp_path, caplog):
    w, b, rm, rv = _bn_params()
    fn = Lambda(lambda x: aten._native_batch_norm_legit(x, w, b, rm.clone(), rv.clone(),
                                                        training, 0.1, 1e-5))
    with caplog.at_level("INFO"):
        assert_bundle_matches(fn, (torch.randn(3, 4, 5) * 2 + 1,), tmp_path)
    _not_decomposed(caplog)


def test_native_batch_norm_legit_no_stats(tmp_path, caplog):
    w, b, _, _ = _bn_params()
    fn = Lambda(lambda x: aten._native_batch_norm_legit.no_stats(x, w, b, True, 0.1, 1e-5))
    with caplog.at_level("INFO"):
        assert_bundle_matches(fn, (torch.randn(3, 4, 5, 2) * 2 + 1,), tmp_path,
                              dynamic_axes={"input_0": {0: "N"}},
                              other_args=[torch.randn(5, 4, 5, 2)])
    _not_decomposed(caplog)


@pytest.mark.parametrize("training", [False, True], ids=["running_stats", "batch_stats"])
def test_native_batch_norm_legit_functional_updated_stats(training, tmp_path, caplog):
    w, b, rm, rv = _bn_params()

    def fn(x):
        out = aten._native_batch_norm_legit_functional(x, w, b, rm, rv, training, 0.1, 1e-5)
        return out[0], out[3], out[4]
    with caplog.at_level("INFO"):
        assert_bundle_matches(Lambda(fn), (torch.randn(3, 4, 5) * 2 + 1,), tmp_path)
    _not_decomposed(caplog)
