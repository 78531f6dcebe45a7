"""An example compression registry to copy: Q4_0 with a per-block clipping sweep.

For every block of 32 weights it tries a few clipping percentiles of the block's magnitudes
and keeps the scale whose dequantized block is closest (least squared error) to the original.

Use it by dotted path, from the folder that holds `registries/`:

    t2n export MODEL OUT.tgz --compression-registry registries.percentile_sweep:REGISTRY \\
        -c percentile_sweep_q4_0

A registry is any mapping of name -> fn(model, tokenizer, export_dirpath, local_dir) returning
the model with chosen weights swapped for quantized tensors (t2n.quant.Q4_0Tensor).
"""
import numpy as np
from torch import nn

from t2n.compress import quantize_q4_0

PERCENTILES = (1.0, 0.999, 0.995, 0.99, 0.98, 0.95)


def _block_error(blocks, d):
    d16 = d.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(d16 == 0, 0, 1 / d16).astype(np.float32)
    q = np.clip(np.floor(blocks * inv[:, None] + 8.5), 0, 15) - 8
    return ((q * d16[:, None] - blocks) ** 2).sum(axis=1)


def sweep_scales(blocks):
    """blocks [n, 32] float32 -> per-block scales [n]: the best of several clippings."""
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)[:, 0]
    magnitudes = np.abs(blocks)
    best_d = peak / -8
    best_e = _block_error(blocks, best_d)
    for p in PERCENTILES[1:]:
        clip = np.quantile(magnitudes, p, axis=1)
        d = (np.sign(peak) * np.minimum(np.abs(peak), clip) / -8).astype(np.float32)
        e = _block_error(blocks, d)
        better = e < best_e
        best_d, best_e = np.where(better, d, best_d), np.where(better, e, best_e)
    return best_d.astype(np.float32)


def percentile_sweep_q4_0(model, tokenizer=None, export_dirpath=None, local_dir=None, **_):
    """Q4_0 on Linear and Embedding, per-block clipping percentile swept for least error"""
    return quantize_q4_0(model, (nn.Linear, nn.Embedding), sweep_scales)


REGISTRY = {"percentile_sweep_q4_0": percentile_sweep_q4_0}
