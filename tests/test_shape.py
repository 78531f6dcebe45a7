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
