import pytest
import torch

from helpers import Lambda, assert_bundle_matches
from t2n.errors import T2NError

DYN = {"input_0": {1: "S"}}


def _other(*sizes):
    return [torch.randn(2, s) for s in sizes]


# -- arange ---------------------------------------------------------------------------------
ARANGE = {
    "end": lambda x: torch.arange(5),
    "start": lambda x: torch.arange(-2, 5),
    "start_step": lambda x: torch.arange(1, 10, 3),
    "negative_step": lambda x: torch.arange(5, -4, -2),
    "float": lambda x: torch.arange(0.5, 3.0, 0.25),
    "float_negative_step": lambda x: torch.arange(2.0, -1.0, -0.3),
    "float_end": lambda x: torch.arange(0, 5.5),
    "int_as_float": lambda x: torch.arange(6, dtype=torch.float32),
    "int32": lambda x: torch.arange(2, 8, 2, dtype=torch.int32),
    "float_args_int_dtype": lambda x: torch.arange(0.5, 5, 1.5, dtype=torch.int64),
}


@pytest.mark.parametrize("name", ARANGE)
def test_arange(name, tmp_path):
    fn = ARANGE[name]
    tolerance = "approximate" if fn(None).is_floating_point() else "exact"
    assert_bundle_matches(Lambda(fn), (torch.randn(2, 3),), tmp_path, tolerance=tolerance)


ARANGE_DYNAMIC = {
    "end": lambda x: torch.arange(x.shape[1]),
    "start": lambda x: torch.arange(1, x.shape[1] + 1),
    "start_step": lambda x: torch.arange(0, x.shape[1], 2),
    "symbolic_start": lambda x: torch.arange(x.shape[1], 2 * x.shape[1]),
    "float": lambda x: torch.arange(x.shape[1], dtype=torch.float32) * 0.5 + x,
    "positions": lambda x: torch.arange(x.shape[1]).unsqueeze(0) + torch.zeros_like(x).long(),
}


@pytest.mark.parametrize("name", ARANGE_DYNAMIC)
def test_arange_dynamic(name, tmp_path):
    fn = ARANGE_DYNAMIC[name]
    tolerance = "approximate" if fn(torch.randn(2, 3)).is_floating_point() else "exact"
    assert_bundle_matches(Lambda(fn), (torch.randn(2, 4),), tmp_path, tolerance=tolerance,
                          other_args=_other(5, 2), dynamic_axes=DYN)


def test_arange_f16(tmp_path):
    fn = Lambda(lambda x: torch.arange(x.shape[1], dtype=x.dtype) * x)
    assert_bundle_matches(fn, (torch.randn(2, 7),), tmp_path, dtype="f16", tolerance="exact")


# -- filled tensors -------------------------------------------------------------------------
FILLED = {
    "full": lambda x: torch.full((2, 3), 1.5),
    "full_neg_inf": lambda x: torch.full((2, 3), float("-inf")),
    "full_int": lambda x: torch.full((2, 3), 7),
    "full_bool": lambda x: torch.full((2, 3), True),
    "full_rank0": lambda x: torch.full((), 2.5),
    "zeros": lambda x: torch.zeros(2, 3),
    "zeros_int": lambda x: torch.zeros(2, 3, dtype=torch.int32),
    "ones": lambda x: torch.ones(4),
    "ones_bool": lambda x: torch.ones(2, 2, dtype=torch.bool),
    "full_like": lambda x: torch.full_like(x, 3),
    "full_like_dtype": lambda x: torch.full_like(x, 3, dtype=torch.int64),
    "zeros_like": lambda x: torch.zeros_like(x),
    "ones_like": lambda x: torch.ones_like(x),
    "ones_like_int": lambda x: torch.ones_like(x, dtype=torch.int32),
    "new_ones": lambda x: x.new_ones(2, 3),
    "new_zeros": lambda x: x.new_zeros((4,)),
    "new_full": lambda x: x.new_full((2, 3), -7.0),
    "scalar_tensor": lambda x: torch.scalar_tensor(2.5) + x,
    "fill": lambda x: torch.fill(x, 2.0),
    "fill_tensor": lambda x: torch.fill(x, x[0, 0]),
    "fill_": lambda x: x.clone().fill_(-1.0) + x,
    "zero_": lambda x: x.clone().zero_() + 1,
    "empty_like_fill_": lambda x: torch.empty_like(x).fill_(2.0) + x,
    "new_empty_zero_": lambda x: x.new_empty((2, 3)).zero_(),
    "empty_fill_": lambda x: torch.empty(2, 3).fill_(4.0),
}


