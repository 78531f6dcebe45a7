"""The benchmarks' toolkit, shared by scripts/bench_export.py, bench_llm.py, bench_quality.py and
bench_int8.py: measured exports (wall, CPU, peak RSS), tract loading and timing, perplexity and
cosine, number formatting, docs/benchmarks.md sections, the result JSON under docs/ and the
README's comparison table rendered from it.

The benchmarks are run as `python scripts/bench_*.py`, so this folder is on sys.path and they
import this module by its bare name. Module level is standard library only: bench_quality.py is
also imported by the baseline environment's python (its torch-to-nnef replica check), and
tests/test_benchmark_docs.py imports this module without numpy's help; numpy and tract are
imported inside the functions that need them.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
README = REPO / "README.md"
RESULTS = REPO / "docs"          # bench_<name>.json, written with --write-docs
DEFAULT_BASELINE = Path("/work/baseline-venv/bin/python")
TRACT_VERSION = "0.23.9"  # what the tract stand-in answers to --version
SAMPLE_INTERVAL = 0.010   # seconds between two reads of the export's /proc/PID/status
BASE_TOOL = "torch-to-nnef"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# measured subprocesses

# A tiny launcher process spawns each export, samples it while it runs and reports its rusage.
# Measuring from the benchmark process itself would be wrong: a forked child's ru_maxrss starts
# at its parent's resident size (Linux keeps the pre-exec high-water mark), and this process
# holds torch and the models.
#
# Peak RSS is the largest of three readings of that single child: ru_maxrss from wait4, its
# VmRSS read from /proc/PID/status every SAMPLE_INTERVAL, and the last VmHWM read in that same
# loop. The kernel's high-water mark (ru_maxrss, VmHWM) is updated lazily; a process that hands
# pages back right after its peak (madvise, malloc_trim; t2n does) can hide part of the peak
# from it, which the sampler sees. Without /proc (not Linux) only ru_maxrss is left, and the
# result says so ("proc": false).
#
# The loop waits on a pidfd (exact exit time) or, where pidfd_open is missing, polls waitid.
# argv: result.json timeout_s interval_s series.json|'' cmd... ; all sizes in KiB. The result
# holds each reading (maxrss_kib, vmrss_max_kib, vmhwm_last_kib; null without /proc), the peak
# (peak_kib) and which readings equal it (peak_from).
LAUNCHER = r"""
import json, os, select, signal, sys, time
out, timeout, interval, series_path, cmd = (sys.argv[1], float(sys.argv[2]),
                                            float(sys.argv[3]), sys.argv[4], sys.argv[5:])
proc = os.path.isdir("/proc/self")
def vm(pid):
    try:
        with open("/proc/%d/status" % pid, "rb") as f:
            text = f.read()
    except OSError:
        return None
    rss = hwm = None
    for ln in text.split(b"\n"):
        if ln.startswith(b"VmRSS:"):
            rss = int(ln.split()[1])
        elif ln.startswith(b"VmHWM:"):
            hwm = int(ln.split()[1])
    return None if rss is None else (rss, hwm)
t0 = time.monotonic()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
try:
    fd = os.pidfd_open(pid)
except (AttributeError, OSError):
    fd = None
max_rss = hwm = None
n, series, killed = 0, [], False
while True:
    if proc:
        v = vm(pid)  # None once the child is a zombie: no VmRSS line
        if v:
            n += 1
            max_rss = v[0] if max_rss is None else max(max_rss, v[0])
            if v[1] is not None:
                hwm = v[1]  # the last value seen
            if series_path:
                series.append((round(time.monotonic() - t0, 4), v[0], v[1]))
    if fd is not None:
        if select.select([fd], [], [], interval)[0]:
            break
    elif os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
        break
    else:
        time.sleep(interval)
    if not killed and time.monotonic() - t0 > timeout:
        os.kill(pid, signal.SIGKILL)
        killed = True
wall = time.monotonic() - t0
_, status, usage = os.wait4(pid, 0)
if series_path:
    with open(series_path, "w") as f:
        json.dump(series, f)
