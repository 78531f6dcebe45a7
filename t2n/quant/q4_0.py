"""Q4_0: 4-bit block-quantized weights as tract (and GGML) store and run them.

A weight of shape ``[m, d1, d2, ...]`` is seen as a matrix ``[m, k]`` with ``k = d1*d2*...``
(``k`` a multiple of 32). Each row is cut into blocks of 32 consecutive values; blocks are stored
in row-major order (block ``b`` holds the flat values ``32*b .. 32*b+31``), 18 bytes each::

    offset size
         0    2  d, the block scale: IEEE float16, little-endian
         2   16  byte 2+j (j = 0..15): low nibble (bits 0-3) = q[j], high nibble = q[j+16]

    value[i] = (q[i] - 8) * d        q[i] in 0..15 (unsigned nibble, offset 8)

so the first byte after ``d`` holds values 0 and 16, the last one values 15 and 31 (GGML's
``block_q4_0``). tract's own packing (item type 0x2040) instead puts consecutive values in one
byte; tract converts it to this layout on load, so we only write this one.

``.dat`` file: the 128-byte NNEF header (``t2n.nnef.dat.header``) with the logical shape as
rank/dims, bits per item ``0xFFFFFFFF``, item type ``0x3040`` (GGML Q4_0), item type vendor
``0x5452`` ('TR'), data length ``n_blocks * 18``; then the blocks. tract requires rank >= 2 and
takes the first dim as the rows: the declared shape is the logical one (``[O, I, kh, kw]`` for
a conv filter).

Default quantizer (min-max), bit-identical to tract's ``BaseQ4_0::quant_block`` and GGML's
``quantize_row_q4_0_ref``, computed in float32: ``max`` = the value of largest magnitude, signed
(the first one on ties); ``d = max / -8``; ``q = min(15, floor(x * (1/d) + 8.5))`` (round half
up, then the +8 offset); ``d`` is stored rounded to float16 (nearest even). The sign of ``d`` is
opposite to ``max``, so ``max`` itself gets q = 0 and is exact (up to d's float16 rounding); the
other side reaches ``7*|d|``. An all-zero block gets ``d = -0.0`` (``0 / -8``: bytes 00 80, as
tract and GGML write it) and every q = 8, so it decodes to zeros.

Caller scales (``quantize(w, scales=...)``, for clipping or searched scales): ``d`` is the given
scale rounded to float16 (either sign), and ``q = clamp(floor(x / d + 8.5), 0, 15)`` against that
stored ``d``, so every value goes to its nearest level of the grid it is decoded with.
"""
from __future__ import annotations

import numpy as np
import torch

from t2n.nnef.dat import TRACT_VENDOR, header
from t2n.quant.packed import PackedTensor

__all__ = ["BLOCK", "BLOCK_BYTES", "ITEM_TYPE", "quantize", "pack", "unpack", "dequantize",
           "encode_dat", "Q4_0Tensor"]

BLOCK = 32
BLOCK_BYTES = 2 + BLOCK // 2
ITEM_TYPE = 0x3040
BITS_PER_ITEM = 0xFFFFFFFF


def _rows(weight) -> tuple[np.ndarray, tuple]:
    """``weight`` as float32 blocks ``[n_blocks, 32]`` and its shape, after the checks."""
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().cpu()
        if not weight.is_floating_point():
            raise TypeError(f"Q4_0 quantizes float weights, got a {weight.dtype} tensor")
        weight = weight.float().numpy()
    weight = np.asarray(weight)
    if weight.dtype.kind != "f":
        raise TypeError(f"Q4_0 quantizes float weights, got dtype {weight.dtype}")
    shape = tuple(int(s) for s in weight.shape)
    if len(shape) < 2:
        raise ValueError(f"Q4_0 needs a weight of rank >= 2 (rows first), got shape {shape}")
    k = int(np.prod(shape[1:]))
    if k % BLOCK:
        raise ValueError(f"Q4_0 needs the product of the dims after the first (k) to be a "
                         f"multiple of {BLOCK}: shape {shape} has k = {k}")
    x = np.ascontiguousarray(weight, dtype=np.float32).reshape(-1, BLOCK)
    finite = np.isfinite(x)
    if not finite.all():
        flat = int(np.flatnonzero(~finite)[0])
        at = tuple(int(i) for i in np.unravel_index(flat, shape))
        n = int(x.size - np.count_nonzero(finite))
        raise ValueError(f"Q4_0 cannot quantize non-finite values: {n} NaN/inf in the weight, "
                         f"the first {x.reshape(-1)[flat]} at index {list(at)}")
    return x, shape


