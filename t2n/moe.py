"""Mixture-of-experts layers traced with static shapes.

A transformers experts module takes ``(hidden_states [T, H], top_k_index [T, K],
top_k_weights [T, K])`` from the model's router and returns, for each token, the sum of its
K experts' outputs scaled by their routing weights. Its kernels group the tokens by expert
(a loop over the experts hit, or ``torch.histc`` and grouped matmuls): shapes that depend on
the data, which torch.export cannot keep and tract cannot run.

While tracing, :func:`static_experts` gives each experts module it knows a forward computing
the same function with static shapes: every expert runs on every token and a dense ``[T, E]``
matrix of routing weights, zero for the experts a token did not choose, scales the experts'
activations before the down projection, whose single matmul then also sums the experts. The
router is not touched, so the routing (softmax or sigmoid, before or after the top-k,
renormalized or not, grouped, biased) stays the model's own code.

It knows two kinds of module. A class dispatched by transformers' experts interface
(``use_experts_implementation``) computes what the interface's kernels compute for its layout
flags (gate or not, transposed, biases, a norm after each expert), whatever its own eager code
says: the static forward follows that contract, applying the module's own ``_apply_gate`` to
rows as the kernels do; a subclass that overrides ``forward``, an expert-parallel module, or
weights whose shapes do not chain are left alone. A class with its own routing code (DBRX's
fused experts, JetMoe's layers, OWN_CODE_EXPERTS) is rewritten only for that exact class.
Anything else is left alone and fails with the usual unsupported-op error.

JetMoe routes inside its layers (a top-k gate that groups tokens with ``.tolist()`` sizes and
``index_add``) for both its feed-forward experts and its mixture of attention heads, whose query
and output projections are experts too; its static forms compute the same top-k softmax gate
from the router's own linear layer and the experts densely, the chosen query projection of each
(token, slot) picked by a one-hot matmul.

The dense form was measured against gathering each token's K experts' weights
(``gate_up_proj[top_k_index]`` and batched matrix-vector products) in tract on a MoE block of
hidden size 256, 8 experts, top-2: dense 0.19 ms for one token and 2.1 ms for 32 tokens,
gather 0.56 ms and 130 ms.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["static_experts", "rewritable", "OWN_CODE_EXPERTS"]

log = logging.getLogger(__name__)


def _routing_matrix(top_k_index, top_k_weights, experts: int, dtype):
    """[T, E]: each token's routing weight of every expert, zero for the experts not chosen."""
    chosen = top_k_index.unsqueeze(-1) == torch.arange(experts, device=top_k_index.device)
    return (chosen.to(top_k_weights.dtype) * top_k_weights.unsqueeze(-1)).sum(1).to(dtype)


def _weighted_down(act, weights, down_all):
    """``act`` [T, E, I] scaled by ``weights`` [T, E], times ``down_all`` [E * I, H]: the
    weighted sum of the experts' down projections."""
    tokens, experts, inner = act.shape
    scaled = (act * weights.unsqueeze(-1)).reshape(tokens, experts * inner)
    return scaled @ down_all


# -- transformers' experts interface (use_experts_implementation) ----------------------------
def _interface_forward(self, hidden_states, top_k_index, top_k_weights):
    """The contract of transformers' experts interface, for any of its layout flags: for each
    token, ``sum_k w_k * norm?(down_e(gate(up_e(x))))`` with ``e = top_k_index[k]``.

    Weights: ``gate_up_proj`` [E, 2I, H] (or ``up_proj`` [E, I, H] without a gate) and
    ``down_proj`` [E, H, I], transposed ([E, H, 2I], [E, I, H]) under ``is_transposed``,
    optional ``*_bias`` [E, out]. The gate (the module's ``_apply_gate``, or ``act_fn`` without
    a gate) is applied to rows of [T * E, 2I] as the interface's kernels do."""
    up = self.gate_up_proj if self.has_gate else self.up_proj
    down = self.down_proj
    experts, tokens = up.shape[0], hidden_states.shape[0]
    if self.is_transposed:
        proj = hidden_states @ up.permute(1, 0, 2).reshape(up.shape[1], -1)
        down_t = down                                                      # [E, I, H]
    else:
        proj = F.linear(hidden_states, up.reshape(-1, up.shape[2]))
        down_t = down.permute(0, 2, 1)                                     # [E, I, H]
    proj = proj.reshape(tokens, experts, -1)                               # [T, E, 2I]
    if self.has_bias:
        proj = proj + (self.gate_up_proj_bias if self.has_gate else self.up_proj_bias)
    rows = proj.reshape(tokens * experts, -1)
    act = self._apply_gate(rows) if self.has_gate else self.act_fn(rows)
    act = act.reshape(tokens, experts, -1)                                 # [T, E, I]
    weights = _routing_matrix(top_k_index, top_k_weights, experts, act.dtype)
    if self.has_post_expert_norm:
        # the norm sits between each expert's output and its weight: outputs kept apart
        out = act.transpose(0, 1) @ down_t                                 # [E, T, H]
        if self.has_bias:
            out = out + self.down_proj_bias.unsqueeze(1)
        out = self.post_expert_norm(out)
        out = (out * weights.t().unsqueeze(-1)).sum(0)
    else:
        out = _weighted_down(act, weights, down_t.reshape(-1, down_t.shape[2]))
        if self.has_bias:
            out = out + weights @ self.down_proj_bias
    return out.to(hidden_states.dtype)


