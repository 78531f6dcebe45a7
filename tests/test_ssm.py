"""State-space decoders (t2n/ssm.py): the mixers' scan as one tract loop, against transformers.

The forms are compared with transformers' own slow path (no CUDA kernels here) in torch, then
exported whole-sequence with a dynamic token axis and run in tract. Tolerances: t2n's
``approximate`` check, and max |got - expected| <= REL * max |expected| on every output.
export_llm's prefill/decode/generation tests of the same models are in tests/test_llm_export.py
(ARCHS "mamba", "mamba2", "bamba_hybrid", "falcon_mamba", "jamba_hybrid", "falcon_h1",
"zamba2_hybrid", ...).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers

from _moe_classes import Logits
from helpers import assert_bundle_matches, run_bundle
from t2n import ssm, verify
from t2n.llm import LLMBundle, export_llm
from t2n.llm.wrapper import new_cache, past_from_cache
from t2n.verify import load_tract_model
from test_llm_export import ARCHS, COMMON, FALCON_H1

REL = 1e-5
IDS, OTHER_IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8]]), torch.tensor([[9, 60, 11]])
SSM_ARCHS = ["mamba", "mamba2", "bamba_hybrid", "falcon_mamba", "jamba_hybrid", "falcon_h1",
             "zamba_hybrid", "zamba2_hybrid", "lfm2", "lfm2_moe",
             *(pytest.param(a, marks=pytest.mark.slow) for a in ("granitemoehybrid", "nemotron_h"))]


def _model(arch):
    torch.manual_seed(0)
    return ARCHS[arch]().eval()


def _assert_relative(got, expected, what=""):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, what
    assert np.abs(got - expected).max() <= REL * np.abs(expected).max(), what


def _states(cache):
    return [t.detach().numpy().copy() for t in past_from_cache(cache)]


# -- the forms against transformers, in torch -----------------------------------------------
@pytest.mark.parametrize("arch", SSM_ARCHS)
def test_forms_equal_transformers(arch):
    """Whole sequence without a cache; then a 5-token prompt and three one-token steps with a
    cache (logits and every state); every mixer of the model rewritten."""
    model = _model(arch)
    mixers = [m for m in model.modules() if ssm.rewritable(m)]
    assert mixers
    with torch.no_grad():
        expected = model(IDS, use_cache=False).logits
        with ssm.scan_forms(model):
            assert all("forward" in m.__dict__ for m in mixers)
            got = model(IDS, use_cache=False).logits
        assert not any("forward" in m.__dict__ for m in mixers)
        _assert_relative(got, expected, "whole sequence")
        ref_cache, cache = new_cache(model), new_cache(model)
        for t, ids in enumerate([IDS[:, :5], IDS[:, 5:6], IDS[:, 6:7], IDS[:, 7:8]]):
            expected = model(ids, use_cache=True, cache=ref_cache).logits
            with ssm.scan_forms(model):
                got = model(ids, use_cache=True, cache=cache).logits
            _assert_relative(got, expected, f"step {t}")
            for g, e in zip(_states(cache), _states(ref_cache)):
                _assert_relative(g, e, f"states after step {t}")


def test_falcon_h1_without_its_gated_norm():
    """FalconH1's optional norm off (mamba_rms_norm=False, its default): a silu gate alone."""
    torch.manual_seed(0)
    model = transformers.FalconH1ForCausalLM(transformers.FalconH1Config(
        **{**FALCON_H1, "mamba_rms_norm": False}, **COMMON)).eval()
    assert all(not m.mamba_rms_norm for m in model.modules() if ssm.rewritable(m))
    with torch.no_grad():
        expected = model(IDS, use_cache=False).logits
        with ssm.scan_forms(model):
            got = model(IDS, use_cache=False).logits
    _assert_relative(got, expected)


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "falcon_mamba", "falcon_h1"])
def test_several_tokens_after_a_state_continue_the_recurrence(arch):
    """3 tokens in one call after a 5-token prompt equal transformers fed them one by one
    (transformers' own multi-token step restarts its scan from a zero state)."""
    model = _model(arch)
    with torch.no_grad():
        ref_cache, cache = new_cache(model), new_cache(model)
        model(IDS[:, :5], use_cache=True, cache=ref_cache)
        expected = [model(IDS[:, t:t + 1], use_cache=True, cache=ref_cache).logits
                    for t in range(5, 8)]
        with ssm.scan_forms(model):
            model(IDS[:, :5], use_cache=True, cache=cache)
            got = model(IDS[:, 5:8], use_cache=True, cache=cache).logits
    _assert_relative(got, torch.cat(expected, 1))
    for g, e in zip(_states(cache), _states(ref_cache)):
        _assert_relative(g, e)


