import pytest
import torch

from helpers import Lambda, assert_bundle_matches

CASES = {
    "view": lambda x: x.view(2, 3, 10),
    "reshape_infer": lambda x: x.reshape(-1, 5),
    "flatten": lambda x: x.flatten(1),
    "unflatten": lambda x: x.unflatten(2, (5, 1)),
    "transpose": lambda x: x.transpose(0, 2),
    "permute": lambda x: x.permute(2, 0, 1),
    "t": lambda x: x[0].t(),
    "unsqueeze": lambda x: x.unsqueeze(-1),
    "squeeze": lambda x: x[:, :1].squeeze(1),
    "squeeze_noop": lambda x: x.squeeze(1),
    "expand": lambda x: x[:, :1].expand(2, 6, 5),
    "expand_new_axis": lambda x: x[0, 0].expand(3, 5),
    "repeat": lambda x: x.repeat(1, 2, 1),
    "repeat_more_axes": lambda x: x[0].repeat(2, 1, 1),
    "slice_step": lambda x: x[:, 1:6:2],
    "slice_negative": lambda x: x[..., -3:-1],
    "narrow": lambda x: x.narrow(1, 2, 3),
    "select": lambda x: x[:, 2],
    "select_negative": lambda x: x[:, -1],
    "cat": lambda x: torch.cat([x, x * 2], dim=-1),
    "stack": lambda x: torch.stack([x, x + 1], dim=1),
    "split": lambda x: torch.split(x, 4, dim=1)[1],
    "split_sizes": lambda x: torch.split(x, [1, 5], dim=1)[1],
    "chunk": lambda x: torch.chunk(x, 3, dim=1)[2],
    "unbind": lambda x: torch.unbind(x, 2)[3],
    "to_dtype": lambda x: x.to(torch.float64),
    "to_int": lambda x: (x * 10).to(torch.int64),
    "clone_contiguous": lambda x: x.transpose(0, 1).contiguous().clone(),
    "diff": lambda x: torch.diff(x, dim=1),
    "diff_n2_prepend": lambda x: torch.diff(x, n=2, dim=-1, prepend=x[..., :1]),
}


@pytest.mark.parametrize("name", CASES)
def test_shape_ops(name, tmp_path):
    assert_bundle_matches(Lambda(CASES[name]), (torch.randn(2, 6, 5),), tmp_path)


DYNAMIC = {
    "view_symbolic": lambda x: x.view(x.shape[0], x.shape[1] * 5),
    "slice_to_end": lambda x: x[:, 1:],
    "last_row": lambda x: x[:, -1],
    "cat_symbolic": lambda x: torch.cat([x, x], dim=1),
    "expand_symbolic": lambda x: x[:, :1].expand(-1, x.shape[1], -1),
    "diff_symbolic": lambda x: torch.diff(x, dim=1),
    "transpose": lambda x: x.transpose(1, 2).reshape(2, -1),
}


@pytest.mark.parametrize("name", DYNAMIC)
def test_shape_ops_dynamic_axis(name, tmp_path):
    assert_bundle_matches(Lambda(DYNAMIC[name]), (torch.randn(2, 6, 5),), tmp_path,
                          dynamic_axes={"input_0": {1: "S"}}, other_args=[torch.randn(2, 9, 5)])


MUTATING = {
    "masked_assign_literal": lambda x: _assign(x),
    "slice_assign": lambda x: _slice_assign(x),
    "inplace_then_read": lambda x: _inplace_read(x),
}


def _assign(x):
    y = x.clone()
    y[y > 0.5] = 0.0
    return y


def _slice_assign(x):
    y = torch.zeros_like(x)
    y[:, 1:3] = x[:, :2] * 2
    return y


def _inplace_read(x):
    y = x * 1.0
    y.mul_(3)
    return y + 1


@pytest.mark.parametrize("name", MUTATING)
def test_inplace_ops(name, tmp_path):
    assert_bundle_matches(Lambda(MUTATING[name]), (torch.randn(2, 6, 5),), tmp_path)


