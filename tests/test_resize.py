"""Verification of dynamic bundles at a second size, with partly padded masks."""
import contextlib

import pytest
import torch

import t2n
from t2n import resize
from t2n.translate import TRANSLATORS, translates
from helpers import Lambda

aten = torch.ops.aten


@contextlib.contextmanager
def translated_as(target, fn):
    """``target`` translated by ``fn`` for the duration (a deliberately wrong translator)."""
    saved = TRANSLATORS[target]
    translates(target, override=True)(fn)
    try:
        yield saved.fn
    finally:
        TRANSLATORS[target] = saved


def test_second_size_inputs_and_padded_masks():
    ids, mask, x = torch.tensor([[5, 9, 7, 5]]), torch.ones(1, 4, dtype=torch.long), \
        torch.randn(2, 4, 3)
    axes = {"ids": {1: "S"}, "attention_mask": {1: "S"}, "x": {1: "S"}, "fixed": {}}
    traced = resize.traced_sizes([ids, mask, x], ["ids", "attention_mask", "x"], axes)
    assert traced == {"S": 4} and resize.second_sizes(traced) == {"S": 7}
    new_ids, new_mask, new_x = resize.resized_inputs(
        [ids, mask, x], ["ids", "attention_mask", "x"], axes, {"S": 7})
    assert new_ids.shape == (1, 7) and new_ids.dtype == torch.long
    assert int(new_ids.min()) >= 5 and int(new_ids.max()) <= 9   # stays in the ids' range
    assert new_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0]]           # the last third padded
    assert new_x.shape == (2, 7, 3) and new_x.dtype == torch.float32


def test_a_size_baked_in_by_a_translator_fails_at_the_second_size(tmp_path):
    """A mean translated as sum / (traced size) is right at the traced size only: the check
    at a second size catches it (the traced example alone did not)."""
    def mean_over_8(ctx, self, dim=None, keepdim=False, dtype=None):
        total = TRANSLATORS[aten.sum.dim_IntList].fn(ctx, self, dim, keepdim)
        return ctx.op("mul", total, ctx.scalar(1 / 8, self.dtype))
    model = Lambda(lambda x: x.mean(dim=1))
    with translated_as(aten.mean.dim, mean_over_8):
        with pytest.raises(t2n.VerificationError, match=r"at S=11 on output"):
            t2n.export(model, torch.randn(2, 8, 4), tmp_path / "out",
                       dynamic_axes={"input_0": {1: "S"}})
        assert not (tmp_path / "out").exists()
        # without a dynamic axis there is nothing else to promise: the traced check passes
        t2n.export(model, torch.randn(2, 8, 4), tmp_path / "static")


def test_a_translator_ignoring_the_mask_fails_on_the_padded_mask(tmp_path):
    """where(mask, x, 0) translated as x is right on an all-ones example mask: the partly
    padded mask at the second size catches it."""
    class Masked(torch.nn.Module):
        def forward(self, x, attention_mask):
            return torch.where(attention_mask[..., None].bool(), x, 0.0).sum(1)
    args = (torch.randn(1, 6, 4), torch.ones(1, 6, dtype=torch.long))
    axes = {"x": {1: "S"}, "attention_mask": {1: "S"}}
    with translated_as(aten.where.self, lambda ctx, condition, self, other: self), \
            translated_as(aten.where.ScalarOther, lambda ctx, condition, self, other: self):
        with pytest.raises(t2n.VerificationError, match=r"at S=9 on"):
            t2n.export(Masked(), args, tmp_path / "out", dynamic_axes=axes)
    result = t2n.export(Masked(), args, tmp_path / "ok", dynamic_axes=axes)
    assert result.resized.passed and result.resized.sizes == {"S": 9}
    assert {"verify", "verify2"} <= set(result.timings)


def test_model_refusing_other_sizes_is_checked_at_the_traced_size_with_a_warning(tmp_path,
                                                                                  caplog):
    class OnlyEight(torch.nn.Module):
        def forward(self, x):
            torch._check(x.shape[1] % 8 == 0)
            if not torch.compiler.is_exporting() and x.shape[1] != 8:
                raise ValueError("this model runs at 8 positions only")
            return x * 2
    with caplog.at_level("WARNING", logger="t2n"):
        result = t2n.export(OnlyEight(), torch.randn(1, 8), tmp_path / "out",
                            dynamic_axes={"x": {1: "S"}})
    assert result.verification.passed and result.resized is None
    assert "checked at their traced sizes only" in caplog.text