readings = {"ru_maxrss": usage.ru_maxrss, "VmRSS sampler": max_rss, "VmHWM": hwm}
peak = max(v for v in readings.values() if v is not None)
with open(out, "w") as f:
    json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
               "code": os.waitstatus_to_exitcode(status), "killed": killed, "t0": t0,
               "maxrss_kib": usage.ru_maxrss, "proc": proc, "vmrss_max_kib": max_rss,
               "vmhwm_last_kib": hwm, "samples": n, "interval": interval,
               "pidfd": fd is not None, "peak_kib": peak,
               "peak_from": [k for k, v in readings.items() if v == peak]}, f)
"""

# the three readings, as the docs name them
RU_MAXRSS, SAMPLER, VMHWM = "ru_maxrss", "VmRSS sampler", "VmHWM"


@dataclass(frozen=True)
class PeakRss:
    """The three peak readings of one export, in bytes (None: not available)."""
    ru_maxrss: int
    sampled: int | None       # highest VmRSS sampled
    hwm: int | None           # last VmHWM seen
    samples: int              # /proc reads that found the process
    interval: float           # seconds asked between reads
    proc: bool                # /proc was there

    @property
    def bytes(self) -> int:
        return max(v for v in (self.ru_maxrss, self.sampled, self.hwm) if v is not None)

    @property
    def sources(self) -> tuple:
        """The readings equal to the peak (a tie names each)."""
        return tuple(name for name, v in ((RU_MAXRSS, self.ru_maxrss), (SAMPLER, self.sampled),
                                          (VMHWM, self.hwm)) if v == self.bytes)

    def as_json(self) -> dict:
        return {"bytes": self.bytes, "from": list(self.sources), "ru_maxrss": self.ru_maxrss,
                "vmrss_sampled": self.sampled, "vmhwm_last": self.hwm, "samples": self.samples,
                "interval_s": self.interval, "proc": self.proc}


@dataclass
class Measured:
    wall: float       # seconds, spawn to exit
    peak: PeakRss
    cpu: float        # user + system CPU seconds
    error: str        # "" when the export exited 0 and wrote its bundle
    err_path: Path    # the export's stderr
    t0: float = 0.0   # time.monotonic() at spawn (the clock of stamps taken in this process)
    series: list | None = None  # [(s since spawn, VmRSS KiB, VmHWM KiB)], when asked for

    @property
    def rss(self) -> int:
        return self.peak.bytes


def run_measured(cmd: list, out_path: Path, err_path: Path, timeout: float, env: dict,
                 series: bool = False) -> dict:
    """Run cmd as the one child of the launcher (stdout to out_path, stderr to err_path); returns
    the launcher's result (see LAUNCHER), plus "series" when asked for."""
    res_path = out_path.with_suffix(".rusage.json")
    series_path = out_path.with_suffix(".series.json") if series else None
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(res_path), str(timeout),
                        str(SAMPLE_INTERVAL), str(series_path or ""), *[str(c) for c in cmd]],
                       stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL, check=True)
    res = json.loads(res_path.read_text())
    if series_path:
        res["series"] = json.loads(series_path.read_text())
    return res


def peak_of(res: dict) -> PeakRss:
    kib = 1024  # ru_maxrss (Linux) and /proc's "kB" are KiB
    return PeakRss(ru_maxrss=res["maxrss_kib"] * kib,
                   sampled=None if res["vmrss_max_kib"] is None else res["vmrss_max_kib"] * kib,
                   hwm=None if res["vmhwm_last_kib"] is None else res["vmhwm_last_kib"] * kib,
                   samples=res["samples"], interval=res["interval"], proc=res["proc"])


