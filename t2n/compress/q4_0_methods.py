"""The built-in Q4_0 compressions: which layers, and how each block's scale is chosen."""
from __future__ import annotations

import logging
from functools import partial

import torch
from torch import nn

from t2n.compress import scales as scale_fns
from t2n.compress.layers import quantize_layers
from t2n.compress.registry import BUILTIN
from t2n.quant.q4_0 import BLOCK, Q4_0Tensor

__all__ = ["quantize_q4_0"]

log = logging.getLogger("t2n.compress")

LINEAR = (nn.Linear,)
WITH_EMBEDDINGS = (nn.Linear, nn.Embedding)
ALL = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)


def _q4_0(weight: torch.Tensor, name: str, scale_fn) -> nn.Parameter:
    scales = None if scale_fn is scale_fns.signed_max else scale_fn  # None: tract's rule
    return nn.Parameter(Q4_0Tensor.from_float(weight, scales=scales), requires_grad=False)


def _excluded(module) -> bool:
    """tract cannot run Q4_0 filters of depthwise convolutions (one filter per group)."""
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups > 1 \
        and module.out_channels == module.groups


def quantize_q4_0(model: nn.Module, classes: tuple, scale_fn=scale_fns.min_max) -> nn.Module:
    """Swap the weights of ``classes`` modules for Q4_0 tensors with scales from ``scale_fn``."""
    return quantize_layers(model, classes, partial(_q4_0, scale_fn=scale_fn),
                           block=BLOCK, exclude=_excluded)


def _entry(classes, scale_fn, doc):
    def compress(model, tokenizer=None, export_dirpath=None, local_dir=None, **_):
        return quantize_q4_0(model, classes, scale_fn)
    compress.__doc__ = doc
    return compress


BUILTIN.update({
    "min_max_q4_0": _entry(LINEAR, scale_fns.min_max,
                           "Q4_0 min-max scales on Linear weights"),
    "min_max_q4_0_with_embeddings": _entry(WITH_EMBEDDINGS, scale_fns.min_max,
                                           "Q4_0 min-max scales on Linear and Embedding"),
    "min_max_q4_0_with_embeddings_99": _entry(
        WITH_EMBEDDINGS, scale_fns.percentile(0.99),
        "Q4_0 on Linear and Embedding, magnitudes clipped at each block's 0.99 quantile"),
    "min_max_q4_0_all": _entry(ALL, scale_fns.min_max,
                               "Q4_0 min-max scales on Linear, Embedding, Conv1d, Conv2d"),
    "signed_max_q4_0_all": _entry(ALL, scale_fns.signed_max,
                                  "Q4_0 on Linear, Embedding, Conv1d, Conv2d, signed peak on "
                                  "level -8 (tract's and GGML's own rule)"),
    "grid_mse_q4_0": _entry(LINEAR, scale_fns.grid_mse,
                            "Q4_0 on Linear, per-block scale searched for least squared error"),
    "grid_mse_q4_0_all": _entry(ALL, scale_fns.grid_mse,
                                "Q4_0 on Linear, Embedding, Conv1d, Conv2d, per-block scale "
                                "searched for least squared error"),
})