def test_rank0_constant_and_input(tmp_path):
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.tensor(-3.0))

        def forward(self, x, s):
            return x * self.scale + s
    assert_bundle_matches(M(), (torch.randn(2, 3), torch.tensor(0.5)), tmp_path)


# -- sizes computed from a dynamic axis: modulo, min, max ------------------------------------
def _chunk_padded(x):
    """Chunked linear attention's padding: the token axis up to a multiple of 64
    (Mod(64 - Mod(S, 64), 64), which tract's own division would get wrong if written as is)."""
    pad = (64 - x.shape[1] % 64) % 64
    return torch.nn.functional.pad(x, (0, 0, 0, pad)).reshape(x.shape[0], -1, 64, 5).sum(2)


SIZE_EXPRESSIONS = {
    "mod_chunk_padding": _chunk_padded,
    "mod_remainder": lambda x: x[:, : x.shape[1] % 4 + 1] * 2,   # S >= 4 below: no clamping
    # Min(4, S): which side wins depends on S, so tract's min() is written
    "min_undecided": lambda x: x[:, : min(4, x.shape[1])] + 1,
    # Max(0, 1 - S) is 0 for every S torch allows (S >= 2): written as 0
    "max_decided": lambda x: x[:, max(0, 1 - x.shape[1]):] * 3,
    # symbolic starts counting from the end, and a positive one (its look-alike)
    "start_from_end": lambda x: x[:, -x.shape[1]:] * 2 + x[:, -(x.shape[1] - 1):].sum(1, True),
    "start_positive": lambda x: x[:, x.shape[1] // 2:] * 2,
}


@pytest.mark.parametrize("name", SIZE_EXPRESSIONS)
def test_size_expressions_over_dynamic_axis(name, tmp_path):
    sizes = (4, 5, 63, 64, 65, 130) if name == "mod_remainder" else (2, 3, 4, 5, 64, 65, 130)
    others = [torch.randn(2, s, 5) for s in sizes]
    assert_bundle_matches(Lambda(SIZE_EXPRESSIONS[name]), (torch.randn(2, 9, 5),), tmp_path,
                          dynamic_axes={"input_0": {1: "S"}}, other_args=others)


def test_modulo_written_with_positive_terms():
    import sympy

    from t2n.translate.engine import _positive_residue
    from torch.utils._sympy.functions import Mod
    s = sympy.Symbol("s0", integer=True, positive=True)
    assert _positive_residue(64 - Mod(s, 64), 64) == 63 * s
    assert _positive_residue(3 * s - 130, 64) == 3 * s + 62
    assert _positive_residue(Mod(s, 32), 64) == Mod(s, 32)   # 32 does not divide by 64


def test_symbolic_pad_other_than_constant_is_refused(tmp_path):
    import t2n
    from t2n.errors import TranslationError

    def reflect(x):   # a reflection needs the pad sizes as literals: refused, not guessed
        return torch.nn.functional.pad(x, (0, (4 - x.shape[2] % 4) % 4), mode="reflect")
    with pytest.raises(TranslationError, match="symbolic pad sizes"):
        t2n.export(Lambda(reflect), (torch.randn(2, 5, 9),), tmp_path / "b",
                   dynamic_axes={"input_0": {2: "S"}})
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("name, fn, sizes", [
    ("chunk_even", lambda x: torch.chunk(x, 3, dim=1)[1] * torch.chunk(x, 3, dim=1)[2], (6, 12)),
    ("chunk_uneven", lambda x: torch.chunk(x, 2, dim=1)[1].sum(1), (7, 3, 10))])
def test_split_of_a_dynamic_axis(name, fn, sizes, tmp_path):
    """The parts of a dynamic axis come from the sizes torch traced (their count is fixed)."""
    assert_bundle_matches(Lambda(fn), (torch.randn(2, 9, 5),), tmp_path,
                          dynamic_axes={"input_0": {1: "S"}},
                          other_args=[torch.randn(2, s, 5) for s in sizes])
