#!/usr/bin/env python
"""Which decoder architectures of the installed transformers export and verify, before and
after, in one run (docs/benchmarks.md, "Architectures").

    .venv/bin/python scripts/bench_architectures.py [--base REV] [--only FAMILY ...]
        [--write-docs]

Every model family of transformers with a causal LM class is built from its default
configuration at the tests' tiny size (tests/_moe_classes.py: 2 layers, hidden 64, vocabulary
256, 4 experts top-2 where it has experts; random weights), exported whole-sequence with a
dynamic token axis and verified by t2n in tract at two sizes. Each family runs in a process of
its own (one thread, a time limit), once with this checkout's t2n and once with a base commit's
(a git worktree), the two trees side by side. "Tried": the tiny model builds and runs in torch.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _bench_common import (base_worktree, before_after_head, git_state, log, run_meta,
                           write_docs)

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- bench_architectures:start -->", "<!-- bench_architectures:end -->"
AFTER = "<!-- bench_coverage:end -->"
BASE = "d7768bb"
TIMEOUT_S = 240

ONE = r"""
import json, sys, tempfile, warnings
warnings.filterwarnings("ignore")
tree, tests, family = sys.argv[1:4]
sys.path.insert(0, tree)
sys.path.insert(0, tests)
import torch
torch.set_num_threads(1)
import t2n
from _moe_classes import Logits, tiny_causal_lm
torch.manual_seed(0)
ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8]])
try:
    model = tiny_causal_lm(family)
    with torch.no_grad():
        Logits(model)(ids)
except Exception as error:
    print(json.dumps(["not tried", f"{type(error).__name__}: {error}"]))
    sys.exit()
try:
    t2n.export(Logits(model), (ids,), tempfile.mkdtemp() + "/bundle",
               dynamic_axes={"input_ids": {1: "S"}})
    print(json.dumps(["verified", ""]))
except Exception as error:
    print(json.dumps(["failed", f"{type(error).__name__}: {error}"]))
"""


def families() -> list[str]:
    import transformers.models as models
    out = []
    for info in pkgutil.iter_modules(models.__path__):
        try:
            module = importlib.import_module(f"transformers.models.{info.name}")
        except Exception:   # noqa: BLE001 - a family needing a missing package is not tried
            continue
        if any(name.endswith("ForCausalLM") for name in dir(module)):
            out.append(info.name)
    return sorted(out)


def run(tree: Path, family: str) -> tuple[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    try:
        done = subprocess.run([sys.executable, "-c", ONE, str(tree), str(REPO / "tests"),
                               family], capture_output=True, text=True, timeout=TIMEOUT_S,
                              cwd=tree, env=env)
    except subprocess.TimeoutExpired:
        return "failed", f"timeout after {TIMEOUT_S} s"
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return "failed", f"crashed: {tail}"
    status, detail = json.loads(lines[-1])
    return status, detail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default=BASE)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    t_start, load0 = time.perf_counter(), os.getloadavg()
    names = args.only or families()
    work = Path(tempfile.mkdtemp(prefix="bench-arch-"))
    rows = []
    with base_worktree(args.base, work / "base") as base_tree, \
            ThreadPoolExecutor(max_workers=2) as pool:
        for family in names:
            after = pool.submit(run, REPO, family)
            before = pool.submit(run, base_tree, family)
            row = {"family": family, "before": before.result(), "after": after.result()}
            rows.append(row)
            log(f"{family:28s} before {row['before'][0]:10s} after {row['after'][0]:10s} "
                f"{row['after'][1].splitlines()[0][:90] if row['after'][1] else ''}")
    res = {"base": args.base, "rows": rows,
           "meta": run_meta("scripts/bench_architectures.py", t_start, load0)}
    res["meta"]["git"] = git_state()
    text = render(res)
    print(text)
    if args.write_docs and not args.only:
        write_docs(text, START, END, after=AFTER)
        (REPO / "docs" / "bench_architectures.json").write_text(json.dumps(res, indent=1)
                                                                + "\n")
    return 0


def render(r: dict) -> str:
    meta, rows = r["meta"], r["rows"]
    lines = before_after_head("Architectures: tiny decoders of the installed transformers, "
                              "before and after", meta, r["base"])
    add = lines.append
    tried = [x for x in rows if x["after"][0] != "not tried" or x["before"][0] != "not tried"]
    for when in ("before", "after"):
        ok = [x["family"] for x in tried if x[when][0] == "verified"]
        add(f"- {when}: {len(ok)} of {len(tried)} tried export and verify.")
    add(f"- not tried (the generic tiny configuration does not build or run in torch): "
        f"{len(rows) - len(tried)} of {len(rows)} families with a causal LM class.")
    add("")
    add("| family | before | after | first line of the error (after) |")
    add("|---|---|---|---|")
    for x in tried:
        detail = x["after"][1].splitlines()[0][:140].replace("|", "\\|") if x["after"][1] \
            else ""
        add(f"| {x['family']} | {x['before'][0]} | {x['after'][0]} | {detail} |")
    add("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
