"""Choose the weights a compression quantizes and swap them for quantized tensors.

A weight is quantized once even when several modules share it (an embedding tied with the
lm_head); a weight also used by a module kind that was not selected stays in float; a weight
whose reduction size is not a multiple of the block size stays in float. Each case is logged.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from t2n.memory import drop_pages, file_mappings

__all__ = ["quantize_layers", "KINDS"]

log = logging.getLogger("t2n.compress")

KINDS = {"linear": (nn.Linear,), "embedding": (nn.Embedding,),
         "conv": (nn.Conv1d, nn.Conv2d)}


def _weight_users(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    users = defaultdict(list)
    for name, module in model.named_modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if weight is not None:
            users[id(weight)].append((name, module))
    return users


def quantize_layers(model: nn.Module, classes: tuple, to_quantized: Callable,
                    block: int = 32, exclude: Callable = lambda module: False) -> nn.Module:
    """Replace the weight of every module of ``classes`` by ``to_quantized(weight, name)``
    (a Parameter), except modules for which ``exclude(module)`` holds."""
    users = _weight_users(model)
    mappings = file_mappings()
    done: dict[int, torch.Tensor] = {}
    quantized_ids: set[int] = set()
    count = skipped = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, classes):
                continue
            weight = module._parameters.get("weight")
            if weight is None:
                continue
            key = id(weight)
            if key in quantized_ids:  # a tied weight, already swapped through another user
                continue
            if key in done:
                module.weight = done[key]
                log.debug("%s.weight shares an already quantized weight", name)
                continue
            if exclude(module):
                log.info("%s.weight left in float: %s weights are not quantized", name,
                         type(module).__name__)
                skipped += 1
                continue
            others = [n for n, m in users[key] if not isinstance(m, classes)]
            if others:
                log.info("%s.weight left in float: also used by %s, not selected", name,
                         ", ".join(others))
                skipped += 1
                continue
            k = int(weight[0].numel()) if weight.dim() > 0 else 0
            if weight.dim() < 2 or k % block:
                log.info("%s.weight left in float: shape %s has no %d-value blocks along its "
                         "reduction axis", name, tuple(weight.shape), block)
                skipped += 1
                continue
            quantized = to_quantized(weight.detach(), name)
            for _, user in users[key]:
                user.weight = quantized
            done[key] = quantized
            drop_pages(weight, mappings)  # a weight mapped from its file: let its pages go
            quantized_ids.add(id(quantized))
            count += 1
    log.info("quantized %d weight(s), %d left in float", count, skipped)
    return model
