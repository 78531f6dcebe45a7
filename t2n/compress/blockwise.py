"""The driver of the calibrated Q4_0 methods: which weights, block by block, with a report.

A method (imatrix, GPTQ, AutoRound) says what it observes of each layer's inputs and how it
turns a block's observations into Q4_0 blocks ``(d, q)``. This module runs the blocks in order
(t2n.calibrate.blocks), swaps each block's weights for ``Q4_0Tensor``s once the block is done,
logs the block's output error before (GGML's round-to-nearest) and after (the method), shows a
progress bar, and fills ``calibration.report`` (written as JSON beside the bundle).

Which weights: those of the chosen module classes, as ``quantize_layers`` picks them (a tied
weight is quantized once, through its Linear user, whose inputs were observed; a weight also
used by a module kind not chosen, a depthwise filter, or a reduction size that is not a multiple
of 32 stays in float). Embedding tables that no Linear shares are never multiplied by an
activation: they take the unweighted scale search.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import defaultdict

import torch
from torch import nn
from torch.nn import functional as F

from t2n.calibrate.blocks import Blockwise
from t2n.compress.q4_0_fit import BLOCK, fit_scales, levels, rtn_scales
from t2n.errors import CompressionError
from t2n.memory import free_memory
from t2n.quant.q4_0 import Q4_0Tensor

__all__ = ["Method", "quantize_blockwise", "LINEAR", "ALL", "columns_of", "Targets", "entry",
           "CommonOptions"]

log = logging.getLogger("t2n.compress")

LINEAR = (nn.Linear,)
ALL = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)
MULTIPLYING = (nn.Linear, nn.Conv1d, nn.Conv2d)


def columns_of(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows ``[n, k]`` that multiply the module's weight ``[out, k]``: a Linear's inputs, a
    convolution's unfolded patches (one row per output position)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-1)
        kernel, stride = (module.kernel_size[0], 1), (module.stride[0], 1)
        padding, dilation = (module.padding[0], 0), (module.dilation[0], 1)
    else:
        kernel, stride, padding, dilation = (module.kernel_size, module.stride,
                                             module.padding, module.dilation)
    if isinstance(padding, str) or module.padding_mode != "zeros":
        raise CompressionError(f"{type(module).__name__} with padding={module.padding!r} "
                               f"({module.padding_mode}) is not calibrated",
                               "use a data-free compression for this model")
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


class Method:
    """What a calibrated method observes and how it quantizes. Subclasses set ``name`` and
    ``options`` (a frozen dataclass) and override ``observe``/``finish``/``quantize_block``."""

    name = "method"
    needs_float_targets = False    # keep the float model's own block outputs (AutoRound)

    def __init__(self, options):
        self.options = options

    def observe(self, stats: dict, name: str, module: nn.Module, x: torch.Tensor) -> None:
        """Accumulate what the method needs of the inputs ``x`` of layer ``name``."""
        rows = columns_of(module, x.detach()).float()
        entry = stats.setdefault(name, {"sq": 0, "n": 0})
        entry["sq"] = entry["sq"] + (rows * rows).sum(dim=0)
        entry["n"] += len(rows)

    def pass_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype of the block passes (observing, targets, measuring): float32, exact."""
        return torch.float32

    def observe_outside(self, stats: dict, name: str, module: nn.Module,
                        x: torch.Tensor) -> None:
        """Observe a layer outside the blocks (an LM head): no block output is fitted there."""
        self.observe(stats, name, module, x)

    @staticmethod
    def importance(stat) -> torch.Tensor | None:
        """Mean square of each input column (None: never observed)."""
        return None if stat is None else stat["sq"] / max(stat["n"], 1)

    def quantize_layer(self, name: str, module: nn.Module, weight: torch.Tensor, stat):
        """``(d, q)`` for one weight ``[out, k]`` from its observations (None: not observed)."""
        imp = self.importance(stat)
        return fit_scales(weight.reshape(-1, BLOCK), None if imp is None else
                          imp.reshape(-1, BLOCK))

    def quantize_block(self, ctx: "BlockContext") -> dict:
        """``{layer name: (d, q)}`` for the layers of one block."""
        return {name: self.quantize_layer(name, module, ctx.weights[name], ctx.stats.get(name))
                for name, module in ctx.layers.items()}


