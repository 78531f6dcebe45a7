"""Convolutions, transposed convolutions and padding."""
from __future__ import annotations

import torch

from t2n.errors import TranslationError
from t2n.translate.families._common import dim_add, dim_sub, is_static, operand
from t2n.translate.registry import translates

aten = torch.ops.aten

_BORDERS = {"constant": "constant", "reflect": "reflect", "replicate": "replicated"}


def spatial(values, n: int) -> list:
    """An int or int-list argument as ``n`` values, one per spatial axis."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return values * n if len(values) == 1 else values


def batched(ctx, x, n: int, out, emit):
    """``emit(x, meta)`` on ``x`` with a batch axis: unbatched [C, *spatial] inputs get a
    leading unit axis, removed afterwards. ``meta`` is the shape/dtype of emit's result."""
    if x.rank == n + 2:
        return emit(x, {"shape": out.shape, "dtype": out.dtype})
    x = ctx.op("unsqueeze", x, axes=[0], **ctx.like(x, shape=(1,) + tuple(x.shape)))
    y = emit(x, {"shape": (1,) + tuple(out.shape), "dtype": out.dtype})
    return ctx.op("squeeze", y, axes=[0], shape=out.shape, dtype=out.dtype)


# -- convolutions ---------------------------------------------------------------------------
def _conv(ctx, input, weight, bias, stride, padding, dilation, groups):
    """NNEF conv; ``padding`` is one (before, after) pair per spatial axis."""
    dtype = ctx.out.dtype
    n = weight.rank - 2
    x, w = operand(ctx, input, dtype), operand(ctx, weight, dtype)
    args = [w] + ([operand(ctx, bias, dtype)] if bias is not None else [])
    attrs = {"border": "constant", "padding": padding, "stride": spatial(stride, n),
             "dilation": spatial(dilation, n), "groups": groups}
    return batched(ctx, x, n, ctx.out, lambda x, meta: ctx.op("conv", x, *args, **attrs, **meta))


