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


def gptq_folder(path, *, group=64, zeros=8, act_order=False, v2=False, seed=0):
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
        for part, value in pack_gptq(q, z, scales, g_idx, v2=v2).items():
            state[f"{name}.{part}"] = value
    state.pop("lm_head.weight", None)
    path.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    config = _config().to_dict()
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group,
                                     "sym": zeros == 8, "desc_act": act_order,
                                     "checkpoint_format": "gptq_v2" if v2 else "gptq"}
    (path / "config.json").write_text(json.dumps(config))
    return path, ref


def test_packing_round_trips():
    g = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (64, 16), generator=g)
    z = torch.randint(1, 16, (2, 16), generator=g)   # the gptq format stores z - 1 in 4 bits
    s = torch.rand(2, 16, generator=g).half()
    idx = torch.arange(64) // 32
    for v2 in (False, True):
        q2, z2, s2, i2 = unpack_gptq(pack_gptq(q, z, s, idx, v2=v2), 4, v2)
        assert torch.equal(q2, q) and torch.equal(z2, z) and torch.equal(i2, idx)
        assert torch.equal(s2, s.float())


@pytest.mark.parametrize("v2", [False, True], ids=["gptq", "gptq_v2"])
def test_symmetric_groups_of_64_are_carried_into_q4_0_exactly(tmp_path, v2):
    folder, ref = gptq_folder(tmp_path / "ckpt", v2=v2)
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


@pytest.mark.parametrize("case", ["asymmetric", "act-order"])
def test_other_layouts_are_requantized_with_a_log_line_or_refused(tmp_path, case, caplog):
    kwargs = {"zeros": "random"} if case == "asymmetric" else {"act_order": True}
    folder, ref = gptq_folder(tmp_path / "ckpt", **kwargs)
    with caplog.at_level("INFO"):
        model, _ = load_gptq(folder)
    why = "asymmetric zero points" if case == "asymmetric" else "act-order"
    assert any(why in r.message and "requantized to Q4_0" in r.message for r in caplog.records)
    w, r = model.model.layers[0].mlp.down_proj.weight, ref.model.layers[0].mlp.down_proj.weight
    assert isinstance(w, Q4_0Tensor)
    err = float((w.dequantize() - r.detach()).abs().max())
    assert 0 < err <= float(r.abs().max()) / 7   # within the Q4_0 grid of each block
    with pytest.raises(LoadError, match=f"cannot be carried into Q4_0 exactly \\({why}"):
        load_gptq(folder, lossless=True)


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
