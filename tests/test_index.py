import pytest
import torch
import torch.nn.functional as F

from helpers import Lambda, assert_bundle_matches
from t2n.errors import T2NError, TranslationError


def _perm_rows(rows, n, k):
    """Distinct column indices per row (scatter with duplicates is undefined in torch)."""
    return torch.stack([torch.randperm(n)[:k] for _ in range(rows)])


# -- gathers --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_embedding(dtype, tmp_path):
    emb = torch.nn.Embedding(10, 6, padding_idx=0).eval()
    ids = torch.tensor([[1, 0, 9], [3, 3, 2]], dtype=dtype)
    assert_bundle_matches(emb, (ids,), tmp_path, tolerance="exact")


def test_embedding_f16_dynamic(tmp_path):
    emb = torch.nn.Embedding(10, 6).eval()
    assert_bundle_matches(emb, (torch.tensor([[1, 0, 9]]),), tmp_path, dtype="f16",
                          tolerance="exact", dynamic_axes={"input": {1: "S"}})


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_index_select(dim, tmp_path):
    fn = Lambda(lambda x, i: torch.index_select(x, dim, i))
    assert_bundle_matches(fn, (torch.randn(4, 5, 6), torch.tensor([3, 0, 0, 2])), tmp_path,
                          tolerance="exact")


def test_index_select_rank0_index(tmp_path):
    fn = Lambda(lambda x, i: torch.index_select(x, 1, i[1]))
    assert_bundle_matches(fn, (torch.randn(4, 5), torch.tensor([0, 2])), tmp_path,
                          tolerance="exact")


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_gather(dim, tmp_path):
    x = torch.randn(4, 5, 6)
    shape = list(x.shape)
    shape[dim] = 3
    index = torch.randint(0, x.shape[dim], shape)
    assert_bundle_matches(Lambda(lambda x, i: torch.gather(x, dim, i)), (x, index), tmp_path,
                          tolerance="exact")


def test_gather_smaller_index(tmp_path):
    # torch allows an index smaller than the input on the other axes too
    fn = Lambda(lambda x, i: torch.gather(x, 1, i))
    assert_bundle_matches(fn, (torch.randn(4, 5), torch.randint(0, 5, (2, 3))), tmp_path,
                          tolerance="exact")


INDEX = {
    "x[i]": lambda x, i, j: x[i],
    "x[:,i]": lambda x, i, j: x[:, i],
    "x[...,i]": lambda x, i, j: x[..., i],
    "x[None,i]": lambda x, i, j: x[None, i],
    "x[i,None]": lambda x, i, j: x[i, None],
    "x[i,j]": lambda x, i, j: x[i, j],
    "x[:,i,j]": lambda x, i, j: x[:, i, j],
    "x[i,:,j]": lambda x, i, j: x[i, :, j],
    "x[j,i]_broadcast": lambda x, i, j: x[j[:, None], i],
    "x[i2d]": lambda x, i, j: x[torch.stack([i, i])],
}


@pytest.mark.parametrize("name", INDEX)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_advanced_index(name, dtype, tmp_path):
    x = torch.randn(4, 5, 6)
    i = torch.tensor([0, -1, 2, 3], dtype=dtype)
    j = torch.tensor([1, 3, -2, 0], dtype=dtype)
    assert_bundle_matches(Lambda(INDEX[name]), (x, i, j), tmp_path, tolerance="exact")


def test_advanced_index_dynamic(tmp_path):
    fn = Lambda(lambda x, i, j: x[:, i] + x[i, j].unsqueeze(0))
    args = (torch.randn(5, 7), torch.tensor([0, 4, -1]), torch.tensor([1, 6, 2]))
    other = (torch.randn(5, 7), torch.tensor([1, 2, 3, -2, 0]), torch.tensor([0, 1, 2, 3, 4]))
    assert_bundle_matches(fn, args, tmp_path, tolerance="exact", other_args=[other],
                          dynamic_axes={"input_1": {0: "S"}, "input_2": {0: "S"}})


def test_boolean_mask_index_is_refused(tmp_path):
    with pytest.raises(T2NError):
        assert_bundle_matches(Lambda(lambda x: x[x > 0]), (torch.randn(4, 5),), tmp_path)


# -- scatters -------------------------------------------------------------------------------
def _setitem(index_fn):
    def fn(x, i, j, v):
        y = x.clone()
        y[index_fn(i, j)] = v
        return y * 2
    return fn


