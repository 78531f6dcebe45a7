"""Generic t2n.export of tiny transformers architectures, run in tract and compared with torch.

Mixture-of-experts decoders (hidden 64, 2 layers, 4 experts, top-2, vocabulary 256) export with
their experts computed densely while tracing (t2n.moe); wav2vec2 exports the weight norm of its
positional convolution (aten._weight_norm). Tolerance: t2n's ``approximate`` check, and
max |tract - torch| <= 1e-5 * max |torch| on every output (REL below).
"""
from __future__ import annotations

import copy
import functools
import numpy as np
import pytest
import torch
import transformers
from transformers.integrations.moe import _default_apply_gate, grouped_mm_experts_forward

import _moe_classes
from _moe_classes import Logits

import t2n
from helpers import Lambda, assert_bundle_matches, run_bundle
from t2n import UnsupportedOpsError, VerificationError, moe
from test_llm_export import ARCHS as LLM_ARCHS, COMMON, GENERIC_MOE

REL = 1e-5
IDS, OTHER_IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8]]), torch.tensor([[9, 60, 11, 4, 200]])

DEEPSEEK = dict(kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16,
                v_head_dim=16, moe_intermediate_size=64, n_shared_experts=1, n_routed_experts=4,
                first_k_dense_replace=1, num_experts_per_tok=2,
                **{**COMMON, "num_key_value_heads": 4})
OTHER_ARCHS = {
    # softmax routing, top-k within the best groups (group_limited_greedy)
    "deepseek_v2": lambda: transformers.DeepseekV2ForCausalLM(transformers.DeepseekV2Config(
        topk_method="group_limited_greedy", n_group=2, topk_group=1, **DEEPSEEK)),
    # sigmoid routing, score-correction bias, top-2-sum group choice, renormalized and scaled
    "deepseek_v3": lambda: transformers.DeepseekV3ForCausalLM(
        transformers.DeepseekV3Config(n_group=2, topk_group=1, **DEEPSEEK)),
    "minimax": lambda: transformers.MiniMaxForCausalLM(transformers.MiniMaxConfig(
        num_local_experts=4, num_experts_per_tok=2, head_dim=16, **COMMON)),
}
MOE_NAMES = ["mixtral_moe", "qwen2_moe", "qwen3_moe", "olmoe", "flex_olmo", "phimoe",
             "granitemoe", "granitemoeshared", "glm4_moe", "dots1", "ernie4_5_moe",
             "hunyuan_v1_moe", "gpt_oss", "dbrx", "jetmoe", *GENERIC_MOE]
# whole-sequence only: caches export_llm does not write (DeepSeek V4's compressed attention,
# Inkling's convolution state)
WHOLE_SEQUENCE_MOE = ["deepseek_v4", "inkling", "inkling2", "inkling2_loop",
                      # Ergo's experts normalize each route (t2n.moe's own form for them)
                      "ergo"]
FACTORIES = {**{n: LLM_ARCHS[n] for n in MOE_NAMES}, **OTHER_ARCHS,
             **{n: functools.partial(_moe_classes.tiny_causal_lm, n) for n in WHOLE_SEQUENCE_MOE}}
DEFAULT_SUITE = {"mixtral_moe", "qwen2_moe"}
# the attention of these keeps the token axis static in a generic export (gpt_oss: its sinks'
# concat); export_llm covers gpt_oss with S. MiniMax's lightning attention blocks of
# min(256, S) tokens are written with tract's min()
STATIC_TOKENS = {"gpt_oss"}


def _model(name):
    torch.manual_seed(0)
    return FACTORIES[name]().eval()