@pytest.mark.parametrize("name", FILLED)
def test_filled(name, tmp_path):
    assert_bundle_matches(Lambda(FILLED[name]), (torch.randn(2, 3),), tmp_path,
                          tolerance="exact")


FILLED_DYNAMIC = {
    "full": lambda x: torch.full((x.shape[0], x.shape[1]), 0.25) + x,
    "zeros_plus_one": lambda x: torch.zeros(x.shape[1] + 1, 2),
    "ones_int": lambda x: torch.ones(x.shape[1], 3, dtype=torch.int64),
    "zeros_like": lambda x: torch.zeros_like(x),
    "ones_like": lambda x: torch.ones_like(x) * x,
    "new_zeros": lambda x: x.new_zeros((x.shape[1], 2 * x.shape[1])),
    "full_like_bool": lambda x: torch.full_like(x, True, dtype=torch.bool),
}


@pytest.mark.parametrize("name", FILLED_DYNAMIC)
def test_filled_dynamic(name, tmp_path):
    assert_bundle_matches(Lambda(FILLED_DYNAMIC[name]), (torch.randn(2, 4),), tmp_path,
                          tolerance="exact", other_args=_other(6, 2), dynamic_axes=DYN)


def test_filled_f16(tmp_path):
    fn = Lambda(lambda x: torch.full_like(x, float("-inf")) + torch.ones_like(x))
    assert_bundle_matches(fn, (torch.randn(2, 3),), tmp_path, dtype="f16", tolerance="exact")


def _circular_pad(x):
    """torch's circular pad, as its decomposition writes it: slices assigned into an empty."""
    out = torch.empty(x.shape[0], x.shape[1], x.shape[2] + 3)
    out[..., 1:6] = x
    out[..., :1] = out[..., 5:6]
    out[..., 6:] = out[..., 1:3]
    return out


def _reads_a_slice_of_empty(x):
    out = torch.empty(2, 4)
    kept = out[:, :1] * 1          # read before any write: uninitialized
    out[:, 1:] = x
    return out[:, 1:] + kept


def test_empty_filled_by_slice_assignments(tmp_path):
    assert_bundle_matches(Lambda(_circular_pad), (torch.randn(1, 2, 5),), tmp_path,
                          tolerance="exact")


def test_empty_read_is_refused(tmp_path):
    with pytest.raises(T2NError, match="torch.empty"):
        assert_bundle_matches(Lambda(_reads_a_slice_of_empty), (torch.randn(2, 3),),
                              tmp_path / "slice")
    with pytest.raises(T2NError, match="torch.empty"):
        assert_bundle_matches(Lambda(lambda x: torch.empty(2, 3) * 0 + x), (torch.randn(2, 3),),
                              tmp_path)


# -- causal masks over a symbolic length ----------------------------------------------------
CAUSAL = {
    "full_triu": lambda x: torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1) + x[0],
    "ones_tril_bool": lambda x: torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril(),
    "arange_compare": lambda x: torch.arange(x.shape[1])[None, :] <= torch.arange(
        x.shape[1])[:, None],
    "masked_fill": lambda x: x[0].expand(x.shape[1], -1).masked_fill(
        torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1), float("-inf")),
}


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_mask_dynamic(name, tmp_path):
    assert_bundle_matches(Lambda(CAUSAL[name]), (torch.randn(2, 4),), tmp_path,
                          tolerance="exact", other_args=_other(7, 2), dynamic_axes=DYN)


def _strided_filled(x):
    out = torch.empty_strided((2, 5), (1, 2))    # strides only lay out memory
    out[:, :3] = x
    out[:, 3:] = x[:, :2] * 2
    return out


def test_empty_strided_filled_and_read_refused(tmp_path):
    assert_bundle_matches(Lambda(_strided_filled), (torch.randn(2, 3),), tmp_path,
                          tolerance="exact")
    with pytest.raises(T2NError, match="torch.empty"):
        assert_bundle_matches(Lambda(lambda x: torch.empty_strided((2, 3), (3, 1)) + x),
                              (torch.randn(2, 3),), tmp_path, name="read")
