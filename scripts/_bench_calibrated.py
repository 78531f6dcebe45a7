"""bench_quality.py --calibrated: calibrated 4-bit weights on SmolLM2-135M, t2n's methods against
llama.cpp's importance-matrix quantizer and the auto-round package, in one run.

Every bundle is scored the same way as bench_quality's other rows: perplexity computed by tract on
the first 2048 tokens of Debian's GPL-3 text in 8 windows of 256. Calibration text, for every
tool: Python's own reference documentation (module pydoc_data.topics, written to
$WORK/calib.txt); the GPL text never calibrates anything.

t2n rows: `t2n export MODEL.gguf OUT.tgz --dynamic-axes ... -c NAME` with every Linear and the
tied embedding in Q4_0; calibrated ones also `--calibration-data $WORK/calib.txt
--calibration-samples 32 --calibration-seqlen 512` (16,384 tokens). Quantization time = the
seconds of the calibrated work in NAME.calibration.json (for the data-free rules, the "compress"
status line); calibration peak RSS = the peak resident memory sampled during that work (the
report's peak_rss_mib); the export's process peak (model load included) is given beside it.

Side by side (scripts/_quant_baselines.py, tools set up by scripts/setup_quant_baselines.sh):
llama.cpp's own quantizer from the same float model (F32 GGUF): plain `llama-quantize --pure
Q4_0`, and `llama-imatrix` on the same text (ctx 512 x 32 chunks = 16,384 tokens) then
`llama-quantize --imatrix --pure Q4_0`; the auto-round package (bits 4, group 32, symmetric,
50 iterations, 32 x 512 tokens, batch 8, t2n's fast preset's settings) writing a pure Q4_0 GGUF.
Their GGUFs are exported to f32 bundles by t2n (transformers dequantizes Q4_0 exactly: the
bundle computes with the tool's own 4-bit values) and scored by tract the same way. Their time
and peak RSS are those of the tools' own processes.

Share removed = (ppl(GGML rule) - ppl(row)) / (ppl(GGML rule) - ppl(f32)), GGML's own
round-to-nearest (signed_max_q4_0_all) being the stronger data-free baseline.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from _bench_common import (bench_env, import_tract, log, perplexity, read_through,
                           run_meta, save_results, shell_line, work_folder, write_docs)
from _bench_llm_models import find_gguf

def fmt_s(v) -> str:
    """Seconds, with minutes past two of them."""
    if v is None or v != v:
        return "-"
    return f"{v:.1f} s" if v < 120 else f"{v:.0f} s ({v / 60:.1f} min)"


START, END = "<!-- bench_calibrated:start -->", "<!-- bench_calibrated:end -->"
AFTER = "<!-- bench_quality:end -->"
SAMPLES, SEQLEN = 32, 512
T2N_ROWS = [  # (key, compression, options, calibrated)
    ("f32", None, (), False),
    ("min_max", "min_max_q4_0_all", (), False),
    ("ggml", "signed_max_q4_0_all", (), False),
    ("grid_mse", "grid_mse_q4_0_all", (), False),
    ("imatrix", "imatrix_q4_0_all", (), True),
    ("gptq", "gptq_q4_0_all", (), True),
    ("autoround_fast", "autoround_q4_0_all", ("preset=fast",), True),
    ("autoround", "autoround_q4_0_all", (), True),
]
TARGET_GPTQ, TARGET_AUTOROUND = 0.60, 0.65
CPU_DEFAULT_LIMIT_S = 30 * 60


def main(args, bq) -> int:
    """Run with bench_quality's module ``bq`` (Row, export, tract_perplexity, torch_reference)."""
    tract = import_tract()
    if tract is None:
        return 2
    from _quant_baselines import (autoround_q4_0, f32_gguf, llamacpp_q4_0, tool_paths,
                                  write_calibration_text)
    tool_paths()   # fails early, naming the set-up script, when a tool is missing
    t_start, load_start = time.perf_counter(), os.getloadavg()
    env = bench_env()
    gguf = find_gguf()
    work, _ = work_folder(args.keep, "bench_calibrated_")
    hf_dir = work / "smollm2-hf"
    cmds, rows, tools = [], [], {}

    def show(cmd):
        cmds.append(shell_line(cmd, ((hf_dir, "$HF"), (work, "$WORK"), (gguf, "$GGUF"),
                                     (args.t2n, "$T2N"))))
    try:
        log("torch float reference and GGUF -> Hugging Face folder (not timed)")
        ref = bq.torch_reference(gguf, hf_dir, do_fake_quant=False)
        calib = write_calibration_text(work / "calib.txt")
        for key, comp, opts, calibrated in T2N_ROWS:
            if args.only and key not in args.only:
                continue
            out = work / f"t2n_{key}.tgz"
            cmd = [args.t2n, "export", gguf, out, *bq.DYN]
            if comp:
                cmd += ["-c", comp]
            if calibrated:
                cmd += ["--calibration-data", calib, "--calibration-samples", str(SAMPLES),
                        "--calibration-seqlen", str(SEQLEN)]
                for o in opts:
                    cmd += ["--compression-option", o]
            row = bq.Row(f"t2n_{key}", "t2n", comp or "f32", cmd, out, "t2n")
            row.key_name, row.calibrated, row.options = key, calibrated, list(opts)
            rows.append(row)
            show(cmd)
        read_through([gguf])
        for r in rows:
            bq.export(r, work, args.timeout, env)
            rep = work / f"{r.key}.calibration.json"
            r.report = json.loads(rep.read_text()) if rep.exists() else None
        if not args.no_tools:
            log("llama.cpp: F32 GGUF of the same float model (not timed)")
            f32 = f32_gguf(hf_dir, work / "f32.gguf")
            tools["llamacpp_plain"] = llamacpp_q4_0(f32, calib, work / "llamacpp",
                                                    imatrix=False, env=env)
            tools["llamacpp_imatrix"] = llamacpp_q4_0(f32, calib, work / "llamacpp",
                                                      ctx=SEQLEN, chunks=SAMPLES, env=env)
            tools["autoround_pkg"] = autoround_q4_0(hf_dir, calib, work / "autoround",
                                                    iters=50, nsamples=SAMPLES, seqlen=SEQLEN,
                                                    batch_size=8, env=env)
            for key, res in tools.items():
                out = work / f"{key}.tgz"
                # the bundle only carries the tool's weights to tract: checked at "very" (a
                # float export of dequantized 4-bit weights can miss "approximate" by 1e-4)
                cmd = [args.t2n, "export", res["gguf"], out, *bq.DYN, "--check-io", "very"]
                row = bq.Row(key, res["tool"], res["method"], cmd, out, "t2n")
                row.key_name, row.calibrated, row.options, row.report = key, False, [], None
                row.tool_result = res
                bq.export(row, work, args.timeout, env)
                rows.append(row)
        log("perplexity in tract, one bundle at a time")
        for r in rows:
            if r.ok:
                bq.tract_perplexity(r, ref["windows"], ref["vocab"])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta = {**run_meta("scripts/bench_quality.py", t_start, load_start), "cmds": cmds,
            "tract_version": tract.version(), "torch_ppl": perplexity(ref["nll"])[0],
            "n_params": ref["n_params"]}
    figures = results(rows, meta)
    section = render(figures)
    print(section)
    if args.write_docs:
        write_docs(section, START, END, after=AFTER)
        save_results("bench_calibrated", figures)
    return 0 if all(r.ok and r.ppl is not None for r in rows) else 1


