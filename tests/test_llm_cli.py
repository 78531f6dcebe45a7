"""`t2n export-llm`, `t2n_export_llm_to_tract`, `t2n generate` and `t2n perplexity`, for real."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from t2n.llm.runtime import LLMBundle
from t2n.load import load_model

from helpers import SMOLLM2_GGUF, packaged_file

GGUF = packaged_file(*SMOLLM2_GGUF)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random Llama with SmolLM2's real tokenizer, saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(*args, cwd=None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)


@pytest.mark.slow
def test_export_llm_generate_perplexity(tiny_folder, tmp_path):
    out = tmp_path / "export"
    proc = run(BIN / "t2n", "export-llm", "-s", tiny_folder, "-e", out,
               "--dump-with-tokenizer-and-conf")
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract (approximate)" in proc.stdout
    assert "prompt     ok" in proc.stderr and "text_generation ok" in proc.stderr
    assert (out / "model" / "model.nnef.tgz").is_file()
    assert (out / "model" / "config.json").is_file() and (out / "tokenizer").is_dir()

    gen = run(BIN / "t2n", "generate", out, "--prompt", "Hello there", "-n", "6")
    assert gen.returncode == 0, gen.stderr
    assert "6 tokens in" in gen.stderr and "tokens/s" in gen.stderr
    model = LlamaForCausalLM.from_pretrained(tiny_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    ids = tokenizer("Hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    got = LLMBundle(out / "model" / "model.nnef.tgz").generate(ids[0].tolist(), 6)
    assert got == expected.tolist()

    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    ppl = run(BIN / "t2n", "perplexity", out, "--text", text, "--window", "32",
              "--windows", "2")
    assert ppl.returncode == 0, ppl.stderr
    value = float(ppl.stdout.split()[1])
    # torch's perplexity over the same two windows of 32 tokens (31 predictions each)
    tokens = tokenizer(text.read_text(), return_tensors="pt")["input_ids"][0]
    with torch.no_grad():
        nll = sum(model(tokens[None, i * 32:(i + 1) * 32],
                        labels=tokens[None, i * 32:(i + 1) * 32]).loss.item() * 31
                  for i in range(2))
    assert value == pytest.approx(math.exp(nll / 62), rel=1e-3)


@pytest.mark.slow
def test_torch_to_nnef_command_name_and_flags(tiny_folder, tmp_path):
    """The console script takes torch-to-nnef's flag spellings."""
    proc = run(BIN / "t2n_export_llm_to_tract", "-s", tiny_folder, "-e", tmp_path / "e",
               "--force-module-dtype", "f16", "--force-f32-normalization",
               "--compression-method", "min_max_q4_0", "--export-dir-struct", "flat")
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract (super)" in proc.stdout  # f16 with 4-bit weights
    again = run(BIN / "t2n_export_llm_to_tract", "-s", tiny_folder, "-e", tmp_path / "e",
                "--export-dir-struct", "flat")
    assert again.returncode == 2 and "already exists" in again.stderr


# every flag of torch-to-nnef 0.24.12's t2n_export_llm_to_tract (torch_to_nnef_llm/cli.py)
TORCH_TO_NNEF_FLAGS = [
    "-e", "--export-dirpath", "-s", "--model-slug", "-dt", "--force-module-dtype", "-idt",
    "--force-inputs-dtype", "-mp", "--merge-peft", "--compression-registry", "-d", "--local-dir",
    "-f32-attn", "--force-f32-attention", "-f32-lin-acc", "--force-f32-linear-accumulator",
    "-f32-norm", "--force-f32-normalization", "--reify-sdpa-operator",
    "--transformers-attn-implementation", "--transformers-experts-implementation",
    "--upcast-quant", "--num-logits-to-keep", "--hf-download-n-retries", "--trust-remote-code",
    "--no-trust-remote-code", "--device-map", "-tt", "--tract-check-io-tolerance", "-n",
    "--naming-scheme", "--tract-specific-path", "--tract-specific-version", "-td",
    "--test-display-token-gens", "-dwtac", "--dump-with-tokenizer-and-conf",
    "--export-dir-struct", "-sgts", "--sample-generation-total-size", "-iaed",
    "--ignore-already-exist-dir", "-nv", "--no-verify", "-v", "--verbose", "-c",
    "--compression-method"]


