"""4-bit checkpoints of other tools in the GPTQ layout (qweight/qzeros/scales/g_idx), built
here by packing known weights by hand: carried into Q4_0 exactly when the layout allows
(symmetric 4-bit, groups a multiple of 32, rows in order), requantized with a log line
otherwise, refused under --lossless; the exported bundle runs in tract like the checkpoint's
own dequantized torch model."""
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from t2n.checkpoint.gptq_format import load_gptq, pack_gptq, unpack_gptq
from t2n.errors import LoadError
from t2n.quant.q4_0 import Q4_0Tensor
from test_calibrated_cli import assert_user_error, t2n


def _config(**extra):
    return LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=True, architectures=["LlamaForCausalLM"], **extra)


def gptq_folder(path, *, group=64, zeros=8, act_order=False, layout="gptq", seed=0,
                quantization=None):
    """A tiny Llama whose Linears (not the tied head) are stored in the GPTQ layout; returns
    the folder and the float model holding the dequantized weights (the reference)."""
    torch.manual_seed(seed)
    ref = LlamaForCausalLM(_config()).eval()
    g = torch.Generator().manual_seed(seed)
    state = {k: v for k, v in ref.state_dict().items()}
    for name, module in ref.named_modules():
        if not isinstance(module, nn.Linear) or name == "lm_head":
            continue
        n, k = module.weight.shape
        q = torch.randint(0, 16, (k, n), generator=g)
        groups = k // group
        scales = (torch.rand(groups, n, generator=g) * 0.02 + 0.005).half()
        z = torch.full((groups, n), zeros) if isinstance(zeros, int) else \
            torch.randint(6, 10, (groups, n), generator=g)
        g_idx = torch.arange(k) // group
        if act_order:
            g_idx = g_idx[torch.randperm(k, generator=g)]
        weight = ((q - z[g_idx]).float() * scales.float()[g_idx]).T.contiguous()
        module.weight.data.copy_(weight)
        del state[f"{name}.weight"]
        for part, value in pack_gptq(q, z, scales, None if quantization else g_idx,
                                       layout=layout).items():
            state[f"{name}.{part}"] = value
    state.pop("lm_head.weight", None)
    path.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    config = _config().to_dict()
    config["quantization_config"] = quantization or {
        "quant_method": "gptq", "bits": 4, "group_size": group, "sym": zeros == 8,
        "desc_act": act_order, "checkpoint_format": layout}
    (path / "config.json").write_text(json.dumps(config))
    return path, ref


def test_packing_round_trips():
    g = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (64, 16), generator=g)
    z = torch.randint(1, 16, (2, 16), generator=g)   # the gptq format stores z - 1 in 4 bits
    s = torch.rand(2, 16, generator=g).half()
    idx = torch.arange(64) // 32
    for layout in ("gptq", "gptq_v2", "awq"):
        q2, z2, s2, i2 = unpack_gptq(pack_gptq(q, z, s, idx, layout=layout), 4, layout)
        assert torch.equal(q2, q) and torch.equal(z2, z) and torch.equal(s2, s.float())
        assert torch.equal(i2, idx) if layout != "awq" else i2 is None


def test_awq_columns_sit_in_the_interleaved_nibbles():
    """One int32 of AWQ's layout holds columns 0..7 in nibbles 0, 4, 1, 5, 2, 6, 3, 7 (the
    order auto-round's and AutoAWQ's packers use); a plain column order must not decode."""
    q = torch.arange(8).reshape(1, 8)     # column j holds level j
    packed = pack_gptq(q, q, torch.ones(1, 8), None, layout="awq")["qweight"]
    nibbles = [(int(packed[0, 0]) >> (4 * s)) & 15 for s in range(8)]
    assert nibbles == [0, 2, 4, 6, 1, 3, 5, 7]
    plain = torch.tensor([[sum(j << (4 * j) for j in range(8))]], dtype=torch.int32)
    decoded, *_ = unpack_gptq({"qweight": plain, "qzeros": plain, "scales": torch.ones(1, 8)},
                              4, "awq")
    assert decoded.tolist() == [[0, 4, 1, 5, 2, 6, 3, 7]]   # column j from nibble order[j]


