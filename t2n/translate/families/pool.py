"""Pooling, adaptive pooling, upsampling and pixel (un)shuffle."""
from __future__ import annotations

import numpy as np
import torch

from t2n.errors import TranslationError
from t2n.translate.families._common import dim_add, is_static, outputs_read
from t2n.translate.families.conv import batched, spatial
from t2n.translate.registry import translates

aten = torch.ops.aten


# -- max and average pooling ----------------------------------------------------------------
def _window(x, n: int, out_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """NNEF pool attributes over the last ``n`` axes of ``x``, and the extra padding after
    each spatial axis that makes tract's floor-mode output size match torch's ceil_mode."""
    kernel = spatial(kernel_size, n)
    stride = spatial(stride, n) if stride else kernel
    padding, dilation = spatial(padding, n), spatial(dilation, n)
    extra = [0] * n
    if ceil_mode:
        extra = [_ceil_extra(size, o, k, s, p, d) for size, o, k, s, p, d in
                 zip(x.shape[-n:], out_shape[-n:], kernel, stride, padding, dilation)]
    lead = x.rank - n
    attrs = {"size": [1] * lead + kernel, "stride": [1] * lead + stride,
             "dilation": [1] * lead + dilation,
             "padding": [(0, 0)] * lead + [(p, p + e) for p, e in zip(padding, extra)]}
    return attrs, extra


def _ceil_extra(size, out, k, s, p, d):
    """Padding to add after an axis so that tract's floor-mode size is torch's ceil-mode one."""
    if is_static(size) and is_static(out):
        return max(0, (out - 1) * s + d * (k - 1) + 1 - (size + 2 * p))
    if s + p <= d * (k - 1) + 1:
        # torch never drops its last window here: its size is tract's with s - 1 more padding
        return s - 1
    raise TranslationError("ceil_mode pooling over a dynamic axis where torch may drop the last "
                           "window (stride + padding > dilated kernel)",
                           "make the pooled axes static or use ceil_mode=False")


def _indices_unused(ctx) -> bool:
    """Whether no user of a (values, indices) pooling node reads its indices."""
    read = outputs_read(ctx)
    return read is not None and read <= {0}


def _values_only(ctx, values):
    """(values, indices) of a max pooling whose indices must be unused."""
    if not _indices_unused(ctx):
        raise TranslationError("the indices output of adaptive max pooling is not supported",
                               "use return_indices=False")
    return values, None


def _with_indices(ctx, n, x, kernel_size, stride, padding, dilation, ceil_mode):
    """(values, indices) of a max pooling; the indices (flat positions in each input plane, as
    torch gives them) only when a user reads them: every window's elements gathered from the
    flattened plane (padding and ceil_mode overhang read the dtype's lowest value), the first
    maximum's place in the window by argmax, turned into a position by two constant tables."""
    values = _max_pool(ctx, n, x, kernel_size, stride, padding, dilation, ceil_mode, ctx.out[0])
    if _indices_unused(ctx):
        return values, None
    sizes, out = list(x.shape[-n:]), list(ctx.out[1].shape[-n:])
    if not all(isinstance(d, int) for d in (*sizes, *out)):
        raise TranslationError("the indices output of max pooling over a dynamic spatial axis",
                               "make the pooled axes static")
    kernel = spatial(kernel_size, n)
    stride = spatial(stride, n) if stride else kernel
    padding, dilation = spatial(padding, n), spatial(dilation, n)
    lead, plane = x.rank - n, int(np.prod(sizes))
    # per axis: position of window element k for output o, and whether it is inside the input
    grids = np.meshgrid(*(np.arange(k) for k in kernel), *(np.arange(o) for o in out),
                        indexing="ij")
    place = [grids[n + i] * stride[i] + grids[i] * dilation[i] - padding[i] for i in range(n)]
    inside = np.logical_and.reduce([(p >= 0) & (p < d) for p, d in zip(place, sizes)])
    widths = [int(np.prod(sizes[i + 1:])) for i in range(n)]
    flat = sum(p * w for p, w in zip(place, widths))      # linear in the window offset k
    windows = int(np.prod(kernel))
    flat, inside = flat.reshape(windows, -1), inside.reshape(windows, -1)
    gather_at = np.where(inside, flat, plane).astype(np.int64)   # outside: the pad element
    like = dict(dtype=x.dtype)
    lowest = float(np.finfo(np.float16 if x.dtype == "f16" else np.float32).min)
    planes = ctx.op("reshape", x, [plane], axis_start=lead, axis_count=n,
                    shape=tuple(x.shape[:lead]) + (plane,), **like)
    planes = ctx.op("pad", planes, padding=[(0, 0)] * lead + [(0, 1)], border="constant",
                    value=lowest, shape=tuple(x.shape[:lead]) + (plane + 1,), **like)
    spread = ctx.op("tract_core_gather", planes, ctx.const(gather_at, "pool_windows"),
                    axis=lead, shape=tuple(x.shape[:lead]) + gather_at.shape, **like)
    first = ctx.op("argmax_reduce", spread, axes=[lead],
                   shape=tuple(x.shape[:lead]) + (1, gather_at.shape[1]), dtype="i64")
    # the position of element k of window o: base(o) + offset(k)
    offset = (flat[:, 0] - flat[0, 0]).astype(np.int64)
    positions = ctx.op("add", ctx.op("tract_core_gather", ctx.const(offset, "pool_offsets"),
                                     first, axis=0, shape=first.shape, dtype="i64"),
                       ctx.const(flat[0].astype(np.int64).reshape((1,) * (lead + 1) + (-1,)),
                                 "pool_bases"), shape=first.shape, dtype="i64")
    positions = ctx.op("squeeze", positions, axes=[lead],
                       shape=tuple(x.shape[:lead]) + (flat.shape[1],), dtype="i64")
    return values, ctx.op("reshape", positions, out, axis_start=lead, axis_count=1,
                          shape=ctx.out[1].shape, dtype="i64")


def _max_pool(ctx, n, x, kernel_size, stride, padding, dilation, ceil_mode, out):
    def emit(x, meta):
        attrs, _ = _window(x, n, meta["shape"], kernel_size, stride, padding, dilation,
                           ceil_mode)
        return ctx.op("max_pool", x, border="ignore", **attrs, **meta)
    return batched(ctx, x, n, out, emit)


@translates(aten.max_pool1d.default)
def max_pool1d(ctx, self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """max_pool1d(Tensor self, int[1] kernel_size, int[1] stride=[], int[1] padding=[0], int[1] dilation=[1], bool ceil_mode=False) -> Tensor"""  # noqa: E501
    return _max_pool(ctx, 1, self, kernel_size, stride, padding, dilation, ceil_mode, ctx.out)


@translates(aten.max_pool1d_with_indices.default)
def max_pool1d_with_indices(ctx, self, kernel_size, stride=(), padding=0, dilation=1,
                            ceil_mode=False):
    """max_pool1d_with_indices(Tensor self, int[1] kernel_size, int[1] stride=[], int[1] padding=[0], int[1] dilation=[1], bool ceil_mode=False) -> (Tensor, Tensor)"""  # noqa: E501
    return _with_indices(ctx, 1, self, kernel_size, stride, padding, dilation, ceil_mode)


@translates(aten.max_pool2d.default)
def max_pool2d(ctx, self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """max_pool2d(Tensor self, int[2] kernel_size, int[2] stride=[], int[2] padding=0, int[2] dilation=1, bool ceil_mode=False) -> Tensor"""  # noqa: E501
    return _max_pool(ctx, 2, self, kernel_size, stride, padding, dilation, ceil_mode, ctx.out)


@translates(aten.max_pool3d.default)
def max_pool3d(ctx, self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """max_pool3d(Tensor self, int[3] kernel_size, int[3] stride=[], int[3] padding=0, int[3] dilation=1, bool ceil_mode=False) -> Tensor"""  # noqa: E501
    return _max_pool(ctx, 3, self, kernel_size, stride, padding, dilation, ceil_mode, ctx.out)


@translates(aten.max_pool3d_with_indices.default)
def max_pool3d_with_indices(ctx, self, kernel_size, stride=(), padding=0, dilation=1,
                            ceil_mode=False):
    """max_pool3d_with_indices(Tensor self, int[3] kernel_size, int[3] stride=[], int[3] padding=0, int[3] dilation=1, bool ceil_mode=False) -> (Tensor, Tensor)"""  # noqa: E501
    return _with_indices(ctx, 3, self, kernel_size, stride, padding, dilation, ceil_mode)


@translates(aten.max_pool2d_with_indices.default)
def max_pool2d_with_indices(ctx, self, kernel_size, stride=(), padding=0, dilation=1,
                            ceil_mode=False):
    """max_pool2d_with_indices(Tensor self, int[2] kernel_size, int[2] stride=[], int[2] padding=0, int[2] dilation=1, bool ceil_mode=False) -> (Tensor, Tensor)"""  # noqa: E501
    return _with_indices(ctx, 2, self, kernel_size, stride, padding, dilation, ceil_mode)


def _avg_pool(ctx, n, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override=None):
    def emit(x, meta):
        attrs, extra = _window(x, n, meta["shape"], kernel_size, stride, padding, 1, ceil_mode)
        if divisor_override:
            total = ctx.op("box", x, border="constant", normalize=False, **attrs, **ctx.like(
                x, shape=meta["shape"]))
            return ctx.op("div", total, ctx.scalar(float(divisor_override), x.dtype), **meta)
        border = "constant" if count_include_pad else "ignore"
        if count_include_pad and any(extra):
            # torch counts the padding but not the ceil_mode overhang: pad explicitly with
            # zeros, then pool ignoring only the overhang
            pads = attrs["padding"]
            if any(b for b, _ in pads):
                shape = tuple(dim_add(s, 2 * b) for s, (b, _) in zip(x.shape, pads))
                x = ctx.op("pad", x, padding=[(b, b) for b, _ in pads], border="constant",
                           **ctx.like(x, shape=shape))
                attrs["padding"] = [(0, a - b) for b, a in pads]
            border = "ignore"
        return ctx.op("avg_pool", x, border=border, **attrs, **meta)
    return batched(ctx, x, n, ctx.out, emit)


@translates(aten.avg_pool1d.default)
def avg_pool1d(ctx, self, kernel_size, stride=(), padding=0, ceil_mode=False,
               count_include_pad=True):
    """avg_pool1d(Tensor self, int[1] kernel_size, int[1] stride=[], int[1] padding=[0], bool ceil_mode=False, bool count_include_pad=True) -> Tensor"""  # noqa: E501
    return _avg_pool(ctx, 1, self, kernel_size, stride, padding, ceil_mode, count_include_pad)


@translates(aten.avg_pool2d.default)
def avg_pool2d(ctx, self, kernel_size, stride=(), padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """avg_pool2d(Tensor self, int[2] kernel_size, int[2] stride=[], int[2] padding=0, bool ceil_mode=False, bool count_include_pad=True, int? divisor_override=None) -> Tensor"""  # noqa: E501
    return _avg_pool(ctx, 2, self, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


@translates(aten.avg_pool3d.default)
def avg_pool3d(ctx, self, kernel_size, stride=(), padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """avg_pool3d(Tensor self, int[3] kernel_size, int[3] stride=[], int[3] padding=0, bool ceil_mode=False, bool count_include_pad=True, int? divisor_override=None) -> Tensor"""  # noqa: E501
    return _avg_pool(ctx, 3, self, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


# -- adaptive pooling -----------------------------------------------------------------------
def _adaptive(ctx, n, x, output_size, reduce: str, pool: str, out):
    """Adaptive pooling to 1 (a reduction) or to a size dividing the input (a pool)."""
    sizes, targets = list(x.shape[-n:]), spatial(output_size, n)
    if all(t == 1 for t in targets):
        return ctx.op(reduce, x, axes=list(range(x.rank - n, x.rank)), shape=out.shape,
                      dtype=out.dtype)
    kernel = []
    for size, t in zip(sizes, targets):
        if size == t:
            kernel.append(1)
        elif is_static(size) and is_static(t) and size % t == 0:
            kernel.append(size // t)
        elif is_static(size) and is_static(t):
            return _adaptive_windows(ctx, n, x, sizes, targets, reduce, out)
        else:
            raise TranslationError(
                f"adaptive pooling from {size} to {t} over a dynamic axis: only output sizes "
                "that divide the input size (or 1) are supported",
                "make the pooled axes static or choose an output size dividing the input size")

    def emit(x, meta):
        attrs, _ = _window(x, n, meta["shape"], kernel, kernel, 0, 1, False)
        return ctx.op(pool, x, border="ignore", **attrs, **meta)
    return batched(ctx, x, n, out, emit)


def _adaptive_windows(ctx, n, x, sizes, targets, reduce: str, out):
    """Adaptive pooling with windows of unequal sizes (torch's: output i of an axis of size S
    pooled to T covers [floor(i S / T), ceil((i + 1) S / T))): a box is the product of its
    axes' windows and its mean (or max) the mean (max) over one axis after the other, so each
    axis is pooled alone, each output position a slice reduced, and the positions
    concatenated."""
    for k, (size, t) in enumerate(zip(sizes, targets)):
        axis = x.rank - n + k
        if size == t:
            continue
        parts = []
        for i in range(t):
            lo, hi = (i * size) // t, -(-((i + 1) * size) // t)
            shape = list(x.shape)
            shape[axis] = hi - lo
            part = ctx.op("slice", x, axes=[axis], begin=[lo], end=[hi],
                          **ctx.like(x, shape=tuple(shape)))
            shape[axis] = 1
            parts.append(ctx.op(reduce, part, axes=[axis], **ctx.like(x, shape=tuple(shape))))
        shape = list(x.shape)
        shape[axis] = t
        x = parts[0] if t == 1 else ctx.op("concat", parts, axis=axis,
                                           **ctx.like(x, shape=tuple(shape)))
    return x


@translates(aten.adaptive_avg_pool1d.default)
def adaptive_avg_pool1d(ctx, self, output_size):
    """adaptive_avg_pool1d(Tensor self, int[1] output_size) -> Tensor"""
    return _adaptive(ctx, 1, self, output_size, "mean_reduce", "avg_pool", ctx.out)


@translates(aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default)
def adaptive_avg_pool2d(ctx, self, output_size):
    """adaptive_avg_pool2d(Tensor self, SymInt[2] output_size) -> Tensor"""
    return _adaptive(ctx, 2, self, output_size, "mean_reduce", "avg_pool", ctx.out)


@translates(aten.adaptive_avg_pool3d.default, aten._adaptive_avg_pool3d.default)
def adaptive_avg_pool3d(ctx, self, output_size):
    """adaptive_avg_pool3d(Tensor self, SymInt[3] output_size) -> Tensor"""
    return _adaptive(ctx, 3, self, output_size, "mean_reduce", "avg_pool", ctx.out)


@translates(aten.adaptive_max_pool1d.default)
def adaptive_max_pool1d(ctx, self, output_size):
    """adaptive_max_pool1d(Tensor self, int[1] output_size) -> (Tensor, Tensor)"""
    return _values_only(ctx, _adaptive(ctx, 1, self, output_size, "max_reduce", "max_pool",
                                       ctx.out[0]))


@translates(aten.adaptive_max_pool2d.default)
def adaptive_max_pool2d(ctx, self, output_size):
    """adaptive_max_pool2d(Tensor self, int[2] output_size) -> (Tensor, Tensor)"""
    return _values_only(ctx, _adaptive(ctx, 2, self, output_size, "max_reduce", "max_pool",
                                       ctx.out[0]))


@translates(aten.adaptive_max_pool3d.default)
def adaptive_max_pool3d(ctx, self, output_size):
    """adaptive_max_pool3d(Tensor self, int[3] output_size) -> (Tensor, Tensor)"""
    return _values_only(ctx, _adaptive(ctx, 3, self, output_size, "max_reduce", "max_pool",
                                       ctx.out[0]))


# -- upsampling -----------------------------------------------------------------------------
def _resize(ctx, x, n, scales, interpolator, coord, nearest="floor"):
    """tract_core_resize over the last ``n`` axes. ``scales`` are torch's scale factors (None
    where torch derives the scale from the sizes). torch maps coordinates with 1/scale when
    a factor is given, else with in/out: tract does the same given ``scales``, resp. ``sizes``."""
    sizes, outs = list(x.shape[-n:]), list(ctx.out.shape[-n:])
    attrs = {"interpolator": interpolator, "coord_transformer": coord, "nearest_mode": nearest}
    if scales is not None and all(s is not None and _fits(size, s, o, coord)
                                  for size, s, o in zip(sizes, scales, outs)):
        factors = [1.0] * (x.rank - n) + [float(s) for s in scales]
        return ctx.op("tract_core_resize", x, scales=ctx.const(np.array(factors, np.float32),
                                                               "scales"), **attrs)
    if not all(is_static(d) for d in ctx.out.shape):
        raise TranslationError("resizing to a size over a dynamic axis",
                               "use an integer scale_factor, or make the axes static")
    if coord != "align_corners" and any(s is not None and abs(size * s - o) > 1e-6 * o for
                                        size, s, o in zip(sizes, scales or [None] * n, outs)):
        raise TranslationError("upsampling with a scale factor that does not give the output "
                               "size exactly", "pass the output size instead")
    target = ctx.const(np.array(ctx.out.shape, np.int64), "sizes")
    return ctx.op("tract_core_resize", x, sizes=target, **attrs)


def _fits(size, scale: float, out, coord: str) -> bool:
    """Whether tract, given ``scale``, computes torch's output size (and, aligning corners,
    torch's (in - 1) / (out - 1) coordinate ratio)."""
    if float(scale).is_integer():
        return True  # tract: size * scale exactly, like torch
    return (coord != "align_corners" and is_static(size)
            and int(np.float32(size) * np.float32(scale)) == out)


@translates(aten.upsample_nearest1d.vec, aten.upsample_nearest2d.vec)
def upsample_nearest2d(ctx, input, output_size, scale_factors):
    """upsample_nearest2d.vec(Tensor input, SymInt[]? output_size, float[]? scale_factors) -> Tensor"""  # noqa: E501
    n = input.rank - 2
    return _resize(ctx, input, n, scale_factors, "nearest", "asymmetric")


@translates(aten._upsample_nearest_exact1d.vec, aten._upsample_nearest_exact2d.vec)
def _upsample_nearest_exact2d(ctx, input, output_size, scale_factors):
    """_upsample_nearest_exact2d.vec(Tensor input, SymInt[]? output_size, float[]? scale_factors) -> Tensor"""  # noqa: E501
    n = input.rank - 2
    return _resize(ctx, input, n, scale_factors, "nearest", "tf_half_pixel_for_nn")


@translates(aten.upsample_nearest2d.default)
def upsample_nearest2d_default(ctx, self, output_size, scales_h=None, scales_w=None):
    """upsample_nearest2d(Tensor self, SymInt[2] output_size, float? scales_h=None, float? scales_w=None) -> Tensor"""  # noqa: E501
    return _resize(ctx, self, 2, [scales_h, scales_w], "nearest", "asymmetric")


def _linear(ctx, input, n, align_corners, scales, interpolator="linear"):
    return _resize(ctx, input, n, scales, interpolator,
                   "align_corners" if align_corners else "half_pixel")


@translates(aten.upsample_linear1d.vec, aten.upsample_bilinear2d.vec)
def upsample_bilinear2d(ctx, input, output_size, align_corners, scale_factors):
    """upsample_bilinear2d.vec(Tensor input, SymInt[]? output_size, bool align_corners, float[]? scale_factors) -> Tensor"""  # noqa: E501
    return _linear(ctx, input, input.rank - 2, align_corners, scale_factors)


@translates(aten.upsample_bilinear2d.default)
def upsample_bilinear2d_default(ctx, self, output_size, align_corners, scales_h=None,
                                scales_w=None):
    """upsample_bilinear2d(Tensor self, SymInt[2] output_size, bool align_corners, float? scales_h=None, float? scales_w=None) -> Tensor"""  # noqa: E501
    return _linear(ctx, self, 2, align_corners, [scales_h, scales_w])


@translates(aten.upsample_bicubic2d.vec)
def upsample_bicubic2d(ctx, input, output_size, align_corners, scale_factors):
    """upsample_bicubic2d.vec(Tensor input, SymInt[]? output_size, bool align_corners, float[]? scale_factors) -> Tensor"""  # noqa: E501
    return _linear(ctx, input, 2, align_corners, scale_factors, "cubic")


# -- pixel shuffle --------------------------------------------------------------------------
@translates(aten.pixel_shuffle.default)
def pixel_shuffle(ctx, self, upscale_factor):
    """pixel_shuffle(Tensor self, int upscale_factor) -> Tensor"""
    r, k = upscale_factor, self.rank - 3
    *lead, _, h, w = self.shape
    shape = [*lead, ctx.out.shape[-3], r, r, h, w]
    x = ctx.op("reshape", self, attrs={"shape": shape}, shape=shape, dtype=self.dtype)
    perm = [*range(k), k, k + 3, k + 1, k + 4, k + 2]
    x = ctx.op("transpose", x, axes=perm, dtype=x.dtype,
               shape=tuple(x.shape[i] for i in perm))
    return ctx.op("reshape", x, attrs={"shape": list(ctx.out.shape)})


@translates(aten.pixel_unshuffle.default)
def pixel_unshuffle(ctx, self, downscale_factor):
    """pixel_unshuffle(Tensor self, int downscale_factor) -> Tensor"""
    r, k = downscale_factor, self.rank - 3
    *lead, _, h, w = ctx.out.shape
    shape = [*lead, self.shape[-3], h, r, w, r]
    x = ctx.op("reshape", self, attrs={"shape": shape}, shape=shape, dtype=self.dtype)
    perm = [*range(k), k, k + 2, k + 4, k + 1, k + 3]
    x = ctx.op("transpose", x, axes=perm, dtype=x.dtype,
               shape=tuple(x.shape[i] for i in perm))
    return ctx.op("reshape", x, attrs={"shape": list(ctx.out.shape)})
