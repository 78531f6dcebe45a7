"""The built-in 8-bit weight compressions: Q8_1 embedding tables, and int8 weights with one
scale per row (float activations).

- ``q8_1_embeddings``: every Embedding table as Q8_1 (GGML's 8-bit blocks, 1.125 bytes per
  value), which tract gathers natively. tract 0.23.9 cannot multiply by a Q8_1 matrix, so a
  table tied to a Linear (an LM head sharing the embedding) is untied: the Embedding gets the
  Q8_1 table, the Linear keeps the float weight it had (the model's float type). A table whose
  width is not a multiple of 32 stays in float.
- ``w8_per_row``: Linear weights as int8 levels with a float32 scale per output row (1 byte per
  value plus 4 per row), dequantized by the graph; ``w8_per_row_all`` adds Embedding (gathered
  as int8 rows), Conv1d and Conv2d (a scale per output channel). A tied embedding and LM head
  share one int8 weight.
"""
from __future__ import annotations

import logging

from torch import nn

from t2n.compress.layers import quantize_layers
from t2n.compress.registry import BUILTIN
from t2n.memory import drop_pages, file_mappings
from t2n.quant.q8_1 import BLOCK, Q8_1Tensor
from t2n.quant.w8 import W8Tensor

__all__ = ["quantize_q8_1_embeddings", "quantize_w8_per_row"]

log = logging.getLogger("t2n.compress")

LINEAR = (nn.Linear,)
ALL = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)


def quantize_q8_1_embeddings(model: nn.Module) -> nn.Module:
    """Swap every Embedding table for a Q8_1 one; other modules sharing a table keep its float
    weight (untied), since tract gathers Q8_1 rows but cannot multiply by them."""
    mappings = file_mappings()
    done: dict[int, nn.Parameter] = {}
    count = skipped = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Embedding):
            continue
        weight = module._parameters.get("weight")
        if weight is None or isinstance(weight, Q8_1Tensor):
            continue
        key = id(weight)
        if key not in done:
            if weight.dim() != 2 or weight.shape[1] % BLOCK:
                log.info("%s.weight left in float: shape %s has no %d-value blocks along its "
                         "rows", name, tuple(weight.shape), BLOCK)
                skipped += 1
                continue
            done[key] = nn.Parameter(Q8_1Tensor.from_float(weight.detach()),
                                     requires_grad=False)
            others = [n for n, m in model.named_modules() if m is not module
                      and not isinstance(m, nn.Embedding)
                      and m._parameters.get("weight") is weight]
            if others:
                log.info("%s.weight is also the weight of %s: that keeps the float weight "
                         "(tract cannot multiply by Q8_1)", name, ", ".join(others))
            else:
                drop_pages(weight, mappings)  # a table mapped from its file: let its pages go
            count += 1
        module.weight = done[key]
    log.info("quantized %d embedding table(s) to Q8_1, %d left in float", count, skipped)
    return model


def _w8(weight, name: str) -> nn.Parameter:
    return nn.Parameter(W8Tensor.from_float(weight), requires_grad=False)


def quantize_w8_per_row(model: nn.Module, classes: tuple) -> nn.Module:
    """Swap the weights of ``classes`` modules for int8 levels with a scale per row."""
    return quantize_layers(model, classes, _w8, block=1)


def _q8_1_embeddings(model, tokenizer=None, export_dirpath=None, local_dir=None, **_):
    """Q8_1 (8-bit blocks of 32) on Embedding tables; a tied LM head keeps its float weight"""
    return quantize_q8_1_embeddings(model)


def _w8_entry(classes, doc):
    def compress(model, tokenizer=None, export_dirpath=None, local_dir=None, **_):
        return quantize_w8_per_row(model, classes)
    compress.__doc__ = doc
    return compress


BUILTIN.update({
    "q8_1_embeddings": _q8_1_embeddings,
    "w8_per_row": _w8_entry(LINEAR, "int8 weights, one f32 scale per output row, on Linear "
                                    "(activations stay float)"),
    "w8_per_row_all": _w8_entry(ALL, "int8 weights, one f32 scale per output row, on Linear, "
                                     "Embedding, Conv1d, Conv2d (activations stay float)"),
})
