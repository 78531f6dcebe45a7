"""Q8_1: 8-bit block-quantized tables as tract (and GGML) store them; tract 0.23.9 reads them
only as gather tables (embeddings).

A weight of shape ``[m, d1, ...]`` is seen as a matrix ``[m, k]`` with ``k = d1*...`` (``k`` a
multiple of 32), cut into blocks of 32 consecutive values in row-major order, 36 bytes each::

    offset size
         0    2  d, the block scale: IEEE float16, little-endian
         2    2  s = d * sum(q), float16 (GGML's block_q8_1 field; tract's CPU decoder ignores it)
         4   32  q[0..31], signed 8-bit levels

    value[i] = q[i] * d

Quantizer (GGML's ``quantize_row_q8_0_ref``/``q8_1_ref``, in float32): ``d = max|x| / 127``,
``q = roundf(x * (1/d))`` (round half away from zero), 0 for an all-zero block; ``d`` is stored
rounded to float16. The levels are chosen against the unrounded ``d``, as GGML does, so they
decode with at most half a step plus d's float16 rounding of error. ``s`` is written from the
stored ``d`` (so it is a function of the stored ``d`` and ``q``; GGML uses the unrounded one).

``.dat`` file: the 128-byte NNEF header (``t2n.nnef.dat.header``) with the logical shape, bits
per item ``0xFFFFFFFF``, item type ``0x3080``, vendor ``0x5452`` ('TR'), data length
``n_blocks * 36``; then the blocks. tract requires rank >= 2.

tract 0.23.9: a Q8_1 table works as the table of ``tract_core_gather(table, indices, axis = 0,
datum_type = ...)`` (datum_type is required, as for Q4_0 tables); as a matmul weight it loads
but ``into_runnable`` fails (no kernel), so t2n writes Q8_1 only for tables that are gathered.
"""
from __future__ import annotations

import numpy as np
import torch

from t2n.nnef.dat import TRACT_VENDOR, header
from t2n.quant.packed import PackedTensor

__all__ = ["BLOCK", "BLOCK_BYTES", "ITEM_TYPE", "quantize", "pack", "unpack", "dequantize",
           "encode_dat", "Q8_1Tensor"]

BLOCK = 32
BLOCK_BYTES = 4 + BLOCK
ITEM_TYPE = 0x3080
BITS_PER_ITEM = 0xFFFFFFFF


def _blocks(weight) -> np.ndarray:
    """``weight`` as float32 blocks ``[n_blocks, 32]``, after the checks."""
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().cpu()
        if not weight.is_floating_point():
            raise TypeError(f"Q8_1 quantizes float weights, got a {weight.dtype} tensor")
        weight = weight.float().numpy()
    weight = np.asarray(weight)
    if weight.dtype.kind != "f":
        raise TypeError(f"Q8_1 quantizes float weights, got dtype {weight.dtype}")
    _check_shape(weight.shape)
    x = np.ascontiguousarray(weight, dtype=np.float32).reshape(-1, BLOCK)
    finite = np.isfinite(x)
    if not finite.all():
        flat = int(np.flatnonzero(~finite)[0])
        at = [int(i) for i in np.unravel_index(flat, weight.shape)]
        raise ValueError(f"Q8_1 cannot quantize non-finite values: "
                         f"{int(x.size - np.count_nonzero(finite))} NaN/inf in the weight, the "
                         f"first {x.reshape(-1)[flat]} at index {at}")
    return x


def _check_shape(shape) -> tuple:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"Q8_1 needs a weight of rank >= 2 (rows first), got shape {shape}")
    k = int(np.prod(shape[1:]))
    if k % BLOCK:
        raise ValueError(f"Q8_1 needs the product of the dims after the first (k) to be a "
                         f"multiple of {BLOCK}: shape {shape} has k = {k}")
    return shape