class Outputs(torch.nn.Module):
    """A transformers model with its ModelOutput fields as a tuple."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model(*args).to_tuple()


def _assert_relative(result, model, *inputs):
    """max |tract - torch| <= REL * max |torch| on each output, for each tuple of inputs."""
    for args in inputs:
        with torch.no_grad():
            expected = model(*args)
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        got = run_bundle(result.path, *[a.numpy() for a in args])
        for name, g, e in zip(result.output_names, got, expected):
            e = e.numpy()
            assert np.abs(g - e).max() <= REL * np.abs(e).max(), name


def _params(names):
    return [n if n in DEFAULT_SUITE else pytest.param(n, marks=pytest.mark.slow) for n in names]


# -- mixture of experts: whole decoders ------------------------------------------------------
@pytest.mark.parametrize("arch", _params([*MOE_NAMES, *WHOLE_SEQUENCE_MOE, "minimax"]))
def test_moe_decoder(arch, tmp_path):
    model = Logits(_model(arch))
    if arch in STATIC_TOKENS:
        result = assert_bundle_matches(model, (IDS,), tmp_path)
        _assert_relative(result, model, (IDS,))
        return
    result = assert_bundle_matches(model, (IDS,), tmp_path, dynamic_axes={"input_ids": {1: "S"}},
                                   other_args=[(OTHER_IDS,)])
    _assert_relative(result, model, (IDS,), (OTHER_IDS,))


# latent attention (keys and values expanded from a shared latent, a shared RoPE key): the key
# is assembled by slice assignments into new_empty, which tract 0.23.9 mis-ranked through
# reshape(unsqueeze(matmul)) until t2n reshaped the matmul directly
LATENT = {"glm4_moe_lite": functools.partial(_moe_classes.tiny_causal_lm, "glm4_moe_lite"),
          "minicpm3": functools.partial(_moe_classes.tiny_causal_lm, "minicpm3"),
          "deepseek_v2": OTHER_ARCHS["deepseek_v2"], "deepseek_v3": OTHER_ARCHS["deepseek_v3"]}


@pytest.mark.parametrize("arch", [a if a == "glm4_moe_lite" else pytest.param(
    a, marks=pytest.mark.slow) for a in LATENT])
def test_latent_attention_decoder(arch, tmp_path):
    torch.manual_seed(0)
    model = Logits(LATENT[arch]().eval())
    result = assert_bundle_matches(model, (IDS,), tmp_path, dynamic_axes={"input_ids": {1: "S"}},
                                   other_args=[(OTHER_IDS,), (IDS[:, :1],)])
    _assert_relative(result, model, (IDS,), (OTHER_IDS,))


def _moe_block(arch):
    """The MoE block of layer 1 (layer 0 is dense), its parameters drawn wider than the
    model's initialization so that the routing and the experts weigh in the output."""
    block = _model(arch).model.layers[1].mlp
    for p in list(block.parameters()) + list(block.buffers()):
        torch.nn.init.normal_(p, std=0.3)
    return block


# DeepSeek V2 and V3 whole models stop outside their MoE blocks (V2: complex RoPE, aten.polar;
# V3: its latent attention), so their blocks, router included, are exported alone
@pytest.mark.parametrize("arch", ["deepseek_v3", pytest.param("deepseek_v2",
                                                               marks=pytest.mark.slow)])
def test_deepseek_moe_block(arch, tmp_path):
    block = _moe_block(arch)
    x, other = torch.randn(1, 8, 64), torch.randn(1, 3, 64)
    result = assert_bundle_matches(block, (x,), tmp_path, other_args=[(other,)],
                                   dynamic_axes={"hidden_states": {1: "S"}})
    _assert_relative(result, block, (x,), (other,))


# -- mixture of experts: the static forms against transformers' own code ----------------------
def _experts(model):
    return [m for m in model.modules() if moe.rewritable(m)]


def _qualname(module):
    return f"{type(module).__module__}.{type(module).__qualname__}"


def test_every_own_code_class_is_tested_here():
    found = set()
    for name in FACTORIES:
        found |= {_qualname(m) for m in _experts(_model(name))} & set(moe.OWN_CODE_EXPERTS)
    assert found == set(moe.OWN_CODE_EXPERTS)


def _random_routing(tokens, experts, k):
    return torch.rand(tokens, experts).argsort(-1)[:, :k], torch.rand(tokens, k)


@pytest.mark.parametrize("module_name, class_name", _moe_classes.interface_classes(),
                         ids=lambda v: v.rsplit(".", 1)[-1])
