import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import Lambda, assert_bundle_matches
from t2n.errors import TranslationError

aten = torch.ops.aten
X1 = (2, 4, 13)
X2 = (2, 4, 9, 11)


class WithWeight(nn.Module):
    """Calls ``fn(x, weight, bias)`` with parameters, to reach ATen overloads directly."""

    def __init__(self, weight_shape, fn, bias: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(weight_shape) * 0.3)
        self.bias = nn.Parameter(torch.randn(bias)) if bias else None
        self.fn = fn

    def forward(self, x):
        return self.fn(x, self.weight, self.bias)


CONV = {
    "1d": (lambda: nn.Conv1d(4, 6, 3), X1),
    "1d_stride_dilation_pad": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=3), X1),
    "2d": (lambda: nn.Conv2d(4, 6, 3), X2),
    "2d_stride_pad_dilation": (lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2),
                                                 dilation=(2, 1)), X2),
    "2d_groups_no_bias": (lambda: nn.Conv2d(4, 8, 3, groups=2, bias=False), X2),
    "2d_depthwise": (lambda: nn.Conv2d(4, 8, 3, groups=4, padding=1), X2),
    "2d_same": (lambda: nn.Conv2d(4, 6, (4, 3), padding="same", dilation=(1, 2)), X2),
    "1d_same": (lambda: nn.Conv1d(4, 6, 4, padding="same"), X1),
    "2d_valid": (lambda: nn.Conv2d(4, 6, 3, padding="valid"), X2),
    "2d_reflect": (lambda: nn.Conv2d(4, 6, 3, padding=(1, 2), padding_mode="reflect"), X2),
    "2d_replicate": (lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="replicate"), X2),
    "2d_circular": (lambda: nn.Conv2d(4, 6, 3, padding=(1, 2), padding_mode="circular"), X2),
    "1d_circular": (lambda: nn.Conv1d(4, 6, 3, padding=2, padding_mode="circular"), X1),
    "1d_reflect": (lambda: nn.Conv1d(4, 6, 3, padding=1, padding_mode="reflect"), X1),
    "3d": (lambda: nn.Conv3d(4, 6, 3, stride=2, padding=1), (1, 4, 5, 6, 7)),
    "3d_same": (lambda: nn.Conv3d(4, 6, 2, padding="same"), (1, 4, 5, 6, 7)),
    "1d_unbatched": (lambda: nn.Conv1d(4, 6, 3), (4, 13)),
    "2d_same_unbatched": (lambda: nn.Conv2d(4, 6, 4, padding="same"), (4, 9, 11)),
}


@pytest.mark.parametrize("name", CONV)
def test_conv(name, tmp_path):
    make, shape = CONV[name]
    assert_bundle_matches(make(), torch.randn(shape), tmp_path)


DECONV = {
    "1d_stride": (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2), X1),
    "2d_output_padding_le_padding": (
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1), X2),
    "2d_output_padding_gt_padding": (
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=(2, 3), output_padding=(1, 2)), X2),
    "2d_groups_dilation": (lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3),
                                                      padding=(1, 0), groups=2, dilation=2), X2),
    "2d_depthwise_no_bias": (lambda: nn.ConvTranspose2d(4, 4, 3, groups=4, bias=False), X2),
    "3d": (lambda: nn.ConvTranspose3d(4, 6, 3, stride=2, padding=1, output_padding=1),
           (1, 4, 3, 4, 5)),
    "2d_unbatched": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2), (4, 5, 6)),
}


@pytest.mark.parametrize("name", DECONV)
def test_conv_transpose(name, tmp_path):
    make, shape = DECONV[name]
    assert_bundle_matches(make(), torch.randn(shape), tmp_path)


