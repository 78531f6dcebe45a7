#!/usr/bin/env python
"""tract decode speed of a small Mamba against a Llama of the same width and depth.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_ssm.py [--hidden 256] [--layers 4]
        [--vocab 1024] [--prompts 16,512] [--steps 64] [--rounds 3]

Both models are random-initialised transformers models (seed 0) of hidden size --hidden and
--layers layers: MambaForCausalLM (expand 2, state 16, conv kernel 4) and LlamaForCausalLM
(--hidden * 2 intermediate, 4 heads, 4 key/value heads). Each is exported once with
``t2n.llm.export_llm`` (f32, its tract checks on), then, in this process with the tract
bindings (t2n.llm.LLMBundle), for each prompt length: the prompt in one call (prefill), then
--steps one-token steps fed with the previous step's cache. Models alternate within each of
--rounds rounds; the table gives the median over rounds of each figure: decode tokens/s
(steps / total decode time), ms per decode step, prefill ms. The Llama step reads a key/value
cache that grows with the prompt; the Mamba step reads fixed-size states.

Prints one markdown table on stdout (logs on stderr).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))     # _bench_common

from t2n.llm import LLMBundle, export_llm  # noqa: E402


def models(hidden: int, layers: int, vocab: int) -> dict:
    common = dict(hidden_size=hidden, num_hidden_layers=layers, vocab_size=vocab,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    return {
        "Mamba": lambda: transformers.MambaForCausalLM(transformers.MambaConfig(
            state_size=16, expand=2, conv_kernel=4, **common)),
        "Llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            intermediate_size=2 * hidden, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=4096, **common)),
    }


def measure(llm: LLMBundle, prompt: np.ndarray, steps: int) -> tuple[float, float]:
    """(prefill ms, decode seconds for ``steps`` one-token steps)."""
    t0 = time.perf_counter()
    logits, cache = llm.step(prompt, llm.empty_cache())
    prefill = (time.perf_counter() - t0) * 1000
    token = int(np.argmax(logits[0, -1]))
    t0 = time.perf_counter()
    for _ in range(steps):
        logits, cache = llm.step([[token]], cache)
        token = int(np.argmax(logits[0, -1]))
    return prefill, time.perf_counter() - t0


START, END = "<!-- bench_ssm:start -->", "<!-- bench_ssm:end -->"


def main(argv=None) -> int:
    import os
    t_start, load0 = time.perf_counter(), os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--prompts", default="16,512")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(1)
    prompts = [int(p) for p in args.prompts.split(",")]

    bundles, params = {}, {}
    work = Path(tempfile.mkdtemp(prefix="bench-ssm-"))
    for name, build in models(args.hidden, args.layers, args.vocab).items():
        torch.manual_seed(0)
        model = build().eval()
        params[name] = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        result = export_llm(model, None, work / name)
        print(f"{name}: exported and checked in {time.perf_counter() - t0:.1f} s "
              f"({', '.join(f'{m}: {v.summary()}' for m, v in result.modes.items())})",
              file=sys.stderr)
        bundles[name] = LLMBundle(result.path)

    rng = np.random.default_rng(0)
    ids = {p: rng.integers(3, args.vocab, size=(1, p), dtype=np.int64) for p in prompts}
    runs: dict[tuple, list] = {}
    for r in range(args.rounds):
        order = list(bundles) if r % 2 == 0 else list(reversed(bundles))
        for prompt in prompts:
            for name in order:
                if r == 0:   # warm-up: tract plans each new shape on first use
                    measure(bundles[name], ids[prompt], 2)
                runs.setdefault((name, prompt), []).append(
                    measure(bundles[name], ids[prompt], args.steps))

    lines = [f"tract {__import__('tract').version()}, hidden {args.hidden}, {args.layers} "
             f"layers, vocabulary {args.vocab}, f32, 1 thread, {args.steps} decode steps, "
             f"median of {args.rounds} rounds", "",
             "| model | parameters | prompt | prefill ms | decode ms/token | decode tokens/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for prompt in prompts:
        for name in bundles:
            prefill = statistics.median(p for p, _ in runs[(name, prompt)])
            decode = statistics.median(d for _, d in runs[(name, prompt)])
            lines.append(f"| {name} | {params[name] / 1e6:.2f}M | {prompt} | {prefill:.1f} | "
                         f"{decode / args.steps * 1000:.3f} | {args.steps / decode:.0f} |")
    print("\n".join(lines))
    if args.write_docs:
        from _bench_common import load_line, machine_line, run_meta, write_docs
        meta = run_meta("scripts/bench_ssm.py", t_start, load0)
        head = ["## State-space decode in tract: Mamba against Llama", "",
                f"Measured {meta['date']} by `{meta['bench_cmd']}` "
                f"({meta['total_s'] / 60:.0f} min), commit {meta['git']}.",
                machine_line(meta["machine"]), load_line(meta), ""]
        write_docs("\n".join(head + lines) + "\n", START, END,
                   after="<!-- bench_coverage:end -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
