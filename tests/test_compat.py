"""Releases of transformers and torch: the cache argument's two spellings, the tested range."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from click.testing import CliRunner

from t2n import OptionError, compat
from t2n.cli import main
from t2n.llm import LLMBundle, export_llm

ROOT = Path(__file__).resolve().parents[1]

CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)


class OldSpellingLlama(transformers.LlamaForCausalLM):
    """A causal LM as transformers < 5.25 wrote it: the cache is called past_key_values."""

    def forward(self, input_ids=None, past_key_values=None, use_cache=None, logits_to_keep=0):
        return super().forward(input_ids, use_cache=use_cache, logits_to_keep=logits_to_keep,
                               **{compat.cache_argument(super()): past_key_values})


class NoCache(torch.nn.Module):
    def forward(self, input_ids):
        return input_ids


@pytest.mark.parametrize("cls, name", [(transformers.LlamaForCausalLM, None),
                                       (OldSpellingLlama, "past_key_values")],
                         ids=["installed_spelling", "past_key_values"])
def test_cache_argument_spellings_export_and_run(cls, name, tmp_path):
    torch.manual_seed(0)
    model = cls(transformers.LlamaConfig(**CONFIG)).eval()
    if name:
        assert compat.cache_argument(model) == name
    else:  # what the installed transformers calls it
        assert compat.cache_argument(model) in compat.CACHE_ARGUMENTS
    result = export_llm(model, None, tmp_path / "out")
    assert all(v.passed for v in result.modes.values())
    llm = LLMBundle(result.path)
    logits, _ = llm.step(np.array([[3, 9, 27]]), llm.empty_cache())
    with torch.no_grad():
        expected = transformers.LlamaForCausalLM.forward(model, torch.tensor([[3, 9, 27]])).logits
    np.testing.assert_allclose(logits[0, -1], expected[0, -1].numpy(), atol=1e-4)


def test_model_without_cache_argument_is_a_clear_error():
    with pytest.raises(OptionError, match=r"NoCache.forward takes no key/value cache argument "
                       r"\(cache or past_key_values; transformers .*tested with transformers"):
        compat.cache_argument(NoCache())


@pytest.mark.parametrize("version, inside", [
    ("5.23.0", True), ("5.25.0", True), ("5.24.1", True), ("5.22.2", False), ("5.26.0", False),
    ("5.26.0.dev0", False), ("4.57.6", False)])
def test_untested_transformers_release_is_named(version, inside):
    message = compat.untested("transformers", version)
    if inside:
        assert message is None
    else:
        low, high = compat.TESTED["transformers"]
        assert message == (f"transformers {version} is outside the range t2n was tested with "
                           f"({low} to {high}); if the export fails, install one in range "
                           f"(pip install 'transformers=={high}')")


def test_untested_release_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(compat, "_warned", set())
    # transformers replaces its module in sys.modules once a class is looked up lazily
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "9.0.0")
    with caplog.at_level(logging.WARNING, logger="t2n"):
        compat.warn_untested("transformers")
        compat.warn_untested("transformers")
    assert [r.message for r in caplog.records] == [compat.untested("transformers", "9.0.0")]


def test_installed_releases_are_the_tested_ones():
    """The set-up (scripts/constraints.txt) installs releases inside TESTED, and pyproject.toml
    declares the same range."""
    pins = dict(re.findall(r"^([\w-]+)==(\S+)$", (ROOT / "scripts/constraints.txt").read_text(),
                           re.M))
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package, (low, high) in compat.TESTED.items():
        assert compat.untested(package, pins[package]) is None
        assert compat.untested(package, compat.versions()[package]) is None, \
            "the installed release is outside TESTED: rerun scripts/setup.sh"
        floor = ".".join(low.split(".")[:2])
        assert f'"{package}>={floor},<' in pyproject


def test_version_flag_names_the_releases():
    out = CliRunner().invoke(main, ["--version"])
    assert out.exit_code == 0
    for key, value in compat.versions().items():
        assert f"{key} {value}" in out.output
