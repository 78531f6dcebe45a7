"""Latency of each choice measured in tract: the ``latency`` constraint of the analyser.

Each block is timed on its own, in the storage format each choice gives it, at the shape it
runs at when deployed (a causal LM: one token, the decode step; other models: the example
input's shape with a batch of one): the block (the method's own module) is exported as a bundle
of its own and run by tract, whose profiler gives the time of every node; the block's time is
their sum, the median of several profiles. Blocks of the same kind, shape and storage format are
timed once.

A block timed alone runs with its weights warm in the cache; in the whole model they stream
from memory at every step, and at a decode step that traffic is most of the time (smaller
weights are faster end to end even where their block alone is slower). So a choice costs its
block's time plus its weights' bytes times a per-byte time, and the rest of the model is one
fixed term; the fixed term and the per-byte time are fitted (least squares) to end-to-end
measurements of the float model and of one uniform configuration per storage format (each the
median of several loads). The analyser then measures the chosen configurations end to end.

For a causal LM "end to end" is export-llm's decode step: one new token after ``past`` tokens
held in the key/value cache (the model wrapped as ``t2n.llm.wrapper.KVCacheLLM``, the past
computed by torch from the analysis text), so the fixed term holds the attention over the cache
that the blocks' one-token times leave out.
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
           "model_seconds", "decode_step", "fit_memory_term", "DECODE_PAST", "LOADS"]

log = logging.getLogger("t2n.analyse")

PROFILES = 7
LOADS = 3              # fresh loads of a whole model's bundle timed end to end (the median)
DECODE_PAST = 128      # tokens in the key/value cache when a causal LM's decode step is timed


def profile_seconds(bundle: Path, inputs: list, loads: int = 1) -> float:
    """tract's own time for one run of ``bundle`` on ``inputs``: the sum of its nodes'
    seconds per iteration in tract's profile, the median of PROFILES profiles; with ``loads``
    > 1 the bundle is loaded that many times and the median of their times is taken."""
    import numpy as np
    import tract
    feeds = [np.ascontiguousarray(x) for x in inputs]
    per_load = []
    for _ in range(max(1, loads)):
        model = tract.nnef().with_tract_extra().with_tract_transformers().load(str(bundle))
        runnable = model.into_runnable()
        runnable.run(feeds)   # warm
        times = []
        for _ in range(PROFILES):
            prof = json.loads(runnable.profile_json(feeds))
            times.append(sum(float(n.get("secs_per_iter") or 0.0)
                             for n in prof.get("nodes", [])))
        per_load.append(statistics.median(times))
        del runnable, model
    return statistics.median(per_load)


def time_bundle(module: nn.Module, args: tuple, kwargs: dict | None = None,
                keep: Path | None = None, loads: int = 1, dtype: str | None = None) -> float:
    """Export ``module`` called on ``args`` to a temporary bundle (its float weights and
    inputs in ``dtype``, as ``t2n export --dtype`` makes them) and time it in tract."""
    from t2n.pipeline import TORCH_DTYPES, export
    cast = TORCH_DTYPES.get(dtype)

    def feed(t):
        t = t.detach()
        return (t.to(cast) if cast is not None and t.is_floating_point() else t).numpy()
    with tempfile.TemporaryDirectory(prefix="t2n-latency-") as tmp:
        path = Path(keep) if keep is not None else Path(tmp) / "block"
        export(module, args, path, kwargs=kwargs, check_io=None, dtype=dtype)
        feeds = [feed(a) for a in list(args) + list((kwargs or {}).values())]
        return profile_seconds(path, feeds, loads)


def fit_memory_term(points) -> tuple[float, float]:
    """(fixed seconds, seconds per byte) of least squared error over ``points``, each
    (summed block seconds, summed weight bytes, measured seconds) of one configuration: measured
    = fixed + blocks + bytes x per-byte. The per-byte time is never negative (it is 0, and the
    fixed term the mean, when the points cannot tell it or tell a negative one)."""
    rest = [m - s for s, _, m in points]
    nbytes = [float(b) for _, b, _ in points]
    mean_rest = statistics.fmean(rest)
    if len(points) < 2 or max(nbytes) == min(nbytes):
        return mean_rest, 0.0
    mean_bytes = statistics.fmean(nbytes)
    var = sum((b - mean_bytes) ** 2 for b in nbytes)
    slope = sum((b - mean_bytes) * (r - mean_rest) for b, r in zip(nbytes, rest)) / var
    if slope <= 0:
        return mean_rest, 0.0
    return mean_rest - slope * mean_bytes, slope


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


def _signature(module: nn.Module, x: torch.Tensor) -> tuple:
    w = getattr(module, "weight", None)
    conv = tuple(getattr(module, k, None) for k in ("stride", "padding", "dilation", "groups"))
    return (type(module).__name__, type(w).__name__ if w is not None else None,
            tuple(w.shape) if w is not None else None, str(getattr(w, "dtype", None)),
            getattr(module, "bias", None) is not None, conv, tuple(x.shape), str(x.dtype))


def block_latencies(units, choices: dict, inputs: dict, progress=None,
                    dtype: str | None = None) -> dict:
    """{(unit name, label): seconds} for "float" and every available choice (the sum of the
    unit's blocks), timing each distinct block once, float weights in ``dtype``."""
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
            out[(unit.name, label)] = sum(timed(m, inputs[b])
                                          for b, m in zip(unit.blocks, modules))
            if progress is not None:
                progress.update(1)
    return out


def model_seconds(model: nn.Module, sample, loads: int = 1, dtype: str | None = None) -> float:
    """The whole model's time in tract at ``sample`` (its example inputs)."""
    args, kwargs = sample
    kwargs = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    work = copy.deepcopy(model).eval()
    if getattr(getattr(work, "config", None), "use_cache", False):
        work.config.use_cache = False    # a forward without a cache object to trace
    return time_bundle(work, tuple(args), kwargs, loads=loads, dtype=dtype)


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