def results(rows, meta) -> dict:
    out = {k: meta[k] for k in ("date", "total_s", "load", "machine", "git", "bench_cmd",
                                "tract_version", "torch_ppl", "n_params", "cmds")}
    out["rows"] = []
    for r in rows:
        rep = r.report or {}
        tool = getattr(r, "tool_result", None)
        out["rows"].append({
            "key": r.key_name, "tool": r.tool, "compression": r.compression,
            "options": r.options, "ok": r.ok, "error": r.error or r.tract_error,
            "perplexity": r.ppl,
            "quant_s": (tool["seconds"] if tool else rep.get("seconds", r.quant_s)),
            "calib_peak_mib": (tool["peak_rss_mib"] if tool else rep.get("peak_rss_mib")),
            "export_peak_mib": r.rss / 2**20 if getattr(r, "rss", None) else None,
            "export_wall_s": getattr(r, "wall", None),
            "model_mib": rep.get("model_mib"),
            "activations_mib": rep.get("block_activations_mib"),
            "calibration": rep.get("calibration") or (tool or {}).get("calibration"),
            "options_used": rep.get("options"),
            "tool_commands": (tool or {}).get("command lines") or (
                [tool["command"]] if tool and tool.get("command") else None),
        })
    return out


def _removed(ppl, base, f32):
    return None if ppl is None or base is None else (base - ppl) / (base - f32)


