"""Block-by-block calibration: the model's repeated blocks run one at a time on the samples.

``Blockwise(model, calibration, batches)`` finds the repeated blocks (the largest ModuleList of
modules of one class: a decoder's layers, an encoder's layers); a model without one is a single
block. One cheap pass records what each block is called with (the hidden states entering the
first block; masks, positions and the like for every block) while every block is replaced by a
recorder, so no block computes. Then ``run`` takes the blocks in order: a compression quantizes
block ``i`` from its inputs, which are the outputs of blocks ``0..i-1`` already quantized, and
the block's quantized outputs become the next block's inputs. Memory holds one block's
activations for all samples (its inputs, and the float outputs when asked), never the model's.

Layers outside the blocks (an LM head) are observed in a last pass that replays the last
block's outputs through the rest of the model, stopping once every such layer was reached.
The model stays in host memory; each block moves to ``device`` while it is worked on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from t2n.errors import CompressionError

__all__ = ["Blockwise", "find_blocks", "Call", "first_output"]

log = logging.getLogger("t2n.calibrate")


class _Stop(Exception):
    """Raised by a hook to end a pass early: what it needed was recorded."""


@dataclass
class Call:
    """How a block is called for one batch, its hidden-state input left out: ``key`` is None
    when the hidden states are the first positional argument, else their keyword."""
    args: tuple
    kwargs: dict
    key: str | None

    def invoke(self, module, hidden, device, dtype=torch.float32):
        """``module`` called on ``hidden``, every float tensor in ``dtype`` on ``device``."""
        args, kwargs = _to(self.args, device, dtype), _to(self.kwargs, device, dtype)
        hidden = None if hidden is None else _to(hidden, device, dtype)
        if hidden is None:      # the whole model is the block: its own inputs
            return module(*args, **kwargs)
        if self.key is None:
            return module(hidden, *args, **kwargs)
        return module(*args, **{**kwargs, self.key: hidden})


def _to(value, device, dtype=torch.float32):
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device, dtype) for k, v in value.items()}
    return value


def first_output(out) -> torch.Tensor:
    """The hidden states a block returns (a tensor, or the first item of a tuple/output)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "to_tuple"):
        return first_output(out.to_tuple())
    raise CompressionError(f"a block returned {type(out).__name__}, not hidden states",
                           "this model's blocks cannot be calibrated one at a time")


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The largest ModuleList (by parameter count) of two or more modules of one class that
    hold parameters; empty when the model has none."""
    best, best_size = [], 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        kinds = {type(m) for m in module}
        size = sum(p.numel() for p in module.parameters())
        if len(kinds) == 1 and size > best_size:
            best = [(f"{name}.{i}" if name else str(i), m) for i, m in enumerate(module)]
            best_size = size
    return best


class Blockwise:
    """The blocks of ``calibration.entry`` within ``model`` and how each is called.

    ``batches``: the model-level calls ``[(args, kwargs)]`` (``Calibration.batches``).
    """

    def __init__(self, model: nn.Module, entry: str, batches: list, device):
        self.model = model
        self.entry = model.get_submodule(entry) if entry else model
        self.prefix = f"{entry}." if entry else ""
        self.device = torch.device(device)
        self.batches = batches
        blocks = find_blocks(self.entry)
        self.single = not blocks
        self.blocks = [(self.prefix + n, m) for n, m in blocks] if blocks \
            else [(entry or "model", self.entry)]
        self.calls: list[list[Call]] = []      # [block][batch]
        self.hidden: list = []                 # per batch: the current block's inputs
        self.hidden_dtype = torch.float32
        self.structure = None                  # a block's real output (its kind: tuple, ...)

    # -- capture ------------------------------------------------------------------------------
    def capture(self, outside_hook: Callable | None = None) -> None:
        """Record every block's calls (one pass per batch in which no block computes) and the
        first block's inputs. ``outside_hook(name, module, x)`` sees the inputs of layers
        outside the blocks that run before the first one."""
        if self.single:
            self.calls = [[Call(tuple(a), dict(k), None) for a, k in self.batches]]
            self.hidden = [None] * len(self.batches)
            return
        self.calls = [[] for _ in self.blocks]
        self.hidden = []
        structure = {}

        def recorder(i, block, original):
            def forward(*args, **kwargs):
                if args:
                    hidden, rest, key = args[0], tuple(args[1:]), None
                elif "hidden_states" in kwargs:
                    hidden, key = kwargs.pop("hidden_states"), "hidden_states"
                    rest = ()
                else:
                    raise CompressionError(f"block {self.blocks[i][0]} is called without "
                                           "hidden states", "this model's blocks cannot be "
                                           "calibrated one at a time")
                kwargs = {k: None if _is_cache(v) else v for k, v in kwargs.items()}
                self.calls[i].append(Call(rest, kwargs, key))
                if i == 0:
                    self.hidden.append(hidden.detach().cpu())
                    self.hidden_dtype = hidden.dtype
                if i == len(self.blocks) - 1:
                    raise _Stop
                if "out" not in structure:   # one real call, to return what blocks return
                    structure["out"] = original(hidden, *rest, **kwargs) if key is None \
                        else original(*rest, **{**kwargs, key: hidden})
                self.structure = structure["out"]
                return _like(structure["out"], hidden)
            return forward

        hooks = self._outside_hooks(outside_hook) if outside_hook else []
        with _patched(self.blocks, recorder), torch.no_grad():
            try:
                for args, kwargs in self.batches:
                    try:
                        self.entry(*args, **kwargs)
                    except _Stop:
                        continue
                    raise CompressionError("the calibration pass never reached the last block",
                                           "this model's blocks cannot be calibrated one at a "
                                           "time")
            finally:
                for h in hooks:
                    h.remove()

    def _outside_hooks(self, hook):
        inside = {id(m) for _, b in self.blocks for m in b.modules()}
        handles = []
        for name, module in self.entry.named_modules():
            if id(module) in inside or not list(module.parameters(recurse=False)):
                continue
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, name=self.prefix + name: hook(name, mod, args[0])
                if args and isinstance(args[0], torch.Tensor) else None))
        return handles

    # -- block passes -------------------------------------------------------------------------
    def run_block(self, i: int, block: nn.Module, hidden=None, keep: bool = True,
                  dtype: torch.dtype = torch.float32) -> list:
        """``block`` (on the device, its tensors in ``dtype``) on every batch's inputs: its
        outputs (float32, on the host) when ``keep``. ``hidden`` overrides the current
        inputs."""
        hidden = self.hidden if hidden is None else hidden
        outs = []
        with torch.no_grad():
            for call, h in zip(self.calls[i], hidden):
                out = first_output(call.invoke(block, h, self.device, dtype))
                if keep:
                    outs.append(out.detach().to("cpu", torch.float32))
        return outs

    def replay_outside(self, names: set, hook: Callable) -> None:
        """Run the model with every block answering the last block's outputs (the current
        ``hidden``), ``hook(name, module, x)`` on the layers named, until all were reached."""
        if self.single or not names:
            return
        batch = {"b": 0}

        def replay(i, block, original):
            def forward(*args, **kwargs):
                hidden = self.hidden[batch["b"]].to(_device_of(args, kwargs), self.hidden_dtype)
                return _like(self.structure, hidden)   # what the blocks return, e.g. a tuple
            return forward

        seen = set()
        modules = dict(self.model.named_modules())
        handles = []
        for name in names:
            def pre(mod, args, name=name):
                hook(name, mod, args[0])
                seen.add(name)
                if seen >= names:
                    raise _Stop
            handles.append(modules[name].register_forward_pre_hook(pre))
        try:
            with _patched(self.blocks, replay), torch.no_grad():
                for b, (args, kwargs) in enumerate(self.batches):
                    batch["b"] = b
                    seen.clear()
                    try:
                        self.entry(*args, **kwargs)
                    except _Stop:
                        pass
        finally:
            for h in handles:
                h.remove()


def _is_cache(value) -> bool:
    """A transformers cache object: blocks are called without one (each call is whole)."""
    return type(value).__name__.endswith("Cache") and hasattr(value, "update")


def _device_of(args, kwargs):
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v.device
    return "cpu"


def _like(out, hidden):
    """``out``'s structure (a tensor, or a tuple with the hidden states first) with ``hidden``."""
    if isinstance(out, torch.Tensor):
        return hidden
    if isinstance(out, tuple):
        return (hidden, *out[1:])
    if isinstance(out, list):
        return [hidden, *out[1:]]
    return hidden


class _patched:
    """Blocks' forward replaced by ``make(i, block, original)`` for the duration."""

    def __init__(self, blocks, make):
        self.blocks, self.make = blocks, make

    def __enter__(self):
        self.saved = []
        for i, (_, block) in enumerate(self.blocks):
            self.saved.append(block.__dict__.get("forward"))   # an instance-level forward
            block.forward = self.make(i, block, block.forward)
        return self

    def __exit__(self, *exc):
        for (_, block), saved in zip(self.blocks, self.saved):
            if saved is None:
                del block.forward   # back to the class's forward
            else:
                block.forward = saved
        return False
