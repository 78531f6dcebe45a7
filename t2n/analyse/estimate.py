"""Task losses, and the two estimates of what each (unit, method) choice costs in task loss.

Task losses compare the output of a compressed model with the float model's, averaged over the
batches: ``kl`` (classification and causal LMs: KL(float || compressed) of the softmax over the
last axis, per position), ``mse`` (regression), ``cosine`` (embeddings: 1 - cosine similarity
of the outputs, mean-pooled over the sequence when they have one), or the user's own
``fn(reference, output) -> scalar tensor`` by dotted path.

``value`` measures: the loss when that unit alone takes that method and every other unit stays
float (the starting point is the float model: each choice is measured against the model a user
starts from, and the sum over units is the additive estimate the solver uses; from an all-
compressed start the estimates would depend on the methods of every other unit).

Each value estimate runs only what the choice changes: the float model's outputs of every block
of its largest stack of repeated layers (decoder or encoder layers) are kept from the reference
run, and a choice whose modules are first called after layer k ends replays layers 0..k-1 from
them (checked once: the replayed model must reproduce the reference outputs, else every estimate
runs the whole model). For the KL loss the float model's log-probabilities are computed once.

``grad`` estimates without a forward pass per choice: at the float model the task loss and its
gradient are zero, so the loss of a weight change dW is about 1/2 dW' F dW, with F the Fisher
information of the model's output distribution. Its diagonal is estimated from gradients of
the log-likelihood of outputs sampled from the float model itself (a class drawn from the
softmax for ``kl``; the output plus unit Gaussian noise for ``mse``, and for ``cosine`` on the
normalised outputs), so the estimate of a choice is 1/2 sum(F * dW^2) over its weights.
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from torch.nn import functional as F

from t2n.analyse.parallel import all_sum, all_sum_tensor, rank, world_size
from t2n.errors import OptionError

__all__ = ["TASKS", "task_loss", "output_of", "reference_outputs", "value_estimates",
           "grad_estimates", "loss_sum", "measure_loss", "prepare", "layer_stack"]

log = logging.getLogger("t2n.analyse")

TASKS = {"classification": "kl", "causal-lm": "kl", "regression": "mse", "embedding": "cosine"}


def output_of(result) -> torch.Tensor:
    """The tensor a task loss looks at: ``logits``, else ``last_hidden_state``, else the first
    tensor of the result."""
    if isinstance(result, torch.Tensor):
        return result
    for key in ("logits", "last_hidden_state"):
        value = getattr(result, key, None)
        if value is None and isinstance(result, dict):
            value = result.get(key)
        if isinstance(value, torch.Tensor):
            return value
    items = result.values() if isinstance(result, dict) else result
    for value in items:
        if isinstance(value, torch.Tensor):
            return value
    raise OptionError("the model's output holds no tensor", "return a tensor or logits")


def _pooled(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1) if x.dim() == 3 else x.reshape(x.shape[0], -1)


def task_loss(kind, reference: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The loss of ``output`` against the float model's ``reference`` (0 when equal)."""
    if callable(kind):
        return kind(reference, output)
    ref, out = reference.float(), output.float()
    if kind == "kl":
        p = F.log_softmax(ref, dim=-1)
        q = F.log_softmax(out, dim=-1)
        return (p.exp() * (p - q)).sum(-1).mean()
    if kind == "mse":
        return F.mse_loss(out, ref)
    if kind == "cosine":
        return (1 - F.cosine_similarity(_pooled(out), _pooled(ref), dim=-1)).mean()
    raise OptionError(f"unknown task loss {kind!r}", "use kl, mse, cosine or a dotted path")


def _device_of(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _run(model, sample):
    args, kwargs = sample
    device = _device_of(model)
    if device.type != "cpu":   # estimates on a GPU: the batches follow the model
        args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
        kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                  for k, v in kwargs.items()}
    return output_of(model(*args, **kwargs))


def reference_outputs(model, samples) -> list:
    with torch.no_grad():
        return [_run(model, s).detach() for s in samples]


