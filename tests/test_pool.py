import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import Lambda, assert_bundle_matches
from t2n.errors import TranslationError

aten = torch.ops.aten
X1 = (2, 4, 13)
X2 = (2, 4, 9, 11)

POOLS = {
    "max1d": (nn.MaxPool1d(3, 2, 1), X1),
    "max1d_dilation_ceil": (nn.MaxPool1d(3, 2, 1, dilation=2, ceil_mode=True), X1),
    "max2d": (nn.MaxPool2d(2), X2),
    "max2d_stride_pad_dilation": (nn.MaxPool2d((3, 2), (2, 1), (1, 0), dilation=(2, 1)), X2),
    "max2d_ceil": (nn.MaxPool2d(2, ceil_mode=True), X2),
    "max2d_ceil_pad": (nn.MaxPool2d(3, 2, 1, ceil_mode=True), X2),
    "max2d_unbatched": (nn.MaxPool2d(3, 2, 1, ceil_mode=True), (4, 9, 11)),
    "max2d_indices_unused": (Lambda(lambda x: F.max_pool2d(x, 2, return_indices=True)[0]), X2),
    "max1d_indices_unused": (Lambda(lambda x: F.max_pool1d(x, 3, 2, return_indices=True)[0]),
                             X1),
    "avg1d": (nn.AvgPool1d(3, 2, 1), X1),
    "avg1d_exclude_pad": (nn.AvgPool1d(3, 2, 1, count_include_pad=False), X1),
    "avg1d_ceil": (nn.AvgPool1d(4, 3, 2, ceil_mode=True), X1),
    "avg2d": (nn.AvgPool2d(2), X2),
    "avg2d_pad": (nn.AvgPool2d(3, 2, 1), X2),
    "avg2d_exclude_pad": (nn.AvgPool2d(3, 2, 1, count_include_pad=False), X2),
    "avg2d_ceil_pad": (nn.AvgPool2d(3, 2, 1, ceil_mode=True), X2),
    "avg2d_ceil_exclude_pad": (nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                               X2),
    "avg2d_ceil_no_pad": (nn.AvgPool2d(2, ceil_mode=True), X2),
    "avg2d_divisor_override": (nn.AvgPool2d(3, 2, 1, divisor_override=5), X2),
    "avg2d_unbatched": (nn.AvgPool2d(3, 2, 1, ceil_mode=True), (4, 9, 11)),
    "adaptive_avg1d_1": (nn.AdaptiveAvgPool1d(1), X1),
    "adaptive_avg2d_1": (nn.AdaptiveAvgPool2d(1), X2),
    "adaptive_avg2d_divisor": (nn.AdaptiveAvgPool2d((3, 1)), X2),
    "adaptive_avg2d_unbatched": (nn.AdaptiveAvgPool2d((3, 11)), (4, 9, 11)),
    "adaptive_avg2d_aten": (Lambda(lambda x: aten._adaptive_avg_pool2d(x, [3, 11])), X2),
    "adaptive_max1d_1": (nn.AdaptiveMaxPool1d(1), X1),
    "adaptive_max2d_1": (nn.AdaptiveMaxPool2d(1), X2),
    "adaptive_max2d_divisor": (nn.AdaptiveMaxPool2d((3, 11)), X2),
}


@pytest.mark.parametrize("name", POOLS)
def test_pool(name, tmp_path):
    model, shape = POOLS[name]
    assert_bundle_matches(model, torch.randn(shape) - 1, tmp_path)


UPSAMPLE = {
    "nearest_2d": (nn.Upsample(scale_factor=2), X2),
    "nearest_2d_size": (nn.Upsample(size=(15, 20)), X2),
    "nearest_2d_fraction": (nn.Upsample(scale_factor=(1.5, 0.7)), X2),
    "nearest_1d": (nn.Upsample(scale_factor=3), X1),
    "nearest_exact_2d": (nn.Upsample(scale_factor=2, mode="nearest-exact"), X2),
    "nearest_exact_2d_size": (nn.Upsample(size=(5, 7), mode="nearest-exact"), X2),
    "nearest_exact_1d": (nn.Upsample(size=20, mode="nearest-exact"), X1),
    "bilinear": (nn.Upsample(scale_factor=2, mode="bilinear"), X2),
    "bilinear_align_corners": (nn.Upsample(scale_factor=2, mode="bilinear",
                                           align_corners=True), X2),
    "bilinear_size": (nn.Upsample(size=(14, 17), mode="bilinear"), X2),
    "bilinear_size_align_corners": (nn.Upsample(size=(14, 17), mode="bilinear",
                                                align_corners=True), X2),
    "bilinear_fraction": (nn.Upsample(scale_factor=1.7, mode="bilinear"), X2),
    "bilinear_fraction_align_corners": (nn.Upsample(scale_factor=1.7, mode="bilinear",
                                                    align_corners=True), X2),
    "bilinear_down": (Lambda(lambda x: F.interpolate(x, scale_factor=0.5, mode="bilinear")),
                      X2),
    "linear": (nn.Upsample(scale_factor=2, mode="linear"), X1),
    "linear_align_corners": (nn.Upsample(scale_factor=2, mode="linear", align_corners=True),
                             X1),
    "bicubic": (nn.Upsample(scale_factor=2, mode="bicubic"), X2),
    "bicubic_align_corners": (nn.Upsample(size=(12, 15), mode="bicubic", align_corners=True),
                              X2),
    "aten_nearest2d_scales": (Lambda(lambda x: aten.upsample_nearest2d(x, [18, 16], 2.0, 1.5)),
                              X2),
    "aten_nearest2d_size": (Lambda(lambda x: aten.upsample_nearest2d(x, [7, 20])), X2),
    "aten_bilinear2d_scales": (Lambda(lambda x: aten.upsample_bilinear2d(x, [18, 22], False,
                                                                         2.0, 2.0)), X2),
    "aten_bilinear2d_align_corners": (Lambda(lambda x: aten.upsample_bilinear2d(x, [7, 20],
                                                                                True)), X2),
}