def test_look_alikes_and_training_mode_are_left_alone():
    model = _model("mamba")
    mixer = model.backbone.layers[0].mixer
    look_alike = type("MambaMixer", (type(mixer),), {})(model.config, layer_idx=0)
    assert ssm.rewritable(mixer) and not ssm.rewritable(look_alike.eval())
    with ssm.scan_forms(model.train()):
        assert "forward" not in mixer.__dict__


@pytest.mark.parametrize("arch", ["falcon_mamba", "jamba_hybrid", "falcon_h1", "zamba_hybrid",
                                  "zamba2_hybrid", "lfm2"])
def test_look_alike_subclasses_are_left_alone(arch):
    """A subclass of the mixer with the same name and attributes keeps its own forward."""
    model = _model(arch)
    mixer = next(m for m in model.modules() if ssm.rewritable(m))
    look_alike = copy.copy(mixer)
    look_alike.__class__ = type(type(mixer).__name__, (type(mixer),), {})
    assert not ssm.rewritable(look_alike)
    holder = torch.nn.ModuleList([mixer, look_alike])
    with ssm.scan_forms(holder):
        assert "forward" in mixer.__dict__ and "forward" not in look_alike.__dict__


# -- the scan op in tract ------------------------------------------------------------------
def _scan_inputs(length, groups, rows, n, decay_n):
    g = torch.Generator().manual_seed(length)
    x = torch.randn(1, length, groups, rows, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(1, length, groups, rows, generator=g))
    A = -torch.rand(groups, rows, decay_n, generator=g) * 4
    B, C = (torch.randn(1, length, groups, n, generator=g) for _ in range(2))
    h0 = torch.randn(1, groups, rows, n, generator=g)
    return x, dt, A, B, C, h0


def _scan(x, dt, A, B, C, h0):
    return torch.ops.t2n.selective_scan(x, dt, A, B, C, h0)


class Scan(torch.nn.Module):
    """The op alone, its inputs named as in its schema."""

    def forward(self, x, dt, A, B, C, h0):
        return _scan(x, dt, A, B, C, h0)


@pytest.mark.parametrize("groups, rows, n, decay_n", [(1, 12, 4, 4), (2, 6, 4, 1)],
                         ids=["mamba_layout", "mamba2_layout"])
def test_selective_scan_in_tract(groups, rows, n, decay_n, tmp_path):
    """The op alone from a nonzero state, 7 tokens exported, 3 and 1 run through the bundle;
    outputs and last state within REL of the recurrence computed in torch."""
    args = _scan_inputs(7, groups, rows, n, decay_n)
    axes = {name: {1: "L"} for name in ("x", "dt", "B", "C")}
    model = Scan()
    others = [_scan_inputs(k, groups, rows, n, decay_n) for k in (3, 1)]
    result = assert_bundle_matches(model, args, tmp_path, dynamic_axes=axes, other_args=others)
    for inputs in (args, *others):
        got = run_bundle(result.path, *[a.numpy() for a in inputs])
        for g, e in zip(got, _scan(*inputs)):
            _assert_relative(g, e.numpy())


