"""Helpers shared by scripts/bench_export.py and scripts/bench_quality.py.

Both benchmarks are run as `python scripts/bench_*.py`, so this folder is on sys.path and they
import this module by its bare name. Standard library only: bench_quality.py is also imported by
the baseline environment's python (its torch-to-nnef replica check).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
DEFAULT_BASELINE = Path("/work/baseline-venv/bin/python")
TRACT_VERSION = "0.23.9"  # what the tract stand-in answers to --version


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# measured subprocesses

# A tiny launcher process spawns each export and reports its rusage. Measuring from the benchmark
# process itself would be wrong: a forked child's ru_maxrss starts at its parent's resident size
# (Linux keeps the pre-exec high-water mark), and this process holds torch and the models.
LAUNCHER = r"""
import json, os, signal, sys, time
out, timeout, cmd = sys.argv[1], int(float(sys.argv[2])), sys.argv[3:]
t0 = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
signal.signal(signal.SIGALRM, lambda *a: os.kill(pid, signal.SIGKILL))
signal.alarm(max(1, timeout))
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
signal.alarm(0)
with open(out, "w") as f:
    json.dump({"wall": wall, "maxrss_kib": usage.ru_maxrss,
               "cpu": usage.ru_utime + usage.ru_stime,
               "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(cmd: list, out_path: Path, err_path: Path, timeout: float, env: dict):
    """Run cmd as one child of a small launcher; return (wall s, peak RSS bytes, exit code,
    CPU s = user + system time of the child)."""
    res_path = out_path.with_suffix(".rusage.json")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(res_path), str(timeout),
                        *[str(c) for c in cmd]], stdout=out, stderr=err, env=env,
                       stdin=subprocess.DEVNULL, check=True)
    res = json.loads(res_path.read_text())
    return res["wall"], res["maxrss_kib"] * 1024, res["code"], res["cpu"]  # ru_maxrss: KiB


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


@dataclass
class Measured:
    wall: float       # seconds, spawn to exit
    rss: int          # peak RSS bytes
    cpu: float        # user + system CPU seconds
    error: str        # "" when the export exited 0 and wrote its bundle
    err_path: Path    # the export's stderr


def measured_export(label: str, cmd: list, bundle: Path, work: Path, log_stem: str,
                    timeout: float, env: dict, bundle_text: str | None = None) -> Measured:
    """Remove bundle, run cmd measured (stdout/stderr to work/<log_stem>.{out,err}.log) and
    check it wrote bundle; a failure is logged and described in one line (bundle_text names
    the bundle in that line, default its full path)."""
    remove(bundle)
    out_p, err_p = work / f"{log_stem}.out.log", work / f"{log_stem}.err.log"
    log(f"export {label}: {' '.join(shlex.quote(str(c)) for c in cmd)}")
    wall, rss, code, cpu = run_measured(cmd, out_p, err_p, timeout, env)
    error = ""
    if code != 0 or not bundle.exists():
        error = (f"exit 0 but no bundle at {bundle if bundle_text is None else bundle_text}"
                 if code == 0 else one_line_error(err_p, out_p, code, timed_out=wall >= timeout))
        log(f"  -> FAILED after {wall:.1f} s: {error}")
    return Measured(wall, rss, cpu, error, err_p)


# ----------------------------------------------------------------------------------------------
# environments


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
    t2n_version = res.stdout.strip().split()[-1] if res.returncode == 0 else t2n_env.get("t2n", "?")
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
    """The report fields every benchmark has: date, duration, load averages, machine, and the
    command line that ran it (script = its path from the repo, e.g. scripts/bench_export.py)."""
    argv = [script] + sys.argv[1:]
    exe = sys.executable.replace(str(REPO) + "/", "")
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "total_s": time.perf_counter() - t_start,
        "load": (load_start, os.getloadavg()),
        "machine": machine_info(),
        "bench_cmd": " ".join([exe] + [shlex.quote(a) for a in argv]),
    }


# ----------------------------------------------------------------------------------------------
# markdown


def environment_lines(meta: dict, t2n_packages=("torch", "transformers"),
                      tract_note: str = "") -> list:
    """The bullet lines for the machine, t2n's and torch-to-nnef's environments and tract."""
    mi, tv, bv = meta["machine"], meta["t2n_env"], meta["baseline_env"]
    t2n_parts = ", ".join(f"{p} {tv.get(p, '?')}" for p in (*t2n_packages, "python"))
    return [
        f"- Machine: {mi.get('cpu', '?')}, nproc {mi.get('nproc')} (usable "
        f"{mi.get('usable_cpus', '?')}), RAM {mi.get('ram_gib', 0):.1f} GiB, "
        f"{mi.get('platform', '')}",
        f"- t2n {meta['t2n_version']} ({t2n_parts})",
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
