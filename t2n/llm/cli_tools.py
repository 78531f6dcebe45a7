"""`t2n generate` and `t2n perplexity`: run an exported LLM folder in tract."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from t2n.errors import LoadError
from t2n.llm.kv_export import BUNDLE_NAME
from t2n.llm.runtime import LLMBundle

__all__ = ["find_export", "generate_text", "perplexity_of"]


def find_export(export_dir) -> tuple[Path, Path]:
    """The bundle and the tokenizer folder of an export-llm folder (deep or flat layout)."""
    export_dir = Path(export_dir)
    for model_dir, tokenizer_dir in ((export_dir / "model", export_dir / "tokenizer"),
                                     (export_dir, export_dir)):
        if (model_dir / BUNDLE_NAME).is_file():
            if not any((tokenizer_dir / f).exists() for f in
                       ("tokenizer.json", "tokenizer_config.json")):
                raise LoadError(f"{export_dir} has no tokenizer",
                                "export it with --dump-with-tokenizer-and-conf")
            return model_dir / BUNDLE_NAME, tokenizer_dir
    raise LoadError(f"{export_dir} holds no {BUNDLE_NAME}",
                    "give the folder written by t2n export-llm")


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(folder)


def generate_text(export_dir, prompt: str, max_new_tokens: int):
    """(continuation text, token ids, seconds) of greedy decoding in tract."""
    bundle_path, tokenizer_dir = find_export(export_dir)
    tokenizer = _tokenizer(tokenizer_dir)
    llm = LLMBundle(bundle_path)
    ids = tokenizer(prompt)["input_ids"]
    t0 = time.perf_counter()
    tokens = llm.generate(ids, max_new_tokens)
    seconds = time.perf_counter() - t0
    return tokenizer.decode(tokens, skip_special_tokens=True), tokens, seconds


def _window_nll(llm: LLMBundle, ids: np.ndarray) -> float:
    """Summed negative log-likelihood of ids[1:] given the tokens before each."""
    logits, cache = llm.step(ids[None, :1], llm.empty_cache())
    rows = [logits[0, -1]]
    if logits.shape[1] == 1:  # the bundle returns the last row: feed tokens one by one
        for t in ids[1:-1]:
            logits, cache = llm.step([[int(t)]], cache)
            rows.append(logits[0, -1])
    else:                      # every row is returned: the rest of the window in one step
        logits, _ = llm.step(ids[None, 1:-1], cache)
        rows.extend(logits[0])
    total = 0.0
    for row, target in zip(rows, ids[1:]):
        row = row.astype(np.float64)
        peak = row.max()
        total += peak + math.log(np.exp(row - peak).sum()) - row[int(target)]
    return total


def perplexity_of(export_dir, text_file, window: int = 256, windows: int = 8):
    """(perplexity, predicted tokens): exp of the mean NLL over ``windows`` consecutive,
    independent windows of ``window`` tokens from the start of the text."""
    bundle_path, tokenizer_dir = find_export(export_dir)
    text_file = Path(text_file)
    if not text_file.is_file():
        raise LoadError(f"text file {text_file} does not exist", "check the path")
    tokenizer = _tokenizer(tokenizer_dir)
    ids = np.asarray(tokenizer(text_file.read_text())["input_ids"], dtype=np.int64)
    if len(ids) < window * windows:
        raise LoadError(f"{text_file} has {len(ids)} tokens, fewer than {windows} windows of "
                        f"{window}", "use a longer text or fewer/smaller windows")
    llm = LLMBundle(bundle_path)
    nll = sum(_window_nll(llm, ids[i * window:(i + 1) * window]) for i in range(windows))
    n = windows * (window - 1)
    return math.exp(nll / n), n