@dataclasses.dataclass
class BlockContext:
    index: int
    block: nn.Module
    layers: dict            # name -> module (the block's chosen layers)
    names: dict             # name -> name relative to the block
    weights: dict           # name -> float weight [out, k] on the device
    stats: dict
    runner: Blockwise
    refs: list              # the float block's outputs on this block's (quantized) inputs
    targets: list | None    # the float model's own outputs of this block (needs_float_targets)
    seed: int


class Targets:
    """The weights to quantize: ``{weight id: (Linear-first users, weight)}``."""

    def __init__(self, model: nn.Module, classes: tuple):
        from t2n.compress.q4_0_methods import _excluded
        users = defaultdict(list)
        for name, module in model.named_modules():
            weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
            if weight is not None:
                users[id(weight)].append((name, module))
        self.chosen: dict[int, list] = {}
        self.skipped = 0
        for key, mods in users.items():
            if not any(isinstance(m, classes) for _, m in mods):
                continue
            name, module = mods[0]
            weight = module.weight
            reason = None
            if any(not isinstance(m, classes) for _, m in mods):
                reason = "also used by " + ", ".join(n for n, m in mods
                                                     if not isinstance(m, classes))
            elif any(_excluded(m) for _, m in mods):
                reason = "depthwise filters are not quantized"
            elif weight.dim() < 2 or weight[0].numel() % BLOCK:
                reason = f"shape {tuple(weight.shape)} has no {BLOCK}-value blocks along its " \
                         "reduction axis"
            if reason:
                log.info("%s.weight left in float: %s", name, reason)
                self.skipped += 1
                continue
            # the observed user first: a Linear/Conv sees activations, an Embedding does not
            mods.sort(key=lambda nm: not isinstance(nm[1], MULTIPLYING))
            self.chosen[key] = mods

    def owner(self) -> dict:
        """``{name of the user observed: module}``."""
        return {mods[0][0]: mods[0][1] for mods in self.chosen.values()}

    def install(self, name: str, d, q, dtype: torch.dtype) -> None:
        """Swap the weight of ``name`` (and of its tied users) for its Q4_0 blocks."""
        for mods in self.chosen.values():
            if mods[0][0] == name:
                weight = mods[0][1].weight
                tensor = nn.Parameter(Q4_0Tensor.from_blocks(d, q, tuple(weight.shape), dtype),
                                      requires_grad=False)
                for _, module in mods:
                    module.weight = tensor
                return
        raise KeyError(name)


def _set_float(module: nn.Module, weight: torch.Tensor) -> None:
    module.weight = nn.Parameter(weight, requires_grad=False)


def _dequant(d, q, shape, dtype) -> torch.Tensor:
    return (q.to(dtype) * d[:, None].to(dtype)).reshape(shape)


def _mse(outs: list, refs: list) -> float:
    """Output error relative to the reference's mean square, over all batches."""
    err = sum(float(((o.float() - r.float()) ** 2).sum()) for o, r in zip(outs, refs))
    ref = sum(float((r.float() ** 2).sum()) for r in refs)
    return err / ref if ref > 0 else err


def quantize_blockwise(model: nn.Module, calibration, method: Method, classes: tuple,
                       *, samples: int, seqlen: int, batch_size: int) -> nn.Module:
    """Quantize the chosen weights of ``model`` to Q4_0 with ``method``, block by block; the
    report also gives the peak resident memory of the work next to the model's bytes and one
    block's activations."""
    from t2n.memory import PeakRSS
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with PeakRSS() as rss:
        _blockwise(model, calibration, method, classes, samples, seqlen, batch_size)
    calibration.report.update(peak_rss_mib=rss.peak / 2**20, model_mib=model_bytes / 2**20)
    return model


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors or () if t is not None)


