import pytest
import torch
import torch.nn.functional as F

from helpers import Lambda, assert_bundle_matches

UNARY = [torch.neg, torch.abs, torch.exp, torch.sin, torch.cos, torch.tanh, torch.sigmoid,
         torch.relu, torch.floor, torch.ceil, torch.sign, torch.erf, torch.trunc, torch.tan,
         torch.square, torch.log1p, torch.exp2]
POSITIVE = [torch.log, torch.sqrt, torch.rsqrt, torch.reciprocal, torch.log2]


@pytest.mark.parametrize("fn", UNARY, ids=lambda f: f.__name__)
def test_unary(fn, tmp_path):
    assert_bundle_matches(Lambda(fn), (torch.randn(2, 8),), tmp_path)


@pytest.mark.parametrize("fn", POSITIVE, ids=lambda f: f.__name__)
def test_unary_positive(fn, tmp_path):
    assert_bundle_matches(Lambda(fn), (torch.rand(2, 8) + 0.1,), tmp_path)


BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "add_alpha": lambda a, b: torch.add(a, b, alpha=2.5), "maximum": torch.maximum,
    "minimum": torch.minimum, "pow": lambda a, b: torch.pow(a.abs() + 0.5, b),
    "floor_div": lambda a, b: torch.div(a, b, rounding_mode="floor"),
    "trunc_div": lambda a, b: torch.div(a, b, rounding_mode="trunc"),
    "remainder": torch.remainder, "fmod": torch.fmod,
}


@pytest.mark.parametrize("name", BINARY)
def test_binary_broadcast(name, tmp_path):
    b = torch.randn(8).abs() + 0.5
    assert_bundle_matches(Lambda(BINARY[name]), (torch.randn(2, 3, 8), b), tmp_path)


SCALAR = {
    "mul": lambda x: x * 0.5, "rsub": lambda x: 1 - x, "pow2": lambda x: x ** 2,
    "pow3": lambda x: x ** 3, "div": lambda x: x / 3, "clamp": lambda x: x.clamp(-0.5, 0.7),
    "clamp_min": lambda x: x.clamp(min=0.1), "hardtanh": F.hardtanh,
}


@pytest.mark.parametrize("name", SCALAR)
def test_scalar_operand(name, tmp_path):
    assert_bundle_matches(Lambda(SCALAR[name]), (torch.randn(4, 5),), tmp_path)


COMPARE = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt,
           "ge": torch.ge}


@pytest.mark.parametrize("name", COMPARE)
def test_comparison(name, tmp_path):
    a = torch.randint(0, 3, (3, 4)).float()
    assert_bundle_matches(Lambda(COMPARE[name]), (a, torch.ones(4)), tmp_path,
                          tolerance="exact")


@pytest.mark.parametrize("name", ["and", "or", "xor", "not"])
def test_logic(name, tmp_path):
    fn = {"and": lambda a, b: (a > 0) & (b > 0), "or": lambda a, b: (a > 0) | (b > 0),
          "xor": lambda a, b: (a > 0) ^ (b > 0), "not": lambda a, b: ~(a > b)}[name]
    assert_bundle_matches(Lambda(fn), (torch.randn(3, 4), torch.randn(3, 4)), tmp_path,
                          tolerance="exact")


def test_integer_arithmetic(tmp_path):
    fn = Lambda(lambda a, b: (a * 3 + b) // 2 - a % 3)
    assert_bundle_matches(fn, (torch.arange(12).reshape(3, 4), torch.arange(4)), tmp_path,
                          tolerance="exact")


def test_mixed_int_float_promotes(tmp_path):
    assert_bundle_matches(Lambda(lambda a, b: a + b), (torch.arange(6).reshape(2, 3),
                                                       torch.randn(2, 3)), tmp_path)


def test_and_with_a_provably_true_operand(tmp_path):
    """tract folds NNEF `and` wrongly when one side is uniformly true (range >= 0)."""
    def fn(x):
        rows = torch.arange(x.shape[1]).view(1, 1, -1, 1) >= 0
        return (rows & x.new_ones((), dtype=torch.bool)) & (x[:, None, :, None] > 0)
    assert_bundle_matches(Lambda(fn), (torch.randn(1, 5),), tmp_path, tolerance="exact",
                          dynamic_axes={"input_0": {1: "S"}}, other_args=[torch.randn(1, 8)])
