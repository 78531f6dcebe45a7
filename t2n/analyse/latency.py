"""Latency of each choice measured in tract: the ``latency`` constraint of the analyser.

Each block is timed on its own, in the storage format each choice gives it, at the shape it
runs at when deployed (a causal LM: one token, the decode step; other models: the example
input's shape with a batch of one): the block (the method's own module) is exported as a bundle
of its own and run by tract, whose profiler gives the time of every node; the block's time is
their sum, the median of several profiles. Blocks of the same kind, shape and storage format are
timed once.

Alone, a small block runs with its weights warm in the cache; in the whole model they stream
from memory at every step, at a cost that depends on the storage format, while a block too
large for the cache (an LM's head) takes alone what it takes in the model. So a block is priced
by its time inside the model where tract's profile shows it:
- the float model and one uniform configuration per storage format are measured end to end,
  their per-node profiles kept; a block's matmul is found there by its multiply-accumulates
  (in_model_times), whatever node tract fused it into;
- the float model beyond its blocks is the fixed term, so the float configuration's estimate
  is its measurement; a format whose uniform configuration measures more than its blocks'
  matmuls (nodes it adds beside them) has them scaled to fill it;
- a block the profile does not show (a gather, a convolution) counts its time alone times one
  factor per storage format, fitted from the rest of the model measured end to end with every
  block replaced by a stand-in without weights, the float model, and the uniform
  configurations.
A configuration's estimate is the fixed term plus its blocks' times; the analyser measures each
chosen configuration end to end.

For a causal LM "end to end" is export-llm's decode step: one new token after ``past`` tokens
held in the key/value cache (the model wrapped as ``t2n.llm.wrapper.KVCacheLLM``, the past
computed by torch from the analysis text). Each end-to-end time is the median of LOADS loads.
"""
from __future__ import annotations

import copy
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

__all__ = ["deploy_inputs", "profile_seconds", "time_bundle", "block_latencies",
           "in_model_times", "matmul_counts", "model_seconds", "decode_step", "without_blocks",
           "format_scales", "DECODE_PAST", "LOADS"]

log = logging.getLogger("t2n.analyse")

PROFILES = 7
LOADS = 3              # fresh loads of a whole model's bundle timed end to end (the median)
DECODE_PAST = 128      # tokens in the key/value cache when a causal LM's decode step is timed


def profile_seconds(bundle: Path, inputs: list, loads: int = 1,
                    nodes: list | None = None) -> float:
    """tract's own time for one run of ``bundle`` on ``inputs``: the sum of its nodes'
    seconds per iteration in tract's profile, the median of PROFILES profiles; with ``loads``
    > 1 the bundle is loaded that many times and the median of their times is taken. With
    ``nodes`` (a list), the profile's nodes are put there, each with its median seconds over
    every profile taken."""
    import numpy as np
    import tract
    feeds = [np.ascontiguousarray(x) for x in inputs]
    per_load = []
    seen: dict = {}
    for _ in range(max(1, loads)):
        model = tract.nnef().with_tract_extra().with_tract_transformers().load(str(bundle))
        runnable = model.into_runnable()
        runnable.run(feeds)   # warm
        times = []
        for _ in range(PROFILES):
            prof = json.loads(runnable.profile_json(feeds))
            times.append(sum(float(n.get("secs_per_iter") or 0.0)
                             for n in prof.get("nodes", [])))
            for n in prof.get("nodes", []) if nodes is not None else ():
                seen.setdefault(n.get("node_name"), (n, []))[1].append(
                    float(n.get("secs_per_iter") or 0.0))
        per_load.append(statistics.median(times))
        del runnable, model
    if nodes is not None:
        nodes.extend(dict(n, secs_per_iter=statistics.median(t)) for n, t in seen.values())
    return statistics.median(per_load)


def node_fma(node: dict) -> int | None:
    """The multiply-accumulates tract's profile counts for ``node`` (None when it has none)."""
    for kind, count in (node.get("cost") or {}).items():
        if kind.startswith("FMA"):
            return int(count)
    return None