class _Prepared:
    """A reference in the form its loss compares with (the log-softmax once, for KL)."""

    def __init__(self, kind, reference: torch.Tensor):
        self.kind = kind
        self.value = F.log_softmax(reference.float(), dim=-1) if kind == "kl" else reference

    def loss(self, output: torch.Tensor) -> torch.Tensor:
        if self.kind == "kl":
            q = F.log_softmax(output.float(), dim=-1)
            return (self.value.exp() * (self.value - q)).sum(-1).mean()
        return task_loss(self.kind, self.value, output)


def loss_sum(model, samples, references, kind) -> float:
    """The task loss of ``model`` summed over ``samples`` (this process's batches)."""
    total = 0.0
    with torch.no_grad():
        for sample, ref in zip(samples, references):
            if not isinstance(ref, _Prepared):
                ref = _Prepared(kind, ref)
            total += float(ref.loss(_run(model, sample)))
    return total


def measure_loss(model, samples, references, kind) -> float:
    """The task loss of ``model`` averaged over ``samples`` (over all processes' batches when
    the analysis runs data-parallel)."""
    total, count = all_sum([loss_sum(model, samples, references, kind), len(samples)])
    return total / max(1.0, count)


def prepare(references, kind) -> list:
    """The references in the form ``loss_sum`` compares with, computed once for many models."""
    return [_Prepared(kind, r) for r in references]


def layer_stack(model) -> tuple[str, nn.ModuleList] | None:
    """The model's largest ``nn.ModuleList`` of two or more modules of one class (its decoder
    or encoder layers), as (name, list), or None."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2 \
                and len({type(m) for m in module}) == 1 \
                and (best is None or len(module) > len(best[1])):
            best = (name, module)
    return best


class _Replay:
    """Replays the float outputs of a model's first layers, batch by batch (see the module
    docstring): ``record`` keeps them during the reference run, ``start_of`` says from which
    layer a unit's choice must run, and ``from_layer(k)`` replays the layers before k."""

    def __init__(self, model, units, samples):
        found = layer_stack(model)
        self.layers = list(found[1]) if found else []
        self.outputs: list[list] = [[] for _ in self.layers]
        self.batch = 0
        self.start: dict = {}
        if not self.layers:
            self.references = reference_outputs(model, samples)
            return
        unit_of = {id(model.get_submodule(b)): u.name for u in units for b in u.blocks}
        clock, first_call, ends = [0], {}, {}
        hooks = []

        def tick():
            clock[0] += 1
            return clock[0]

        def called(module, args):
            first_call.setdefault(unit_of[id(module)], tick())

        def keep(j):
            def hook(module, args, output):
                self.outputs[j].append(output)
                ends.setdefault(j, tick())
            return hook
        for u in units:
            for b in u.blocks:
                hooks.append(model.get_submodule(b).register_forward_pre_hook(called))
        for j, layer in enumerate(self.layers):
            hooks.append(layer.register_forward_hook(keep(j)))
        try:
            self.references = reference_outputs(model, samples)
        finally:
            for h in hooks:
                h.remove()
        for unit in units:
            at, k = first_call.get(unit.name), 0
            while at is not None and k < len(self.layers) and ends.get(k, at) < at:
                k += 1
            self.start[unit.name] = k
        if any(len(out) != len(samples) for out in self.outputs):
            log.info("analyse: the layers of %s run more than once per batch; every estimate "
                     "runs the whole model", found[0])
            self.start = {u: 0 for u in self.start}
            return
        # the replay must give back what the model computes, else it is not used
        with self.from_layer(len(self.layers)):
            again = reference_outputs(model, samples)
        if not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6)
                   for a, b in zip(again, self.references)):
            log.info("analyse: replaying the float layers does not reproduce the model's "
                     "outputs; every estimate runs the whole model")
            self.start = {u: 0 for u in self.start}

    @contextlib.contextmanager
    def from_layer(self, k: int):
        """Layers before ``k`` return their recorded outputs for the current batch."""
        def replay(j):
            return lambda *a, **kw: self.outputs[j][self.batch]
        for j in range(k):
            self.layers[j].forward = replay(j)
        try:
            yield
        finally:
            for j in range(k):
                del self.layers[j].forward


def _replayed_loss_sum(model, samples, prepared, replay: _Replay, start: int) -> float:
    total = 0.0
    with torch.no_grad(), replay.from_layer(start):
        for i, (sample, ref) in enumerate(zip(samples, prepared)):
            replay.batch = i
            total += float(ref.loss(_run(model, sample)))
    return total