def test_interface_experts_follow_the_kernels(module_name, class_name):
    """Every experts class of the installed transformers dispatched by its experts interface
    (hidden 32, intermediate 16, 4 experts, weights of order 1) is rewritten, and its static
    forward equals the interface's two kernels (batched_mm, grouped_mm) on 6 tokens routed
    to 2 experts each, and the class's own eager code on one route per token of weight 1
    (Ergo's projections are called with single unit-weight routes)."""
    torch.manual_seed(0)
    module, config = _moe_classes.build(module_name, class_name)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    assert moe.rewritable(module)
    experts = (module.gate_up_proj if module.has_gate else module.up_proj).shape[0]
    x = torch.randn(6, _moe_classes.HIDDEN)
    two = _random_routing(6, experts, 2)
    one = (_random_routing(6, experts, 1)[0], torch.ones(6, 1))
    for implementation, routing in [("batched_mm", two), ("grouped_mm", two), ("eager", one)]:
        config._experts_implementation = implementation
        with torch.no_grad():
            expected = module(x, *routing)
            with moe.static_experts(module):
                got = module(x, *routing)
        torch.testing.assert_close(got, expected, rtol=REL, atol=REL * expected.abs().max().item(),
                                   msg=lambda m: f"{implementation}: {m}")


@pytest.mark.parametrize("arch, class_name", [("dbrx", "DbrxExperts"), ("ergo", "ErgoExperts")])
def test_own_code_dense_experts_equal_transformers(arch, class_name):
    """DBRX's experts and Ergo's (each route through the projections, then its expert's RMS
    norm scale, then the weighted sum) against the class's own code, on random routing of 6
    tokens to 2 experts with weights of order 1; a same-named subclass is left alone."""
    module = next(m for m in _experts(_model(arch)) if type(m).__name__ == class_name)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    hidden = module.up_proj.shape[1] if arch == "ergo" else _model(arch).config.hidden_size
    x = torch.randn(6, hidden)
    index, weights = _random_routing(6, module.num_experts, 2)
    with torch.no_grad():
        expected = module(x, index, weights)
        with moe.static_experts(module):
            assert "forward" in module.__dict__
            got = module(x, index, weights)
    assert "forward" not in module.__dict__
    torch.testing.assert_close(got, expected, rtol=REL, atol=REL * expected.abs().max().item())
    look_alike = copy.copy(module)
    look_alike.__class__ = type(class_name, (type(module),), {})
    assert not moe.rewritable(look_alike)


def test_jetmoe_static_forms_equal_transformers():
    """JetMoe's MLP experts and its mixture of attention (map: each token's chosen query
    projections; reduce: the gated sum of the chosen output projections) against the
    modules' own grouped code, weights of order 1, 2 x 5 tokens."""
    layer = _model("jetmoe").model.layers[0]
    mlp, moa = layer.mlp, layer.self_attention.experts
    for p in [*mlp.parameters(), *moa.parameters()]:
        torch.nn.init.normal_(p, std=0.3)
    x, attended = torch.randn(2, 5, 64), torch.randn(2, 5, 2, 32)
    with torch.no_grad():
        expected_mlp, (expected_q, expected_logits, topo) = mlp(x), moa.map(x)
        expected_out = moa.reduce(attended, topo)
        with moe.static_experts(layer):
            assert {"forward", "map", "reduce"} <= {*mlp.__dict__, *moa.__dict__}
            got_mlp, (got_q, got_logits, static_topo) = mlp(x), moa.map(x)
            got_out = moa.reduce(attended, static_topo)
    assert not {"forward", "map", "reduce"} & {*mlp.__dict__, *moa.__dict__}
    for got, expected in [(got_mlp, expected_mlp), (got_q, expected_q),
                          (got_logits, expected_logits), (got_out, expected_out)]:
        torch.testing.assert_close(got, expected, rtol=REL, atol=REL * expected.abs().max().item())


