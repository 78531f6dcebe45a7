import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import t2n
from helpers import Lambda, assert_bundle_matches
from t2n.errors import TranslationError

# name -> module; inputs are torch.randn(2, 4, 6) * 4, so every branch of each function is hit
ACTIVATIONS = {
    "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"),
    "silu": nn.SiLU(),
    "hardswish": nn.Hardswish(),
    "hardsigmoid": nn.Hardsigmoid(),
    "relu6": Lambda(torch.ops.aten.relu6),
    "leaky_relu": nn.LeakyReLU(),
    "leaky_relu_0.2": nn.LeakyReLU(0.2),
    "rrelu_eval": nn.RReLU(0.1, 0.3),
    "elu": nn.ELU(),
    "elu_alpha": nn.ELU(0.5),
    "elu_scales": Lambda(lambda x: torch.ops.aten.elu(x, 0.7, 1.3, 0.6)),
    "celu": nn.CELU(),
    "celu_alpha": nn.CELU(1.7),
    "selu": nn.SELU(),
    "softplus": nn.Softplus(),
    "softplus_beta_threshold": nn.Softplus(beta=2.0, threshold=3.0),
    "mish": nn.Mish(),
    "logsigmoid": nn.LogSigmoid(),
    "hardshrink": nn.Hardshrink(1.5),
    "softshrink": nn.Softshrink(),
    "threshold": nn.Threshold(0.3, -2.0),
    "softsign": nn.Softsign(),
    "tanhshrink": nn.Tanhshrink(),
    "glu_last": nn.GLU(),
    "glu_dim1": nn.GLU(1),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation(name, tmp_path):
    assert_bundle_matches(ACTIVATIONS[name], (torch.randn(2, 4, 6) * 4,), tmp_path)


F16 = ["gelu", "gelu_tanh", "silu", "hardswish", "hardsigmoid", "leaky_relu_0.2", "elu", "celu",
       "selu", "softplus", "softplus_beta_threshold", "mish", "logsigmoid", "glu_last"]


@pytest.mark.parametrize("name", F16)
def test_activation_f16(name, tmp_path):
    assert_bundle_matches(ACTIVATIONS[name], (torch.randn(2, 4, 6) * 4,), tmp_path, dtype="f16")


def test_large_inputs_do_not_overflow(tmp_path):
    x = torch.tensor([[-300.0, -90.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 90.0, 300.0]])
    fn = Lambda(lambda t: torch.cat([F.softplus(t), F.mish(t), F.logsigmoid(t), F.elu(t),
                                     F.selu(t), F.celu(t, 0.5), F.gelu(t)]))
    assert_bundle_matches(fn, (x,), tmp_path)


@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 3, 4, 4)], ids=str)
def test_prelu_per_channel(shape, tmp_path):
    m = nn.PReLU(shape[1] if len(shape) > 1 else 1)
    nn.init.uniform_(m.weight, -1, 1)
    assert_bundle_matches(m, (torch.randn(*shape),), tmp_path)


def test_prelu_single_slope_and_scalar_input(tmp_path):
    w = torch.tensor([0.3])
    fn = Lambda(lambda x: (F.prelu(x, w), F.prelu(x[1, 2, 3], w)))
    assert_bundle_matches(fn, (torch.randn(2, 3, 4) - 1,), tmp_path)


def test_prelu_kernel(tmp_path):
    fn = Lambda(lambda x, w: torch.ops.aten._prelu_kernel(x, w))
    assert_bundle_matches(fn, (torch.randn(2, 3, 4), torch.randn(3, 1)), tmp_path)


def test_glu_dynamic_axis(tmp_path):
    assert_bundle_matches(nn.GLU(1), (torch.randn(2, 8, 3),), tmp_path,
                          dynamic_axes={"input": {2: "S"}}, other_args=[torch.randn(2, 8, 5)])


def test_gelu_dynamic_axis(tmp_path):
    assert_bundle_matches(nn.GELU(), (torch.randn(2, 5, 3),), tmp_path,
                          dynamic_axes={"input": {1: "S"}}, other_args=[torch.randn(2, 9, 3)])


SOFTMAX = {
    "softmax_last": lambda x: F.softmax(x, -1),
    "softmax_dim0": lambda x: F.softmax(x, 0),
    "softmax_dim1": lambda x: torch.softmax(x, 1),
    "softmax_f64": lambda x: F.softmax(x, -1, dtype=torch.float64),
    "softmin": lambda x: F.softmin(x, 1),
    "log_softmax_last": lambda x: F.log_softmax(x, -1),
    "log_softmax_dim1": lambda x: F.log_softmax(x, 1),
    "log_softmax_f64": lambda x: F.log_softmax(x, 2, dtype=torch.float64),
    "_softmax": lambda x: torch.ops.aten._softmax(x, 1, False),
    "_log_softmax": lambda x: torch.ops.aten._log_softmax(x, -1, False),
}


@pytest.mark.parametrize("name", SOFTMAX)
def test_softmax(name, tmp_path):
    assert_bundle_matches(Lambda(SOFTMAX[name]), (torch.randn(2, 3, 5) * 3,), tmp_path)


def test_softmax_rank0(tmp_path):
    fn = Lambda(lambda x: (F.softmax(x[0, 1], 0), F.log_softmax(x[1, 0], -1)))
    assert_bundle_matches(fn, (torch.randn(2, 3),), tmp_path)


@pytest.mark.parametrize("name", ["softmax_last", "log_softmax_dim1"])
def test_softmax_f16(name, tmp_path):
    assert_bundle_matches(Lambda(SOFTMAX[name]), (torch.randn(2, 3, 5) * 3,), tmp_path,
                          dtype="f16")


def test_softmax_dynamic_axis(tmp_path):
    fn = Lambda(lambda x: (F.softmax(x, -1), F.log_softmax(x, 1)))
    assert_bundle_matches(fn, (torch.randn(2, 4, 6),), tmp_path,
                          dynamic_axes={"input_0": {1: "S", 2: "T"}},
                          other_args=[torch.randn(2, 7, 3)])


def test_rrelu_training_is_refused(tmp_path):
    fn = Lambda(lambda x: torch.ops.aten.rrelu(x, 0.1, 0.3, True))
    with pytest.raises(TranslationError, match="rrelu in training mode"):
        t2n.export(fn, (torch.randn(2, 3),), tmp_path / "bundle")
