import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import Lambda, assert_bundle_matches, run_bundle

aten = torch.ops.aten

DIMS = {"d1": 1, "dneg": -1, "list": [0, 2], "all": None}


def _floats():
    return torch.randn(2, 3, 5)


def _ints():
    return torch.randint(-4, 5, (2, 3, 5))


def _bools():
    return torch.rand(2, 3, 5) > 0.5


# name -> (fn(x, dim, keepdim), input maker)
FLOAT_REDUCTIONS = {
    "sum": (lambda x, d, k: x.sum(d, keepdim=k), _floats),
    "mean": (lambda x, d, k: x.mean(d, keepdim=k), _floats),
    "amax": (lambda x, d, k: x.amax(() if d is None else d, keepdim=k), _floats),
    "amin": (lambda x, d, k: x.amin(() if d is None else d, keepdim=k), _floats),
    "var": (lambda x, d, k: x.var(d, keepdim=k), _floats),
    "var_biased": (lambda x, d, k: x.var(d, unbiased=False, keepdim=k), _floats),
    "std": (lambda x, d, k: x.std(d, keepdim=k), _floats),
    "std_corr0": (lambda x, d, k: torch.std(x, d, correction=0, keepdim=k), _floats),
    "logsumexp": (lambda x, d, k: torch.logsumexp(x, [0, 1, 2] if d is None else d, keepdim=k),
                  _floats),
    "norm2": (lambda x, d, k: torch.linalg.vector_norm(x, 2, d, keepdim=k), _floats),
    "norm1": (lambda x, d, k: torch.linalg.vector_norm(x, 1, d, keepdim=k), _floats),
    "norm_inf": (lambda x, d, k: torch.linalg.vector_norm(x, math.inf, d, keepdim=k), _floats),
    "norm_ninf": (lambda x, d, k: torch.linalg.vector_norm(x, -math.inf, d, keepdim=k),
                  _floats),
    "norm3": (lambda x, d, k: torch.linalg.vector_norm(x, 3, d, keepdim=k), _floats),
    "norm0": (lambda x, d, k: torch.linalg.vector_norm(x.round(), 0, d, keepdim=k), _floats),
}
EXACT_REDUCTIONS = {
    "sum_int": (lambda x, d, k: x.sum(d, keepdim=k), _ints),
    "sum_bool": (lambda x, d, k: x.sum(d, keepdim=k), _bools),
    "amax_int": (lambda x, d, k: x.amax(() if d is None else d, keepdim=k), _ints),
    "amin_bool": (lambda x, d, k: x.amin(() if d is None else d, keepdim=k), _bools),
    "any": (lambda x, d, k: torch.any(x, dim=d, keepdim=k), _bools),
    "all": (lambda x, d, k: torch.all(x, dim=d, keepdim=k), _bools),
    "any_float": (lambda x, d, k: torch.any(x.round(), dim=d, keepdim=k), _floats),
}


def _case_ids(table):
    return [pytest.param(n, d, k, id=f"{n}-{d}-{'keep' if k else 'squeeze'}")
            for n in table for d in DIMS for k in (False, True)]


@pytest.mark.parametrize("name,dim,keepdim", _case_ids(FLOAT_REDUCTIONS))
def test_float_reduction(name, dim, keepdim, tmp_path):
    fn, make = FLOAT_REDUCTIONS[name]
    d = DIMS[dim]
    assert_bundle_matches(Lambda(lambda x: fn(x, d, keepdim)), (make(),), tmp_path)


@pytest.mark.parametrize("name,dim,keepdim", _case_ids(EXACT_REDUCTIONS))
def test_exact_reduction(name, dim, keepdim, tmp_path):
    fn, make = EXACT_REDUCTIONS[name]
    d = DIMS[dim]
    assert_bundle_matches(Lambda(lambda x: fn(x, d, keepdim)), (make(),), tmp_path,
                          tolerance="exact")


FULL = {
    "sum": lambda x: x.sum(), "sum_f64": lambda x: x.sum(dtype=torch.float64),
    "sum_dim_f64": lambda x: x.sum(1, dtype=torch.float64), "mean": lambda x: x.mean(),
    "mean_f64": lambda x: x.mean(1, dtype=torch.float64), "max": lambda x: x.max(),
    "min": lambda x: x.min(), "prod": lambda x: x.prod(), "prod_dim": lambda x: x.prod(-2),
    "prod_dim_keep": lambda x: x.prod(0, keepdim=True), "var": lambda x: x.var(),
    "std": lambda x: x.std(), "var_default": lambda x: aten.var.default(x, False),
    "std_default": lambda x: aten.std.default(x), "norm": lambda x: x.norm(),
    "var_corr2": lambda x: torch.var(x, [0, 2], correction=2),
    "var_corr_half": lambda x: torch.var(x, -1, correction=0.5, keepdim=True),
}