def one_line_error(err_path: Path, out_path: Path, code: int, timed_out: bool) -> str:
    if timed_out:
        return "timed out"
    lines = []
    for p in (err_path, out_path):
        try:
            text = p.read_text(errors="replace").replace("\r", "\n")
        except OSError:
            continue
        lines += [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # t2n: "error: ..."; python: the exception line
        if ln.startswith("error:"):
            return ln
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "[")) and "it/s]" not in ln:
            return ln[:300]
    return f"exit code {code}"


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def path_bytes(path: Path) -> int:
    """Bytes of a file, or of all files under a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def read_through(paths) -> None:
    """Read files once (folders: their files), so that the timed exports find them in the page
    cache alike."""
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for p in files:
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


def measured_export(label: str, cmd: list, bundle: Path, work: Path, log_stem: str,
                    timeout: float, env: dict, bundle_text: str | None = None,
                    series: bool = False) -> Measured:
    """Remove bundle, run cmd measured (stdout/stderr to work/<log_stem>.{out,err}.log) and
    check it wrote bundle; a failure is logged and described in one line (bundle_text names
    the bundle in that line, default its full path). series: keep the launcher's samples."""
    remove(bundle)
    out_p, err_p = work / f"{log_stem}.out.log", work / f"{log_stem}.err.log"
    log(f"export {label}: {' '.join(shlex.quote(str(c)) for c in cmd)}")
    res = run_measured(cmd, out_p, err_p, timeout, env, series)
    m = Measured(res["wall"], peak_of(res), res["cpu"], "", err_p, res["t0"],
                 res.get("series"))
    if res["code"] != 0 or not bundle.exists():
        m.error = (f"exit 0 but no bundle at {bundle if bundle_text is None else bundle_text}"
                   if res["code"] == 0 else one_line_error(err_p, out_p, res["code"],
                                                           timed_out=res["killed"]))
        log(f"  -> FAILED after {m.wall:.1f} s: {m.error}")
    return m


# ----------------------------------------------------------------------------------------------
# the export record: wall, CPU and peak RSS over rounds


@dataclass(kw_only=True)
class ExportRecord:
    """The rounds of one export: median wall and CPU time, highest peak RSS."""
    walls: list = field(default_factory=list)   # seconds, one per round
    cpus: list = field(default_factory=list)    # user + system CPU seconds, one per round
    peaks: list = field(default_factory=list)   # PeakRss, one per round

    def add(self, m: Measured) -> None:
        self.walls.append(m.wall)
        self.cpus.append(m.cpu)
        self.peaks.append(m.peak)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls) if self.walls else float("nan")

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus) if self.cpus else float("nan")

    @property
    def peak(self) -> PeakRss | None:
        """The readings of the round with the highest peak."""
        return max(self.peaks, key=lambda p: p.bytes) if self.peaks else None

    @property
    def rss(self) -> int:
        return self.peak.bytes if self.peaks else 0

    def wall_text(self) -> str:
        if len(self.walls) < 2:
            return f"{self.wall:.1f}"
        return f"{self.wall:.1f} ({min(self.walls):.1f}–{max(self.walls):.1f})"

    def record_json(self) -> dict:
        p = self.peak
        return {"wall_s": self.wall, "walls_s": self.walls, "cpu_s": self.cpu,
                "peak_rss": p.as_json() if p else None}


def rss_method_text(peaks: list) -> str:
    """How peak RSS is measured, and which reading gave it in this run (computed from peaks,
    the PeakRss of every export of the run)."""
    n = len(peaks)
    counts = {s: sum(s in p.sources for p in peaks) for s in (RU_MAXRSS, SAMPLER, VMHWM)}
    intervals = [p.interval for p in peaks]
    asked = statistics.median(intervals) * 1e3 if intervals else SAMPLE_INTERVAL * 1e3
    text = (f"Peak RSS = for every export, both tools alike, the largest of three readings of "
            f"that single child: its `ru_maxrss` from `wait4`, its VmRSS read from "
            f"`/proc/PID/status` every {asked:.0f} ms by the launcher (the only process it "
            f"spawns), and the last VmHWM read in that loop. The kernel's high-water marks "
            f"(`ru_maxrss`, VmHWM) are updated lazily and miss a peak whose pages are handed back "
            f"right after it; the sampler misses a peak shorter than its interval.")
    if n:
        text += (f" In this run the largest reading came from `ru_maxrss` in {counts[RU_MAXRSS]}"
                 f", the VmRSS sampler in {counts[SAMPLER]} and VmHWM in {counts[VMHWM]} of the "
                 f"{n} exports (compared in KiB, a tie counting for each; the tables round to "
                 f"MiB, so a reading can show the peak's MiB without being it).")
        no_proc = sum(not p.proc for p in peaks)
        if no_proc:
            text += (f" /proc was missing for {no_proc} export(s): their peak RSS is "
                     f"`ru_maxrss` alone.")
    return text


