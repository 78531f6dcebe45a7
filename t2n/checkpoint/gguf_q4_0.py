"""GGUF Q4_0 tensors carried into tract's Q4_0 as they are.

A GGUF tensor of type Q4_0 holds GGML's ``block_q4_0``: 32 values as one float16 scale and 16
bytes of 4-bit levels, the layout tract's Q4_0 ``.dat`` holds too. transformers reads a GGUF
file by dequantizing every tensor (and reorders the rows of some, e.g. Llama's query/key
projections); t2n then puts back, for each Q4_0 tensor, its own blocks in place of the float
weight made from it, so a model quantized by llama.cpp (with its importance matrix) reaches tract
unchanged: same scales, same levels.

Which weight came from which tensor is found from the values, not from names: a weight takes a
tensor's blocks only if each of its rows equals, bit for bit in the weight's float type, the
decoding of one row of the tensor (that also gives the row order transformers chose). A tensor
no weight matches is left dequantized, with a log line, as are tensors of other GGUF types.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from t2n.quant.q4_0 import BLOCK, BLOCK_BYTES, Q4_0Tensor, dequantize, unpack

__all__ = ["carry_q4_0"]

log = logging.getLogger(__name__)


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).reshape(-1)


def _row_order(source: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """``idx`` with ``target[i] == source[idx[i]]`` bit for bit for every row, or None."""
    vs, vt = _rows(source), _rows(target)
    order = np.argsort(vs, kind="stable")
    pos = np.clip(np.searchsorted(vs[order], vt), 0, len(vs) - 1)
    idx = order[pos]
    return idx if bool((vs[idx] == vt).all()) else None


def carry_q4_0(model: nn.Module, path) -> int:
    """Put the blocks of ``path``'s Q4_0 tensors in place of the float weights of ``model``
    (loaded from that GGUF file by transformers) that decode from them; returns how many."""
    from gguf import GGMLQuantizationType, GGUFReader
    reader = GGUFReader(str(Path(path)))
    kinds = Counter(t.tensor_type.name for t in reader.tensors)
    tensors = [t for t in reader.tensors if t.tensor_type == GGMLQuantizationType.Q4_0]
    others = {k: v for k, v in kinds.items() if k not in ("Q4_0", "F32", "F16")}
    if others:
        log.info("%s: %s tensor(s) dequantized to float (only Q4_0 is carried as it is)",
                 Path(path).name, ", ".join(f"{v} {k}" for k, v in sorted(others.items())))
    if not tensors:
        return 0
    users: dict[int, list] = defaultdict(list)
    params: dict[int, torch.Tensor] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for leaf, p in module._parameters.items():
            if p is not None and p.dim() == 2 and p.is_floating_point() \
                    and not isinstance(p, Q4_0Tensor):
                users[id(p)].append((module, leaf))
                params[id(p)] = p
    by_shape: dict[tuple, list] = defaultdict(list)
    for key, p in params.items():
        by_shape[tuple(p.shape)].append(key)
    carried = 0
    for t in tensors:
        k = int(t.shape[0])
        n = int(t.n_elements) // k
        raw = np.asarray(t.data, dtype=np.uint8).reshape(n * (k // BLOCK), BLOCK_BYTES)
        values = dequantize(*unpack(raw, len(raw)), (n, k))
        for key in by_shape.get((n, k), []):
            p = params[key]
            np_dtype = {torch.float32: np.float32, torch.float16: np.float16}.get(p.dtype)
            if np_dtype is None:
                continue
            idx = _row_order(values.astype(np_dtype), p.detach().cpu().numpy())
            if idx is None:
                continue
            packed = raw.reshape(n, k // BLOCK, BLOCK_BYTES)[idx].reshape(-1, BLOCK_BYTES)
            weight = nn.Parameter(Q4_0Tensor(torch.from_numpy(packed.copy()), (n, k), p.dtype),
                                  requires_grad=False)
            for module, leaf in users[key]:
                module._parameters[leaf] = weight
            by_shape[(n, k)].remove(key)
            carried += 1
            break
        else:
            log.info("%s: no weight of the model decodes from it exactly: dequantized", t.name)
    log.info("%s: %d Q4_0 tensor(s) carried as they are (scales and levels kept)",
             Path(path).name, carried)
    return carried