@pytest.mark.parametrize("name", FULL)
def test_full_reduction(name, tmp_path):
    assert_bundle_matches(Lambda(FULL[name]), (torch.randn(2, 3, 5),), tmp_path)


EXACT = {
    "sum_bool": (lambda x: x.sum(), _bools),
    "sum_int_dtype": (lambda x: x.sum(dtype=torch.int32), _ints),
    "max_int": (lambda x: x.max(), _ints), "min_bool": (lambda x: x.min(), _bools),
    "prod_int": (lambda x: x.prod(1), _ints), "prod_bool": (lambda x: x.prod(), _bools),
    "any_int": (lambda x: x.any(), _ints), "all_int": (lambda x: x.all(-1), _ints),
    "any_dims": (lambda x: x.any(dim=(0, -1)), _bools),
    "all_dims_keep": (lambda x: x.all(dim=(1, 2), keepdim=True), _bools),
    "any_u8": (lambda x: x.to(torch.uint8).any(1), _bools),
    "count_nonzero": (lambda x: torch.count_nonzero(x), _ints),
    "count_nonzero_dim": (lambda x: torch.count_nonzero(x, -1), _ints),
    "count_nonzero_dims": (lambda x: torch.count_nonzero(x, [0, 2]), _floats),
    "count_nonzero_bool": (lambda x: torch.count_nonzero(x, 1), _bools),
}


@pytest.mark.parametrize("name", EXACT)
def test_exact_full_reduction(name, tmp_path):
    fn, make = EXACT[name]
    assert_bundle_matches(Lambda(fn), (make(),), tmp_path, tolerance="exact")


def test_int_sum_is_exact_in_i64(tmp_path):
    x = torch.tensor([[2**40, 2**40 + 7, -3, 2**31], [2**31, 2**31, 2**31, 1]])
    assert_bundle_matches(Lambda(lambda x: (x.sum(1), x.sum(), x.cumsum(1))), (x,), tmp_path,
                          tolerance="exact")


# ties (small integers) check that the first index wins, as in torch
ARG = {
    "argmax": lambda x: x.argmax(1), "argmax_keep": lambda x: x.argmax(-1, keepdim=True),
    "argmax_all": lambda x: x.argmax(), "argmax_all_keep": lambda x: x.argmax(keepdim=True),
    "argmin": lambda x: x.argmin(0), "argmin_all": lambda x: x.argmin(),
    "argmin_keep": lambda x: x.argmin(-2, keepdim=True),
    "max_dim": lambda x: x.max(1), "max_dim_keep": lambda x: x.max(-1, keepdim=True),
    "min_dim": lambda x: x.min(0), "min_dim_keep": lambda x: x.min(-2, keepdim=True),
    "aminmax": lambda x: torch.aminmax(x), "aminmax_dim": lambda x: torch.aminmax(x, dim=1),
    "aminmax_keep": lambda x: torch.aminmax(x, dim=-1, keepdim=True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64], ids=["f32", "i64"])
@pytest.mark.parametrize("name", ARG)
def test_arg_reduction_ties(name, dtype, tmp_path):
    x = torch.randint(0, 3, (3, 4, 6)).to(dtype)
    assert_bundle_matches(Lambda(ARG[name]), (x,), tmp_path, tolerance="exact")


def test_max_dim_bool(tmp_path):
    assert_bundle_matches(Lambda(lambda x: x.max(1)), (_bools(),), tmp_path, tolerance="exact")


MOMENTS = {
    "var_mean": lambda x: torch.var_mean(x, 1), "std_mean": lambda x: torch.std_mean(x, [0, 2]),
    "var_mean_corr": lambda x: torch.var_mean(x, -1, correction=0, keepdim=True),
    "std_mean_corr": lambda x: torch.std_mean(x, None, correction=1),
    "var_mean_default": lambda x: aten.var_mean.default(x),
    "std_mean_default": lambda x: aten.std_mean.default(x, False),
    "var_mean_unbiased": lambda x: torch.var_mean(x, 1, unbiased=False, keepdim=True),
}


@pytest.mark.parametrize("name", MOMENTS)
def test_moments(name, tmp_path):
    assert_bundle_matches(Lambda(MOMENTS[name]), (torch.randn(2, 3, 5),), tmp_path)