INDEX_PUT = {
    "x[i]=v": (_setitem(lambda i, j: i), (3, 5, 6)),
    "x[i]=row": (_setitem(lambda i, j: i), (6,)),
    "x[:,i]=v": (_setitem(lambda i, j: (slice(None), i)), (4, 3, 6)),
    "x[i,j]=v": (_setitem(lambda i, j: (i, j)), (3, 6)),
    "x[:,i,j]=v": (_setitem(lambda i, j: (slice(None), i, j)), (4, 3)),
    "x[i,:,j]=v": (_setitem(lambda i, j: (i, slice(None), j)), (3, 5)),
    "x[i]+=v": (lambda x, i, j, v: x.index_put((i,), v, accumulate=True), (3, 5, 6)),
    "x[i,j]+=v": (lambda x, i, j, v: x.index_put((i, j), v, accumulate=True), (6,)),
}


@pytest.mark.parametrize("name", INDEX_PUT)
def test_index_put(name, tmp_path):
    fn, vshape = INDEX_PUT[name]
    args = (torch.randn(4, 5, 6), torch.tensor([2, 0, -1]), torch.tensor([4, 1, 3]),
            torch.randn(vshape))
    assert_bundle_matches(Lambda(fn), args, tmp_path)


def test_index_put_gather_dynamic(tmp_path):
    def fn(x, i, v):
        y = x.clone()
        y[i] = v
        return torch.gather(y, 1, i[:, None].expand(-1, 2))
    args = (torch.randn(3, 5), torch.tensor([2, 0]), torch.randn(5))
    other = (torch.randn(3, 8), torch.tensor([1, 2]), torch.randn(8))
    assert_bundle_matches(Lambda(fn), args, tmp_path, tolerance="exact", other_args=[other],
                          dynamic_axes={"input_0": {1: "S"}, "input_2": {0: "S"}})


@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "add"])
def test_index_put_mask(accumulate, tmp_path):
    fn = Lambda(lambda x, v: x.index_put((x > 0,), v[1], accumulate=accumulate))
    assert_bundle_matches(fn, (torch.randn(4, 5), torch.tensor([1.5, -2.0])), tmp_path)


def test_index_put_mask_leading_axes(tmp_path):
    fn = Lambda(lambda x, m, v: x.index_put((m,), v))
    args = (torch.randn(3, 4, 5), torch.rand(3, 4) > 0.5, torch.tensor([0.5]))
    assert_bundle_matches(fn, args, tmp_path)


def test_setitem_mask(tmp_path):
    def fn(x, v):
        y = x.clone()
        y[x > 0] = v[0]
        return y * 2
    assert_bundle_matches(Lambda(fn), (torch.randn(4, 5), torch.tensor([-1.0])), tmp_path)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_scatter_src(dim, tmp_path):
    x = torch.randn(5, 5)
    index = _perm_rows(5, 5, 3)
    index = index if dim == 1 or dim == -1 else index.t()
    fn = Lambda(lambda x, i, s: x.scatter(dim, i, s))
    assert_bundle_matches(fn, (x, index, torch.randn(5, 5)), tmp_path)


def test_scatter_value_and_add(tmp_path):
    fn = Lambda(lambda x, i, s: x.scatter(1, i, -2.5) + x.scatter_add(1, i, s))
    index = torch.randint(0, 6, (4, 8))  # duplicates are summed by scatter_add
    assert_bundle_matches(fn, (torch.randn(4, 6), index, torch.randn(4, 8)), tmp_path)


@pytest.mark.parametrize("reduce", ["sum", "prod", "amax", "amin"])
def test_scatter_reduce(reduce, tmp_path):
    fn = Lambda(lambda x, i, s: x.scatter_reduce(0, i, s, reduce))
    index = torch.randint(0, 4, (6, 3))
    assert_bundle_matches(fn, (torch.randn(4, 3), index, torch.randn(6, 3)), tmp_path)


SCATTER_SLICES = {
    "select": lambda x, s: torch.select_scatter(x, s[:, 0], 1, 2),
    "select_neg": lambda x, s: torch.select_scatter(x, s[:, 0], 1, -1),
    "slice": lambda x, s: torch.slice_scatter(x, s, 1, 1, 3),
    "slice_head": lambda x, s: torch.slice_scatter(x, s, 1, None, 2),
    "slice_tail": lambda x, s: torch.slice_scatter(x, s, -1, -2),
}


@pytest.mark.parametrize("name", SCATTER_SLICES)
def test_slice_scatter(name, tmp_path):
    assert_bundle_matches(Lambda(SCATTER_SLICES[name]), (torch.randn(3, 5), torch.randn(3, 2)),
                          tmp_path, tolerance="exact")


def test_slice_scatter_dynamic(tmp_path):
    fn = Lambda(lambda x, s: torch.slice_scatter(x, s, 1, 1, 3))
    assert_bundle_matches(fn, (torch.randn(3, 5), torch.randn(3, 2)), tmp_path,
                          tolerance="exact", other_args=[(torch.randn(3, 9), torch.randn(3, 2))],
                          dynamic_axes={"input_0": {1: "S"}})