def _blockwise(model, calibration, method, classes, samples, seqlen, batch_size) -> None:
    if calibration is None:
        raise CompressionError(f"{method.name} needs calibration data",
                               "pass --calibration-data, or let t2n sample (export-llm)")
    t_start = time.perf_counter()
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    calibration.load(samples, seqlen)
    batches = calibration.batches(batch_size)
    device = torch.device(calibration.device)
    targets = Targets(model, classes)
    owners = targets.owner()
    if not owners:
        raise CompressionError(f"{method.name} found no weight to quantize",
                               "this model has no Linear (or chosen) layer with 32-value rows")
    runner = Blockwise(model, calibration.entry, batches, device)
    stats: dict = {}
    in_block = {}
    for i, (_, block) in enumerate(runner.blocks):
        for m in block.modules():
            in_block[id(m)] = i
    outside = {n: m for n, m in owners.items() if id(m) not in in_block}

    def observe_outside(name, module, x):
        if name in outside and isinstance(module, MULTIPLYING):
            method.observe_outside(stats, name, module, x)
    runner.capture(observe_outside)
    state = _State(list(runner.hidden) if method.needs_float_targets else None)

    report = {"method": method.name, "options": dataclasses.asdict(method.options),
              "calibration": calibration.describe(), "device": str(device), "blocks": []}
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm
    bar = tqdm(runner.blocks, desc=method.name, unit="block", leave=False,
               disable=not log.isEnabledFor(logging.INFO))
    with logging_redirect_tqdm():   # log lines printed above the bar, not through it
        for i, (block_name, block) in enumerate(bar):
            _one_block(i, block_name, block, method, runner, owners, in_block, stats, targets,
                       device, calibration, report, bar, state)

    bar.close()
    _quantize_outside(model, runner, outside, stats, method, targets)
    report["seconds"] = time.perf_counter() - t_start
    report["weights"] = len(owners)
    report["left_in_float"] = targets.skipped
    report["block_activations_mib"] = state.activations / 2**20
    calibration.report.update(report)
    done = report["blocks"]
    if done:
        log.info("%s: %d block(s), output error %.3e after vs %.3e round-to-nearest (mean), "
                 "%.1fs", method.name, len(done), sum(b["loss"] for b in done) / len(done),
                 sum(b["loss_rtn"] for b in done) / len(done), report["seconds"])


class _State:
    """What carries from block to block: the float model's own stream (AutoRound's targets)
    and the most activation bytes one block held."""

    def __init__(self, float_hidden):
        self.float_hidden = float_hidden
        self.activations = 0


def _one_block(i, block_name, block, method, runner, owners, in_block, stats, targets, device,
               calibration, report, bar, state) -> None:
    """Calibrate block ``i``: observe, quantize, measure, install its Q4_0 weights, and hand its
    quantized outputs to the next block."""
    t0 = time.perf_counter()
    layers = {n: m for n, m in owners.items() if in_block.get(id(m)) == i}
    originals = {n: m.weight for n, m in layers.items()}
    dtype = _float_dtype(block)
    work = method.pass_dtype(device)
    # the block's own tensors come back as they were once it is done
    saved = [(t, t.data) for t in itertools.chain(block.parameters(), block.buffers())]
    block.to(device=device, dtype=torch.float32)
    weights = {n: m.weight.detach().reshape(m.weight.shape[0], -1)
               for n, m in layers.items()}   # float32, kept through the cast below
    block.to(work)
    # inputs are observed where they multiply the weight (an Embedding inside a block, as in
    # Jamba's and Zamba2's layers, is quantized without them, as outside the blocks)
    handles = [m.register_forward_pre_hook(
        lambda mod, args, n=n: method.observe(stats, n, mod, args[0]))
        for n, m in layers.items() if isinstance(m, MULTIPLYING)]
    # a method fitting the float model's own outputs observes the inputs of that stream
    # (the same as the quantized stream's at the first block), one pass fewer
    try:
        if state.float_hidden is not None:
            refs, float_targets = None, runner.run_block(i, block, state.float_hidden,
                                                         dtype=work)
        else:
            refs, float_targets = runner.run_block(i, block, dtype=work), None
    finally:
        for h in handles:
            h.remove()
    # before: GGML's round-to-nearest on this block
    for n, m in layers.items():
        d = rtn_scales(weights[n].reshape(-1, BLOCK))
        _set_float(m, _dequant(d, levels(weights[n].reshape(-1, BLOCK), d),
                               originals[n].shape, work))
    # the error is measured against what the method fits: the float model's own outputs
    # (float_targets) or the float block on this block's quantized inputs (refs)
    goal = float_targets if float_targets is not None else refs
    before = _mse(runner.run_block(i, block, dtype=work), goal) if layers else 0.0
    for n, m in layers.items():
        m.weight = originals[n]
    ctx = BlockContext(i, block, layers, {n: _relative(block, m) for n, m in layers.items()},
                       weights, stats, runner, refs, float_targets, calibration.seed)
    result = method.quantize_block(ctx)
    for n, m in layers.items():
        d, q = result[n]
        _set_float(m, _dequant(d, q, originals[n].shape, work))
    outs = runner.run_block(i, block, dtype=work)
    after = _mse(outs, goal) if layers else 0.0
    for n in layers:
        targets.install(n, *(t.cpu() for t in result[n]), dtype)
        stats.pop(n, None)
    for t, data in saved:
        t.data = data
    del originals, weights, result, ctx, saved
    free_memory()   # the block's float weights, freed: hand the heap back before the next one
    runner.hidden = outs
    if state.float_hidden is not None:
        state.float_hidden = float_targets
    seconds = time.perf_counter() - t0
    # held during the block: its inputs, outputs and float outputs (+ the float stream)
    state.activations = max(state.activations, 2 * _bytes(outs) + _bytes(refs)
                      + (_bytes(float_targets) if float_targets is not refs else 0)
                      + _bytes(state.float_hidden if state.float_hidden is not float_targets else ()))
    report["blocks"].append({"block": block_name, "layers": len(layers),
                             "loss_rtn": before, "loss": after, "seconds": seconds})
    bar.set_postfix(loss=f"{after:.2e}", rtn=f"{before:.2e}")
    log.info("%s %s: output error %.3e after, %.3e with round-to-nearest, %.1fs",
             method.name, block_name, after, before, seconds)


