"""export_llm: tiny random causal LMs exported with their KV cache, run step by step in tract."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import transformers
from transformers import DynamicCache

import _moe_classes

from t2n import OptionError, VerificationError, WriteError, verify
from t2n.compat import cache_argument
from t2n.llm import BUNDLE_NAME, LLMBundle, export_llm
from t2n.llm.wrapper import new_cache, past_from_cache
from t2n.verify import load_tract_model

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=256, max_position_embeddings=256,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)

# mixture-of-experts decoders: 4 experts, top-2 (t2n.moe computes the experts densely)
MOE = dict(num_experts_per_tok=2, **COMMON)

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

ARCHS = {
    "llama_gqa_tied": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(tie_word_embeddings=True, **COMMON)),
    # Llama 3's RoPE scaling (low frequencies divided by `factor`, a smooth band between)
    "llama3_rope_scaling": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        rope_scaling=LLAMA3_ROPE, **COMMON)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**COMMON)),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=16, **COMMON)),
    "mistral_sliding4": lambda: transformers.MistralForCausalLM(
        transformers.MistralConfig(sliding_window=4, **COMMON)),
    "phi3": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(**COMMON)),
    "gemma": lambda: transformers.GemmaForCausalLM(transformers.GemmaConfig(head_dim=16, **COMMON)),
    "gemma2_sliding4": lambda: transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(head_dim=16, sliding_window=4, **COMMON)),
    "gemma3_sliding4": lambda: transformers.Gemma3ForCausalLM(
        transformers.Gemma3TextConfig(head_dim=16, sliding_window=4, **COMMON)),
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=256, pad_token_id=0,
        bos_token_id=1, eos_token_id=2)),
    "mixtral_moe": lambda: transformers.MixtralForCausalLM(
        transformers.MixtralConfig(num_local_experts=4, **MOE)),
    # shared expert with a sigmoid gate, softmax routing without renormalization
    "qwen2_moe": lambda: transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
        num_experts=4, moe_intermediate_size=64, shared_expert_intermediate_size=128, **MOE)),
    "qwen3_moe": lambda: transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
        num_experts=4, moe_intermediate_size=64, head_dim=16, norm_topk_prob=True, **MOE)),
    "olmoe": lambda: transformers.OlmoeForCausalLM(transformers.OlmoeConfig(num_experts=4, **MOE)),
    "flex_olmo": lambda: transformers.FlexOlmoForCausalLM(
        transformers.FlexOlmoConfig(num_experts=4, **MOE)),
    # sparsemixer routing
    "phimoe": lambda: transformers.PhimoeForCausalLM(
        transformers.PhimoeConfig(num_local_experts=4, **MOE)),
    # softmax over the top-k logits
    "granitemoe": lambda: transformers.GraniteMoeForCausalLM(
        transformers.GraniteMoeConfig(num_local_experts=4, **MOE)),
    "granitemoeshared": lambda: transformers.GraniteMoeSharedForCausalLM(
        transformers.GraniteMoeSharedConfig(num_local_experts=4, shared_intermediate_size=64,
                                            **MOE)),
    # sigmoid routing with a score-correction bias, grouped top-k, a dense first layer
    "glm4_moe": lambda: transformers.Glm4MoeForCausalLM(transformers.Glm4MoeConfig(
        n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=64,
        first_k_dense_replace=1, n_group=2, topk_group=1, head_dim=16, **MOE)),
    "dots1": lambda: transformers.Dots1ForCausalLM(transformers.Dots1Config(
        n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=64, head_dim=16, **MOE)),
    "ernie4_5_moe": lambda: transformers.Ernie4_5_MoeForCausalLM(transformers.Ernie4_5_MoeConfig(
        moe_num_experts=4, moe_k=2, moe_intermediate_size=64, moe_num_shared_experts=1,
        moe_layer_start_index=0, **COMMON)),
    "hunyuan_v1_moe": lambda: transformers.HunYuanMoEV1ForCausalLM(
        transformers.HunYuanMoEV1Config(num_experts=4, moe_topk=2, head_dim=16, **COMMON)),
    # transposed expert weights with biases, clamped interleaved gate, attention sinks
    # (its default YaRN RoPE expects 32 x 4096 positions)
    "gpt_oss": lambda: transformers.GptOssForCausalLM(transformers.GptOssConfig(
        num_local_experts=4, head_dim=16, **{**MOE, "max_position_embeddings": 131072})),
    # experts in one [E * F, H] matrix per projection
    "dbrx": lambda: transformers.DbrxForCausalLM(transformers.DbrxConfig(
        d_model=64, n_heads=4, n_layers=2, max_seq_len=256, vocab_size=256, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
        attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        ffn_config={"ffn_hidden_size": 128, "moe_num_experts": 4, "moe_top_k": 2})),
    # routing inside its layers, for the MLP experts and for a mixture of attention heads (each
    # query and output projection an expert; 2 kv heads repeated for the top-2 query heads)
    "jetmoe": lambda: transformers.JetMoeForCausalLM(transformers.JetMoeConfig(
        num_local_experts=4, kv_channels=16, **MOE)),
}

# state-space decoders: the scan of their mixers is one tract loop (t2n.ssm); their caches are
# a conv state and a recurrent state per layer. Untied embeddings: a tied tiny Mamba keeps
# generating one token, which would not test the states.
SSM_COMMON = dict(hidden_size=64, num_hidden_layers=2, vocab_size=256, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
SSM_UNTIED = dict(tie_word_embeddings=False)
FALCON_H1 = dict(mamba_d_ssm=128, mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2,
                 mamba_d_state=16, mamba_chunk_size=4, mamba_rms_norm=True,
                 ssm_multipliers=[0.5, 1.5, 0.75, 1.25, 2.0], ssm_in_multiplier=0.8,
                 ssm_out_multiplier=1.2, attention_in_multiplier=0.9, key_multiplier=1.1,
                 attention_out_multiplier=0.7, embedding_multiplier=2.0, lm_head_multiplier=0.5,
                 mlp_multipliers=[1.0, 0.5])
ARCHS.update({
    "mamba": lambda: transformers.MambaForCausalLM(transformers.MambaConfig(
        state_size=8, **SSM_COMMON)),
    # 8 heads of 16 in 2 groups sharing B and C
    "mamba2": lambda: transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
        state_size=16, num_heads=8, head_dim=16, n_groups=2, chunk_size=4, **SSM_COMMON)),
    # hybrid: a Mamba-2 layer, then an attention layer (grouped-query 4/2 heads, RoPE)
    "bamba_hybrid": lambda: transformers.BambaForCausalLM(transformers.BambaConfig(
        attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16,
        mamba_n_groups=2, mamba_chunk_size=4, **COMMON)),
    # hybrids with Mamba2Mixer's forward: a MoE (4 experts, top-2) and shared expert beside
    # each mixer or attention (GraniteMoeHybrid); NemotronH's separate mixer and attention
    "granitemoehybrid": lambda: transformers.GraniteMoeHybridForCausalLM(
        transformers.GraniteMoeHybridConfig(
            layer_types=["mamba", "attention"], num_local_experts=4, num_experts_per_tok=2,
            shared_intermediate_size=64, mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16,
            mamba_n_groups=2, mamba_chunk_size=4, **COMMON)),
    # Mamba-1 mixers with RMS norms on dt, B and C: FalconMamba (weightless norms); Jamba, a
    # Mamba layer with a MoE (4 experts, top-2), then an attention layer with a dense MLP
    "falcon_mamba": lambda: transformers.FalconMambaForCausalLM(transformers.FalconMambaConfig(
        state_size=8, **SSM_COMMON)),
    "jamba_hybrid": lambda: transformers.JambaForCausalLM(transformers.JambaConfig(
        attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=0,
        num_experts=4, num_experts_per_tok=2, mamba_d_state=8, tie_word_embeddings=False,
        **COMMON)),
    # parallel hybrid: a Mamba-2 mixer beside the attention in every layer (one cache layer
    # holding keys, values and both states), muP multipliers, the optional gated norm on
    "falcon_h1": lambda: transformers.FalconH1ForCausalLM(transformers.FalconH1Config(
        **FALCON_H1, **COMMON)),
    # a Mamba-2 layer, then a hybrid layer: the shared attention block (on the hidden states
    # concatenated with the embeddings, LoRA adapters, RoPE; its adapters need as many kv
    # heads as query heads) before a Mamba-2 mixer
    # Zamba (v1): a Mamba layer (two heads, each its own x_proj and dt_proj), then a hybrid
    # layer: the shared attention block on the hidden states concatenated with the
    # embeddings, then a Mamba layer
    "zamba_hybrid": lambda: transformers.ZambaForCausalLM(transformers.ZambaConfig(
        layers_block_type=["mamba", "hybrid"], n_mamba_heads=2, mamba_d_state=8,
        attention_head_dim=16, **{**COMMON, "num_key_value_heads": 4}, **SSM_UNTIED)),
    "zamba2_hybrid": lambda: transformers.Zamba2ForCausalLM(transformers.Zamba2Config(
        layers_block_type=["linear_attention", "hybrid"], n_mamba_heads=8, mamba_d_state=16,
        mamba_ngroups=2, chunk_size=4, use_shared_attention_adapter=True, adapter_rank=8,
        use_mem_rope=True, **{**COMMON, "num_key_value_heads": 4}, **SSM_UNTIED)),
    "nemotron_h": lambda: transformers.NemotronHForCausalLM(transformers.NemotronHConfig(
        layers_block_type=["mamba", "attention"], mamba_num_heads=8, mamba_head_dim=16,
        ssm_state_size=16, n_groups=2, chunk_size=4,
        **{k: v for k, v in COMMON.items() if k != "num_hidden_layers"})),
    # gated short convolutions (a conv state alone, no scan) around an attention layer;
    # LFM2-MoE: the same with 4 experts, top-2, after a dense first layer
    "lfm2": lambda: transformers.Lfm2ForCausalLM(transformers.Lfm2Config(
        layer_types=["conv", "full_attention", "conv"], conv_bias=True,
        **{**COMMON, "num_hidden_layers": 3})),
    "lfm2_moe": lambda: transformers.Lfm2MoeForCausalLM(transformers.Lfm2MoeConfig(
        layer_types=["conv", "full_attention", "conv"], num_dense_layers=1, num_experts=4,
        moe_intermediate_size=32, **{**MOE, "num_hidden_layers": 3})),
})

# mixture-of-experts families built from their default configuration at TINY's sizes, their
# experts dispatched by transformers' experts interface (tests/_moe_classes.py)
GENERIC_MOE = ["afmoe", "aria", "cohere2_moe", "exaone_moe", "flint", "granitemoe_swa", "hy_v3",
               "kolibri1", "kolibri1_1", "laguna", "mellum", "mimo_v2_flash", "minicpm5_moe",
               "minimax_m2", "minimax_m3_vl", "solar_open"]
ARCHS.update({family: functools.partial(_moe_classes.tiny_causal_lm, family)
              for family in GENERIC_MOE})

PROMPT = torch.tensor([[5, 17, 42, 99, 3]])          # 5 tokens
NEXT = [torch.tensor([[7]]), torch.tensor([[250]])]  # two decode steps


def _model(arch):
    torch.manual_seed(0)
    return ARCHS[arch]().eval()


# Llama, one mixture of experts, the Mamba and Mamba-2 families and their hybrids (each a few
# seconds) run in the default suite; the other architectures with the slow (real-model) tests.
DEFAULT_SUITE = ("llama", "mixtral_moe", "mamba", "bamba", "falcon_mamba", "jamba", "falcon_h1",
                 "zamba", "lfm2")


@pytest.fixture(scope="module", params=[a if a.startswith(DEFAULT_SUITE) else
                                        pytest.param(a, marks=pytest.mark.slow) for a in ARCHS])
def exported(request, tmp_path_factory):
    model = _model(request.param)
    result = export_llm(model, None, tmp_path_factory.mktemp(request.param))
    return model, result


def _torch_step(model, ids, cache, keep=1):
    with torch.no_grad():
        out = model(ids, use_cache=True, **{cache_argument(model): cache})
    logits = out.logits[:, -keep:] if keep else out.logits
    return [t.numpy().copy() for t in (logits, *past_from_cache(cache))]


def _assert_close(got, expected, names, step):
    result = verify.compare(got, expected, names, "approximate")
    assert result.passed, f"{step}: {result.summary()}"


def test_prefill_then_two_decode_steps_match_torch(exported):
    model, result = exported
    assert result.path == result.export_dir / "model" / BUNDLE_NAME and result.path.is_file()
    assert all(v.passed for v in result.modes.values()) and set(result.modes) == {
        "prompt", "text_generation"}
    llm = LLMBundle(result.path)
    cache, torch_cache = llm.empty_cache(), new_cache(model)
    for step, ids in (("prefill P=0", PROMPT), ("decode P=5", NEXT[0]), ("decode P=6", NEXT[1])):
        logits, cache = llm.step(ids.numpy(), cache)
        expected = _torch_step(model, ids, torch_cache)
        _assert_close([logits, *cache], expected, llm.output_names, step)
    keys = [c for c, name in zip(cache, llm.output_names[1:]) if name.startswith("out_cache_key")]
    assert all(k.shape[2] == 7 for k in keys)


def test_greedy_generation_matches_transformers(exported):
    model, result = exported
    model.generation_config.eos_token_id = None   # always 8 tokens
    with torch.no_grad():
        ref = model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=8,
                             do_sample=False)[0, PROMPT.shape[1]:].tolist()
    assert LLMBundle(result.path).generate(PROMPT[0].tolist(), 8) == ref


def test_llama3_rope_scaling_changes_the_frequencies():
    """The llama3_rope_scaling export above is a real test of the scaled RoPE: the scaled
    frequencies differ from plain RoPE's in this configuration."""
    scaled = _model("llama3_rope_scaling").model.rotary_emb.inv_freq
    plain = _model("llama_gqa_tied").model.rotary_emb.inv_freq
    assert scaled.shape == plain.shape and not torch.allclose(scaled, plain)


