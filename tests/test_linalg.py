import pytest
import torch
from torch import nn

from helpers import Lambda, assert_bundle_matches

CASES = {
    "matmul_2d": (torch.matmul, (torch.randn(4, 8), torch.randn(8, 3))),
    "matmul_batched": (torch.matmul, (torch.randn(2, 4, 8), torch.randn(2, 8, 3))),
    "matmul_broadcast": (torch.matmul, (torch.randn(2, 3, 4, 8), torch.randn(8, 5))),
    "matmul_vec_mat": (torch.matmul, (torch.randn(8), torch.randn(2, 8, 3))),
    "matmul_mat_vec": (torch.matmul, (torch.randn(2, 4, 8), torch.randn(8))),
    "mm": (torch.mm, (torch.randn(4, 8), torch.randn(8, 3))),
    "bmm": (torch.bmm, (torch.randn(2, 4, 8), torch.randn(2, 8, 3))),
    "addmm": (lambda c, a, b: torch.addmm(c, a, b, beta=0.5, alpha=2.0),
              (torch.randn(3), torch.randn(4, 8), torch.randn(8, 3))),
    "baddbmm": (lambda c, a, b: torch.baddbmm(c, a, b, alpha=0.5),
                (torch.randn(2, 4, 3), torch.randn(2, 4, 8), torch.randn(2, 8, 3))),
    "einsum_attention": (lambda q, k: torch.einsum("bhqd,bhkd->bhqk", q, k),
                         (torch.randn(1, 2, 5, 8), torch.randn(1, 2, 6, 8))),
    "einsum_implicit": (lambda a, b: torch.einsum("ij,jk", a, b),
                        (torch.randn(4, 8), torch.randn(8, 3))),
    "einsum_outer": (lambda a, b: torch.einsum("i,j->ij", a, b),
                     (torch.randn(4), torch.randn(3))),
}


@pytest.mark.parametrize("name", CASES)
def test_products(name, tmp_path):
    fn, args = CASES[name]
    assert_bundle_matches(Lambda(fn), args, tmp_path)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("shape", [(8,), (3, 8), (2, 3, 8), (2, 2, 3, 8)], ids=str)
def test_linear_ranks(shape, bias, tmp_path):
    assert_bundle_matches(nn.Linear(8, 5, bias=bias), (torch.randn(shape),), tmp_path)


def test_linear_dynamic_and_f16(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    assert_bundle_matches(model, (torch.randn(2, 5, 8),), tmp_path,
                          dynamic_axes={"input": {1: "S"}}, other_args=[torch.randn(2, 9, 8)])
    assert_bundle_matches(model, (torch.randn(2, 5, 8),), tmp_path, name="f16", dtype="f16")
