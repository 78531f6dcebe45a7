"""torch's own decompositions for the ops with no translator (t2n.translate.decompose), and the
long-tail ops translated directly. Every case is exported, run in tract and compared with torch
at t2n's ``approximate`` tolerance (and at other sizes where an axis is dynamic)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import t2n
from helpers import Lambda, assert_bundle_matches, run_bundle
from t2n.translate.decompose import decompose_missing, missing_targets
from t2n.translate.registry import lookup

aten = torch.ops.aten


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


X2 = torch.randn(4, 6, generator=_g())
X4 = torch.randn(1, 3, 8, 8, generator=_g(1))
X5 = torch.randn(1, 2, 4, 6, 6, generator=_g(2))
# per column of X2, a scale from 1e-6 to 3: arguments in the series range and far outside it
WIDE = torch.tensor([1e-6, 1e-4, 1e-2, 0.3, 1.0, 3.0])

# ops with no translator that torch decomposes into ops that translate:
# name -> (fn, inputs, the op decomposed)
DECOMPOSED = {
    "unfold": (lambda x: F.unfold(x, 3, padding=1), (X4,), aten.im2col.default),
    "cosine_similarity": (lambda x: F.cosine_similarity(x, x.flip(0)), (X2,),
                          aten.cosine_similarity.default),
    "pairwise_distance": (lambda x: F.pairwise_distance(x, x.flip(0)), (X2,),
                          aten.pairwise_distance.default),
    "linspace": (lambda x: x + torch.linspace(0, 1, 6), (X2,), aten.linspace.default),
    "meshgrid": (lambda x: torch.stack(torch.meshgrid(torch.arange(4), torch.arange(6),
                                                      indexing="ij")).float() + x, (X2,),
                 aten.meshgrid.indexing),
    "reshape_as": (lambda x: x.reshape(24).reshape_as(x) * 2, (X2,), aten.reshape_as.default),
    "index_fill": (lambda x: x.clone().index_fill(1, torch.tensor([0, 2]), 0.0), (X2,),
                   aten.index_fill.int_Scalar),
    "bucketize": (lambda x: torch.bucketize(x, torch.tensor([-1.0, 0.0, 1.0])).float(), (X2,),
                  aten.bucketize.Tensor),
    "take_along_dim": (lambda x: torch.take_along_dim(x, torch.argsort(x, 1), 1), (X2,),
                       aten.take_along_dim.default),
    "isinf": (lambda x: torch.isinf(x / (x > 0)).float(), (X2,), aten.isinf.default),
    "frac": (lambda x: torch.frac(3 * x), (X2,), aten.frac.default),
    "logit": (lambda x: torch.logit(torch.sigmoid(x)), (X2,), aten.logit.default),
    "renorm": (lambda x: torch.renorm(x, 2, 0, 1.0), (X2,), aten.renorm.default),
    "lerp": (lambda x: torch.lerp(x, x.flip(0), 0.3), (X2,), aten.lerp.Scalar),
    "addcmul": (lambda x: torch.addcmul(x, x, x, value=0.5), (X2,), aten.addcmul.default),
    "tril_indices": (lambda x: x[torch.tril_indices(4, 4)[0], :], (X2,),
                     aten.tril_indices.default),
    "grid_sample": (lambda x, g: F.grid_sample(x, g, align_corners=False),
                    (X4, torch.rand(1, 4, 4, 2, generator=_g()) * 2 - 1),
                    aten.grid_sampler_2d.default),
}


@pytest.mark.parametrize("name", sorted(DECOMPOSED))
def test_an_op_without_translator_is_decomposed_by_torch(name, tmp_path, caplog):
    fn, args, op = DECOMPOSED[name]
    assert lookup(op) is None          # else this case tests nothing
    with caplog.at_level(logging.INFO, logger="t2n.translate"):
        assert_bundle_matches(Lambda(fn).eval(), args, tmp_path)
    assert any("decomposed (no translator)" in r.message and str(op) in r.message
               for r in caplog.records), [r.message for r in caplog.records]


def test_a_decomposed_op_keeps_its_dynamic_axis(tmp_path):
    model = Lambda(lambda x: F.cosine_similarity(x, x * x + 1, dim=-1)).eval()
    assert_bundle_matches(model, (X2,), tmp_path, dynamic_axes={"input_0": {0: "N"}},
                          other_args=[(torch.randn(9, 6, generator=_g(3)),)])


class NormThenUnfold(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x):
        y = F.gelu(self.norm(x))
        return F.unfold(y, 2).transpose(1, 2) @ torch.ones(12, 3)


def _ops(program):
    return {n.target for n in program.graph.nodes if n.op == "call_function"}


def test_only_the_missing_ops_are_decomposed():
    """The high-level ops that translate stay whole (tract's own layer norm and gelu), while
    torch would decompose them in its Core ATen table; only im2col is rewritten."""
    model = NormThenUnfold().eval()
    program = torch.export.export(model, (torch.randn(1, 3, 8, 8, generator=_g()),))
    before = _ops(program)
    assert aten.im2col.default in before and aten.layer_norm.default in before
    after = _ops(decompose_missing(program))
    assert aten.im2col.default not in after
    assert {aten.layer_norm.default, aten.gelu.default} <= after
    assert not missing_targets(decompose_missing(program))
    # torch's default (Core ATen) decomposition would have split the layer norm
    assert aten.layer_norm.default not in _ops(program.run_decompositions())


def test_the_error_lists_only_ops_that_neither_translate_nor_decompose(tmp_path):
    model = Lambda(lambda x: torch.logcumsumexp(F.unfold(x, 3), 1)).eval()
    with pytest.raises(t2n.UnsupportedOpsError) as err:
        t2n.export(model, (X4,), tmp_path / "b")
    message = str(err.value)
    assert "aten.logcumsumexp.default" in message and "im2col" not in message
    assert not (tmp_path / "b").exists()


def _assign_every_third(x, y):
    x = x.clone()
    x[:, 1:6:3] = y
    return x * 2


QUADRANTS = torch.tensor([-2.5, -0.4, 0.0, 0.7, 3.0])

# -- long-tail ops with translators of their own ---------------------------------------------
DIRECT = {
    "adaptive_avg_uneven": (lambda x: F.adaptive_avg_pool2d(x, (3, 5)), (X4,)),
    "adaptive_max_uneven": (lambda x: F.adaptive_max_pool2d(x, (3, 5)), (X4,)),
    "adaptive_avg_1d_uneven": (lambda x: F.adaptive_avg_pool1d(x, 5), (X4[0],)),
    "adaptive_avg_3d": (lambda x: F.adaptive_avg_pool3d(x, (3, 4, 5)), (X5,)),
    "adaptive_max_3d": (lambda x: F.adaptive_max_pool3d(x, (2, 3, 3)), (X5,)),
    "interpolate_area": (lambda x: F.interpolate(x, size=(5, 5), mode="area"), (X4,)),
    "avg_pool3d": (lambda x: F.avg_pool3d(x, 2), (X5,)),
    "avg_pool3d_padded": (lambda x: F.avg_pool3d(x, 3, stride=2, padding=1,
                                                 count_include_pad=False), (X5,)),
    "max_pool3d": (lambda x: F.max_pool3d(x, (2, 3, 3), stride=(1, 2, 2)), (X5,)),
    "cumprod": (lambda x: torch.cumprod(x, 1), (X2,)),
    "cumprod_first_axis": (lambda x: torch.cumprod(x, 0), (torch.randn(5, 2, 3, generator=_g()),)),
    "cumprod_int": (lambda x: torch.cumprod(x, -1), (torch.randint(-3, 4, (3, 5), generator=_g()),)),
    "cdist": (lambda x, y: torch.cdist(x, y), (torch.randn(2, 4, 3, generator=_g()),
                                               torch.randn(2, 5, 3, generator=_g(1)))),
    "cdist_p1": (lambda x, y: torch.cdist(x, y, p=1), (X2, X2.flip(0)[:3])),
    "cdist_p3": (lambda x, y: torch.cdist(x, y, p=3), (X2, X2.flip(0)[:3])),
    "cdist_inf": (lambda x, y: torch.cdist(x, y, p=float("inf")), (X2, X2[:2])),
    # interleaved sections (Qwen3.5's rotary): every third position from an offset
    "strided_slice_assign": (lambda x, y: _assign_every_third(x, y), (X2, X2[:, :2] * 10)),
    # a causal mask from two index vectors, selected (XGLM's and BLOOM's eager attention)
    "where_index_mask": (lambda x: x + torch.where(
        torch.arange(x.shape[1])[None, :] <= torch.arange(x.shape[0])[:, None],
        torch.zeros(()), -1e9), (torch.randn(5, 5, generator=_g()),)),
    "pdist": (lambda x: F.pdist(x) + F.pdist(x, p=1).sum(), (X2,)),
    "pdist_one_row": (lambda x: F.pdist(x[:1]), (X2,)),   # no pair: an empty result
    "hypot": (lambda x: torch.hypot(x, x.flip(1)), (X2,)),
    "isnan": (lambda x: torch.isnan(torch.log(x)).float(), (X2,)),
    "bitwise_scalars": (lambda x: ((x & 6) | 1) ^ 3, (torch.arange(-6, 6).reshape(3, 4),)),
    "bool_scalars": (lambda x: ((x > 0) & True) ^ True, (X2,)),
    "shifts": (lambda x: (x << 2) >> 1, (torch.arange(-6, 6).reshape(3, 4),)),
    "shift_by_tensor": (lambda x: (x >> torch.tensor([1, 2, 0, 3])) + (x << torch.tensor(
        [0, 1, 2, 3])), (torch.arange(-6, 6).reshape(3, 4),)),
    # near 0 (series), moderate and large arguments, both signs
    "log10": (lambda x: torch.log10(x.abs() + 1e-3), (X2,)),
    "expm1": (lambda x: torch.expm1(x * WIDE), (X2,)),
    "sinh": (lambda x: torch.sinh(x * WIDE), (X2,)),
    "cosh": (lambda x: torch.cosh(x * WIDE), (X2,)),
    "asinh": (lambda x: torch.asinh(x * WIDE * 100), (X2,)),
    "acosh": (lambda x: torch.acosh(x.abs() * 100 + 1), (X2,)),
    "atanh": (lambda x: torch.atanh(torch.tanh(x * WIDE) * 0.99), (X2,)),
    "atan": (lambda x: torch.atan(x * WIDE), (X2,)),
    "asin_acos": (lambda x: torch.asin(torch.tanh(x)) + torch.acos(torch.tanh(x) * 0.9), (X2,)),
    # every quadrant, both axes and the origin
    "atan2": (lambda y, x: torch.atan2(y, x), (QUADRANTS.reshape(-1, 1).clone(), QUADRANTS)),
    "angle_real": (lambda x: torch.angle(x), (QUADRANTS,)),
    "diagonal": (lambda x: torch.diagonal(x) + torch.diagonal(x, 1), (X2,)),
    "diagonal_axes": (lambda x: torch.diagonal(x, offset=-1, dim1=2, dim2=0), (X5[0],)),
    "diagonal_wide": (lambda x: x.diagonal(2, 0, 1) * 2, (torch.randn(3, 7, generator=_g()),)),
    "as_strided": (lambda x: torch.as_strided(x, (3, 2, 2), (2, 5, 1), 1), (X2,)),
    "as_strided_overlapping": (lambda x: x.flatten().as_strided((4, 3), (1, 1)), (X2,)),
    "masked_scatter": (lambda x, m: x.masked_scatter(m, -torch.arange(30.0).reshape(5, 6)),
                       (X2, X2 > 0.3)),
    "masked_scatter_broadcast_mask": (lambda x: x.masked_scatter(
        torch.tensor([True, False, True, True, False, False]), x.flip(0) * 10), (X2,)),
    # the indices output of max pooling: padded, strided, dilated, ceil_mode, and fed to
    # max_unpool as a user would
    "max_pool2d_indices": (lambda x: F.max_pool2d(x, 3, 2, padding=1, return_indices=True),
                           (X4,)),
    "max_pool1d_indices_dilated": (lambda x: F.max_pool1d(x, 2, 1, dilation=2,
                                                          return_indices=True), (X4[0],)),
    "max_pool3d_indices_ceil": (lambda x: F.max_pool3d(x, 2, (1, 2, 2), ceil_mode=True,
                                                       return_indices=True), (X5,)),
    "max_pool_unpool": (lambda x: F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2),
                        (X4,)),
    "einsum_ellipsis": (lambda x: torch.einsum("...ij,...jk->...ik", x, x.transpose(-1, -2)),
                        (torch.randn(2, 3, 4, generator=_g()),)),
    "einsum_inner_ellipsis": (lambda x, y: torch.einsum("b...i,b...i->b...", x, y),
                              (torch.randn(2, 3, 4, generator=_g()),
                               torch.randn(2, 3, 4, generator=_g(1)))),
    "einsum_implicit_ellipsis": (lambda x: torch.einsum("...ij", x),
                                 (torch.randn(2, 3, 4, generator=_g()),)),
}


@pytest.mark.parametrize("name", sorted(DIRECT))
def test_long_tail_op(name, tmp_path):
    fn, args = DIRECT[name]
    assert_bundle_matches(Lambda(fn).eval(), args, tmp_path)


@pytest.mark.parametrize("fn", [torch.expm1, torch.sinh, torch.asinh, torch.atanh],
                         ids=["expm1", "sinh", "asinh", "atanh"])
def test_exp_log_functions_keep_their_relative_precision_near_zero(fn, tmp_path):
    """Near 0 the formulas would lose most digits (exp(x) - 1 at x = 1e-7 is 1.19e-7 in f32):
    the series is used below 0.1, within 1e-6 relative of the exact value (float64)."""
    x = torch.tensor([[1e-7, -3e-6, 2e-5, -4e-4, 9e-4, -2e-3, 0.05, -0.0999, 0.1001, -0.3]])
    t2n.export(Lambda(fn).eval(), (x,), tmp_path / "b", check_io=None)
    (got,) = run_bundle(tmp_path / "b", x.numpy())
    want = fn(x.double()).numpy()
    assert np.abs(got / want - 1).max() < 1e-6, got / want - 1


@pytest.mark.parametrize("name,fn,shape,axis", [
    ("adaptive_uneven", lambda x: F.adaptive_avg_pool2d(x, (3, 5)), (2, 3, 8, 8), 0),
    ("cdist", lambda x: torch.cdist(x, x[:3]), (7, 4), 0),
    ("hypot", lambda x: torch.hypot(x, x * 2), (3, 4), 0),
    ("atan2", lambda x: torch.atan2(x, x.flip(1) - 0.5), (3, 4), 0),
    ("diagonal", lambda x: torch.diagonal(x, 1, 1, 2), (2, 4, 5), 0),
    ("strided_slice_assign", lambda x: _assign_every_third(x, x[:, :2] + 1), (3, 6), 0),
    ("where_index_mask", lambda x: x + torch.where(torch.arange(x.shape[0])[None, :]
                                                  <= torch.arange(x.shape[0])[:, None],
                                                  torch.zeros(()), -1.0).sum(1, keepdim=True),
     (5, 4), 0),
    ("max_pool_indices", lambda x: F.max_pool2d(x, 2, return_indices=True)[1], (2, 3, 6, 6), 0),
    ("einsum", lambda x: torch.einsum("...i,...i->...", x, x), (5, 4), 0),
])
def test_long_tail_ops_with_a_dynamic_axis(name, fn, shape, axis, tmp_path):
    x = torch.randn(*shape, generator=_g())
    bigger = list(shape)
    bigger[axis] += 3
    assert_bundle_matches(Lambda(fn).eval(), (x,), tmp_path,
                          dynamic_axes={"input_0": {axis: "N"}},
                          other_args=[(torch.randn(*bigger, generator=_g(1)),)])


def _chunk_mask(x):
    """A chunked-attention mask (Llama 4): positions in the same chunk of 3, from integer
    floor division and remainder of a range as long as the token axis."""
    i = torch.arange(x.shape[1])
    same = (i // 3)[None, :] == (i // 3)[:, None]
    return x * same.float().sum(0) + (i % 3).float()


def test_integer_division_results_feed_shape_ops(tmp_path):
    assert_bundle_matches(Lambda(_chunk_mask).eval(), (torch.randn(2, 7, generator=_g()),),
                          tmp_path, dynamic_axes={"input_0": {1: "S"}},
                          other_args=[(torch.randn(2, 11, generator=_g(1)),)])


def test_uneven_windows_over_a_dynamic_axis_are_refused(tmp_path):
    model = Lambda(lambda x: F.adaptive_avg_pool1d(x, 3)).eval()
    with pytest.raises(t2n.T2NError, match="dynamic axis"):
        t2n.export(model, (torch.randn(1, 2, 8, generator=_g()),), tmp_path / "b",
                   dynamic_axes={"input_0": {2: "S"}})
    model = Lambda(lambda x: torch.cumprod(x, 1)).eval()
    with pytest.raises(t2n.T2NError, match="cumprod along a dynamic axis"):
        t2n.export(model, (X2,), tmp_path / "c", dynamic_axes={"input_0": {1: "S"}})