def rss_readings_table(add, rows: list) -> None:
    """rows: (label, ExportRecord) -> a table of the three readings of each record's highest
    round, MiB."""
    add("| export | peak RSS (MiB) | from | `ru_maxrss` | VmRSS sampled, max | VmHWM, last "
        "read | samples |")
    add("|---|---:|---|---:|---:|---:|---:|")
    for label, rec in rows:
        p = rec.peak
        if p is None:
            continue
        add(f"| {label} | {mib(p.bytes)} | {', '.join(p.sources)} | {mib(p.ru_maxrss)} | "
            f"{mib(p.sampled) or '—'} | {mib(p.hwm) or '—'} | {p.samples:,} |")


# ----------------------------------------------------------------------------------------------
# tract


def import_tract():
    """The tract bindings, once numpy, torch and transformers import too; None (with an error
    printed) when this is not t2n's python."""
    try:
        import numpy as np  # noqa: F401
        import torch  # noqa: F401
        import tract
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"error: run this with t2n's python (.venv/bin/python): {e}", file=sys.stderr)
        return None
    return tract


@dataclass
class TractBundle:
    runnable: object
    inputs: list     # [(name, fact text)], the model's input order
    outputs: list    # [(name, fact text)]
    load_s: float    # load + into_runnable, seconds

    @property
    def input_names(self) -> list:
        return [n for n, _ in self.inputs]

    @property
    def output_names(self) -> list:
        return [n for n, _ in self.outputs]


def load_tract(path: Path) -> TractBundle:
    """A bundle loaded with tract.nnef().with_tract_extra().with_tract_transformers()."""
    import tract
    t0 = time.perf_counter()
    model = tract.nnef().with_tract_extra().with_tract_transformers().load(str(path))
    inputs = [(model.input_name(i), str(model.input_fact(i))) for i in range(model.input_count())]
    outputs = [(model.output_name(i), str(model.output_fact(i)))
               for i in range(model.output_count())]
    runnable = model.into_runnable()
    return TractBundle(runnable, inputs, outputs, time.perf_counter() - t0)


def parse_fact(fact: str):
    """'1,3,P,64,f32' -> (['1', '3', 'P', '64'], 'f32')."""
    parts = str(fact).strip().split(",")
    return parts[:-1], parts[-1]


def empty_for(fact: str):
    """A zero-size array for a fact with symbolic axes (an empty KV cache: P = 0)."""
    import numpy as np
    dims, dtype = parse_fact(fact)
    return np.zeros([int(d) if d.isdigit() else 0 for d in dims],
                    dtype={"f32": np.float32, "f16": np.float16}[dtype])


def alternating_timings(calls: dict, runs: int, warmup: int, target_s: float | None = None):
    """calls: key -> zero-argument callable. Each is called warmup times, then runs rounds time
    every call once, forward on even rounds and backward on odd ones (no fixed first-in-round).
    One timing = reps consecutive calls / reps: reps = 1, or with target_s chosen from the
    warm-up so that the fastest call's timing lasts about target_s. Returns ({key: [seconds
    per call, one per round]}, reps, process CPU time / wall time over the rounds)."""
    warm = {}
    for key, fn in calls.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        warm[key] = (time.perf_counter() - t0) / max(1, warmup)
    reps = 1
    if target_s is not None:
        reps = max(1, min(2000, round(target_s / max(1e-7, min(warm.values())))))
    times = {key: [] for key in calls}
    order = list(calls)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for r in range(runs):
        for key in (order if r % 2 == 0 else order[::-1]):
            fn = calls[key]
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times[key].append((time.perf_counter() - t0) / reps)
    return times, reps, (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - wall0)