def test_jetmoe_look_alike_is_left_alone():
    """A JetMoe MLP whose router has a bias, or whose class overrides forward, is not
    rewritten (the static gate reads the router's linear layer without one)."""
    from transformers.models.jetmoe.modeling_jetmoe import JetMoeMoE

    class Subclass(JetMoeMoE):
        def forward(self, layer_input):
            return super().forward(layer_input)

    model = _model("jetmoe")
    config = model.config
    plain, sub, biased = JetMoeMoE(config), Subclass(config), JetMoeMoE(config)
    biased.router.layer = torch.nn.Linear(config.hidden_size, 4)
    assert [moe.rewritable(m) for m in (plain, sub, biased)] == [True, False, False]
    assert moe.rewritable(model.model.layers[0].self_attention.experts)


# -- mixture of experts: what is left alone -------------------------------------------------
class LookAlikeExperts(torch.nn.Module):
    """Mixtral's experts layout and flags, computed by the interface's grouped kernel called
    from the class's own forward: not dispatched by the interface."""

    def __init__(self, config):
        super().__init__()
        self.num_experts = config.num_local_experts
        self.gate_up_proj = torch.nn.Parameter(
            torch.randn(self.num_experts, 2 * config.intermediate_size, config.hidden_size))
        self.down_proj = torch.nn.Parameter(
            torch.randn(self.num_experts, config.hidden_size, config.intermediate_size))
        self.act_fn = torch.nn.SiLU()
        self.has_gate, self.has_bias, self.is_transposed = True, False, False
        self.has_post_expert_norm, self._is_expert_parallel = False, False

    _apply_gate = _default_apply_gate

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)


def test_look_alike_experts_are_left_alone(tmp_path):
    model = _model("mixtral_moe")
    for layer in model.model.layers:
        layer.mlp.experts = LookAlikeExperts(model.config)
    assert not _experts(model)
    with pytest.raises(UnsupportedOpsError, match=r"aten\.histc"):
        t2n.export(Logits(model), (IDS,), tmp_path / "bundle")


def test_overridden_forward_or_other_layout_is_left_alone():
    """A subclass keeping the interface's dispatch is rewritten; one overriding forward, an
    expert-parallel module, or biases declared without their tensors are not."""
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    class Inherits(MixtralExperts):
        pass

    class Overrides(MixtralExperts):
        def forward(self, hidden_states, top_k_index, top_k_weights):
            return super().forward(hidden_states, top_k_index, top_k_weights) * 2

    config = _model("mixtral_moe").config
    holder = torch.nn.ModuleList([MixtralExperts(config), Inherits(config), Overrides(config),
                                  MixtralExperts(config), MixtralExperts(config)])
    holder[3].has_bias = True
    holder[4]._is_expert_parallel = True
    assert [moe.rewritable(m) for m in holder] == [True, True, False, False, False]
    with moe.static_experts(holder):
        assert ["forward" in m.__dict__ for m in holder] == [True, True, False, False, False]
    assert not any("forward" in m.__dict__ for m in holder)


def test_wrong_routing_fails_the_check(tmp_path, monkeypatch):
    """The comparisons above see the experts: reversed routing weights fail t2n's check."""
    original = moe._routing_matrix
    monkeypatch.setattr(moe, "_routing_matrix", lambda index, weights, experts, dtype: original(
        index, weights.flip(-1), experts, dtype))
    with pytest.raises(VerificationError, match="tract disagrees"):
        t2n.export(Logits(_model("mixtral_moe")), (IDS,), tmp_path / "bundle")


# -- weight norm -----------------------------------------------------------------------------
def test_wav2vec2(tmp_path):
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4)
    model = Outputs(transformers.Wav2Vec2Model(config).eval())
    x = torch.randn(1, 1600)
    result = assert_bundle_matches(model, (x,), tmp_path)
    _assert_relative(result, model, (x,))


@pytest.mark.parametrize("dim", [0, 2, None], ids=lambda d: f"dim{d}")
def test_weight_norm_conv(dim, tmp_path):
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(4, 6, 3), dim=dim)
    assert_bundle_matches(conv.eval(), (torch.randn(1, 4, 10),), tmp_path)


def test_weight_norm_interface(tmp_path):
    """The fused form (first or last axis kept), which returns the norm too."""
    fn = Lambda(lambda v, g: torch._weight_norm_interface(v, g, 2))
    assert_bundle_matches(fn, (torch.randn(6, 4, 3), torch.randn(1, 1, 3)), tmp_path)
