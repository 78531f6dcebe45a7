"""Every bash and Python example of README.md and docs/ runs, as written, in a sandbox folder
holding what the examples name: `mymodels.py`, Hugging Face folders `my-bert`/`my-model`, a
calibration file, the SmolLM2 GGUF file and a local Hugging Face cache with all-MiniLM-L6-v2.

Not run here: the README's first block (the set-up and test commands: CI runs them through
.ci/run, and tests/test_real_models.py runs the demo) and docs/benchmarks.md's commands (the
benchmark runs themselves, minutes to hours; their scripts write those sections).
Each example starts t2n or python afresh, and those on the real models (the SmolLM2 GGUF,
all-MiniLM-L6-v2) take from half a minute to several minutes: they all run with the slow tests.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import MINILM_FOLDER, SMOLLM2_GGUF, packaged_file

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIPPED_FILES = {"benchmarks.md"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

MYMODELS = '''
import torch
from torch import nn


class ResNetish(nn.Module):
    """A small residual convolutional network."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.block(x)
        return self.head(x.mean((2, 3)))


class _QuantCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv, self.relu = nn.Conv2d(3, 8, 3), nn.ReLU()
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.relu(self.conv(self.quant(x))))


def quantized_cnn():
    """A torch.ao eager-mode quantized CNN (prepare, calibrate, convert with qnnpack)."""
    torch.backends.quantized.engine = "qnnpack"
    model = _QuantCNN().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig("qnnpack")
    model = torch.ao.quantization.fuse_modules(model, [["conv", "relu"]])
    prepared = torch.ao.quantization.prepare(model)
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.randn(1, 3, 32, 32))
    return torch.ao.quantization.convert(prepared)
'''


def examples():
    """(id, language, code) of every bash/python block, in document order."""
    found = []
    for doc in DOCS:
        if doc.name in SKIPPED_FILES:
            continue
        for n, m in enumerate(FENCE.finditer(doc.read_text())):
            language, code = m.group(1), m.group(2)
            if language not in ("bash", "sh", "python"):
                continue
            if doc.name == "README.md" and "scripts/setup.sh" in code:
                continue   # the two set-up commands: CI and test_real_models run them
            # each example starts t2n or python afresh (seconds each): all run with the slow
            # tests, which CI runs too
            found.append(pytest.param(language, code, id=f"{doc.stem}-{n}",
                                      marks=[pytest.mark.slow]))
    return found


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A folder holding what the examples name, and the environment to run them in."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    box = tmp_path_factory.mktemp("docs")
    (box / "mymodels.py").write_text(MYMODELS)
    minilm = packaged_file(*MINILM_FOLDER)
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        architectures=["BertModel"])
    BertModel(config).save_pretrained(box / "my-bert")
    tokenizer.save_pretrained(box / "my-bert")
    shutil.copytree(box / "my-bert", box / "my-model")
    enc = tokenizer(["a calibration sentence about rivers and the sea"] * 16,
                    padding="max_length", max_length=12, return_tensors="np")
    np.savez(box / "calib.npz", **{k: v.astype(np.int64) for k, v in enc.items()})
    gguf = packaged_file(*SMOLLM2_GGUF)
    for name in (gguf.name, "model.gguf"):
        (box / name).symlink_to(gguf)
    # all-MiniLM-L6-v2 in a local Hugging Face cache, as a download would leave it
    repo = box / "hf" / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2"
    snapshot = repo / "snapshots" / "0"
    snapshot.mkdir(parents=True)
    for item in minilm.iterdir():
        (snapshot / item.name).symlink_to(item)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    (box / "out").mkdir()
    env = {**os.environ, "HF_HOME": str(box / "hf"), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(box)])}
    return box, env


@pytest.mark.parametrize("language, code", examples())
def test_example_runs(language, code, sandbox):
    box, env = sandbox
    if language == "python":
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(cmd, cwd=box, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{code}\n--- stderr:\n{proc.stderr[-3000:]}"


def test_every_example_is_collected():
    """The README's examples are all found (a renamed fence would hide one)."""
    ids = [p.id for p in examples()]
    assert sum(i.startswith("README") for i in ids) >= 5 and "llm-0" in ids