def test_logsumexp_infinities(tmp_path):
    x = torch.randn(4, 5)
    x[1, 2] = math.inf
    x[2] = -math.inf
    x[3, 0] = -math.inf
    assert_bundle_matches(Lambda(lambda x: torch.logsumexp(x, 1)), (x,), tmp_path)


def test_logsumexp_large_values(tmp_path):
    x = torch.randn(3, 6) * 50 + 200
    assert_bundle_matches(Lambda(lambda x: torch.logsumexp(x, -1, keepdim=True)), (x,),
                          tmp_path)


def test_logsumexp_int(tmp_path):
    assert_bundle_matches(Lambda(lambda x: torch.logsumexp(x, 1)), (_ints(),), tmp_path)


def test_normalize(tmp_path):
    assert_bundle_matches(Lambda(lambda x: F.normalize(x, dim=1)), (torch.randn(2, 3, 5),),
                          tmp_path)


TOPK = {
    "largest": lambda x: x.topk(3, 1), "smallest": lambda x: x.topk(2, -1, largest=False),
    "dim0": lambda x: x.topk(1, 0), "unsorted": lambda x: torch.topk(x, 2, sorted=False),
    "values_only": lambda x: x.topk(4, -1).values,
}


@pytest.mark.parametrize("name", TOPK)
def test_topk(name, tmp_path):
    x = torch.randperm(2 * 5 * 6).reshape(2, 5, 6).float()  # distinct: torch's tie order varies
    assert_bundle_matches(Lambda(TOPK[name]), (x,), tmp_path, tolerance="exact")


SORT = {
    "sort": lambda x: x.sort(1), "sort_desc": lambda x: x.sort(-1, descending=True),
    "sort_stable": lambda x: torch.sort(x, dim=0, stable=True),
    "sort_stable_desc": lambda x: torch.sort(x, dim=-1, descending=True, stable=True),
    "argsort": lambda x: x.argsort(-1), "argsort_desc": lambda x: x.argsort(1, descending=True),
    "argsort_stable": lambda x: torch.argsort(x, dim=-1, stable=True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bool],
                         ids=["f32", "i64", "bool"])
@pytest.mark.parametrize("name", SORT)
def test_sort_ties_are_stable(name, dtype, tmp_path):
    x = torch.randint(0, 4, (3, 5, 7)).to(dtype)
    assert_bundle_matches(Lambda(SORT[name]), (x,), tmp_path, tolerance="exact")


CUMSUM = {
    "f32": (lambda x: x.cumsum(1), _floats, "approximate"),
    "f32_neg": (lambda x: torch.cumsum(x, -1), _floats, "approximate"),
    "f32_to_f64": (lambda x: torch.cumsum(x, 0, dtype=torch.float64), _floats, "approximate"),
    "int": (lambda x: x.cumsum(2), _ints, "exact"),
    "bool": (lambda x: x.cumsum(-2), _bools, "exact"),
}


@pytest.mark.parametrize("name", CUMSUM)
def test_cumsum(name, tmp_path):
    fn, make, tolerance = CUMSUM[name]
    assert_bundle_matches(Lambda(fn), (make(),), tmp_path, tolerance=tolerance)


DYNAMIC = {
    "sum_sym": lambda x: x.sum(1), "sum_static": lambda x: x.sum(-1, keepdim=True),
    "mean_sym": lambda x: x.mean(1), "mean_static": lambda x: x.mean(2),
    "mean_all": lambda x: x.mean(), "var_sym": lambda x: x.var(1),
    "var_both": lambda x: x.var([1, 2], keepdim=True), "var_static": lambda x: x.var(-1),
    "std_sym_biased": lambda x: x.std(1, correction=0), "amax_sym": lambda x: x.amax(1),
    "amin_static": lambda x: x.amin(2), "argmax_sym": lambda x: x.argmax(1),
    "argmin_all": lambda x: x.argmin(), "max_dim_sym": lambda x: x.max(1),
    "logsumexp_sym": lambda x: x.logsumexp(1), "norm_sym": lambda x: x.norm(dim=1),
    "prod_sym": lambda x: x.prod(1), "int_sum_sym": lambda x: x.round().long().sum(1),
    "count_nonzero_sym": lambda x: torch.count_nonzero(x.round(), 1),
    "any_sym": lambda x: (x > 1).any(1), "cumsum_sym": lambda x: x.cumsum(1),
    "cumsum_static": lambda x: x.cumsum(2), "topk_static": lambda x: x.topk(2, -1),
    "topk_sym": lambda x: x.topk(2, 1), "sort_static": lambda x: x.sort(-1),
    "var_mean_sym": lambda x: torch.var_mean(x, 1), "sort_sym": lambda x: x.sort(1),
    "argsort_sym": lambda x: x.argsort(1, descending=True),
}


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_axis(name, tmp_path):
    assert_bundle_matches(Lambda(DYNAMIC[name]), (torch.randn(2, 4, 5),), tmp_path,
                          dynamic_axes={"input_0": {1: "S"}},
                          other_args=[torch.randn(2, 7, 5), torch.randn(2, 2, 5)])


