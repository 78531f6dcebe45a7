"""Run by scripts/bench_checkpoint.py with the auto-round environment's python (never imported by
t2n): writes a checkpoint in auto-round's own format, then reads it back with auto-round's own
inference layers and saves what they compute, as the reference t2n's import is checked against.

    python _autoround_checkpoint.py TOKENIZER_DIR OUT_DIR

OUT_DIR/float        the tiny random Llama (float32) and the tokenizer
OUT_DIR/ckpt         auto-round's checkpoint of it: 4-bit, symmetric, groups of 32 (W4G32),
                     round-to-nearest (iters=0), format "auto_round"
OUT_DIR/reference.npz
    "weight:NAME"    the weight auto-round's QuantLinear NAME applies (its forward on an identity
                     matrix, with its scales in float32, so no float16 rounding is added)
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from auto_round import AutoRound
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

CALIBRATION = ["Python is a programming language that lets you work quickly and integrate "
               "systems more effectively. " * 4, "The quick brown fox jumps over the lazy dog. " * 6]


def main(tok_dir: str, out: str) -> None:
    out = Path(out)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False,
                         architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out / "float")
    tok.save_pretrained(out / "float")
    ar = AutoRound(model, tokenizer=tok, bits=4, group_size=32, sym=True, iters=0,
                   nsamples=2, seqlen=16, dataset=CALIBRATION)
    ar.quantize_and_save(str(out / "saved"), format="auto_round")
    # auto-round writes into a subfolder named after the scheme
    saved = next(p.parent for p in (out / "saved").rglob("config.json"))
    shutil.rmtree(out / "ckpt", ignore_errors=True)
    shutil.move(str(saved), out / "ckpt")
    qc = json.loads((out / "ckpt" / "config.json").read_text())["quantization_config"]
    loaded = AutoModelForCausalLM.from_pretrained(out / "ckpt", device_map="cpu").eval()
    ref = {}
    with torch.no_grad():
        for name, mod in loaded.named_modules():
            if hasattr(mod, "qweight"):
                mod.scales = mod.scales.float()
                k = mod.qweight.shape[0] * 32 // int(qc["bits"])
                w = mod(torch.eye(k, dtype=torch.float32)).T
                if getattr(mod, "bias", None) is not None:
                    w = w - mod.bias.float()[:, None]
                ref[f"weight:{name}"] = w.float().numpy()
    np.savez(out / "reference.npz", **ref)
    print(json.dumps({"quantization_config": qc, "layers": len(ref),
                      "layer_class": type(next(m for m in loaded.modules()
                                               if hasattr(m, "qweight"))).__module__}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
