import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2n import verify

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


class _TiedHead(torch.nn.Module):
    """An embedding whose table is also the output projection (a tied lm_head)."""

    def __init__(self, vocab, width):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)

    def forward(self, ids):
        return F.linear(self.embed(ids) * 0.5, self.embed.weight)


def _runtime_packs(path, inputs) -> list[str]:
    """Names of the weight-packing nodes tract runs at every call (not folded at load)."""
    import json
    runnable = verify.load_tract_model(path).into_runnable()
    profile = json.loads(runnable.profile_json([np.asarray(i) for i in inputs]))
    return [n["node_name"] for n in profile["nodes"]
            if n["op_name"] == "OptMatMulPack" and n["node_name"].endswith("pack_a")]


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_tied_weight_is_packed_once_at_load(dtype, tmp_path):
    # tract 0.23.9 repacks a large weight that also feeds a gather at every run; t2n gives
    # the matmul row pieces of it, which tract packs once when it loads the bundle
    ids = torch.tensor([[3, 7, 7999]])
    result = assert_bundle_matches(_TiedHead(8000, 512), (ids,), tmp_path, dtype=dtype,
                                   tolerance="approximate" if dtype == "f32" else "very")
    assert _runtime_packs(result.path, [ids.numpy()]) == []
    graph = (result.path / "graph.nnef").read_text()
    assert graph.count("matmul(") > 1 and "concat(" in graph


def test_unshared_large_weight_stays_whole(tmp_path):
    result = assert_bundle_matches(nn.Linear(1024, 4096), (torch.randn(1, 2, 1024),), tmp_path)
    assert _runtime_packs(result.path, [np.zeros((1, 2, 1024), np.float32)]) == []
    assert (result.path / "graph.nnef").read_text().count("matmul(") == 1
