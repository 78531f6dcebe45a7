"""NNEF tensor files (``.dat``): a 128-byte little-endian header, then the data.

Header layout (NNEF 1.0 tensor file, as tract reads it)::

    offset size field
         0    2 magic            0x4E 0xEF
         2    1 version major    1
         3    1 version minor    0
         4    4 data length in bytes (u32)
         8    4 rank (u32, at most 8)
        12   32 dims, 8 x u32 (unused ones 0)
        44    4 bits per item (u32)
        48    2 item type (u16): 0 float, 1 unsigned int, 3 quantized signed int,
                 4 signed int, 5 bool; block formats use vendor-specific codes
        50    2 item type vendor (u16): 0 = Khronos, 0x5452 ('TR') = tract
        52   32 (deprecated quantization parameters, zero)
        84   44 padding (zero)
"""
from __future__ import annotations

import struct

import numpy as np

__all__ = ["header", "encode_array", "write_array", "read_array", "TRACT_VENDOR"]

MAGIC = b"\x4e\xef"
TRACT_VENDOR = (ord("T") << 8) | ord("R")
_HEADER = struct.Struct("<2sBBII8IIHH32s44x")
assert _HEADER.size == 128

# numpy kind -> NNEF item type code
_ITEM_TYPE = {"f": 0, "u": 1, "i": 4, "b": 5}


def header(shape, data_nbytes: int, bits_per_item: int, item_type: int, vendor: int = 0) -> bytes:
    """The 128 header bytes for a tensor of ``shape`` whose data is ``data_nbytes`` long."""
    if len(shape) > 8:
        raise ValueError(f"NNEF tensors have rank 8 at most, got shape {tuple(shape)}")
    dims = list(shape) + [0] * (8 - len(shape))
    return _HEADER.pack(MAGIC, 1, 0, data_nbytes, len(shape), *dims, bits_per_item, item_type,
                        vendor, b"")


def _item_type(dtype: np.dtype) -> int:
    if dtype.kind not in _ITEM_TYPE:
        raise ValueError(f"no NNEF item type for numpy dtype {dtype}")
    return _ITEM_TYPE[dtype.kind]


def encode_array(array: np.ndarray) -> tuple[bytes, memoryview]:
    """Header bytes and a zero-copy view of the data of a plain (float/int/bool) array."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    head = header(array.shape, array.nbytes, array.dtype.itemsize * 8, _item_type(array.dtype))
    return head, memoryview(array.reshape(-1)).cast("B")


def write_array(path, array: np.ndarray) -> int:
    """Write ``array`` as a .dat file; returns the bytes written."""
    head, data = encode_array(array)
    with open(path, "wb") as f:
        f.write(head)
        f.write(data)
    return len(head) + len(data)


_DTYPE = {(0, 16): np.float16, (0, 32): np.float32, (0, 64): np.float64,
          (1, 8): np.uint8, (1, 16): np.uint16, (1, 32): np.uint32, (1, 64): np.uint64,
          (2, 8): np.uint8, (3, 8): np.int8, (3, 32): np.int32, (3, 64): np.int64,
          (4, 8): np.int8, (4, 16): np.int16, (4, 32): np.int32, (4, 64): np.int64,
          (5, 8): np.bool_}


def read_array(path) -> np.ndarray:
    """Read a plain .dat file back (block-quantized files are not plain arrays)."""
    with open(path, "rb") as f:
        raw = f.read()
    magic, _, _, nbytes, rank, *rest = _HEADER.unpack_from(raw)
    dims, bits, item_type, vendor = rest[:8], rest[8], rest[9], rest[10]
    if magic != MAGIC:
        raise ValueError(f"{path}: not an NNEF tensor file (bad magic)")
    if vendor != 0 or (item_type, bits) not in _DTYPE:
        raise ValueError(f"{path}: item type {item_type:#x}/{bits} bits is not a plain array")
    data = np.frombuffer(raw, dtype=_DTYPE[(item_type, bits)], count=-1, offset=128)
    return data[: int(np.prod(dims[:rank], dtype=np.int64))].reshape(dims[:rank])