def _float_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _relative(block: nn.Module, module: nn.Module) -> str:
    for name, m in block.named_modules():
        if m is module:
            return name
    raise KeyError(module)


def _quantize_outside(model, runner, outside: dict, stats: dict, method, targets) -> None:
    """The chosen layers outside the blocks: observed by replaying the last block's outputs."""
    if not outside:
        return
    pending = {n for n, m in outside.items()
               if n not in stats and isinstance(m, MULTIPLYING)}
    runner.replay_outside(pending, lambda n, m, x: method.observe_outside(stats, n, m, x))
    for name, module in outside.items():
        weight = module.weight.detach().float().reshape(module.weight.shape[0], -1)
        stat = stats.pop(name, None)
        if stat is None and isinstance(module, MULTIPLYING):
            log.info("%s: no calibration input reached this layer; unweighted scales", name)
        d, q = method.quantize_layer(name, module, weight, stat)
        targets.install(name, d.cpu(), q.cpu(), module.weight.dtype)


@dataclasses.dataclass(frozen=True)
class CommonOptions:
    """Options every calibrated method takes. ``samples``/``seqlen``: the calibration size used
    when the user gives none (--calibration-samples/--calibration-seqlen win); ``batch_size``:
    token windows per forward call."""
    samples: int = 32
    seqlen: int = 512
    batch_size: int = 8

    def __post_init__(self):
        for key in ("samples", "seqlen", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CompressionError(f"option {key}={value!r}", "give a positive integer")


def entry(method_cls, options_cls, classes: tuple, doc: str):
    """A registry function ``fn(model, tokenizer=None, export_dirpath=None, local_dir=None, *,
    calibration=None, **options)`` whose signature lists the options (so
    ``--compression-option`` can check and convert them)."""
    import inspect

    def compress(model, tokenizer=None, export_dirpath=None, local_dir=None, *,
                 calibration=None, **options):
        opts = options_cls(**options)
        return quantize_blockwise(model, calibration, method_cls(opts), classes,
                                  samples=opts.samples, seqlen=opts.seqlen,
                                  batch_size=opts.batch_size)
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
              for n in ("tokenizer", "export_dirpath", "local_dir")]
    params.insert(0, inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD))
    params.append(inspect.Parameter("calibration", inspect.Parameter.KEYWORD_ONLY, default=None))
    hints = {f.name: f.type for f in dataclasses.fields(options_cls)}
    for f in dataclasses.fields(options_cls):
        hint = str(hints[f.name]).replace(" | None", "")
        kind = _TYPES.get(hint, hint)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=f.default, annotation=kind))
    compress.__signature__ = inspect.Signature(params)
    compress.__doc__ = doc
    return compress


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
