"""Weight quantization formats that tract runs natively (block-quantized .dat tensors) and
8-bit weights dequantized in the graph (t2n.quant.w8)."""
from __future__ import annotations

from t2n.quant import q4_0, q8_1
from t2n.quant.q4_0 import Q4_0Tensor
from t2n.quant.q8_1 import Q8_1Tensor
from t2n.quant.w8 import W8Tensor

__all__ = ["Q4_0Tensor", "Q8_1Tensor", "W8Tensor", "GATHER_ONLY", "storage_of"]

# tensor type -> (storage name shown by `t2n info`, .dat encoder)
_FORMATS = {Q4_0Tensor: ("q4_0", q4_0.encode_dat), Q8_1Tensor: ("q8_1", q8_1.encode_dat)}

# storages tract 0.23.9 reads only as gather tables (tract_core_gather with datum_type): as a
# matmul weight they load but cannot run
GATHER_ONLY = frozenset({"q8_1"})


def storage_of(tensor):
    """``(storage name, encode)`` when ``tensor`` is stored in a block format, else None."""
    return _FORMATS.get(type(tensor))