def _interface_dispatched(module) -> bool:
    """``module.forward`` is the dispatcher that transformers' ``use_experts_implementation``
    installs (a subclass overriding forward is not)."""
    forward = type(module).forward
    code = getattr(forward, "__code__", None)
    return code is not None and "experts_interface" in code.co_freevars


def _interface_check(module) -> bool:
    """Dispatched by the experts interface, not expert-parallel, and weights whose shapes
    chain as the flags say."""
    if not _interface_dispatched(module) or getattr(module, "_is_expert_parallel", True):
        return False
    flags = {k: getattr(module, k, None) for k in ("has_gate", "has_bias", "is_transposed",
                                                   "has_post_expert_norm")}
    if not all(isinstance(v, bool) for v in flags.values()):
        return False
    up = getattr(module, "gate_up_proj" if flags["has_gate"] else "up_proj", None)
    down = getattr(module, "down_proj", None)
    if not all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in (up, down)):
        return False
    experts = up.shape[0]
    if flags["is_transposed"]:
        hidden, inner = down.shape[2], down.shape[1]
        up_out, shapes = up.shape[2], (up.shape[:2], down.shape)
        expected = ((experts, hidden), (experts, inner, hidden))
    else:
        hidden, inner = down.shape[1], down.shape[2]
        up_out, shapes = up.shape[1], ((up.shape[0], up.shape[2]), down.shape)
        expected = ((experts, hidden), (experts, hidden, inner))
    if tuple(map(tuple, shapes)) != expected or up_out != (2 if flags["has_gate"] else 1) * inner:
        return False
    if flags["has_post_expert_norm"] and not isinstance(
            getattr(module, "post_expert_norm", None), torch.nn.Module):
        return False
    if flags["has_bias"]:
        names = ("gate_up_proj_bias" if flags["has_gate"] else "up_proj_bias", "down_proj_bias")
        biases = [tuple(getattr(getattr(module, k, None), "shape", ())) for k in names]
        return biases == [(experts, up_out), (experts, hidden)]
    return True


# -- DBRX --------------------------------------------------------------------------------
def _dbrx_forward(self, hidden_states, top_k_index, top_k_weights):
    """DBRX's experts: ``mlp.w1``/``v1``/``w2`` [E * F, H], each expert
    ``(act(x @ w1_e.T) * (x @ v1_e.T)) @ w2_e``; output viewed as [batch, -1, H]."""
    mlp, experts = self.mlp, self.num_experts
    x = hidden_states.reshape(-1, self.hidden_size)
    act = mlp.activation_fn(x @ mlp.w1.t()) * (x @ mlp.v1.t())          # [T, E * F]
    act = act.reshape(x.shape[0], experts, -1)
    weights = _routing_matrix(top_k_index, top_k_weights, experts, act.dtype)
    out = _weighted_down(act, weights, mlp.w2)
    return out.to(hidden_states.dtype).view(hidden_states.shape[0], -1, self.hidden_size)


def _dbrx_check(module) -> bool:
    """The class's own forward, over a DbrxExpertGLU holding [E * F, H] weights."""
    cls, mlp = type(module), getattr(module, "mlp", None)
    if getattr(cls.forward, "__qualname__", "") != "DbrxExperts.forward":
        return False
    if f"{type(mlp).__module__}.{type(mlp).__qualname__}" != f"{cls.__module__}.DbrxExpertGLU":
        return False
    shape = (module.num_experts * module.ffn_hidden_size, module.hidden_size)
    return all(tuple(getattr(mlp, k).shape) == shape for k in ("w1", "v1", "w2"))


# -- JetMoe: feed-forward experts and mixture of attention ---------------------------------
def _jetmoe_route(router, x):
    """JetMoeTopKGating's decision without its grouping: [T, K] expert indices, their gates
    (softmax over the K best logits) and the [T, E] router logits."""
    logits = router.layer(x).float()
    top_logits, top_index = logits.topk(router.top_k, dim=1)
    return top_index, torch.softmax(top_logits, dim=1).type_as(x), logits


