"""A Hugging Face causal LM as a module whose KV cache is explicit inputs and outputs.

``KVCacheLLM(model)(input_ids, k_0, v_0, k_1, v_1, ...)`` returns ``(logits, k'_0, v'_0, ...)``:
each past key/value ``[batch, kv_heads, P, head_dim]`` comes back with the S new positions
appended, ``[batch, kv_heads, P + S, head_dim]``. Names follow torch-to-nnef's LLM bundles.
"""
from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from t2n.compat import cache_argument
from t2n.errors import OptionError

__all__ = ["KVCacheLLM", "input_names", "output_names", "dynamic_axes", "past_from_cache"]


def input_names(n_layers: int) -> list[str]:
    """``input_ids``, then ``in_cache_key_i``, ``in_cache_value_i`` layer by layer."""
    return ["input_ids"] + [f"in_cache_{kv}_{i}" for i in range(n_layers)
                            for kv in ("key", "value")]


def output_names(n_layers: int) -> list[str]:
    """``outputs`` (the logits), then ``out_cache_key_i``, ``out_cache_value_i``."""
    return ["outputs"] + [f"out_cache_{kv}_{i}" for i in range(n_layers)
                          for kv in ("key", "value")]


# smallest sizes, told to tract: a call brings at least one token, the past may be empty
SYMBOL_MIN = {"P": 0, "S": 1}


def dynamic_axes(n_layers: int) -> dict:
    """S: new tokens (axis 1 of input_ids); P: past tokens (axis 2 of every cache input)."""
    return {"input_ids": {1: "S"}, **{name: {2: "P"} for name in input_names(n_layers)[1:]}}


class _PastLayer(DynamicLayer):
    """A cache layer holding given past keys/values. Its length is the tensor's size, read
    without the emptiness test of DynamicLayer (a guard on P that torch.export would record),
    and its first update is a plain concatenation (no concat with a 1-D empty tensor)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values = keys, values
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.keys.shape[-2]


def past_from_cache(cache) -> list[torch.Tensor]:
    """A transformers cache as the flat list k_0, v_0, k_1, v_1, ..."""
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


class KVCacheLLM(torch.nn.Module):
    """forward(input_ids, *past) -> (logits, *updated past), for one causal LM.

    Every layer gets a full (non-sliding) cache: sliding-window attention is applied by the
    model's mask, so the returned caches always hold all P + S positions. ``num_logits_to_keep``
    logits rows are returned (the last ones); 0 keeps one row per input token.
    """

    def __init__(self, model: torch.nn.Module, num_logits_to_keep: int = 1):
        super().__init__()
        if not isinstance(num_logits_to_keep, int) or num_logits_to_keep < 0:
            raise OptionError(f"num_logits_to_keep={num_logits_to_keep!r}",
                              "give 0 (logits of every input token) or a positive count")
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = cache_argument(model)
        self.model = model
        self.num_logits_to_keep = num_logits_to_keep
        self._keep_kwarg = "logits_to_keep" in params

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        if len(past) % 2:
            raise OptionError(f"{len(past)} past tensors", "give a key and a value per layer")
        cache = DynamicCache()
        cache.layers = [_PastLayer(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        kwargs = {"logits_to_keep": self.num_logits_to_keep} if self._keep_kwarg else {}
        kwargs[self._cache_kwarg] = cache
        out = self.model(input_ids, use_cache=True, **kwargs)
        logits = out.logits
        if self.num_logits_to_keep and not self._keep_kwarg:
            logits = logits[:, -self.num_logits_to_keep:]
        return (logits, *past_from_cache(cache))