def test_io_contract(tmp_path):
    model = _model("llama_gqa_tied")
    result = export_llm(model, None, tmp_path / "llm", num_logits_to_keep=0)
    names = ["in_cache_key_0", "in_cache_value_0", "in_cache_key_1", "in_cache_value_1"]
    assert result.input_names == ["input_ids", *names]
    assert result.output_names == ["outputs", *(n.replace("in_", "out_") for n in names)]
    tract_model = load_tract_model(result.path)
    facts = [str(tract_model.input_fact(i)) for i in range(5)]
    assert facts == ["1,S,i64"] + ["1,2,P,16,f32"] * 4
    facts = [str(tract_model.output_fact(i)) for i in range(5)]
    assert facts == ["1,S,256,f32"] + ["1,2,P+S,16,f32"] * 4
    # every position's logits, prefill then a 2-token step
    llm = LLMBundle(result.path)
    cache, torch_cache = llm.empty_cache(), DynamicCache()
    for step, ids in (("prefill", PROMPT), ("2 tokens", torch.tensor([[9, 8]]))):
        logits, cache = llm.step(ids.numpy(), cache)
        _assert_close([logits, *cache], _torch_step(model, ids, torch_cache, keep=0),
                      llm.output_names, step)


def test_f16_bundle(tmp_path):
    """Checked at the CLI's level for f16 by default; the caller's model keeps its float32
    weights and its train mode."""
    model = _model("llama_gqa_tied").train()
    result = export_llm(model, None, tmp_path / "llm", dtype="f16", f32_norm=True)
    assert {v.tolerance for v in result.modes.values()} == {"very"}
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())
    llm = LLMBundle(result.path)
    assert llm.empty_cache()[0].dtype == np.float16
    logits, cache = llm.step(PROMPT.numpy(), llm.empty_cache())
    assert logits.dtype == np.float16 and cache[0].shape == (1, 2, 5, 16)