def test_a_wrong_state_is_caught(tmp_path):
    """The check can fail: the bundle's scan run from another initial state than torch's."""
    args = _scan_inputs(5, 1, 8, 4, 4)
    model = Scan()
    result = assert_bundle_matches(model, args, tmp_path)
    wrong = [a.numpy() for a in args[:5]] + [np.zeros_like(args[5].numpy())]
    got = verify.check(result.path, wrong, [e.numpy() for e in _scan(*args)],
                       result.output_names, "approximate")
    assert not got.passed


# -- whole decoders, t2n.export with a dynamic token axis ------------------------------------
@pytest.mark.parametrize("arch", SSM_ARCHS)
def test_whole_sequence_export(arch, tmp_path):
    model = Logits(_model(arch))
    result = assert_bundle_matches(model, (IDS,), tmp_path, dynamic_axes={"input_ids": {1: "S"}},
                                   other_args=[(OTHER_IDS,), (IDS[:, :1],)])
    for ids in (IDS, OTHER_IDS, IDS[:, :1]):
        with torch.no_grad():
            expected = model(ids).numpy()
        _assert_relative(run_bundle(result.path, ids.numpy())[0], expected, str(ids.shape))


# -- export_llm: the state inputs ------------------------------------------------------------
def test_llm_state_contract(tmp_path):
    """Mamba's bundle: fixed-size conv [1, 128, 4] and recurrent [1, 128, 8] states per
    layer, zeros for an empty cache, and 3 tokens after a prompt equal to one-by-one
    transformers steps."""
    model = _model("mamba")
    result = export_llm(model, None, tmp_path / "llm")
    tract_model = load_tract_model(result.path)
    facts = [str(tract_model.input_fact(i)) for i in range(5)]
    assert facts == ["1,S,i64"] + ["1,128,4,f32", "1,128,8,f32"] * 2
    facts = [str(tract_model.output_fact(i)) for i in range(5)]
    assert facts == ["1,1,256,f32"] + ["1,128,4,f32", "1,128,8,f32"] * 2
    llm = LLMBundle(result.path)
    assert all(not a.any() and a.shape[0] == 1 for a in llm.empty_cache())
    _, cache = llm.step(IDS[:, :5].numpy(), llm.empty_cache())
    logits, cache = llm.step(IDS[:, 5:8].numpy(), cache)
    ref_cache = new_cache(model)
    with torch.no_grad():
        model(IDS[:, :5], use_cache=True, cache=ref_cache)
        for t in range(5, 8):
            expected = model(IDS[:, t:t + 1], use_cache=True, cache=ref_cache).logits
    _assert_relative(logits, expected.numpy(), "logits")
    for g, e in zip(cache, _states(ref_cache)):
        _assert_relative(g, e, "states")


# -- GraniteMoeHybrid's attention mask (t2n/translate/families/attention.py) ------------------
class CausalGroupedQueryAttention(torch.nn.Module):
    """4 query heads over 2 repeated key/value heads, under a causal mask that compares two
    token-index vectors (transformers' sdpa mask for GraniteMoeHybrid without RoPE)."""

    def forward(self, q, k, v):
        length = q.shape[2]
        position = torch.arange(length)
        mask = position[None, None, None, :] <= position[None, None, :, None]
        k, v = (t[:, :, None].expand(1, 2, 2, length, 16).reshape(1, 4, length, 16)
                for t in (k, v))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_grouped_query_attention_under_a_compared_index_mask(tmp_path):
    """With the mask as select(mask, 0, -inf), tract 0.23.9's optimiser failed on the scores'
    grouped-query reshape ([4, S] -> [2, 2 * S]) of this whole-sequence graph; the mask is
    now log(mask). 5 tokens exported, 3 and 1 run, against torch (t2n's approximate check)."""
    def inputs(length):
        g = torch.Generator().manual_seed(length)
        return tuple(torch.randn(1, heads, length, 16, generator=g) for heads in (4, 2, 2))
    assert_bundle_matches(CausalGroupedQueryAttention(), inputs(5), tmp_path,
                          dynamic_axes={name: {2: "S"} for name in ("q", "k", "v")},
                          other_args=[inputs(3), inputs(1)])