def test_torch_to_nnef_script_takes_every_flag_of_torch_to_nnef():
    from t2n.cli import export_llm_main
    ours = {o for p in export_llm_main.params for o in p.opts + p.secondary_opts}
    assert [f for f in TORCH_TO_NNEF_FLAGS if f not in ours] == []


@pytest.mark.slow
def test_torch_to_nnef_flags_used_or_ignored_with_a_warning(tiny_folder, tmp_path):
    """-d names the model folder, -td prints a greedy continuation from tract, a tract version
    other than the installed one and the flags t2n has no use for get one warning each."""
    proc = run(BIN / "t2n_export_llm_to_tract", "-d", tiny_folder, "-e", tmp_path / "e",
               "--tract-specific-version", "0.21.0", "--tract-specific-path", "/opt/tract",
               "-mp", "-n", "natural_verbose", "--compression-registry",
               "torch_to_nnef.compress.DEFAULT_COMPRESSION", "-c", "min_max_q4_0",
               "-td", "-sgts", "3")
    assert proc.returncode == 0, proc.stderr
    for warning in ("--tract-specific-version 0.21.0: the bundle is written for and checked "
                    "with tract 0.23.9", "--tract-specific-path is ignored",
                    "--merge-peft is ignored", "--naming-scheme is ignored",
                    "t2n's built-in registry is used"):
        assert warning in proc.stderr
    assert (tmp_path / "e" / "model" / "model.nnef.tgz").is_file()
    assert proc.stdout.splitlines()[-1].startswith("A river carries water from the hills to the sea|")


@pytest.mark.slow   # starts several t2n processes: with the real-model tests
def test_export_llm_config_file_and_flag_override(tiny_folder, tmp_path):
    """A CI export job's TOML file supplies the options; a flag on the command line wins."""
    config = tmp_path / "export.toml"
    config.write_text(f"""[export-llm]
model_slug = "{tiny_folder}"
export_dirpath = "{tmp_path / 'from_config'}"
dtype = "f16"
compression = "min_max_q4_0"
export_dir_struct = "deep"
""")
    proc = run(BIN / "t2n", "export-llm", "--config", config, "--export-dir-struct", "flat")
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract (super)" in proc.stdout  # default for f16 with 4-bit weights
    bundle = tmp_path / "from_config" / "model.nnef.tgz"  # flat: the flag beat the file
    info = run(BIN / "t2n", "info", bundle)
    assert info.returncode == 0, info.stderr
    assert "q4_0 " in info.stdout and "t2n_dtype=f16" in info.stdout  # q4_0 bytes, f16
    assert "t2n_compression=min_max_q4_0" in info.stdout

    config.write_text('[export-llm]\nmodel_slug = "x"\nexport_dir = "y"\n')
    bad = run(BIN / "t2n", "export-llm", "--config", config)
    assert bad.returncode == 2
    assert "unknown keys: export_dir" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow   # starts several t2n processes: with the real-model tests
def test_export_llm_folder_without_tokenizer(tmp_path):
    """A model folder alone (random example tokens): what a benchmark or a fresh checkpoint has."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "bare")
    proc = run(BIN / "t2n", "export-llm", "-s", tmp_path / "bare", "-e", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model" / "model.nnef.tgz").is_file()


def test_generate_errors(tmp_path):
    proc = run(BIN / "t2n", "generate", tmp_path, "--prompt", "hi")
    assert proc.returncode == 2 and "holds no model.nnef.tgz" in proc.stderr


@pytest.mark.slow
def test_smollm2_32_greedy_tokens_match_torch(tmp_path):
    out = tmp_path / "smol"
    proc = run(BIN / "t2n", "export-llm", "-s", GGUF, "-e", out, "-dwtac")
    assert proc.returncode == 0, proc.stderr
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    model = load_model(str(GGUF)).module
    prompt = "Write one sentence about rivers."
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    seq = ids
    with torch.no_grad():  # plain greedy argmax, 32 tokens (generate() would stop at EOS)
        for _ in range(32):
            next_id = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, next_id], dim=1)
    expected = seq[0, ids.shape[1]:].tolist()
    got = LLMBundle(out / "model" / "model.nnef.tgz").generate(ids[0].tolist(), 32)
    assert got == expected