# ----------------------------------------------------------------------------------------------
# metrics


def cosine(a, b) -> float:
    """Cosine similarity of the flattened arrays, in float64."""
    import numpy as np
    a = np.ravel(np.asarray(a, dtype=np.float64))
    b = np.ravel(np.asarray(b, dtype=np.float64))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def token_nll(logits, targets):
    """NLL (float64) of each target under logits [T, V]: logsumexp(logits) - logits[target]."""
    import numpy as np
    x = np.asarray(logits, dtype=np.float64)
    mx = x.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(x - mx).sum(axis=1))
    return lse - x[np.arange(len(targets)), targets]


def perplexity(window_nll) -> tuple:
    """(exp(mean NLL), NLL sum, predicted tokens) over all windows' per-token NLLs."""
    import math

    import numpy as np
    allv = np.concatenate(window_nll)
    return math.exp(float(allv.sum()) / len(allv)), float(allv.sum()), len(allv)


def quartiles(values) -> tuple:
    q = (statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1
         else [values[0]] * 3)
    return q[0], statistics.median(values), q[2]


# ----------------------------------------------------------------------------------------------
# numbers in text: every figure and comparison in the docs goes through these


def ratio(a, b) -> float | None:
    if a is None or b is None or not b or a != a or b != b:  # None, zero or NaN
        return None
    return a / b


def fmt_ratio(r) -> str:
    return "—" if r is None else f"{r:.2f}×"


def mib(b) -> str:
    return f"{b / 2**20:,.0f}" if b else ""


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def fmt_s(v) -> str:
    return "" if v is None or (isinstance(v, float) and v != v) else f"{v:.1f}"


def fmt_ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def spread_text(records: list) -> str:
    """The largest round-to-round spread (max / min − 1) of the wall times of records (label,
    ExportRecord), as a sentence; "" with fewer than two rounds."""
    spreads = [(max(r.walls) / min(r.walls) - 1, label) for label, r in records
               if len(r.walls) > 1 and min(r.walls) > 0]
    if not spreads:
        return ""
    worst, label = max(spreads)
    median = statistics.median(s for s, _ in spreads)
    return (f"Between rounds of the same export the wall time varied by up to "
            f"{worst * 100:.0f}% ({label}; median over the exports {median * 100:.0f}%).")


# ----------------------------------------------------------------------------------------------
# environments


def bench_env(threads: int = 0) -> dict:
    """Environment of every child process: offline Hugging Face, quiet tokenizers, and with
    ``threads`` > 0 that many OpenMP/MKL threads."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def python_of_script(script: Path) -> str | None:
    try:
        first = script.read_bytes()[:200].split(b"\n", 1)[0].decode()
    except OSError:
        return None
    if first.startswith("#!") and "python" in first:
        return first[2:].strip().split()[0]
    return None


# the distributions to report are its arguments
VERSIONS_SNIPPET = r"""
import json, platform, sys
from importlib.metadata import version, PackageNotFoundError
out = {"python": platform.python_version()}
for name in sys.argv[1:]:
    try:
        out[name] = version(name)
    except PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def env_versions(python: str | None, env: dict, packages: tuple) -> dict:
    if not python:
        return {}
    try:
        res = subprocess.run([python, "-c", VERSIONS_SNIPPET, *packages], capture_output=True,
                             text=True, env=env, timeout=120)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except Exception:  # noqa: BLE001 - informative only
        return {}


def probe_environments(baseline_python: Path, t2n: Path, env: dict, packages: tuple):
    """(baseline versions, t2n's python, t2n versions, t2n version), or None (with an error
    printed) when baseline_python has no torch_to_nnef."""
    baseline_env = env_versions(str(baseline_python), env, packages)
    if "torch_to_nnef" not in baseline_env:
        print(f"error: {baseline_python} has no torch_to_nnef; create the baseline with "
              f"scripts/setup_baseline.sh", file=sys.stderr)
        return None
    t2n_python = python_of_script(t2n) or sys.executable
    t2n_env = env_versions(t2n_python, env, packages)
    res = subprocess.run([str(t2n), "--version"], capture_output=True, text=True, env=env)
    # "t2n 0.1.0 (python 3.11.7, torch ...)": the first version-like word
    found = re.search(r"\b(\d+\.\d+[\w.+-]*)", res.stdout) if res.returncode == 0 else None
    t2n_version = found.group(1) if found else t2n_env.get("t2n", "?")
    return baseline_env, t2n_python, t2n_env, t2n_version