def quantize(weight) -> tuple[np.ndarray, np.ndarray]:
    """Q8_1 blocks of a float weight ``[m, ...]``: ``(q int8 [n_blocks, 32], d float16
    [n_blocks])``."""
    x = _blocks(weight)
    d32 = np.abs(x).max(axis=1) / np.float32(127)
    with np.errstate(over="ignore"):
        d = d32.astype(np.float16)
    if not np.isfinite(d).all():
        bad = int(np.flatnonzero(~np.isfinite(d))[0])
        raise ValueError(f"Q8_1 scale overflows float16: block {bad} has a value of magnitude "
                         f"{d32[bad] * 127:g} (at most {127 * 65504} fits)")
    with np.errstate(divide="ignore"):
        inv = np.where(d32 == 0, np.float32(0), np.float32(1) / d32).astype(np.float32)
    t = x * inv[:, None]
    # roundf: |t| <= 127 has an exact float64 sum with 0.5, so floor gives half away from zero
    q = np.copysign(np.floor(np.abs(t).astype(np.float64) + 0.5), t)
    return q.astype(np.int8), d


def _pack_blocks(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``pack`` as a uint8 array ``[n_blocks, 36]``."""
    q, d = np.asarray(q), np.asarray(d)
    if q.ndim != 2 or q.shape[1] != BLOCK or d.shape != (len(q),):
        raise ValueError(f"pack needs q [n, {BLOCK}] and d [n], got {q.shape} and {d.shape}")
    if q.dtype.kind not in "ui" or (q.size and (q.min() < -127 or q.max() > 127)):
        raise ValueError("pack needs integer q values in -127..127")
    d16 = d.astype("<f2")
    with np.errstate(over="ignore"):
        s = (d16.astype(np.float32) * q.astype(np.int32).sum(axis=1)).astype("<f2")
    out = np.empty((len(q), BLOCK_BYTES), dtype=np.uint8)
    out[:, 0:2] = d16.view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = s.view(np.uint8).reshape(-1, 2)
    out[:, 4:] = q.astype(np.int8).view(np.uint8)
    return out


def pack(q: np.ndarray, d: np.ndarray) -> bytes:
    """The raw Q8_1 block bytes (36 per block) of ``quantize``'s ``(q, d)``."""
    return _pack_blocks(q, d).tobytes()


def unpack(data, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """``(q int8 [n, 32], d float16 [n])`` from ``n_blocks`` raw blocks (``s`` is dropped)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != n_blocks * BLOCK_BYTES:
        raise ValueError(f"{n_blocks} Q8_1 blocks take {n_blocks * BLOCK_BYTES} bytes, "
                         f"got {raw.size}")
    raw = raw.reshape(n_blocks, BLOCK_BYTES)
    d = raw[:, 0:2].copy().view("<f2").reshape(n_blocks).astype(np.float16)
    return raw[:, 4:].copy().view(np.int8), d


def dequantize(q: np.ndarray, d: np.ndarray, shape) -> np.ndarray:
    """The float32 weight of ``shape`` that the blocks ``(q, d)`` decode to."""
    shape = tuple(int(s) for s in shape)
    if int(np.prod(shape)) != np.asarray(q).size:
        raise ValueError(f"{len(q)} Q8_1 blocks hold {np.asarray(q).size} values, "
                         f"not a {shape} weight")
    return (np.asarray(q).astype(np.float32)
            * np.asarray(d).astype(np.float32)[:, None]).reshape(shape)


def encode_dat(source) -> bytes:
    """A whole Q8_1 .dat file (header + blocks) from a float weight or a ``Q8_1Tensor``."""
    if isinstance(source, Q8_1Tensor):
        data, shape = source.packed.cpu().numpy().tobytes(), tuple(source.shape)
    else:
        q, d = quantize(source)
        data, shape = pack(q, d), tuple(int(s) for s in source.shape)
    return header(shape, len(data), BITS_PER_ITEM, ITEM_TYPE, TRACT_VENDOR) + data


class Q8_1Tensor(PackedTensor):
    """A read-only float tensor stored as Q8_1 blocks, dequantized whenever an op uses it (see
    ``t2n.quant.packed``). ``packed`` is the uint8 tensor ``[n_blocks, 36]`` of raw blocks (the
    .dat payload); ``shape``/``dtype`` are the float weight's. Put it in a module with
    ``nn.Parameter(Q8_1Tensor.from_float(w), requires_grad=False)``; only embedding tables
    should hold it (tract gathers Q8_1 rows but cannot multiply by a Q8_1 matrix)."""

    INNER = ("packed",)
    packed: torch.Tensor

    @staticmethod
    def __new__(cls, packed: torch.Tensor, shape, dtype: torch.dtype):
        return cls._wrap(shape, dtype, packed.device)

    def __init__(self, packed: torch.Tensor, shape, dtype: torch.dtype):
        shape = _check_shape(shape)
        n = int(np.prod(shape)) // BLOCK
        if packed.dtype != torch.uint8 or tuple(packed.shape) != (n, BLOCK_BYTES):
            raise ValueError(f"a {shape} Q8_1 weight needs packed uint8 [{n}, {BLOCK_BYTES}], "
                             f"got {packed.dtype} {tuple(packed.shape)}")
        if not dtype.is_floating_point:
            raise TypeError(f"Q8_1Tensor stands for a float tensor, not {dtype}")
        self.packed = packed

    @classmethod
    def _make(cls, inner: dict, shape, dtype: torch.dtype) -> Q8_1Tensor:
        return cls(inner["packed"], shape, dtype)

    @classmethod
    def from_float(cls, tensor: torch.Tensor, chunk: int = 1 << 16) -> Q8_1Tensor:
        """Quantize a float tensor (GGML's rule), ``chunk`` blocks at a time so that the
        float32 temporaries stay small next to a large table."""
        shape = _check_shape(tensor.shape)
        if not torch.isfinite(tensor.detach()).all():
            _blocks(tensor)  # raises, naming the first non-finite value
        flat = tensor.detach().cpu().reshape(-1, BLOCK)
        packed = torch.empty((len(flat), BLOCK_BYTES), dtype=torch.uint8)
        out = packed.numpy()
        for start in range(0, len(flat), chunk):
            out[start:start + chunk] = _pack_blocks(*quantize(flat[start:start + chunk]))
        return cls(packed.to(tensor.device), shape, tensor.dtype)

    @classmethod
    def from_blocks(cls, d, q, shape, dtype: torch.dtype = torch.float32) -> Q8_1Tensor:
        """The blocks as given: scales ``d [n]`` (rounded to float16) and levels ``q [n, 32]``
        in -127..127."""
        d = np.asarray(d.detach().cpu() if isinstance(d, torch.Tensor) else d)
        q = np.asarray(q.detach().cpu() if isinstance(q, torch.Tensor) else q)
        n = int(np.prod(_check_shape(shape))) // BLOCK
        if d.shape != (n,) or q.shape != (n, BLOCK):
            raise ValueError(f"a {tuple(shape)} Q8_1 weight takes d [{n}] and q [{n}, {BLOCK}], "
                             f"got {d.shape} and {q.shape}")
        with np.errstate(over="ignore"):
            d16 = d.astype(np.float16)
        if not np.isfinite(d16).all():
            raise ValueError("Q8_1 scales must be finite float16 values")
        return cls(torch.from_numpy(_pack_blocks(q, d16)), shape, dtype)

    @property
    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """``(q int8 [n_blocks, 32], d float16 [n_blocks])``."""
        return unpack(self.packed.cpu().numpy(), len(self.packed))

    def dequantize(self) -> torch.Tensor:
        """The plain float tensor (shape and dtype of the original weight)."""
        return _decode(self.packed, self.dtype).reshape(self.shape)

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """``embedding(table, indices)``, decoding only the rows looked up."""
        rows, width = self.shape
        blocks = self.packed.view(rows, width // BLOCK, BLOCK_BYTES)[indices]
        return _decode(blocks.reshape(-1, BLOCK_BYTES), self.dtype).reshape(*indices.shape, width)


def _decode(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Blocks ``[n, 36]`` as values ``[n, 32]`` of ``dtype``: q * d in float32 (exact: an 8-bit
    level times a float16 scale), then one rounding to ``dtype``."""
    d = raw[:, 0:2].contiguous().view(torch.float16).float()
    q = raw[:, 4:].contiguous().view(torch.int8).float()
    return q.mul_(d).to(dtype)
