"""autoround_q4_0: rounding offsets and scale clipping learned by signed gradient descent.

For each block, every weight gets an offset ``v`` in [-0.5, 0.5] added before rounding and every
32-block a scale factor ``s`` in [``min_scale``, ``max_scale``]: the block computes with
``q = clamp(round(w / (s d0) + v), -8, 7) * f16(s d0)`` (rounding passed through by a
straight-through estimator), and ``v``, ``s`` follow the sign of the gradient of the block's
output error (SignSGD, learning rate ``lr`` decaying linearly to 0) on a random batch of the
calibration windows per step; the step with the least loss is kept. ``d0`` starts from the
imatrix-weighted scale search of ``fit_scales`` (its own candidates, 0.7-1.1x GGML's scale;
the learned ``s`` then moves it): step 0 is imatrix_q4_0 with
``steps=8,scale_min=0.7,scale_max=1.1``.

``target``: ``float`` fits the block to the float model's own outputs (inputs carried through
the float blocks; the importance of the start is observed on that stream), ``quantized`` to the
float block applied on the quantized blocks' outputs.

Layers outside the blocks (an LM head) have no block output to fit, and training against the
whole vocabulary's logits would cost more than all the blocks: they are quantized by GPTQ on
their inputs (the last block's quantized outputs).

``amp``: the steps and the block passes (targets, measures) run in bfloat16 where the device
multiplies it natively, as the auto-round package does; the block's own float tensors are
restored afterwards.

Presets (each value overridable): ``default`` fits SmolLM2-135M on 2 CPU cores in well under
30 minutes; ``fast`` is half of it; ``published`` is AutoRound's published setting (200 steps,
128 windows of 2048 tokens, batch 8: hours on 2 CPU cores, minutes on a GPU).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.func import functional_call

from t2n.calibrate.blocks import first_output
from t2n.compress.blockwise import ALL, LINEAR, CommonOptions, Method, entry
from t2n.compress.gptq import gptq_layer, observe_hessian
from t2n.compress.imatrix import imatrix_weights
from t2n.compress.q4_0_fit import BLOCK, QMAX, QMIN, f16, fit_scales
from t2n.compress.registry import BUILTIN
from t2n.errors import CompressionError

__all__ = ["AutoRound", "AutoRoundOptions", "PRESETS"]

PRESETS = {
    "default": {"iters": 100, "samples": 32, "seqlen": 512, "batch_size": 8},
    "fast": {"iters": 50, "samples": 32, "seqlen": 512, "batch_size": 8},
    "published": {"iters": 200, "samples": 128, "seqlen": 2048, "batch_size": 8},
}
TARGETS = ("float", "quantized")


@dataclass(frozen=True)
class AutoRoundOptions(CommonOptions):
    preset: str = "default"
    samples: int | None = None       # None: the preset's
    seqlen: int | None = None
    batch_size: int | None = None
    iters: int | None = None
    lr: float | None = None          # None: 1 / iters
    min_scale: float = 0.5
    max_scale: float = 1.5
    target: str = "float"
    amp: bool = True                 # the steps in bfloat16 where the device computes it natively

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise CompressionError(f"option preset={self.preset!r}",
                                   f"use one of: {', '.join(PRESETS)}")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        super().__post_init__()
        if not isinstance(self.iters, int) or self.iters < 0:
            raise CompressionError(f"option iters={self.iters!r}", "give 0 or more steps")
        if self.lr is None:
            object.__setattr__(self, "lr", 1.0 / max(self.iters, 1))
        if not self.lr > 0:
            raise CompressionError(f"option lr={self.lr!r}", "give a positive learning rate")
        if not 0 < self.min_scale <= 1 <= self.max_scale:
            raise CompressionError(f"options min_scale={self.min_scale}, max_scale="
                                   f"{self.max_scale}", "give min_scale in (0, 1] and "
                                   "max_scale >= 1")
        if self.target not in TARGETS:
            raise CompressionError(f"option target={self.target!r}",
                                   f"use one of: {', '.join(TARGETS)}")


def _work_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device multiplies it natively (a CUDA GPU with bf16, a CPU with
    AVX512-BF16 or AMX), else float32 (emulated bf16 would be slower)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    """Read once: every block asks."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class _FakeQuant(torch.autograd.Function):
    """``clamp(floor(w / d + v + 1/2), -8, 7) * d`` per 32-block, in ``dtype``, with the
    rounding passed through (straight-through estimator): one fused pass each way instead of
    autograd's chain of full-size temporaries (the steps are bound by them after the matmuls).

    Gradients: ``dv = g d`` and ``dd = sum(g (q - w / d))`` where the level is inside the grid;
    where it is clamped, ``dv = 0`` and ``dd = sum(g q)``."""

    @staticmethod
    def forward(ctx, blocks, v, d, dtype):
        scaled = blocks / torch.where(d == 0, torch.ones_like(d), d)[:, None]
        q = torch.floor(scaled + v + 0.5)
        inside = (q >= QMIN) & (q <= QMAX)
        q.clamp_(QMIN, QMAX)
        ctx.save_for_backward(scaled, q, inside, d)   # (an all-zero block: d = 0, decodes to 0)
        return (q * d[:, None]).to(dtype)

    @staticmethod
    def backward(ctx, grad):
        scaled, q, inside, d = ctx.saved_tensors
        g = grad.float()
        g_in = g * inside
        grad_v = g_in * d[:, None]
        grad_d = (g * q).sum(dim=1) - (g_in * scaled).sum(dim=1)
        return None, grad_v, grad_d, None