F16 = {
    "sum": lambda x: x.sum(-1), "sum_all": lambda x: x.sum(), "sum_keep": lambda x: x.sum(0, True),
    "mean": lambda x: x.mean(-1), "mean_all": lambda x: x.mean(), "amax": lambda x: x.amax(0),
    "max_dim": lambda x: x.max(-1), "argmin": lambda x: x.argmin(0), "var": lambda x: x.var(-1),
    "std_mean": lambda x: torch.std_mean(x, 0), "logsumexp": lambda x: x.logsumexp(-1),
    "norm": lambda x: x.norm(dim=-1), "norm1": lambda x: x.norm(p=1, dim=0),
    "cumsum": lambda x: x.cumsum(-1), "prod": lambda x: (1 + x / 8).prod(-1),
    "topk": lambda x: x.topk(3, -1), "sort": lambda x: x.sort(0),
}


@pytest.mark.parametrize("name", F16)
def test_f16(name, tmp_path):
    assert_bundle_matches(Lambda(F16[name]), (torch.randn(6, 64),), tmp_path, dtype="f16")


# f16 sums accumulate in f32 as in torch (tract's own f16 sum does so only on the last axis)
F16_LARGE = {
    "sum_axis0": (lambda x: x.sum(0), (2048, 4)),
    "mean_axes": (lambda x: x.mean([0, 1]), (64, 64, 3)),
    "sum_last": (lambda x: x.sum(-1), (4, 4096)), "cumsum": (lambda x: x.cumsum(0), (512, 3)),
    "norm_big_values": (lambda x: (x * 400).norm(dim=0), (64, 3)),
    "logsumexp_axis0": (lambda x: x.logsumexp(0), (2048, 3)),
}


@pytest.mark.parametrize("name", F16_LARGE)
def test_f16_accumulates_in_f32(name, tmp_path):
    fn, shape = F16_LARGE[name]
    assert_bundle_matches(Lambda(fn), (torch.randn(*shape),), tmp_path, dtype="f16")


@pytest.mark.parametrize("correction", [1, 2])
def test_var_correction_on_large_axis(correction, tmp_path):
    # tract turns sum(sqr(d)) * k into a mean when k is close to 1/n: a 1/n error here
    x = torch.randn(3, 4096)
    fn = Lambda(lambda x: torch.var(x, -1, correction=correction))
    result = assert_bundle_matches(fn, (x,), tmp_path)
    got = run_bundle(result.path, x.numpy())[0]
    expected = torch.var(x.double(), -1, correction=correction).numpy()
    assert np.allclose(got, expected, rtol=2e-5, atol=0), np.abs(got / expected - 1).max()


SCALAR = {
    "sum": lambda x: x.sum(), "sum_keep": lambda x: x.sum(0, keepdim=True),
    "int_sum": lambda x: x.long().sum(), "mean": lambda x: x.mean(), "amax": lambda x: x.amax(),
    "argmax": lambda x: x.argmax(), "argmin_keep": lambda x: x.argmin(0, keepdim=True),
    "max_dim": lambda x: x.max(0), "prod": lambda x: x.prod(), "norm": lambda x: x.norm(),
    "logsumexp": lambda x: x.logsumexp(0), "any": lambda x: x.any(),
    "var_biased": lambda x: x.var(correction=0), "count_nonzero": torch.count_nonzero,
    "cumsum": lambda x: x.cumsum(0), "topk": lambda x: x.topk(1), "sort": lambda x: x.sort(),
    "argsort": lambda x: x.argsort(),
}


@pytest.mark.parametrize("name", SCALAR)
def test_rank0_input(name, tmp_path):
    assert_bundle_matches(Lambda(SCALAR[name]), (torch.tensor(1.5),), tmp_path)


def test_any_all_over_no_dims_reduce_nothing(tmp_path):
    fn = Lambda(lambda x: (aten.any.dims(x, []), aten.all.dims(x.bool(), [], True), x.sum([])))
    assert_bundle_matches(fn, (_ints(),), tmp_path, tolerance="exact")
