"""A Hugging Face causal LM as a module whose KV cache is explicit inputs and outputs.

``KVCacheLLM(model)(input_ids, k_0, v_0, k_1, v_1, ...)`` returns ``(logits, k'_0, v'_0, ...)``:
each past key/value ``[batch, kv_heads, P, head_dim]`` comes back with the S new positions
appended, ``[batch, kv_heads, P + S, head_dim]``. Names follow torch-to-nnef's LLM bundles.

State-space layers (Mamba, Mamba-2, the SSM layers of hybrids) carry two states instead of a
key and a value: the conv state ``[batch, channels, conv_kernel]`` (the last inputs of the
causal convolution) and the recurrent state (``[batch, channels, N]`` for Mamba,
``[batch, heads, head_dim, N]`` for Mamba-2), both of fixed size, replaced at each call;
their names are ``in_cache_conv_i`` / ``in_cache_ssm_i``. A hybrid layer (a mixer and an
attention in one transformers layer: FalconH1, Zamba2's shared-attention layers) carries its
key and value, then its two states. A convolution layer (LFM2's gated short convolution)
carries its conv state alone. A layout lists each layer's kind.
"""
from __future__ import annotations

import inspect
from contextlib import nullcontext
from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, LinearAttentionAndFullAttentionLayer

from t2n import ssm
from t2n.compat import cache_argument
from t2n.errors import OptionError

__all__ = ["KVCacheLLM", "input_names", "output_names", "dynamic_axes", "past_from_cache",
           "layout_of", "empty_past", "ATTENTION", "SSM", "HYBRID", "CONV", "STATE_ONLY"]

ATTENTION, SSM, HYBRID, CONV = "attention", "ssm", "hybrid", "conv"
# the cache tensors of each layer kind, by name
_PARTS = {ATTENTION: ("key", "value"), SSM: ("conv", "ssm"),
          HYBRID: ("key", "value", "conv", "ssm"), CONV: ("conv",)}
STATE_ONLY = (SSM, CONV)   # kinds with no keys/values (no past-length axis)
_GROWING = ("key", "value")   # the parts with a past-length axis (2); the others have a fixed size


def _layout(layers) -> tuple[str, ...]:
    """A layer count (attention only) or a sequence of layer kinds."""
    if isinstance(layers, int):
        return (ATTENTION,) * layers
    return tuple(layers)


def input_names(layers: int | Sequence[str]) -> list[str]:
    """``input_ids``, then each layer's cache inputs: ``in_cache_key_i``, ``in_cache_value_i``
    (attention), ``in_cache_conv_i``, ``in_cache_ssm_i`` (state space), or all four (hybrid);
    ``layers`` is the number of layers (attention only) or the kind of each layer."""
    return ["input_ids"] + [f"in_cache_{part}_{i}" for i, kind in enumerate(_layout(layers))
                            for part in _PARTS[kind]]


def output_names(layers: int | Sequence[str]) -> list[str]:
    """``outputs`` (the logits), then each layer's updated caches, named as the inputs."""
    return ["outputs"] + [name.replace("in_", "out_", 1) for name in input_names(layers)[1:]]


# smallest sizes, told to tract: a call brings at least one token, the past may be empty
SYMBOL_MIN = {"P": 0, "S": 1}


def dynamic_axes(layers: int | Sequence[str]) -> dict:
    """S: new tokens (axis 1 of input_ids); P: past tokens (axis 2 of every key/value input;
    state-space states have a fixed size)."""
    names = input_names(layers)[1:]
    return {"input_ids": {1: "S"}, **{name: {2: "P"} for name in names
                                      if name.startswith(("in_cache_key_", "in_cache_value_"))}}


def empty_past(past: Sequence[torch.Tensor], layers) -> list[torch.Tensor]:
    """The cache of an empty past shaped as ``past``: zero-length keys/values, zero states
    (a state-space layer's states after no token are zeros)."""
    parts = [part for kind in _layout(layers) for part in _PARTS[kind]]
    return [t[:, :, :0] if part in _GROWING else torch.zeros_like(t)
            for t, part in zip(past, parts)]