AUTO_ROUND = {"quant_method": "auto-round", "bits": 4, "group_size": 64, "sym": True,
              "data_type": "int", "packing_format": "auto_round:auto_gptq"}


@pytest.mark.parametrize("layout, quantization", [
    ("gptq", None), ("gptq_v2", None), ("gptq", AUTO_ROUND),
    ("gptq_v2", dict(AUTO_ROUND, packing_format="auto_round:gptqmodel")),
    ("awq", dict(AUTO_ROUND, packing_format="auto_round:auto_awq")),
    ("awq", {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True,
             "version": "gemm"})],
    ids=["gptq", "gptq_v2", "auto_round", "auto_round-gptqmodel", "auto_round-awq", "awq"])
def test_symmetric_groups_of_64_are_carried_into_q4_0_exactly(tmp_path, layout, quantization):
    folder, ref = gptq_folder(tmp_path / "ckpt", layout=layout, quantization=quantization)
    model, _ = load_gptq(folder)
    quantized = 0
    for (name, m), (_, r) in zip(model.named_modules(), ref.named_modules()):
        if isinstance(m, nn.Linear) and name != "lm_head":
            assert isinstance(m.weight, Q4_0Tensor), name
            assert torch.equal(m.weight.dequantize(), r.weight), name
            quantized += 1
    assert quantized == 14 and model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


@pytest.mark.parametrize("case", ["asymmetric", "act-order", "asymmetric-awq"])
def test_other_layouts_are_requantized_with_a_log_line_or_refused(tmp_path, case, caplog):
    kwargs = {"asymmetric": {"zeros": "random"}, "act-order": {"act_order": True},
              "asymmetric-awq": {"zeros": "random", "layout": "awq",   # auto-round's asym export
                                 "quantization": dict(AUTO_ROUND, sym=False,
                                                      packing_format="auto_round:auto_awq")}}
    folder, ref = gptq_folder(tmp_path / "ckpt", **kwargs[case])
    with caplog.at_level("INFO"):
        model, _ = load_gptq(folder)
    why = "act-order" if case == "act-order" else "asymmetric zero points"
    assert any(why in r.message and "requantized to Q4_0" in r.message for r in caplog.records)
    w, r = model.model.layers[0].mlp.down_proj.weight, ref.model.layers[0].mlp.down_proj.weight
    assert isinstance(w, Q4_0Tensor)
    err = float((w.dequantize() - r.detach()).abs().max())
    assert 0 < err <= float(r.abs().max()) / 7   # within the Q4_0 grid of each block
    with pytest.raises(LoadError, match=f"cannot be carried into Q4_0 exactly \\({why}"):
        load_gptq(folder, lossless=True)


def test_packing_formats_it_cannot_read_are_refused_with_the_fix(tmp_path):
    folder, _ = gptq_folder(tmp_path / "ckpt", quantization=dict(
        AUTO_ROUND, packing_format="auto_round:llm_compressor"))
    with pytest.raises(LoadError, match="packing format 'auto_round:llm_compressor' is not read"):
        load_gptq(folder)


@pytest.mark.slow   # starts several t2n processes: with the real-model tests
def test_gptq_checkpoint_exports_and_tract_matches_its_dequantized_model(tmp_path):
    folder, _ = gptq_folder(tmp_path / "ckpt")
    proc = t2n(tmp_path, "export", "ckpt", "out", "--input-shape", "input_ids=1,8:i64",
               "--dynamic-axes", "input_ids:1=S", "--lossless")
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract (very)" in proc.stdout
    graph = (tmp_path / "out" / "graph.nnef").read_text()
    assert 'model.layers.0.mlp.down_proj.weight' in graph
    info = t2n(tmp_path, "info", "out")
    assert "q4_0" in info.stdout.lower(), info.stdout
    # asymmetric, under --lossless: one line, nothing written
    gptq_folder(tmp_path / "asym", zeros="random")
    proc = t2n(tmp_path, "export", "asym", "bad", "--input-shape", "input_ids=1,8:i64",
               "--lossless")
    assert_user_error(proc, "asymmetric zero points", "drop --lossless")
    assert not (tmp_path / "bad").exists()