def render(f: dict) -> str:
    rows = {r["key"]: dict(r) for r in f["rows"]}
    for fu in f.get("followups", []):   # a row's perplexity measured after the run
        rows[fu["key"]]["followup_ppl"] = fu["perplexity"]
    f32 = (rows.get("f32") or {}).get("perplexity") or f["torch_ppl"]
    base = (rows.get("ggml") or {}).get("perplexity")
    lines = ["## Calibrated 4-bit weights (bench_quality.py --calibrated)", "",
             f"SmolLM2-135M-Instruct, every Linear and the tied embedding in Q4_0; perplexity "
             f"computed by tract on the first 2048 tokens of Debian's GPL-3 text (8 windows of "
             f"256); calibration on Python's documentation (pydoc_data.topics), {SAMPLES} "
             f"windows of {SEQLEN} tokens for every calibrated row. Run {f['date']}, "
             f"{fmt_s(f['total_s'])} in all, commit {f['git']}, tract {f['tract_version']}.",
             "", "| method | tool | perplexity | share removed | quantization time | "
             "calibration peak RSS | export peak RSS |", "|---|---|---|---|---|---|---|"]
    for r in f["rows"]:
        name = r["compression"] + (f" ({', '.join(r['options'])})" if r["options"] else "")
        ppl = r["perplexity"]
        rem = _removed(ppl, base, f32) if r["key"] not in ("f32", "ggml") else None
        lines.append(
            f"| {name} | {r['tool']} | {ppl:.2f} | " if ppl is not None else
            f"| {name} | {r['tool']} | failed: {r['error'].split(' (')[0]} | ")
        lines[-1] += (f"{rem * 100:.0f}% | " if rem is not None else "- | ")
        lines[-1] += f"{fmt_s(r['quant_s'])} | "
        lines[-1] += (f"{r['calib_peak_mib']:,.0f} MiB | " if r["calib_peak_mib"] else "- | ")
        lines[-1] += (f"{r['export_peak_mib']:,.0f} MiB |" if r["export_peak_mib"] else "- |")
    for fu in f.get("followups", []):
        lines += ["", f"Measured after the run: {fu['what']}: perplexity {fu['perplexity']:.2f} "
                  f"({fu['how']})."]
    lines += ["", f"f32: {f32:.2f} (torch {f['torch_ppl']:.2f}); share removed is of the increase "
              f"of GGML's round-to-nearest rule (signed_max_q4_0_all, {base:.2f}) over f32."
              if base else "", ""]
    lines += _targets(rows, f32, base)
    lines += ["", "Commands (t2n exports; the tools' own command lines are in "
              "docs/bench_calibrated.json):", "", "```sh", f["bench_cmd"], *f["cmds"], "```"]
    return "\n".join(lines) + "\n"


def _targets(rows, f32, base) -> list:
    def ppl(k):
        return (rows.get(k) or {}).get("perplexity") or (rows.get(k) or {}).get("followup_ppl")

    def quant(k):
        return (rows.get(k) or {}).get("quant_s")
    out = ["Targets (computed from the rows above):", ""]
    im, lc = ppl("imatrix"), ppl("llamacpp_imatrix")
    if im and lc:
        late = " (llama.cpp's measured after the run)" if not (
            rows.get("llamacpp_imatrix") or {}).get("perplexity") else ""
        out.append(f"- imatrix <= llama.cpp's imatrix perplexity: {'met' if im <= lc else 'missed'}"
                   f" ({im:.2f} vs {lc:.2f}{late})")
    g = _removed(ppl("gptq"), base, f32)
    if g is not None:
        out.append(f"- GPTQ removes >= {TARGET_GPTQ:.0%}: {'met' if g >= TARGET_GPTQ else 'missed'}"
                   f" ({g:.0%})")
    ar_pkg, ar_pkg_s = ppl("autoround_pkg"), quant("autoround_pkg")
    for key, label in (("autoround", "default preset"), ("autoround_fast", "fast preset")):
        a = _removed(ppl(key), base, f32)
        if a is None:
            continue
        out.append(f"- AutoRound ({label}) removes >= {TARGET_AUTOROUND:.0%}: "
                   f"{'met' if a >= TARGET_AUTOROUND else 'missed'} ({a:.0%})")
    fast, fast_s = ppl("autoround_fast"), quant("autoround_fast")
    if fast and ar_pkg:
        out.append(f"- AutoRound at the auto-round package's settings (fast preset) <= its "
                   f"perplexity: {'met' if fast <= ar_pkg else 'missed'} ({fast:.2f} vs "
                   f"{ar_pkg:.2f}); in <= 1.0x its time: "
                   f"{'met' if fast_s and ar_pkg_s and fast_s <= ar_pkg_s else 'missed'} "
                   f"({fmt_s(fast_s)} vs {fmt_s(ar_pkg_s)}, "
                   f"{fast_s / ar_pkg_s:.2f}x)" if fast_s and ar_pkg_s else "")
    d = quant("autoround")
    if d:
        out.append(f"- AutoRound's CPU default finishes in <= 30 min on 2 cores: "
                   f"{'met' if d <= CPU_DEFAULT_LIMIT_S else 'missed'} ({fmt_s(d)})")
    for key in ("imatrix", "gptq", "autoround"):
        r = rows.get(key) or {}
        if r.get("calib_peak_mib") and r.get("model_mib"):
            limit = 1.5 * r["model_mib"] + (r.get("activations_mib") or 0)
            out.append(f"- {r['compression']} calibration peak RSS <= 1.5x the model's bytes "
                       f"+ one block's activations: "
                       f"{'met' if r['calib_peak_mib'] <= limit else 'missed'} "
                       f"({r['calib_peak_mib']:,.0f} MiB vs 1.5 x {r['model_mib']:,.0f} + "
                       f"{r.get('activations_mib') or 0:,.0f} = {limit:,.0f} MiB)")
    return out


if __name__ == "__main__":
    sys.exit("run it as: .venv/bin/python scripts/bench_quality.py --calibrated")