@translates(aten.conv1d.default, aten.conv2d.default, aten.conv3d.default)
def conv2d(ctx, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d(Tensor input, Tensor weight, Tensor? bias=None, SymInt[2] stride=[1, 1], SymInt[2] padding=[0, 0], SymInt[2] dilation=[1, 1], SymInt groups=1) -> Tensor"""  # noqa: E501
    pads = [(p, p) for p in spatial(padding, weight.rank - 2)]
    return _conv(ctx, input, weight, bias, stride, pads, dilation, groups)


@translates(aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding)
def conv2d_padding(ctx, input, weight, bias=None, stride=1, padding="valid", dilation=1,
                   groups=1):
    """conv2d.padding(Tensor input, Tensor weight, Tensor? bias=None, SymInt[2] stride=[1, 1], str padding="valid", SymInt[2] dilation=[1, 1], SymInt groups=1) -> Tensor"""  # noqa: E501
    n = weight.rank - 2
    if padding == "valid":
        pads = [(0, 0)] * n
    elif padding == "same":  # torch puts the odd extra element after
        totals = [d * (k - 1) for d, k in zip(spatial(dilation, n), weight.shape[2:])]
        pads = [(t // 2, t - t // 2) for t in totals]
    else:
        raise TranslationError(f"convolution padding {padding!r}", "use 'same', 'valid' or ints")
    return _conv(ctx, input, weight, bias, stride, pads, dilation, groups)


def _deconv_filter(ctx, w, groups: int):
    """torch's transposed-conv weight [I, O/g, *k] as NNEF's deconv filter [O, I/g, *k]."""
    i, o_g, *k = w.shape
    g = groups
    shape = [g, i // g, o_g, *k]
    w = ctx.op("reshape", w, attrs={"shape": shape}, shape=shape, dtype=w.dtype)
    w = ctx.op("transpose", w, axes=[0, 2, 1, *range(3, w.rank)], shape=(g, o_g, i // g, *k),
               dtype=w.dtype)
    shape = [g * o_g, i // g, *k]
    return ctx.op("reshape", w, attrs={"shape": shape}, shape=shape, dtype=w.dtype)


def _deconv(ctx, input, weight, bias, stride, padding, output_padding, groups, dilation):
    dtype = ctx.out.dtype
    n = weight.rank - 2
    x = operand(ctx, input, dtype)
    args = [_deconv_filter(ctx, operand(ctx, weight, dtype), groups)]
    args += [operand(ctx, bias, dtype)] if bias is not None else []
    # output_padding extends the kept range at the end: crop less there when possible,
    # else give tract the static output size
    pads = [(p, p - q if q <= p else p) for p, q in
            zip(spatial(padding, n), spatial(output_padding, n))]
    attrs = {"border": "constant", "padding": pads, "stride": spatial(stride, n),
             "dilation": spatial(dilation, n), "groups": groups}
    if any(q > p for p, q in zip(spatial(padding, n), spatial(output_padding, n))):
        if not all(is_static(s) for s in x.shape[-n:]):
            raise TranslationError("transposed convolution with output_padding > padding over "
                                   "a dynamic axis", "make the spatial axes static")
        attrs["output_shape"] = list(ctx.out.shape[-n:])
    return batched(ctx, x, n, ctx.out,
                   lambda x, meta: ctx.op("deconv", x, *args, **attrs, **meta))


@translates(aten.conv_transpose1d.default, aten.conv_transpose2d.input,
            aten.conv_transpose3d.input)
def conv_transpose2d(ctx, input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1):
    """conv_transpose2d.input(Tensor input, Tensor weight, Tensor? bias=None, SymInt[2] stride=[1, 1], SymInt[2] padding=[0, 0], SymInt[2] output_padding=[0, 0], SymInt groups=1, SymInt[2] dilation=[1, 1]) -> Tensor"""  # noqa: E501
    return _deconv(ctx, input, weight, bias, stride, padding, output_padding, groups, dilation)


@translates(aten.convolution.default)
def convolution(ctx, input, weight, bias, stride, padding, dilation, transposed,
                output_padding, groups):
    """convolution(Tensor input, Tensor weight, Tensor? bias, SymInt[] stride, SymInt[] padding, SymInt[] dilation, bool transposed, SymInt[] output_padding, SymInt groups) -> Tensor"""  # noqa: E501
    if transposed:
        return _deconv(ctx, input, weight, bias, stride, padding, output_padding, groups,
                       dilation)
    pads = [(p, p) for p in spatial(padding, weight.rank - 2)]
    return _conv(ctx, input, weight, bias, stride, pads, dilation, groups)


@translates(aten._convolution.default)
def _convolution(ctx, input, weight, bias, stride, padding, dilation, transposed,
                 output_padding, groups, benchmark, deterministic, cudnn_enabled, allow_tf32):
    """_convolution(Tensor input, Tensor weight, Tensor? bias, SymInt[] stride, SymInt[] padding, SymInt[] dilation, bool transposed, SymInt[] output_padding, SymInt groups, bool benchmark, bool deterministic, bool cudnn_enabled, bool allow_tf32) -> Tensor"""  # noqa: E501
    return convolution(ctx, input, weight, bias, stride, padding, dilation, transposed,
                       output_padding, groups)


# -- padding --------------------------------------------------------------------------------
def _pairs(pad, rank: int, symbolic: bool = False) -> list:
    """torch's flat pad list (last axis first) as one (before, after) pair per axis."""
    if not symbolic and not all(is_static(p) for p in pad):
        raise TranslationError("symbolic pad sizes", "use constant pad sizes")
    pairs = [(0, 0)] * rank
    for i in range(len(pad) // 2):
        pairs[rank - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    return pairs


def _crop(ctx, x, pairs, last: bool):
    """Slice away the negative parts of ``pairs``."""
    axes = [i for i, (b, a) in enumerate(pairs) if b < 0 or a < 0]
    if not axes:
        return x
    begin = [max(0, -pairs[i][0]) for i in axes]
    end = [dim_sub(x.shape[i], max(0, -pairs[i][1])) for i in axes]
    shape = list(x.shape)
    for i, b, e in zip(axes, begin, end):
        shape[i] = dim_sub(e, b)
    meta = {} if last else {"shape": tuple(shape), "dtype": x.dtype}
    return ctx.op("slice", x, axes=axes, begin=begin, end=end, **meta)


def _circular(ctx, x, pairs):
    """Wrap-around padding as slices and concats, one axis at a time (crops come first)."""
    x = _crop(ctx, x, pairs, last=False)
    for ax, (before, after) in enumerate(pairs):
        before, after = max(before, 0), max(after, 0)
        if not before and not after:
            continue
        size = x.shape[ax]
        parts = [x]
        if before:
            head = list(x.shape)
            head[ax] = before
            parts.insert(0, ctx.op("slice", x, axes=[ax], begin=[dim_sub(size, before)],
                                   end=[size], shape=tuple(head), dtype=x.dtype))
        if after:
            tail = list(x.shape)
            tail[ax] = after
            parts.append(ctx.op("slice", x, axes=[ax], begin=[0], end=[after],
                                shape=tuple(tail), dtype=x.dtype))
        shape = list(x.shape)
        shape[ax] = dim_add(size, before + after)
        x = ctx.op("concat", parts, axis=ax, shape=tuple(shape), dtype=x.dtype)
    return x


def _symbolic_pad(ctx, x, pairs, value):
    """Constant padding whose sizes follow a dynamic axis (a sequence padded up to a multiple
    of a chunk length): tract's pad takes literal sizes, so each such axis is a concat with
    filled blocks of those sizes (a size that came out negative fails in tract, never silently)."""
    fill = operand(ctx, _pad_value(value or 0.0), x.dtype)
    for ax, (before, after) in enumerate(pairs):
        if is_static(before) and is_static(after):
            continue
        parts = []
        for size in (before, after):
            if is_static(size) and size == 0:
                parts.append(None)
                continue
            shape = list(x.shape)
            shape[ax] = size
            parts.append(ctx.op("tract_core_broadcast", fill, attrs={"shape": shape},
                                shape=tuple(shape), dtype=x.dtype))
        shape = list(x.shape)
        shape[ax] = dim_add(dim_add(x.shape[ax], before), after)
        x = ctx.op("concat", [p for p in (parts[0], x, parts[1]) if p is not None], axis=ax,
                   shape=tuple(shape), dtype=x.dtype)
        pairs[ax] = (0, 0)
    return x


def _pad(ctx, x, pad, mode: str, value=None):
    pairs = _pairs(pad, x.rank, symbolic=(mode == "constant"))
    if not all(is_static(p) for pair in pairs for p in pair):
        x = _symbolic_pad(ctx, x, pairs, value)
    if mode == "circular":
        return _circular(ctx, x, pairs)
    if mode not in _BORDERS:
        raise TranslationError(f"padding mode {mode!r}", f"use one of {', '.join(_BORDERS)}")
    grow = [(max(b, 0), max(a, 0)) for b, a in pairs]
    crop = any(b < 0 or a < 0 for b, a in pairs)
    if any(b or a for b, a in grow):
        attrs = {"border": _BORDERS[mode]}
        if mode == "constant" and value:
            attrs["value"] = _pad_value(value)
        shape = tuple(dim_add(s, b + a) for s, (b, a) in zip(x.shape, grow))
        x = ctx.op("pad", x, padding=grow, **attrs,
                   **({"shape": shape, "dtype": x.dtype} if crop else {}))
    return _crop(ctx, x, pairs, last=True)


def _pad_value(value) -> float:
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise TranslationError(f"padding with the value {value}",
                               "tract's pad takes a finite literal; use a finite value")
    return value


@translates(aten.pad.default)
def pad(ctx, self, pad, mode="constant", value=None):
    """pad(Tensor self, SymInt[] pad, str mode="constant", float? value=None) -> Tensor"""
    return _pad(ctx, self, pad, mode, value)


@translates(aten.constant_pad_nd.default)
def constant_pad_nd(ctx, self, pad, value=0):
    """constant_pad_nd(Tensor self, SymInt[] pad, Scalar value=0) -> Tensor"""
    return _pad(ctx, self, pad, "constant", value)


@translates(aten.reflection_pad1d.default, aten.reflection_pad2d.default,
            aten.reflection_pad3d.default)
def reflection_pad2d(ctx, self, padding):
    """reflection_pad2d(Tensor self, SymInt[4] padding) -> Tensor"""
    return _pad(ctx, self, padding, "reflect")


@translates(aten.replication_pad1d.default, aten.replication_pad2d.default,
            aten.replication_pad3d.default)
def replication_pad2d(ctx, self, padding):
    """replication_pad2d(Tensor self, SymInt[4] padding) -> Tensor"""
    return _pad(ctx, self, padding, "replicate")


@translates(aten._pad_circular.default)
def _pad_circular(ctx, self, pad):
    """_pad_circular(Tensor self, SymInt[] pad) -> Tensor"""
    return _pad(ctx, self, pad, "circular")


# -- fold (col2im) --------------------------------------------------------------------------
def _pair(v) -> tuple:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * 2 if len(v) == 1 else v)


@translates(aten.col2im.default)
def col2im(ctx, self, output_size, kernel_size, dilation, padding, stride):
    """col2im(Tensor self, SymInt[2] output_size, int[2] kernel_size, int[2] dilation, int[2] padding, int[2] stride) -> Tensor"""  # noqa: E501
    # fold: every kernel offset's column block is spread over the padded output at its stride
    # (zeros between, by a pad and a reshape), shifted to the offset and summed; the padding
    # is cropped at the end
    (h, w), (kh, kw) = _pair(output_size), _pair(kernel_size)
    (dh, dw), (ph, pw), (sh, sw) = _pair(dilation), _pair(padding), _pair(stride)
    if not all(is_static(v) for v in (h, w, *self.shape[1:])):
        raise TranslationError("fold with symbolic sizes", "make the folded sizes static")
    batched = self.rank == 3
    n = self.shape[0] if batched else 1
    c = self.shape[-2] // (kh * kw)
    hp, wp = h + 2 * ph, w + 2 * pw
    lh, lw = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    dtype = self.dtype
    x = ctx.op("reshape", self, attrs={"shape": [n, c, kh, kw, lh, lw]},
               shape=(n, c, kh, kw, lh, lw), dtype=dtype)
    total = None
    for i in range(kh):
        for j in range(kw):
            block = ctx.op("slice", x, axes=[2, 3], begin=[i, j], end=[i + 1, j + 1],
                           shape=(n, c, 1, 1, lh, lw), dtype=dtype)
            block = ctx.op("reshape", block, attrs={"shape": [n, c, lh, 1, lw, 1]},
                           shape=(n, c, lh, 1, lw, 1), dtype=dtype)
            if sh > 1 or sw > 1:
                block = ctx.op("pad", block, padding=[(0, 0)] * 3 + [(0, sh - 1), (0, 0),
                                                                     (0, sw - 1)],
                               shape=(n, c, lh, sh, lw, sw), dtype=dtype)
            block = ctx.op("reshape", block, attrs={"shape": [n, c, lh * sh, lw * sw]},
                           shape=(n, c, lh * sh, lw * sw), dtype=dtype)
            top, left = i * dh, j * dw
            bottom, right = max(0, hp - top - lh * sh), max(0, wp - left - lw * sw)
            block = ctx.op("pad", block, padding=[(0, 0), (0, 0), (top, bottom), (left, right)],
                           shape=(n, c, top + lh * sh + bottom, left + lw * sw + right),
                           dtype=dtype)
            if top + lh * sh + bottom != hp or left + lw * sw + right != wp:
                block = ctx.op("slice", block, axes=[2, 3], begin=[0, 0], end=[hp, wp],
                               shape=(n, c, hp, wp), dtype=dtype)
            total = block if total is None else ctx.op("add", total, block,
                                                       shape=(n, c, hp, wp), dtype=dtype)
    if ph or pw:
        total = ctx.op("slice", total, axes=[2, 3], begin=[ph, pw], end=[ph + h, pw + w],
                       shape=(n, c, h, w), dtype=dtype)
    if not batched:
        total = ctx.op("reshape", total, attrs={"shape": [c, h, w]})
    return total