OVERLOADS = {
    "convolution": (WithWeight((6, 2, 3, 3), lambda x, w, b: aten.convolution(
        x, w, b, [2, 1], [1, 0], [1, 2], False, [0, 0], 2), 6), X2),
    "convolution_transposed": (WithWeight((4, 3, 3, 3), lambda x, w, b: aten.convolution(
        x, w, b, [2, 2], [1, 1], [1, 1], True, [1, 0], 1), 3), X2),
    "_convolution": (WithWeight((6, 4, 3), lambda x, w, b: aten._convolution(
        x, w, b, [1], [1], [1], False, [0], 1, False, False, False, False), 6), X1),
    "_convolution_transposed": (WithWeight((4, 6, 3), lambda x, w, b: aten._convolution(
        x, w, b, [2], [0], [1], True, [1], 1, False, False, False, False)), X1),
}


@pytest.mark.parametrize("name", OVERLOADS)
def test_convolution_overloads(name, tmp_path):
    model, shape = OVERLOADS[name]
    assert_bundle_matches(model, torch.randn(shape), tmp_path)


PADS = {
    "constant_2d": (lambda x: F.pad(x, (1, 2, 3, 4)), X2),
    "constant_value": (lambda x: F.pad(x, (1, 2, 0, 1), value=0.5), X2),
    "constant_all_axes": (lambda x: F.pad(x, (1, 1, 2, 0, 1, 3, 1, 0)), X2),
    "reflect_2d": (lambda x: F.pad(x, (1, 2, 3, 4), mode="reflect"), X2),
    "reflect_1d": (lambda x: F.pad(x, (2, 3), mode="reflect"), X1),
    "replicate_2d": (lambda x: F.pad(x, (1, 2, 3, 4), mode="replicate"), X2),
    "replicate_1d": (lambda x: F.pad(x, (2, 3), mode="replicate"), X1),
    "circular_2d": (lambda x: F.pad(x, (1, 2, 3, 4), mode="circular"), X2),
    "circular_1d": (lambda x: F.pad(x, (2, 3), mode="circular"), X1),
    "negative_constant": (lambda x: F.pad(x, (-1, 2, 3, -2)), X2),
    "negative_reflect": (lambda x: F.pad(x, (-2, 3, 2, -1), mode="reflect"), X2),
    "negative_replicate": (lambda x: F.pad(x, (3, -2), mode="replicate"), X1),
    "negative_circular": (lambda x: F.pad(x, (-2, 3, 2, -1), mode="circular"), X2),
    "zero_pad_module": (nn.ZeroPad2d((1, 0, 2, 1)), X2),
    "constant_pad_module": (nn.ConstantPad1d(2, 3.0), X1),
    "reflection_pad_module": (nn.ReflectionPad2d(2), X2),
    "replication_pad_module": (nn.ReplicationPad1d((0, 3)), X1),
    "circular_pad_module": (nn.CircularPad2d(2), X2),
    "aten_constant_pad_nd": (lambda x: aten.constant_pad_nd(x, [1, 2, 0, 1], 1.5), X2),
    "aten_reflection_pad1d": (lambda x: aten.reflection_pad1d(x, [2, 3]), X1),
    "aten_reflection_pad2d": (lambda x: aten.reflection_pad2d(x, [2, 3, 1, 0]), X2),
    "aten_replication_pad1d": (lambda x: aten.replication_pad1d(x, [2, 3]), X1),
    "aten_replication_pad2d": (lambda x: aten.replication_pad2d(x, [2, 3, 1, 0]), X2),
    "aten_pad_circular": (lambda x: aten._pad_circular(x, [2, 3, 1, 0]), X2),
}


@pytest.mark.parametrize("name", PADS)
def test_pad(name, tmp_path):
    fn, shape = PADS[name]
    model = fn if isinstance(fn, nn.Module) else Lambda(fn)
    assert_bundle_matches(model, torch.randn(shape), tmp_path, tolerance="exact")


@pytest.mark.parametrize("op", [aten.reflection_pad3d, aten.replication_pad3d],
                         ids=lambda op: op.__name__)
def test_pad_3d(op, tmp_path):
    assert_bundle_matches(Lambda(lambda x: op(x, [2, 3, 1, 0, 1, 1])), torch.randn(1, 2, 4, 5, 6),
                          tmp_path, tolerance="exact")


def test_pad_integer(tmp_path):
    assert_bundle_matches(Lambda(lambda x: F.pad(x, (1, 2), value=7)),
                          torch.randint(0, 5, (2, 3, 4)), tmp_path, tolerance="exact")