def in_model_times(nodes: list, fma_of_block: dict) -> dict:
    """{block: seconds} inside a whole model from tract's profile of it (``nodes``: its
    "nodes" entries), for the blocks whose matmul is found there (``fma_of_block``: {block:
    its matmul's multiply-accumulates at the profiled shape}).

    tract names an optimised node after a node of the bundle, often the one a matmul was
    fused into, so a block's matmul is found by what it computes: a matmul node whose count is
    the block's, or a node ``X`` and its ``X_1``.. ``X_k`` chunks summing to it (tract splits a
    large matmul into chunks of one count, the last one smaller when the rows do not divide
    evenly); a ``<matmul>.pack_a``/``.pack_b`` node counts with its matmul. Blocks of one
    count share the mean time of that count's matmuls, and only when there are as many of
    them as blocks (else another node computes as much, an attention product for one, and the
    count is left out)."""
    matmuls = {n["node_name"]: n for n in nodes if n.get("op_name") == "OptMatMul"}
    secs = {n["node_name"]: float(n.get("secs_per_iter") or 0.0) for n in nodes}
    wanted = set(fma_of_block.values())
    owner: dict = {}                 # node name -> (the count, the matmul it is part of)
    for name, n in matmuls.items():
        if node_fma(n) in wanted:
            owner[name] = (node_fma(n), name)
    chunks: dict = {}                # X -> {i: the name of its chunk i}, X itself as 0
    for name in matmuls:
        base, _, tail = name.rpartition("_")
        if base and tail.isdigit() and name not in owner:
            chunks.setdefault(base, {})[int(tail)] = name
    for base, by_index in chunks.items():
        if base in matmuls and base not in owner:
            by_index = {0: base, **by_index}
        order = sorted(by_index)
        names = [by_index[i] for i in order]
        fmas = [node_fma(matmuls[name]) or 0 for name in names]
        # chunks are numbered without a gap, all of one count but the last, which is smaller
        if (order != list(range(order[0], order[0] + len(order))) or order[0] > 1
                or len(set(fmas[:-1])) > 1 or not 0 < fmas[-1] <= fmas[0]
                or sum(fmas) not in wanted or any(name in owner for name in names)):
            continue
        for name in names:
            owner[name] = (sum(fmas), base)
    parts: dict = {}                 # (count, matmul) -> seconds
    for name, key in owner.items():
        parts[key] = parts.get(key, 0.0) + secs[name]
    for n in nodes:
        base, dot, tail = n["node_name"].rpartition(".")
        if dot and tail in ("pack_a", "pack_b") and base in owner:
            key = owner[base]
            parts[key] = parts.get(key, 0.0) + secs[n["node_name"]]
    time_of: dict = {}               # count -> [seconds of each of its matmuls]
    for (fma, _), seconds in parts.items():
        time_of.setdefault(fma, []).append(seconds)
    blocks_of: dict = {}
    for block, fma in fma_of_block.items():
        blocks_of.setdefault(fma, []).append(block)
    out = {}
    for fma, blocks in blocks_of.items():
        found = time_of.get(fma, [])
        if len(found) == len(blocks):
            mean = sum(found) / len(found)
            out.update({b: mean for b in blocks})
    return out


def time_bundle(module: nn.Module, args: tuple, kwargs: dict | None = None,
                keep: Path | None = None, loads: int = 1, dtype: str | None = None,
                nodes: list | None = None) -> float:
    """Export ``module`` called on ``args`` to a temporary bundle (its float weights and
    inputs in ``dtype``, as ``t2n export --dtype`` makes them) and time it in tract (``nodes``:
    see profile_seconds)."""
    from t2n.pipeline import TORCH_DTYPES, export
    cast = TORCH_DTYPES.get(dtype)

    def feed(t):
        t = t.detach()
        return (t.to(cast) if cast is not None and t.is_floating_point() else t).numpy()
    with tempfile.TemporaryDirectory(prefix="t2n-latency-") as tmp:
        path = Path(keep) if keep is not None else Path(tmp) / "block"
        export(module, args, path, kwargs=kwargs, check_io=None, dtype=dtype)
        feeds = [feed(a) for a in list(args) + list((kwargs or {}).values())]
        return profile_seconds(path, feeds, loads, nodes=nodes)


class StandIn(nn.Module):
    """A block without weights: zeros of the block's output shape and type, tied to its input
    by adding ``x - x`` of its first element, which tract does not fold: nothing after it
    becomes a constant (a tie by a multiplication with a zero constant is folded, and tract's
    profiler panics on a graph whose output is then constant). The output keeps the input's
    leading dimensions that the block kept where it was measured (a prefill's tokens)."""

    def __init__(self, in_shape, out_shape):
        super().__init__()
        keep = 0
        while keep < min(len(in_shape), len(out_shape)) and in_shape[keep] == out_shape[keep]:
            keep += 1
        self.keep, self.tail = keep, tuple(out_shape[keep:])
        self.register_buffer("zero", torch.zeros(()))    # follows the model's float type

    def forward(self, x, *args, **kwargs):
        first = x.reshape(-1)[:1]
        tie = (first - first).to(self.zero.dtype)
        return x.new_zeros((*x.shape[:self.keep], *self.tail), dtype=self.zero.dtype) + tie


def without_blocks(model: nn.Module, units, inputs: dict) -> nn.Module:
    """A copy of ``model`` with each block that ``inputs`` holds an input for replaced by a
    StandIn of the output shape it has on that input."""
    from t2n.quant.int8 import set_submodule
    work = copy.deepcopy(model).eval()
    with torch.no_grad():
        for unit in units:
            for b in unit.blocks:
                if b in inputs:
                    out = work.get_submodule(b)(inputs[b])
                    set_submodule(work, b, StandIn(inputs[b].shape, out.shape))
    return work


def format_scales(alone: dict, rest: float, measured: list) -> dict:
    """{label: factor} from the blocks' times alone (``alone``: {(unit, label): seconds}), the
    rest of the model (seconds) and ``measured``: [(label, {unit: label}, seconds)], the float
    configuration first, then one uniform configuration per storage format. A factor makes the
    blocks' scaled times fill what its configuration measures beyond the rest (never below 0)."""
    scales: dict = {}
    for label, choice, seconds in measured:
        mine = [(u, c) for u, c in choice.items() if c == label and (u, c) in alone]
        others = sum(scales[c] * alone[(u, c)] for u, c in choice.items()
                     if c != label and (u, c) in alone)
        inside = sum(alone[k] for k in mine)
        scales[label] = max(0.0, seconds - rest - others) / inside if inside > 0 else 1.0
    return scales