def test_q4_0_compression_checked_against_compressed_torch(tmp_path):
    result = export_llm(_model("llama_gqa_tied"), None, tmp_path / "llm",
                        compression="min_max_q4_0")
    assert result.quantization and all(m.passed for m in result.modes.values())
    assert "q4_0" in result.export.bundle.bytes_by_storage


def test_flat_dir_with_tokenizer_and_config(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["<unk>", "A", "river", "carries", "water", "from", "the", "hills", "to", "sea,"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    result = export_llm(_model("qwen2"), tokenizer, tmp_path / "llm", export_dir_struct="flat",
                        dump_tokenizer_and_conf=True)
    assert result.path == tmp_path / "llm" / BUNDLE_NAME
    files = {p.name for p in (tmp_path / "llm").iterdir()}
    assert {BUNDLE_NAME, "config.json", "tokenizer.json"} <= files
    assert not any(name.startswith(".t2n-llm-") for name in files)


def test_mismatch_leaves_nothing_behind(tmp_path):
    with pytest.raises(VerificationError, match="tract disagrees"):
        export_llm(_model("gpt2"), None, tmp_path / "llm", check_io="exact")
    assert not (tmp_path / "llm").exists()


def test_existing_bundle_is_refused_before_any_work(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / BUNDLE_NAME).write_bytes(b"")
    with pytest.raises(WriteError, match="already exists"):
        export_llm(_model("llama_gqa_tied"), None, tmp_path)


def test_bad_options_are_refused(tmp_path):
    model = _model("llama_gqa_tied")
    with pytest.raises(OptionError, match="export_dir_struct"):
        export_llm(model, None, tmp_path, export_dir_struct="wide")
    with pytest.raises(OptionError, match="tokenizer"):
        export_llm(model, None, tmp_path, dump_tokenizer_and_conf=True)
    with pytest.raises(OptionError, match="num_logits_to_keep"):
        export_llm(model, None, tmp_path, num_logits_to_keep=-1)
    assert not any(tmp_path.iterdir())