def _scales(scales, n_blocks: int) -> np.ndarray:
    d = np.asarray(scales, dtype=np.float32).reshape(-1)
    if d.size != n_blocks:
        raise ValueError(f"Q4_0 needs one scale per block of {BLOCK}: {n_blocks} blocks, "
                         f"got {d.size} scales")
    with np.errstate(over="ignore"):
        d16 = d.astype(np.float16)
    if not np.isfinite(d16).all():
        bad = int(np.flatnonzero(~np.isfinite(d16))[0])
        raise ValueError(f"Q4_0 scales must be finite float16 values: scale {bad} is {d[bad]}")
    return d16


def _levels(x: np.ndarray, d32: np.ndarray) -> np.ndarray:
    """q = clamp(floor(x / d + 8.5), 0, 15), 8 where d == 0 (float32, GGML's arithmetic)."""
    with np.errstate(divide="ignore"):
        inv = np.where(d32 == 0, np.float32(0), np.float32(1) / d32).astype(np.float32)
    t = x * inv[:, None]
    t += np.float32(8.5)
    np.floor(t, out=t)
    np.clip(t, 0, 15, out=t)
    return t.astype(np.uint8)


def quantize(weight, scales=None) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 blocks of a float weight ``[m, ...]``: ``(q uint8 [n_blocks, 32], d float16
    [n_blocks])``. ``scales``: one scale per block (any shape of that size) instead of the
    min-max default."""
    x, _ = _rows(weight)
    if scales is not None:
        d = _scales(scales, len(x))
        return _levels(x, d.astype(np.float32)), d
    pick = np.abs(x).argmax(axis=1)
    vmax = np.take_along_axis(x, pick[:, None], axis=1)[:, 0]
    vmax[vmax == 0] = 0  # tract starts from +0.0: a block of zeros (even -0.0) has d = -0.0
    d32 = vmax / np.float32(-8)
    with np.errstate(over="ignore"):
        d = d32.astype(np.float16)
    if not np.isfinite(d).all():
        bad = int(np.flatnonzero(~np.isfinite(d))[0])
        raise ValueError(f"Q4_0 scale overflows float16: block {bad} has a value of magnitude "
                         f"{abs(d32[bad]) * 8:g} (at most {8 * 65504} fits)")
    return _levels(x, d32), d


def pack(q: np.ndarray, d: np.ndarray) -> bytes:
    """The raw Q4_0 block bytes (18 per block) of ``quantize``'s ``(q, d)``."""
    return _pack_blocks(q, d).tobytes()