def work_folder(keep: Path | None, prefix: str):
    """(work folder: keep, or a new temporary one; the tract stand-in script in it)."""
    work = keep or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    standin = work / "tract-standin"
    standin.write_text(f"#!/bin/sh\necho \"tract {TRACT_VERSION}\"\n")
    standin.chmod(0o755)
    log(f"work folder {work}")
    return work, standin


def warm_imports(pythons_modules, env: dict) -> None:
    """Import each environment's heavy modules once, so that the first timed export does not
    pay a cold disk cache alone."""
    for py, mods in pythons_modules:
        subprocess.run([py, "-c", f"import {mods}"], env=env, capture_output=True)


def shell_line(cmd: list, names) -> str:
    """cmd as a shell line, each (path, name) of names replaced in that order, then the repo's
    own folder dropped."""
    s = " ".join(shlex.quote(str(c)) for c in cmd)
    for path, name in names:
        s = s.replace(str(path), name)
    return s.replace(str(REPO) + "/", "")


def git_state() -> str:
    """The commit of this checkout, and whether t2n/ has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "t2n"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
    return f"`{rev}`" + (" with uncommitted changes in t2n/" if dirty else "")


def machine_info() -> dict:
    info = {"nproc": os.cpu_count(), "platform": platform.platform()}
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemTotal:"):
                info["ram_gib"] = int(ln.split()[1]) / 2**20
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                info["cpu"] = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def run_meta(script: str, t_start: float, load_start: tuple) -> dict:
    """The report fields every benchmark has: date, duration, load averages, machine, commit and
    the command line that ran it (script = its path from the repo, e.g. scripts/bench_export.py)."""
    argv = [script] + sys.argv[1:]
    exe = sys.executable.replace(str(REPO) + "/", "")
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "total_s": time.perf_counter() - t_start,
        "load": (tuple(load_start), os.getloadavg()),
        "machine": machine_info(),
        "git": git_state(),
        "bench_cmd": " ".join([exe] + [shlex.quote(a) for a in argv]),
    }


# ----------------------------------------------------------------------------------------------
# markdown


def machine_line(mi: dict) -> str:
    return (f"- Machine: {mi.get('cpu', '?')}, nproc {mi.get('nproc')} (usable "
            f"{mi.get('usable_cpus', '?')}), RAM {mi.get('ram_gib', 0):.1f} GiB, "
            f"{mi.get('platform', '')}")


def load_line(meta: dict, what: str = "") -> str:
    """Load averages at start and end, against the machine's CPU count."""
    (a1, a5, _), (b1, b5, _) = meta["load"]
    cpus = meta["machine"].get("usable_cpus") or meta["machine"].get("nproc") or 0
    return (f"- {what}Load average 1/5 min: {a1:.2f}/{a5:.2f} at start, {b1:.2f}/{b5:.2f} at "
            f"the end, on {cpus} usable CPUs")


def environment_lines(meta: dict, t2n_packages=("torch", "transformers"),
                      tract_note: str = "") -> list:
    """The bullet lines for the machine, t2n's and torch-to-nnef's environments and tract."""
    tv, bv = meta["t2n_env"], meta["baseline_env"]
    t2n_parts = ", ".join(f"{p} {tv.get(p, '?')}" for p in (*t2n_packages, "python"))
    return [
        machine_line(meta["machine"]),
        f"- t2n {meta['t2n_version']} ({t2n_parts}), source: commit {meta.get('git', '?')}",
        f"- torch-to-nnef {bv.get('torch_to_nnef', '?')} (torch {bv.get('torch', '?')}, "
        f"transformers {bv.get('transformers', '?')}, python {bv.get('python', '?')}), "
        f"separate virtual environment",
        f"- tract {meta['tract_version']} (Python bindings, in the benchmark process)"
        + tract_note,
    ]