# -- selects --------------------------------------------------------------------------------
WHERE = {
    "self": lambda c, x, y: torch.where(c, x, y),
    "scalar_self": lambda c, x, y: torch.where(c, 2.5, y),
    "scalar_other": lambda c, x, y: torch.where(c, x, -1.0),
    "scalars": lambda c, x, y: torch.where(c, 1.0, 0.0),
    "scalar_neg_inf": lambda c, x, y: torch.where(c, x, float("-inf")),
    "broadcast": lambda c, x, y: torch.where(c[0], x, y[0, :1]),
    "int": lambda c, x, y: torch.where(c, (x * 10).long(), 3),
}


@pytest.mark.parametrize("name", WHERE)
def test_where(name, tmp_path):
    args = (torch.rand(2, 3, 4) > 0.5, torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    assert_bundle_matches(Lambda(WHERE[name]), args, tmp_path, tolerance="exact")


def test_where_f16(tmp_path):
    fn = Lambda(lambda x, y: torch.where(x > y, x, y * 2))
    assert_bundle_matches(fn, (torch.randn(3, 4), torch.randn(4)), tmp_path, dtype="f16",
                          tolerance="exact")


MASKED_FILL = {
    "scalar": lambda x, m: x.masked_fill(m, 0.5),
    "neg_inf": lambda x, m: x.masked_fill(m, float("-inf")),
    "min_value": lambda x, m: x.masked_fill(m, torch.finfo(x.dtype).min),
    "tensor": lambda x, m: x.masked_fill(m, x[0, 0, 0]),
    "inplace": lambda x, m: x.clone().masked_fill_(m, -1.0) * 2,
    "broadcast_mask": lambda x, m: x.masked_fill(m[0, 0], -7.0),
    "int": lambda x, m: (x * 10).long().masked_fill(m, 4),
}


@pytest.mark.parametrize("name", MASKED_FILL)
def test_masked_fill(name, tmp_path):
    args = (torch.randn(2, 3, 4), torch.rand(2, 3, 4) > 0.5)
    assert_bundle_matches(Lambda(MASKED_FILL[name]), args, tmp_path, tolerance="exact")


def test_masked_fill_f16_neg_inf(tmp_path):
    fn = Lambda(lambda x, m: x.masked_fill(m, float("-inf")))
    assert_bundle_matches(fn, (torch.randn(3, 4), torch.rand(3, 4) > 0.5), tmp_path,
                          dtype="f16", tolerance="exact")


def test_masked_fill_dynamic(tmp_path):
    # an attention-style padding mask [B, S] broadcast over scores [B, H, S, S]
    fn = Lambda(lambda x, m: x.masked_fill(m[:, None, None, :], float("-inf")))
    args = (torch.randn(2, 3, 4, 4), torch.rand(2, 4) > 0.5)
    other = (torch.randn(2, 3, 7, 7), torch.rand(2, 7) > 0.5)
    assert_bundle_matches(fn, args, tmp_path, tolerance="exact", other_args=[other],
                          dynamic_axes={"input_0": {2: "S", 3: "S"}, "input_1": {1: "S"}})


# -- reorderings ----------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [(0,), (1,), (-1,), (0, 2), (0, 1, 2)], ids=str)
def test_flip(dims, tmp_path):
    assert_bundle_matches(Lambda(lambda x: x.flip(dims)), (torch.randn(3, 4, 5),), tmp_path,
                          tolerance="exact")


def test_flip_dynamic(tmp_path):
    assert_bundle_matches(Lambda(lambda x: x.flip(0, 1) * 2), (torch.randn(3, 4),), tmp_path,
                          tolerance="exact", other_args=[torch.randn(3, 9)],
                          dynamic_axes={"input_0": {1: "S"}})


ROLL = {
    "one": lambda x: x.roll(2, 1),
    "negative": lambda x: x.roll(-1, -1),
    "wraps": lambda x: x.roll(7, 0),
    "two_axes": lambda x: x.roll((1, -2), (0, 2)),
    "zero": lambda x: x.roll(4, 1),
    "flat": lambda x: x.roll(5),
}


@pytest.mark.parametrize("name", ROLL)
def test_roll(name, tmp_path):
    assert_bundle_matches(Lambda(ROLL[name]), (torch.randn(3, 4, 5),), tmp_path,
                          tolerance="exact")


@pytest.mark.parametrize("shift", [3, -2])
def test_roll_dynamic(shift, tmp_path):
    assert_bundle_matches(Lambda(lambda x: x.roll(shift, 1)), (torch.randn(2, 5),), tmp_path,
                          tolerance="exact", other_args=[torch.randn(2, 2), torch.randn(2, 8)],
                          dynamic_axes={"input_0": {1: "S"}})


def test_roll_flat_dynamic(tmp_path):
    assert_bundle_matches(Lambda(lambda x: x.roll(-3)), (torch.randn(2, 5),), tmp_path,
                          tolerance="exact", other_args=[torch.randn(2, 2)],
                          dynamic_axes={"input_0": {1: "S"}})


@pytest.mark.parametrize("fn", [torch.tril, torch.triu], ids=lambda f: f.__name__)
@pytest.mark.parametrize("diagonal", [0, 1, -2])
def test_trilu(fn, diagonal, tmp_path):
    assert_bundle_matches(Lambda(lambda x: fn(x, diagonal)), (torch.randn(2, 4, 5),), tmp_path,
                          tolerance="exact")


def test_trilu_bool_dynamic(tmp_path):
    fn = Lambda(lambda x: torch.tril(x > 0, 1))
    assert_bundle_matches(fn, (torch.randn(5, 5),), tmp_path, tolerance="exact",
                          other_args=[torch.randn(3, 3)],
                          dynamic_axes={"input_0": {0: "S", 1: "S"}})


@pytest.mark.parametrize("dim", [None, 0, 1, -1], ids=str)
def test_repeat_interleave(dim, tmp_path):
    fn = Lambda(lambda x: x.repeat_interleave(3, dim=dim))
    assert_bundle_matches(fn, (torch.randn(2, 3, 4),), tmp_path, tolerance="exact")


def test_repeat_interleave_dynamic(tmp_path):
    # the grouped-query attention pattern: repeat the heads, symbolic sequence length
    fn = Lambda(lambda x: x.repeat_interleave(2, dim=1))
    assert_bundle_matches(fn, (torch.randn(1, 2, 5, 4),), tmp_path, tolerance="exact",
                          other_args=[torch.randn(1, 2, 3, 4)],
                          dynamic_axes={"input_0": {2: "S"}})


def test_one_hot(tmp_path):
    assert_bundle_matches(Lambda(lambda i: F.one_hot(i, 6)), (torch.tensor([[0, 5, 2]]),),
                          tmp_path, tolerance="exact")


# -- embedding bags: offsets are inputs, so the same bundle runs other bag layouts ------------
_BAG_W = torch.randn(10, 3)
_BAG_IDX = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9])
BAGS = {
    "sum": (dict(mode="sum"), [0, 4], [[0, 1], [0, 8], [0, 0]]),
    "mean_with_empty_bag": (dict(mode="mean"), [0, 3, 3, 6], [[0, 0, 8, 8], [0, 4, 5, 7]]),
    "max_with_empty_bag": (dict(mode="max"), [0, 3, 3, 6], [[0, 0, 8, 8], [0, 2, 3, 4]]),
    "include_last_offset": (dict(mode="sum", include_last_offset=True), [0, 3, 6],
                            [[0, 8, 8], [0, 2, 5]]),
    "per_sample_weights": (dict(mode="sum", per_sample_weights=torch.linspace(-1, 2, 8)),
                           [0, 5], [[0, 0], [0, 8]]),
    "padding_idx_mean": (dict(mode="mean", padding_idx=4), [0, 2, 5], [[0, 4, 6]]),
    "padding_idx_max": (dict(mode="max", padding_idx=2), [0, 2, 5], [[0, 1, 2]]),
}