def _pack_blocks(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``pack`` as a uint8 array ``[n_blocks, 18]``."""
    q, d = np.asarray(q), np.asarray(d)
    if q.ndim != 2 or q.shape[1] != BLOCK or d.shape != (len(q),):
        raise ValueError(f"pack needs q [n, {BLOCK}] and d [n], got {q.shape} and {d.shape}")
    if q.dtype.kind not in "ui" or (q.size and (q.min() < 0 or q.max() > 15)):
        raise ValueError("pack needs integer q values in 0..15")
    q = q.astype(np.uint8)
    out = np.empty((len(q), BLOCK_BYTES), dtype=np.uint8)
    out[:, :2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q[:, : BLOCK // 2] | (q[:, BLOCK // 2:] << 4)
    return out


def unpack(data, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """``(q, d)`` from ``n_blocks`` raw blocks (``pack``'s output)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != n_blocks * BLOCK_BYTES:
        raise ValueError(f"{n_blocks} Q4_0 blocks take {n_blocks * BLOCK_BYTES} bytes, "
                         f"got {raw.size}")
    raw = raw.reshape(n_blocks, BLOCK_BYTES)
    d = raw[:, :2].copy().view("<f2").reshape(n_blocks).astype(np.float16)
    nibbles = raw[:, 2:]
    return np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1), d


def dequantize(q: np.ndarray, d: np.ndarray, shape) -> np.ndarray:
    """The float32 weight of ``shape`` that the blocks ``(q, d)`` decode to."""
    shape = tuple(int(s) for s in shape)
    if int(np.prod(shape)) != np.asarray(q).size:
        raise ValueError(f"{len(q)} Q4_0 blocks hold {np.asarray(q).size} values, "
                         f"not a {shape} weight")
    levels = np.asarray(q).astype(np.float32) - np.float32(8)
    return (levels * np.asarray(d).astype(np.float32)[:, None]).reshape(shape)


def encode_dat(source) -> bytes:
    """A whole Q4_0 .dat file (header + blocks) from a float weight, a ``Q4_0Tensor`` or
    ``(q, d, shape)``."""
    if isinstance(source, Q4_0Tensor):
        data, shape = source.packed.cpu().numpy().tobytes(), tuple(source.shape)
    else:
        if isinstance(source, tuple):
            q, d, shape = source
        else:
            q, d = quantize(source)
            shape = tuple(source.shape)
        shape = tuple(int(s) for s in shape)
        k = int(np.prod(shape[1:])) if len(shape) >= 2 else 0
        if len(shape) < 2 or k % BLOCK or len(q) * BLOCK != shape[0] * k:
            raise ValueError(f"{len(q)} Q4_0 blocks do not make a {shape} weight (rank >= 2, "
                             f"k a multiple of {BLOCK})")
        data = pack(q, d)
    return header(shape, len(data), BITS_PER_ITEM, ITEM_TYPE, TRACT_VENDOR) + data


class Q4_0Tensor(PackedTensor):
    """A read-only float tensor stored as Q4_0 blocks, dequantized whenever an op uses it.

    ``packed`` is the uint8 tensor ``[n_blocks, 18]`` of raw blocks (the .dat payload);
    ``shape``/``dtype`` are the float weight's. Put it in a module with
    ``nn.Parameter(Q4_0Tensor.from_float(w), requires_grad=False)``.

    A ``PackedTensor`` (t2n/quant/packed.py): every op that reads it gets the dequantized
    tensor (computed again at each use, never cached), so its results are plain tensors;
    detach/alias/clone and ``.to()`` (device, or another float dtype, which only relabels the
    dequantized dtype) keep it quantized. Ops that would write to it (in-place and ``out=``
    variants, ``t[i] = v``, ``t.data = v``) raise. Views (``t.t()``, ``t[0]``) are dequantized
    copies, not views. ``.numpy()`` is a dequantized copy.
    """

    packed: torch.Tensor
    INNER = ("packed",)

    @staticmethod
    def __new__(cls, packed: torch.Tensor, shape, dtype: torch.dtype):
        return cls._wrap(shape, dtype, packed.device)

    @classmethod
    def _make(cls, inner: dict, shape, dtype: torch.dtype) -> Q4_0Tensor:
        return cls(inner["packed"], shape, dtype)

    def __init__(self, packed: torch.Tensor, shape, dtype: torch.dtype):
        shape = tuple(shape)
        if len(shape) < 2 or int(np.prod(shape[1:])) % BLOCK:
            raise ValueError(f"a Q4_0 weight has rank >= 2 and k (the product of the dims after "
                             f"the first) a multiple of {BLOCK}, not shape {shape}")
        n = int(np.prod(shape)) // BLOCK
        if packed.dtype != torch.uint8 or tuple(packed.shape) != (n, BLOCK_BYTES):
            raise ValueError(f"a {tuple(shape)} Q4_0 weight needs packed uint8 [{n}, "
                             f"{BLOCK_BYTES}], got {packed.dtype} {tuple(packed.shape)}")
        if not dtype.is_floating_point:
            raise TypeError(f"Q4_0Tensor stands for a float tensor, not {dtype}")
        self.packed = packed

    @classmethod
    def from_float(cls, tensor: torch.Tensor, scales=None, chunk: int = 1 << 16) -> Q4_0Tensor:
        """Quantize a float tensor: min-max, the given per-block ``scales``, or ``scales`` a
        function ``float32 blocks [n, 32] -> scales [n]``. Works through ``chunk`` blocks at
        a time, so that the float32 temporaries stay small next to a large weight."""
        shape = tuple(tensor.shape)
        if len(shape) < 2 or int(np.prod(shape[1:])) % BLOCK \
                or not torch.isfinite(tensor.detach()).all():
            quantize(tensor)  # raises, naming the shape problem or the first non-finite value
        flat = tensor.detach().cpu().reshape(-1, BLOCK)
        if scales is not None and not callable(scales):
            scales = np.asarray(scales, dtype=np.float32).reshape(-1)
            if scales.size != len(flat):
                raise ValueError(f"Q4_0 needs one scale per block of {BLOCK}: {len(flat)} "
                                 f"blocks, got {scales.size} scales")
        packed = torch.empty((len(flat), BLOCK_BYTES), dtype=torch.uint8)
        out = packed.numpy()
        for start in range(0, len(flat), chunk):
            x = flat[start:start + chunk].float().numpy()
            d = scales(x) if callable(scales) else (
                None if scales is None else scales[start:start + chunk])
            out[start:start + chunk] = _pack_blocks(*quantize(x, d))
        return cls(packed.to(tensor.device), shape, tensor.dtype)

    @classmethod
    def from_blocks(cls, d, q, shape, dtype: torch.dtype = torch.float32) -> Q4_0Tensor:
        """The blocks as given: scales ``d [n]`` (rounded to float16) and levels ``q [n, 32]``
        in -8..7 (not necessarily the nearest ones: calibrated methods choose them)."""
        d = np.asarray(d.detach().cpu() if isinstance(d, torch.Tensor) else d, np.float32)
        q = np.asarray(q.detach().cpu() if isinstance(q, torch.Tensor) else q)
        n = int(np.prod(shape)) // BLOCK
        if d.shape != (n,) or q.shape != (n, BLOCK):
            raise ValueError(f"a {tuple(shape)} Q4_0 weight takes d [{n}] and q [{n}, {BLOCK}], "
                             f"got {d.shape} and {q.shape}")
        if q.size and (q.min() < -8 or q.max() > 7):
            raise ValueError("Q4_0 levels run from -8 to 7")
        packed = _pack_blocks((q + 8).astype(np.uint8), _scales(d, n))
        return cls(torch.from_numpy(packed), shape, dtype)

    @property
    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """``(q uint8 [n_blocks, 32], d float16 [n_blocks])``."""
        return unpack(self.packed.cpu().numpy(), len(self.packed))

    def dequantize(self) -> torch.Tensor:
        """The plain float tensor (shape and dtype of the original weight)."""
        return _decode(self.packed, self.dtype).reshape(self.shape)

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return _rows_of(self, indices)


def _decode(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Blocks ``[n, 18]`` as values ``[n, 32]`` of ``dtype``. float16 and float32 are computed
    in that type directly: (q - 8) * d is an integer in [-8, 7] times a float16 scale, exact
    before the one rounding, so the result equals the float32 computation cast down."""
    work = dtype if dtype in (torch.float16, torch.float32) else torch.float32
    d = raw[:, :2].contiguous().view(torch.float16).to(work)
    nibbles = raw[:, 2:]
    q = torch.cat([nibbles & 0x0F, nibbles >> 4], dim=1).to(work)
    return q.sub_(8).mul_(d).to(dtype)


def _rows_of(table: Q4_0Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``embedding(table, indices)``, decoding only the rows looked up."""
    rows, width = table.shape
    blocks = table.packed.view(rows, width // BLOCK, BLOCK_BYTES)[indices]
    return _decode(blocks.reshape(-1, BLOCK_BYTES), table.dtype).reshape(*indices.shape, width)