def commands_section(add, meta: dict, exports_intro: str) -> None:
    """The closing "### Commands" part: setup and benchmark command, then exports_intro and the
    export commands the benchmark ran (meta["export_cmds"])."""
    add("### Commands")
    add("")
    add("```sh")
    add("scripts/setup_baseline.sh            # once: torch-to-nnef 0.24.12 in /work/baseline-venv")
    add(meta["bench_cmd"])
    add("```")
    add("")
    add(exports_intro)
    add("")
    add("```sh")
    for c in meta["export_cmds"]:
        add(c)
    add("```")


def replace_between(text: str, start: str, end: str, body: str) -> str | None:
    """text with what lies between the markers start and end replaced by body; None when the
    markers are missing."""
    if start not in text or end not in text:
        return None
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + "\n" + body + end + tail


def write_docs(section: str, start: str, end: str, after: str | None = None) -> None:
    """Put section between the markers start and end of DOCS: in place of the previous one, else
    right after the marker after (when given and present), else at the end."""
    block = f"{start}\n{section}{end}\n"
    if DOCS.exists():
        text = DOCS.read_text()
        if start in text and end in text:
            head, rest = text.split(start, 1)
            _, tail = rest.split(end, 1)
            text = head + block + tail.lstrip("\n")
        elif after and after in text:
            head, tail = text.split(after, 1)
            text = head + after + "\n\n" + block + tail.lstrip("\n")
        else:
            text = text.rstrip("\n") + "\n\n" + block
    else:
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        text = ("# Benchmarks\n\n"
                "Figures measured on this project's machines. Each section is written by the "
                "script it names; rerun that script (with `--write-docs`) rather than editing the "
                "section by hand.\n\n" + block)
    DOCS.write_text(text)
    log(f"wrote {DOCS}")


# ----------------------------------------------------------------------------------------------
# result JSON under docs/, and the README table rendered from it

RESULT_NAMES = ("bench_export", "bench_llm", "bench_quality")
README_START, README_END = "<!-- bench_readme:start -->", "<!-- bench_readme:end -->"


def _plain(obj):
    """JSON-ready: paths as text, tuples as lists, NaN as None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


@contextlib.contextmanager
def base_worktree(rev: str, folder: Path):
    """A detached git worktree of ``rev`` at ``folder`` (removed afterwards): the base tree of a
    before/after benchmark."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), rev],
                   check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
                       capture_output=True)


def before_after_head(title: str, meta: dict, base: str) -> list:
    """The opening lines of a before/after section: title, run, machine and load."""
    return [f"## {title}", "",
            f"Measured {meta['date']} by `{meta['bench_cmd']}` ({meta['total_s'] / 60:.0f} "
            f"min), commit {meta['git']}, against base commit `{base}`.",
            machine_line(meta["machine"]), load_line(meta), ""]


def save_results(name: str, data: dict) -> Path:
    """docs/<name>.json (the figures of a --write-docs run, for the README table)."""
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(_plain(data), indent=1, sort_keys=True) + "\n")
    log(f"wrote {path}")
    return path


def load_results(folder: Path = RESULTS) -> dict:
    """{name: result JSON or None} for the benchmarks the README table draws on."""
    out = {}
    for name in RESULT_NAMES:
        p = folder / f"{name}.json"
        out[name] = json.loads(p.read_text()) if p.exists() else None
    return out


def _cell(d: dict | None, *keys) -> str:
    for k in keys:
        if not isinstance(d, dict):
            return "—"
        d = d.get(k)
    return fmt_ratio(d)