def test_pad_infinite_value_is_refused(tmp_path):
    with pytest.raises(TranslationError, match="finite"):
        assert_bundle_matches(Lambda(lambda x: F.pad(x, (1, 1), value=float("-inf"))),
                              torch.randn(X1), tmp_path)


DYNAMIC = {
    "conv1d": Lambda(lambda x: F.conv1d(x, torch.ones(6, 4, 3) / 7, stride=2, padding=1)),
    "conv1d_same": nn.Conv1d(4, 6, 4, padding="same", dilation=2),
    "conv1d_circular": nn.Conv1d(4, 6, 3, padding=1, padding_mode="circular"),
    "conv_transpose1d": nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1),
    "pad_negative": Lambda(lambda x: F.pad(x, (2, -1))),
    "pad_reflect": Lambda(lambda x: F.pad(x, (2, 1), mode="reflect")),
}


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_time_axis(name, tmp_path):
    model = DYNAMIC[name]
    axis = "input_0" if isinstance(model, Lambda) else "input"
    assert_bundle_matches(model, torch.randn(1, 4, 13), tmp_path,
                          dynamic_axes={axis: {2: "T"}},
                          other_args=[torch.randn(1, 4, s) for s in (6, 40, 41)])


def test_conv_transpose_output_padding_on_dynamic_axis_is_refused(tmp_path):
    with pytest.raises(TranslationError, match="output_padding"):
        assert_bundle_matches(nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=1),
                              torch.randn(1, 4, 13), tmp_path, dynamic_axes={"input": {2: "T"}})


F16 = {
    "conv2d": lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1),
    "depthwise_same": lambda: nn.Conv2d(4, 8, 3, groups=4, padding="same"),
    "reflect": lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
    "circular": lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular"),
    "conv_transpose2d": lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1,
                                                   output_padding=1),
}


@pytest.mark.parametrize("name", F16)
def test_conv_f16(name, tmp_path):
    # f16 accumulation order differs from torch's: a few 1-2 ulp differences
    assert_bundle_matches(F16[name](), torch.randn(X2), tmp_path, dtype="f16", tolerance="very")


def _cnn_block():
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, stride=2, bias=False),
                          nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        for m in block:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return block


def test_cnn_block(tmp_path):
    assert_bundle_matches(_cnn_block(), torch.randn(2, 3, 16, 20), tmp_path)


def test_cnn_block_f16(tmp_path):
    assert_bundle_matches(_cnn_block(), torch.randn(2, 3, 16, 20), tmp_path, dtype="f16",
                          tolerance="very")


# fold (aten.col2im), translated directly: name -> (fold keywords, the columns' shape)
FOLDS = {
    "plain": (dict(output_size=(6, 5), kernel_size=2), (2, 12, 20)),
    "stride_pad_dilation": (dict(output_size=(7, 8), kernel_size=(3, 2), stride=2, padding=1,
                                 dilation=(1, 2)), (2, 18, 16)),
    "overlapping_unbatched": (dict(output_size=(5, 5), kernel_size=3, padding=1), (27, 25)),
    "stride_3": (dict(output_size=(9, 7), kernel_size=2, stride=3), (1, 8, 6)),
}


@pytest.mark.parametrize("name", FOLDS)
def test_fold(name, tmp_path, caplog):
    kwargs, shape = FOLDS[name]
    with caplog.at_level("INFO", logger="t2n.translate"):
        assert_bundle_matches(Lambda(lambda x: F.fold(x, **kwargs)), (torch.randn(*shape),),
                              tmp_path)
    assert not any("decomposed" in r.message for r in caplog.records)


def test_unfold_then_fold_is_identity_times_overlap(tmp_path):
    def fn(x):
        cols = F.unfold(x, 3, padding=1)
        return F.fold(cols, x.shape[-2:], 3, padding=1) / F.fold(
            torch.ones_like(cols), x.shape[-2:], 3, padding=1)
    assert_bundle_matches(Lambda(fn), (torch.randn(2, 3, 6, 5),), tmp_path)
