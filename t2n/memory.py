"""Keep the exporter's resident memory near one copy of the model.

Two things hold memory that the exporter no longer needs: glibc keeps large freed heap blocks,
and weights that transformers maps from safetensors files stay resident (file pages count in
RSS) after a quantized copy replaced them. ``free_memory`` hands back the first,
``drop_pages`` the second.
"""
from __future__ import annotations

import ctypes
import gc
import mmap

import torch

__all__ = ["free_memory", "drop_pages", "drop_weight_pages"]

_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now (clean file pages: just dropped)


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


_LIBC = _libc()


def free_memory() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc keeps large freed
    blocks otherwise: after torch's weights are dropped, RSS would stay at the model's size)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def drop_pages(tensor: torch.Tensor) -> None:
    """Ask the kernel to reclaim the whole pages under ``tensor``'s data.

    Safe for any tensor: pages mapped from a file are dropped and read again from the file if
    the tensor is used later; heap pages (nothing to write them to without swap) stay. Meant for
    weights mapped from safetensors files once they have been quantized or written out."""
    if _LIBC is None or tensor.device.type != "cpu" or tensor.is_meta:
        return
    try:
        start = tensor.untyped_storage().data_ptr()
        size = tensor.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):  # subclasses without a plain storage
        return
    page = mmap.PAGESIZE
    lo = -(-start // page) * page
    hi = (start + size) // page * page
    if hi > lo:
        _LIBC.madvise(lo, hi - lo, _MADV_PAGEOUT)  # best effort: an old kernel ignores it


def drop_weight_pages(module: torch.nn.Module) -> None:
    """``drop_pages`` for every parameter and buffer of ``module`` (after a forward pass that
    read every weight mapped from a file: the pages come back only as the weights are used)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        drop_pages(tensor)