def readme_section(results: dict) -> str:
    """The README's "Measured against torch-to-nnef" block, from the result JSON alone."""
    ex, llm, q = results.get("bench_export"), results.get("bench_llm"), results.get("bench_quality")
    L = []
    add = L.append
    runs = [(n, r) for n, r in (("scripts/bench_export.py", ex), ("scripts/bench_llm.py", llm),
                                ("scripts/bench_quality.py", q)) if r]
    if not runs:
        return "No benchmark results in docs/ yet: run the scripts/bench_*.py with --write-docs.\n"
    machines = {(r["machine"].get("cpu", "?"), r["machine"].get("usable_cpus")) for _, r in runs}
    where = "; ".join(f"{cpu}, {n} usable CPUs" for cpu, n in sorted(machines, key=str))
    add("Both tools side by side in the same run of each benchmark (" + ", ".join(
        f"`{n}` {r['date']}" for n, r in runs) + f"; {where}). `docs/benchmarks.md` has the "
        "method, every figure and the commands; this table is rendered from the result files "
        "`docs/bench_*.json` of those runs. Ratios are t2n / torch-to-nnef: below 1 t2n takes "
        "less time or memory, except decode tokens/s, where above 1 t2n is faster.")
    add("")
    cols = []  # (header, ratios of the t2n run, ratios of t2n --no-verify, tract ratios)
    for key, title in (("minilm", "all-MiniLM-L6-v2"), ("llama", "Llama-style 100M")):
        m = (ex or {}).get("models", {}).get(key)
        if m:
            cols.append((title, m["ratios"].get("t2n"), m["ratios"].get("t2n --no-verify"),
                         {"latency": m["ratios"].get("t2n", {}).get("latency")}))
    for config, c in ((llm or {}).get("configs") or {}).items():
        cols.append((f"SmolLM2-135M {config} (`export-llm`)", c["ratios"].get("t2n"),
                     c["ratios"].get("t2n --no-verify"), c.get("tract_ratios")))
    if cols:
        add("| t2n / torch-to-nnef | " + " | ".join(h for h, *_ in cols) + " |")
        add("|---|" + "---:|" * len(cols))
        rows = (("export wall time", 1, "wall"), ("export wall time, `--no-verify`", 2, "wall"),
                ("export peak RSS", 1, "peak_rss"), ("export peak RSS, `--no-verify`", 2,
                                                      "peak_rss"),
                ("tract latency (SmolLM2: 128-token prefill)", 3, "latency"),
                ("tract decode tokens/s", 3, "decode_tps"))
        for label, i, key in rows:
            add(f"| {label} | " + " | ".join(_cell(c[i], key) for c in cols) + " |")
        add("")
        add("Peak RSS is the largest of `ru_maxrss`, VmRSS sampled every 10 ms and VmHWM, for "
            "both tools alike. t2n's export includes its own tract check of the bundle; "
            "`--no-verify` skips it; torch-to-nnef's never runs tract here (its check needs the "
            "tract command-line binary).")
        add("")
    ppl = (q or {}).get("perplexity") or {}
    if ppl:
        comps = [c for c in ("f32", "min_max_q4_0_all", "grid_mse_q4_0_all")
                 if any(c in v for v in ppl.values())]
        add(f"SmolLM2-135M perplexity computed from tract's logits ({q['text']}):")
        add("")
        add("| tool | " + " | ".join(comps) + " |")
        add("|---|" + "---:|" * len(comps))
        for tool in ("t2n", BASE_TOOL):
            vals = ppl.get(tool, {})
            add(f"| {tool} | " + " | ".join(f"{vals[c]:.2f}" if vals.get(c) is not None else "—"
                                              for c in comps) + " |")
        add("")
    return "\n".join(L)


def write_readme() -> bool:
    """Render the README's comparison block from docs/bench_*.json; False when its markers are
    missing."""
    text = README.read_text()
    new = replace_between(text, README_START, README_END, readme_section(load_results()))
    if new is None:
        log(f"{README} has no {README_START} ... {README_END} block: table not written")
        return False
    if new != text:
        README.write_text(new)
        log(f"wrote the comparison table of {README}")
    return True


def figures_of(markdown: str) -> list:
    """The figures of a rendered README block: ratios (0.73×) and two-decimal numbers (43.97)."""
    return re.findall(r"\d+\.\d+×?", markdown)