def _swap(model, unit, modules) -> list:
    """Put ``modules`` in place of the unit's blocks; returns the modules taken out."""
    from t2n.quant.int8 import set_submodule
    old = [model.get_submodule(b) for b in unit.blocks]
    for b, m in zip(unit.blocks, modules):
        set_submodule(model, b, m)
    return old


def value_estimates(model, units, choices: dict, samples, kind, progress=None) -> dict:
    """``{(unit name, method label): measured loss}`` for every available choice (the sums of
    all processes added in one exchange at the end)."""
    replay = _Replay(model, units, samples)
    prepared = prepare(replay.references, kind)
    keys, sums = [], []
    for label, by_unit in choices.items():
        for unit in units:
            if unit.name not in by_unit:
                continue
            old = _swap(model, unit, by_unit[unit.name])
            try:
                sums.append(_replayed_loss_sum(model, samples, prepared, replay,
                                               replay.start.get(unit.name, 0)))
                keys.append((unit.name, label))
            finally:
                _swap(model, unit, old)
            if progress is not None:
                progress.update(1)
    totals = all_sum(sums + [len(samples)])
    count = max(1.0, totals[-1])
    return {k: v / count for k, v in zip(keys, totals[:-1])}


def _weight_of(module) -> torch.Tensor:
    from t2n.quant.q4_0 import Q4_0Tensor
    w = module.weight
    if isinstance(w, Q4_0Tensor) or hasattr(w, "nbytes_packed"):   # Q4_0, Q8_1, int8 rows
        return w.dequantize().float()
    return w.detach().float()


def grad_estimates(model, units, choices: dict, samples, kind, seed: int = 0,
                   progress=None) -> dict:
    """``{(unit name, method label): 1/2 sum(Fisher diagonal * dW^2)}`` (see the module
    docstring); one backward pass per sample."""
    if callable(kind):
        raise OptionError("the grad estimator needs a built-in task loss (kl, mse, cosine)",
                          "use loss_estimator='value' with a custom loss")
    weights = {}
    for unit in units:
        w = unit.modules[0].weight
        weights[unit.name] = w
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    fisher = {n: torch.zeros(w.shape, dtype=torch.float32, device=w.device)
              for n, w in weights.items()}
    g = torch.Generator().manual_seed(seed)
    for p in params:           # gradients of the units' weights only
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    count = 0
    try:
        for i, sample in enumerate(samples):
            # each batch draws from its own seed, by its place among all processes' batches,
            # so that a data-parallel run draws what one process would
            g.manual_seed(seed * 1_000_003 + rank() + i * world_size())
            model.zero_grad(set_to_none=True)
            out = _run(model, sample).float()
            if kind == "kl":
                logp = F.log_softmax(out, dim=-1)
                flat = logp.detach().exp().reshape(-1, out.shape[-1]).cpu()
                target = torch.multinomial(flat, 1, generator=g).reshape(out.shape[:-1])
                target = target.to(out.device)
                nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                rows = nll.numel()
                loss = nll.sum()
            else:
                y = _pooled(out) if kind == "cosine" else out
                if kind == "cosine":
                    y = F.normalize(y, dim=-1)
                noise = torch.randn(y.shape, generator=g).to(y.device)
                target = y.detach() + noise
                rows = y.shape[0]
                loss = 0.5 * ((y - target) ** 2).sum()
            loss.backward()
            # the gradient of a sum over independent rows: its square estimates rows x Fisher,
            # the expectation of the squared per-row gradients, up to cross terms of mean zero
            for n, w in weights.items():
                if w.grad is not None:
                    fisher[n] += w.grad.detach().float() ** 2
            count += rows
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)
            p.grad = None
    for n in fisher:            # all processes' batches
        all_sum_tensor(fisher[n])
    count = all_sum([count])[0]
    scale = 1.0 / max(1.0, count)
    out = {}
    for label, by_unit in choices.items():
        for unit in units:
            if unit.name not in by_unit:
                continue
            dw = _weight_of(by_unit[unit.name][0]) - weights[unit.name].detach().float()
            out[(unit.name, label)] = 0.5 * float((fisher[unit.name] * dw * dw).sum()) * scale
            if progress is not None:
                progress.update(1)
    return out
