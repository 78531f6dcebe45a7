"""Keep the exporter's resident memory near one copy of the model.

Two things hold memory that the exporter no longer needs: glibc keeps large freed heap blocks,
and weights that transformers maps from safetensors files stay resident (file pages count in
RSS) after a quantized copy replaced them. ``free_memory`` hands back the first,
``drop_pages`` the second.

Both are Linux-only (glibc's ``malloc_trim``, ``madvise(MADV_PAGEOUT)`` from Linux 5.4, and
``/proc/self/maps``): elsewhere they do nothing (``SUPPORTED`` is False, logged once), exports
work the same and only their peak memory is higher.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import mmap
import sys

import torch

__all__ = ["free_memory", "drop_pages", "drop_weight_pages", "file_mappings", "SUPPORTED",
           "PeakRSS"]

log = logging.getLogger(__name__)

_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now (clean file pages: just dropped)


def _libc():
    if not sys.platform.startswith("linux"):
        log.debug("memory hand-back is Linux-only: not done on %s", sys.platform)
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc
        log.debug("memory hand-back needs glibc: not done here")
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


_LIBC = _libc()
SUPPORTED = _LIBC is not None


def free_memory() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc keeps large freed
    blocks otherwise: after torch's weights are dropped, RSS would stay at the model's size)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process mapped from files (``/proc/self/maps``)."""
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    lo, hi = fields[0].split("-")
                    ranges.append((int(lo, 16), int(hi, 16)))
    except OSError:  # not Linux
        pass
    return ranges


def drop_pages(tensor: torch.Tensor, mappings=None) -> None:
    """Ask the kernel to reclaim the pages under ``tensor``'s data that are mapped from a file
    (weights that transformers maps from safetensors files), once they have been quantized or
    written out. Their content stays: it is read again from the file if the tensor is used
    later. Heap memory is left alone (it would go to swap). ``mappings``: ``file_mappings()``
    read once for many tensors."""
    if _LIBC is None or tensor.device.type != "cpu" or tensor.is_meta:
        return
    try:
        start = tensor.untyped_storage().data_ptr()
        size = tensor.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):  # subclasses without a plain storage
        return
    page = mmap.PAGESIZE
    for lo, hi in (file_mappings() if mappings is None else mappings):
        lo, hi = max(lo, -(-start // page) * page), min(hi, (start + size) // page * page)
        if hi > lo:
            _LIBC.madvise(lo, hi - lo, _MADV_PAGEOUT)  # best effort: an old kernel ignores it


def drop_weight_pages(module: torch.nn.Module) -> None:
    """``drop_pages`` for every parameter and buffer of ``module`` (after a forward pass that
    read every weight mapped from a file: the pages come back only as the weights are used)."""
    mappings = file_mappings()
    for tensor in list(module.parameters()) + list(module.buffers()):
        drop_pages(tensor, mappings)


class PeakRSS:
    """The largest resident set size seen while the ``with`` block runs (VmRSS read from
    /proc/self/status every ``interval`` seconds by a thread); 0 where /proc is missing."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak = interval, 0

    @staticmethod
    def current() -> int:
        try:
            with open("/proc/self/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def __enter__(self):
        import threading
        self._stop = threading.Event()
        self.peak = self.current()

        def sample():
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, self.current())
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())
        return False
