"""Weight quantization formats that tract runs natively (block-quantized .dat tensors)."""
from __future__ import annotations

from t2n.quant import q4_0
from t2n.quant.q4_0 import Q4_0Tensor

__all__ = ["Q4_0Tensor", "storage_of"]

# tensor type -> (storage name shown by `t2n info`, .dat encoder)
_FORMATS = {Q4_0Tensor: ("q4_0", q4_0.encode_dat)}


def storage_of(tensor):
    """``(storage name, encode)`` when ``tensor`` is stored in a block format, else None."""
    return _FORMATS.get(type(tensor))