def _experts_linear(x, weight):
    """``x`` [T, In] through every expert of ``weight`` [E, Out, In]: [T, E, Out]."""
    return F.linear(x, weight.reshape(-1, weight.shape[2])).reshape(x.shape[0], weight.shape[0], -1)


def _experts_down(weight):
    """``weight`` [E, Out, In] as the [E * In, Out] matrix of :func:`_weighted_down`."""
    return weight.permute(0, 2, 1).reshape(-1, weight.shape[1])


def _jetmoe_moe_forward(self, layer_input):
    """JetMoeMoE: ``bias + sum_k gate_k * W2[e_k] (act(a) * b)``, ``(a, b) = W1[e_k] x``."""
    bsz, length, hidden = layer_input.shape
    x = layer_input.reshape(-1, hidden)
    index, gates, _ = _jetmoe_route(self.router, x)
    gate, up = _experts_linear(x, self.input_linear.weight).chunk(2, dim=-1)  # [T, E, I] each
    act = self.activation(gate) * up
    weights = _routing_matrix(index, gates, self.input_linear.num_experts, act.dtype)
    out = _weighted_down(act, weights, _experts_down(self.output_linear.weight))
    return out.view(bsz, length, hidden) + self.bias


def _jetmoe_moa_map(self, layer_input):
    """JetMoeMoA.map: each token's K query projections ``Wq[e_k] x`` [bsz, length, K, D], the
    router logits, and the routing (indices, gates) that :func:`_jetmoe_moa_reduce` reads."""
    bsz, length, hidden = layer_input.shape
    x = layer_input.reshape(-1, hidden)
    index, gates, logits = _jetmoe_route(self.router, x)
    queries = _experts_linear(x, self.input_linear.weight)                    # [T, E, D]
    chosen = (index.unsqueeze(-1) == torch.arange(self.num_experts, device=x.device))
    picked = chosen.to(queries.dtype) @ queries                               # [T, K, D]
    return picked.view(bsz, length, self.top_k, -1), logits, (index, gates)


def _jetmoe_moa_reduce(self, layer_input, topo_info):
    """JetMoeMoA.reduce: ``bias + sum_k gate_k * Wo[e_k] a_k`` over each token's K attention
    outputs ``a_k``; the outputs sent to one expert are summed before its projection."""
    bsz, length, slots, inner = layer_input.shape
    index, gates = topo_info
    a = layer_input.reshape(-1, slots, inner)                                 # [T, K, D]
    chosen = (index.unsqueeze(-1) == torch.arange(self.num_experts, device=a.device))
    weights = chosen.to(a.dtype) * gates.unsqueeze(-1)                        # [T, K, E]
    per_expert = weights.transpose(1, 2) @ a                                  # [T, E, D]
    out = per_expert.reshape(a.shape[0], -1) @ _experts_down(self.output_linear.weight)
    return out.view(bsz, length, -1) + self.bias


def _jetmoe_check(*methods):
    """The class's own ``methods``, a JetMoeTopKGating router and JetMoeParallelExperts
    projections whose shapes chain: [E, A, H] in, [E, H, B] out (A = 2B for the MLP)."""
    def check(module) -> bool:
        cls = type(module)
        if any(getattr(getattr(cls, m, None), "__qualname__", "") != f"{cls.__qualname__}.{m}"
               for m in methods):
            return False
        prefix = f"{cls.__module__}.JetMoe"
        parts = {"router": "TopKGating", "input_linear": "ParallelExperts",
                 "output_linear": "ParallelExperts"}
        for attr, kind in parts.items():
            part = getattr(module, attr, None)
            if f"{type(part).__module__}.{type(part).__qualname__}" != prefix + kind:
                return False
        w_in, w_out = module.input_linear.weight, module.output_linear.weight
        experts, inner, hidden = w_in.shape
        if cls.__qualname__ == "JetMoeMoE":
            inner //= 2
        return (tuple(w_out.shape) == (experts, hidden, inner)
                and module.router.num_experts == experts
                and tuple(module.router.layer.weight.shape) == (experts, hidden)
                and module.router.layer.bias is None)
    return check