class _Layer:
    """One weight's learned state: start scales, offsets, scale factors."""

    def __init__(self, weight: torch.Tensor, d0: torch.Tensor):
        self.blocks = weight.reshape(-1, BLOCK)
        self.shape = weight.shape
        self.d0 = d0
        self.v = torch.zeros_like(self.blocks, requires_grad=True)
        self.s = torch.ones_like(d0, requires_grad=True)

    def scales(self, s=None) -> torch.Tensor:
        d = self.d0 * (self.s if s is None else s)
        return d + (f16(d) - d).detach()

    def weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return _FakeQuant.apply(self.blocks, self.v, self.scales(), dtype).reshape(self.shape)

    def final(self, v, s):
        d = f16(self.d0 * s)
        safe = torch.where(d == 0, torch.ones_like(d), d)
        q = torch.floor(self.blocks / safe[:, None] + v + 0.5).clamp(QMIN, QMAX)
        return d, torch.where(d[:, None] == 0, torch.zeros_like(q), q)


class AutoRound(Method):
    name = "autoround"
    needs_float_targets = True

    def __init__(self, options):
        super().__init__(options)
        self.needs_float_targets = options.target == "float"

    def start(self, weight, stat):
        """The imatrix scale search: the step-0 weights."""
        return fit_scales(weight.reshape(-1, BLOCK),
                          imatrix_weights(weight, self.importance(stat)))

    def pass_dtype(self, device):
        return _work_dtype(device) if self.options.amp else torch.float32

    def observe_outside(self, stats, name, module, x):
        observe_hessian(stats, name, module, x)

    def quantize_layer(self, name, module, weight, stat):
        """A layer outside the blocks (an LM head: no block output to fit, and the whole
        vocabulary's logits too costly to train against) is quantized by GPTQ."""
        return gptq_layer(weight, stat)

    def quantize_block(self, ctx):
        o = self.options
        layers = {}
        for name in ctx.layers:
            d0, _ = self.start(ctx.weights[name], ctx.stats.get(name))
            layers[name] = _Layer(ctx.weights[name], d0)
        if o.iters == 0 or not layers:
            return {n: lay.final(torch.zeros_like(lay.v), torch.ones_like(lay.s))
                    for n, lay in layers.items()}
        runner, i = ctx.runner, ctx.index
        targets = ctx.targets if ctx.targets is not None else ctx.refs
        block = ctx.block
        g = torch.Generator().manual_seed(ctx.seed * 100003 + i)
        best_loss = float("inf")
        best = {n: (lay.v.detach().clone(), lay.s.detach().clone()) for n, lay in layers.items()}

        work = self.pass_dtype(runner.device)   # the block is in it (quantize_blockwise)

        def call(*args, **kwargs):
            params = {f"{ctx.names[n]}.weight": lay.weight(work)
                      for n, lay in layers.items()}
            return functional_call(block, params, args, kwargs)
        with torch.enable_grad():
            for step in range(o.iters):
                b = int(torch.randint(len(runner.hidden), (1,), generator=g))
                out = first_output(runner.calls[i][b].invoke(call, runner.hidden[b],
                                                              runner.device, work))
                loss = torch.mean((out.float() - targets[b].to(out.device).float()) ** 2)
                value = float(loss.detach())
                if value < best_loss:   # the parameters this loss was computed with
                    best_loss = value
                    best = {n: (lay.v.detach().clone(), lay.s.detach().clone())
                            for n, lay in layers.items()}
                loss.backward()
                lr = o.lr * (1 - step / o.iters)
                with torch.no_grad():
                    for lay in layers.values():
                        lay.v -= lr * torch.sign(lay.v.grad)
                        lay.v.clamp_(-0.5, 0.5)
                        lay.s -= lr * torch.sign(lay.s.grad)
                        lay.s.clamp_(o.min_scale, o.max_scale)
                        lay.v.grad = None
                        lay.s.grad = None
        return {n: lay.final(*best[n]) for n, lay in layers.items()}


BUILTIN.update({
    "autoround_q4_0": entry(AutoRound, AutoRoundOptions, LINEAR,
                            "Q4_0 on Linear, rounding and scales learned per block by signed "
                            "gradient descent (AutoRound)"),
    "autoround_q4_0_all": entry(AutoRound, AutoRoundOptions, ALL,
                                "Q4_0 on Linear, Embedding, Conv1d, Conv2d by AutoRound (tied "
                                "weights through their Linear)"),
})