class _GivenPast:
    """Past keys/values given as tensors: the length is the tensor's size, read without the
    emptiness test of DynamicLayer (a guard on P that torch.export would record), and the first
    update is a plain concatenation (no concat with a 1-D empty tensor)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values = keys, values
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.keys.shape[-2]


class _PastLayer(_GivenPast, DynamicLayer):
    """A cache layer holding given past keys/values."""


class _PastHybridLayer(_GivenPast, LinearAttentionAndFullAttentionLayer):
    """A hybrid cache layer holding given past keys/values and the mixer's states (set by
    t2n.ssm.state_layer)."""


def _is_state_layer(layer) -> bool:
    from transformers.cache_utils import LinearAttentionCacheLayerMixin
    return isinstance(layer, LinearAttentionCacheLayerMixin)


def _has_keys(layer) -> bool:
    return all(isinstance(t, torch.Tensor) and t.dim() == 4
               for t in (getattr(layer, "keys", None), getattr(layer, "values", None)))


def past_from_cache(cache) -> list[torch.Tensor]:
    """A transformers cache as the flat list k_0, v_0, k_1, v_1, ... (conv state and recurrent
    state for state-space layers, after the key and value for hybrid layers)."""
    out = []
    for layer in cache.layers:
        if _is_state_layer(layer):
            if _has_keys(layer):
                out += [layer.keys, layer.values]
            out.append(layer.conv_states[0])
            if layer.recurrent_states[0] is not None:
                out.append(layer.recurrent_states[0])
        else:
            out += [layer.keys, layer.values]
    return out


def layout_of(cache) -> tuple[str, ...]:
    """Each layer's kind in a filled cache: attention (keys and values [b, heads, seq, dim]),
    state space (a conv state and a recurrent state) or hybrid (both); OptionError for any
    other cache."""
    kinds = []
    for i, layer in enumerate(cache.layers):
        if _is_state_layer(layer):
            if layer.number_of_states != 1 or not isinstance(layer.conv_states[0],
                                                             torch.Tensor):
                break
            if layer.recurrent_states[0] is None and not _has_keys(layer):
                kinds.append(CONV)
                continue
            if not isinstance(layer.recurrent_states[0], torch.Tensor):
                break
            kinds.append(HYBRID if _has_keys(layer) else SSM)
        elif _has_keys(layer):
            kinds.append(ATTENTION)
        else:
            break
    else:
        return tuple(kinds)
    raise OptionError(f"cache layer {i} ({type(cache.layers[i]).__name__}) holds neither a "
                      "[batch, heads, seq, dim] key/value pair nor one conv state (and one "
                      "recurrent state)", "export_llm supports attention decoders (Llama, "
                      "Qwen2, Mistral, ...), Mamba, Mamba-2, LFM2 and hybrids of them")


def new_cache(model) -> DynamicCache:
    """An empty cache for ``model``: full (non-sliding) attention layers, and transformers'
    linear-attention layers (with a full attention part for hybrid layers) where the model's
    config has state-space layers."""
    config = model.config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None) or ()
    if not any(t in ("linear_attention", "hybrid", "mamba", "conv") for t in types):
        return DynamicCache()
    cache = DynamicCache(config=model.config)
    cache.layers = [layer if _is_state_layer(layer) else DynamicLayer() for layer in cache.layers]
    return cache


class KVCacheLLM(torch.nn.Module):
    """forward(input_ids, *past) -> (logits, *updated past), for one causal LM.

    Every attention layer gets a full (non-sliding) cache: sliding-window attention is applied
    by the model's mask, so the returned caches always hold all P + S positions. A state-space
    layer (``layout``) gets its conv and recurrent states (a hybrid layer both), and its mixer
    computes with t2n.ssm's forms (the scan as one op, the states read and written
    functionally).
    ``num_logits_to_keep`` logits rows are returned (the last ones); 0 keeps one row per
    input token.
    """

    def __init__(self, model: torch.nn.Module, num_logits_to_keep: int = 1,
                 layout: Sequence[str] | None = None):
        super().__init__()
        if not isinstance(num_logits_to_keep, int) or num_logits_to_keep < 0:
            raise OptionError(f"num_logits_to_keep={num_logits_to_keep!r}",
                              "give 0 (logits of every input token) or a positive count")
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = cache_argument(model)
        self.model = model
        self.num_logits_to_keep = num_logits_to_keep
        self._keep_kwarg = "logits_to_keep" in params
        self.layout = None if layout is None else tuple(layout)

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        if self.layout is None and len(past) % 2:
            raise OptionError(f"{len(past)} past tensors", "give a key and a value per layer")
        layout = self.layout or _layout(len(past) // 2)
        counts = [len(_PARTS[kind]) for kind in layout]
        if sum(counts) != len(past):
            raise OptionError(f"{len(past)} past tensors for {len(layout)} layers",
                              f"give {sum(counts)} cache tensors ({', '.join(layout)})")
        cache = DynamicCache()
        cache.layers, start = [], 0
        for kind, count in zip(layout, counts):
            cache.layers.append(_cache_layer(kind, past[start:start + count]))
            start += count
        # a state-only layer counts no tokens; a model reading its positions from such a
        # layer (Zamba2: layer 0) gets the past length of the layers that hold keys
        past_length = next((layer.keys.shape[-2] for layer in cache.layers
                            if _has_keys(layer)), None)
        if past_length is not None:
            for layer, kind in zip(cache.layers, layout):
                if kind in STATE_ONLY:
                    layer.cumulative_length_linear = past_length
        kwargs = {"logits_to_keep": self.num_logits_to_keep} if self._keep_kwarg else {}
        kwargs[self._cache_kwarg] = cache
        forms = ssm.scan_forms(self.model) if set(layout) != {ATTENTION} else nullcontext()
        with forms:
            out = self.model(input_ids, use_cache=True, **kwargs)
        logits = out.logits
        if self.num_logits_to_keep and not self._keep_kwarg:
            logits = logits[:, -self.num_logits_to_keep:]
        return (logits, *past_from_cache(cache))


def _cache_layer(kind: str, tensors: Sequence[torch.Tensor]):
    """The cache layer of one layer's past tensors (_PARTS[kind])."""
    if kind == ATTENTION:
        return _PastLayer(*tensors)
    if kind == SSM:
        return ssm.state_layer(*tensors)
    if kind == CONV:
        return ssm.state_layer(tensors[0], None)
    keys, values, conv_state, recurrent_state = tensors
    return ssm.state_layer(conv_state, recurrent_state, _PastHybridLayer(keys, values))