@pytest.mark.parametrize("name", BAGS)
def test_embedding_bag(name, tmp_path):
    kwargs, offsets, others = BAGS[name]
    fn = Lambda(lambda i, o: torch.nn.functional.embedding_bag(i, _BAG_W, o, **kwargs))
    assert_bundle_matches(fn, (_BAG_IDX, torch.tensor(offsets)), tmp_path,
                          other_args=[(_BAG_IDX.flip(0), torch.tensor(o)) for o in others])


def test_embedding_bag_module_2d_and_dynamic_bag_length(tmp_path):
    bag = torch.nn.EmbeddingBag(10, 4, mode="mean", padding_idx=2)
    assert_bundle_matches(bag, (torch.tensor([[1, 2, 4], [4, 3, 2], [2, 2, 2]]),), tmp_path,
                          dynamic_axes={"input": {0: "B"}},
                          other_args=[torch.tensor([[7, 8, 9], [2, 2, 1]])])


def test_embedding_bag_extra_outputs_are_refused(tmp_path):
    import t2n
    fn = Lambda(lambda i, o: torch.ops.aten._embedding_bag(_BAG_W, i, o)[2].float())
    with pytest.raises(TranslationError, match="offset2bag, bag_size"):
        t2n.export(fn, (_BAG_IDX, torch.tensor([0, 4])), tmp_path / "b")
    assert not (tmp_path / "b").exists()