@pytest.mark.parametrize("name", UPSAMPLE)
def test_upsample(name, tmp_path):
    model, shape = UPSAMPLE[name]
    assert_bundle_matches(model, torch.randn(shape), tmp_path)


SHUFFLE = {
    "shuffle": (nn.PixelShuffle(2), (2, 8, 5, 6)),
    "shuffle_unbatched": (nn.PixelShuffle(3), (9, 5, 6)),
    "unshuffle": (nn.PixelUnshuffle(2), (2, 2, 10, 6)),
    "unshuffle_5d": (nn.PixelUnshuffle(2), (2, 3, 2, 4, 6)),
}


@pytest.mark.parametrize("name", SHUFFLE)
def test_pixel_shuffle(name, tmp_path):
    model, shape = SHUFFLE[name]
    assert_bundle_matches(model, torch.randn(shape), tmp_path, tolerance="exact")


DYNAMIC = {
    "avg_pool1d": (nn.AvgPool1d(3, 2, 1), {"input": {2: "T"}}),
    "avg_pool1d_ceil": (nn.AvgPool1d(3, 2, ceil_mode=True), {"input": {2: "T"}}),
    "avg_pool1d_ceil_pad": (Lambda(lambda x: F.avg_pool1d(x, 4, 3, 1, ceil_mode=True)),
                            {"input_0": {2: "T"}}),
    "avg_pool1d_ceil_exclude_pad": (nn.AvgPool1d(3, 2, 1, ceil_mode=True,
                                                 count_include_pad=False), {"input": {2: "T"}}),
    "adaptive_avg_pool1d": (nn.AdaptiveAvgPool1d(1), {"input": {2: "T"}}),
    "upsample_linear": (nn.Upsample(scale_factor=2, mode="linear"), {"input": {2: "T"}}),
    "upsample_nearest": (nn.Upsample(scale_factor=3), {"input": {2: "T"}}),
    "upsample_to_size": (nn.Upsample(size=20, mode="linear"), {"input": {2: "T"}}),
}


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_time_axis(name, tmp_path):
    model, axes = DYNAMIC[name]
    assert_bundle_matches(model, torch.randn(1, 4, 13), tmp_path, dynamic_axes=axes,
                          other_args=[torch.randn(1, 4, s) for s in (6, 40, 41)])


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
def test_max_pool2d_dynamic(ceil_mode, tmp_path):
    assert_bundle_matches(nn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode), torch.randn(1, 4, 13, 9),
                          tmp_path, dynamic_axes={"input": {2: "H"}},
                          other_args=[torch.randn(1, 4, 6, 9), torch.randn(1, 4, 31, 9)])


def test_pixel_shuffle_dynamic(tmp_path):
    assert_bundle_matches(nn.PixelShuffle(2), torch.randn(2, 8, 5, 6), tmp_path,
                          dynamic_axes={"input": {0: "B", 2: "H"}},
                          other_args=[torch.randn(3, 8, 2, 6)], tolerance="exact")


F16 = {
    "max_pool2d_ceil": nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    "avg_pool2d_ceil": nn.AvgPool2d(3, 2, 1, ceil_mode=True),
    "adaptive_avg_pool2d": nn.AdaptiveAvgPool2d(1),
    "bilinear": nn.Upsample(scale_factor=2, mode="bilinear"),
    "nearest": nn.Upsample(scale_factor=2),
}


@pytest.mark.parametrize("name", F16)
def test_pool_f16(name, tmp_path):
    assert_bundle_matches(F16[name], torch.randn(X2), tmp_path, dtype="f16")


REFUSED = {
    "adaptive_indices_used": (Lambda(lambda x: F.adaptive_max_pool2d(x, 2, return_indices=True)),
                              {}, "indices"),
    "indices_over_dynamic_axis": (Lambda(lambda x: F.max_pool1d(x, 2, return_indices=True)),
                                  {"input_0": {2: "T"}}, "indices"),
    "adaptive_not_dividing_dynamic": (nn.AdaptiveAvgPool1d(4), {"input": {2: "T"}}, "divid"),
    "ceil_mode_dynamic": (nn.AvgPool1d(2, 3, ceil_mode=True), {"input": {2: "T"}},
                          "ceil_mode"),
    "resize_size_dynamic_batch": (nn.Upsample(size=20), {"input": {0: "B"}}, "dynamic"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_refused(name, tmp_path):
    model, axes, match = REFUSED[name]
    with pytest.raises(TranslationError, match=match):
        assert_bundle_matches(model, torch.randn(X1), tmp_path, dynamic_axes=axes)