def deploy_inputs(model: nn.Module, units, sample, lm: bool) -> dict:
    """{block name: example input tensor} at the deployed shape (one token for a causal LM,
    a batch of one otherwise), from the shapes seen on ``sample``."""
    named = dict(model.named_modules())
    seen = {}
    hooks = []
    for unit in units:
        for b in unit.blocks:
            def hook(m, args, out, b=b):
                if b not in seen and args and isinstance(args[0], torch.Tensor):
                    seen[b] = args[0].detach()
            hooks.append(named[b].register_forward_hook(hook))
    try:
        with torch.no_grad():
            args, kwargs = sample
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for b, x in seen.items():
        if lm and x.dim() >= 2:
            x = x[:1, -1:]
        elif x.dim() >= 1:
            x = x[:1]
        out[b] = x.contiguous()
    return out


def matmul_counts(model: nn.Module, units, inputs: dict) -> dict:
    """{block: its matmul's multiply-accumulates at its deployed input} for the Linear blocks
    (a weight of two dimensions and the input's last dimension its second)."""
    out = {}
    for unit in units:
        for b in unit.blocks:
            module, x = model.get_submodule(b), inputs.get(b)
            w = getattr(module, "weight", None)
            if isinstance(module, nn.Linear) and w is not None and w.dim() == 2 \
                    and x is not None and x.dim() >= 1 and x.shape[-1] == w.shape[1]:
                out[b] = x.numel() * int(w.shape[0])
    return out


def _signature(module: nn.Module, x: torch.Tensor) -> tuple:
    w = getattr(module, "weight", None)
    conv = tuple(getattr(module, k, None) for k in ("stride", "padding", "dilation", "groups"))
    return (type(module).__name__, type(w).__name__ if w is not None else None,
            tuple(w.shape) if w is not None else None, str(getattr(w, "dtype", None)),
            getattr(module, "bias", None) is not None, conv, tuple(x.shape), str(x.dtype))


def block_latencies(units, choices: dict, inputs: dict, progress=None,
                    dtype: str | None = None, per_block: dict | None = None) -> dict:
    """{(unit name, label): seconds} for "float" and every available choice (the sum of the
    unit's blocks), timing each distinct block once, float weights in ``dtype``; with
    ``per_block`` (a dict), each block's own seconds are put there by (block, label)."""
    cache: dict = {}

    def timed(module, x):
        key = _signature(module, x)
        if key not in cache:
            t0 = time.perf_counter()
            cache[key] = time_bundle(copy.deepcopy(module).eval(), (x,), dtype=dtype)
            log.debug("latency %s: %.1f us (measured in %.1f s)", key[:3], cache[key] * 1e6,
                      time.perf_counter() - t0)
        return cache[key]

    out = {}
    for unit in units:
        if any(b not in inputs for b in unit.blocks):
            continue   # a block the sample did not run
        options = {"float": unit.modules}
        options.update({label: by_unit[unit.name] for label, by_unit in choices.items()
                        if unit.name in by_unit})
        for label, modules in options.items():
            each = {b: timed(m, inputs[b]) for b, m in zip(unit.blocks, modules)}
            out[(unit.name, label)] = sum(each.values())
            if per_block is not None:
                per_block.update({(b, label): t for b, t in each.items()})
            if progress is not None:
                progress.update(1)
    return out


def model_seconds(model: nn.Module, sample, loads: int = 1, dtype: str | None = None,
                  nodes: list | None = None) -> float:
    """The whole model's time in tract at ``sample`` (its example inputs; ``nodes``: see
    profile_seconds)."""
    args, kwargs = sample
    kwargs = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    work = copy.deepcopy(model).eval()
    if getattr(getattr(work, "config", None), "use_cache", False):
        work.config.use_cache = False    # a forward without a cache object to trace
    return time_bundle(work, tuple(args), kwargs, loads=loads, dtype=dtype, nodes=nodes)


def decode_step(model: nn.Module, ids: torch.Tensor, past: int = DECODE_PAST) -> tuple:
    """(the decode-step module, its inputs): a causal LM wrapped as export-llm wraps it, and
    ``ids[:, past]`` after the key/value cache of ``ids[:, :past]`` (computed by torch)."""
    from t2n.llm.kv_export import _prefill
    from t2n.llm.wrapper import KVCacheLLM
    if ids.shape[-1] <= past:
        raise ValueError(f"{past} past tokens and one more need a window of {past + 1} tokens, "
                         f"got {ids.shape[-1]}")
    work = copy.deepcopy(model).eval()
    ids = ids[:1]
    with torch.no_grad():
        cache, layout = _prefill(work, ids[:, :past])
    return KVCacheLLM(work, layout=layout), (ids[:, past:past + 1].contiguous(), *cache)