# -- Ergo: routes normalized one by one -------------------------------------------------------
def _ergo_forward(self, hidden_states, top_k_index, top_k_weights):
    """ErgoExperts: each route's expert output (relu2 projections, no gate) scaled by that
    expert's RMS norm weight, the routes summed with their weights. Every expert's output is
    computed for every token ([T, E, H], as the other dense forms do; a token's routes share
    its projections), normalized by the norm module itself, then weighted by the routing
    matrix (tract 0.23.9 mis-optimises a matmul over torch's repeat_interleave of the rows)."""
    tokens, hidden = hidden_states.shape
    experts = self.up_proj.shape[0]
    proj = hidden_states @ self.up_proj.permute(1, 0, 2).reshape(hidden, -1)
    act = self.act_fn(proj.reshape(tokens * experts, -1)).reshape(tokens, experts, -1)
    out = (act.transpose(0, 1) @ self.down_proj).transpose(0, 1)           # [T, E, H]
    ids = torch.arange(experts, device=out.device).repeat(tokens)
    out = self.post_expert_norm(out.reshape(tokens * experts, hidden), ids)
    weights = _routing_matrix(top_k_index, top_k_weights, experts, out.dtype)
    out = (out.reshape(tokens, experts, hidden) * weights.unsqueeze(-1)).sum(1)
    return out.to(hidden_states.dtype)


def _ergo_check(module) -> bool:
    """Projections [E, H, I] and [E, I, H] (transposed, no gate, no bias), the per-route norm
    outside the projections: ErgoExpertNorm exactly, one weight per expert [E, H]."""
    up, down = getattr(module, "up_proj", None), getattr(module, "down_proj", None)
    norm_module = getattr(module, "post_expert_norm", None)
    if type(norm_module).__name__ != "ErgoExpertNorm" \
            or type(norm_module).__module__ != type(module).__module__:
        return False
    norm = getattr(norm_module, "weight", None)
    if not all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in (up, down)) \
            or not isinstance(norm, torch.Tensor):
        return False
    experts, hidden, inner = up.shape
    flags = [getattr(module, k, None) for k in ("has_gate", "is_transposed", "has_bias",
                                                "has_post_expert_norm", "_is_expert_parallel")]
    return (flags == [False, True, False, False, False]
            and tuple(down.shape) == (experts, inner, hidden)
            and tuple(norm.shape) == (experts, hidden) and module.num_experts == experts)


# -- the verified classes ------------------------------------------------------------------
@dataclass(frozen=True)
class _Form:
    methods: dict[str, Callable]  # name -> the static method, bound to the module
    check: Callable               # module -> bool: the layout it was verified with


_INTERFACE = _Form({"forward": _interface_forward}, _interface_check)
_DBRX = _Form({"forward": _dbrx_forward}, _dbrx_check)
_JETMOE_MOE = _Form({"forward": _jetmoe_moe_forward}, _jetmoe_check("forward"))
_JETMOE_MOA = _Form({"map": _jetmoe_moa_map, "reduce": _jetmoe_moa_reduce},
                    _jetmoe_check("map", "reduce"))
_ERGO = _Form({"forward": _ergo_forward}, _ergo_check)

_MODELS = "transformers.models"
# Classes with their own experts code, each read (the sum of the chosen experts' outputs scaled
# by the routing weights) and compared with transformers in tests/test_architectures.py. Every
# class dispatched by transformers' experts interface follows the interface's contract instead
# (_INTERFACE); the tests compare it with each such class of the installed transformers.
OWN_CODE_EXPERTS: dict[str, _Form] = {
    f"{_MODELS}.{family}.modeling_{family}.{name}": form for family, name, form in (
        ("dbrx", "DbrxExperts", _DBRX),
        ("jetmoe", "JetMoeMoE", _JETMOE_MOE),
        ("jetmoe", "JetMoeMoA", _JETMOE_MOA),
        ("ergo", "ErgoExperts", _ERGO),
    )}


def _form(module: torch.nn.Module) -> _Form | None:
    cls = type(module)
    form = OWN_CODE_EXPERTS.get(f"{cls.__module__}.{cls.__qualname__}", _INTERFACE)
    return form if form.check(module) else None


def rewritable(module: torch.nn.Module) -> bool:
    """Whether :func:`static_experts` rewrites ``module``: a class of OWN_CODE_EXPERTS exactly,
    or one dispatched by transformers' experts interface, with the layout it is checked for."""
    return _form(module) is not None


@contextmanager
def static_experts(model: torch.nn.Module):
    """Within this block, the verified experts modules of ``model`` compute with static
    shapes (methods set on each instance, removed on exit)."""
    patched = []
    for module in model.modules():
        form = _form(module)
        if form is None or any(name in module.__dict__ for name in form.methods):
            continue  # already set on the instance
        for name, method in form.methods.items():
            setattr(module, name, method.__get__(module))
        patched.append((module, form.methods))
    if patched:
        log.debug("experts computed densely in %d modules", len(patched))
    try:
        yield
    finally:
        for module, methods in patched:
            for name in methods:
                delattr(module, name)
