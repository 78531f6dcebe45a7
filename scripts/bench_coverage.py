#!/usr/bin/env python
"""Op coverage before and after, measured in one run (docs/benchmarks.md, "Op coverage").

    .venv/bin/python scripts/bench_coverage.py [--base REV] [--write-docs]

`t2n ops --coverage`'s measurement (t2n/coverage.py: every OpInfo sample of torch's test
database exported by t2n and run in tract against torch) on this checkout and on a base commit
(a git worktree of REV, measured by this checkout's t2n/coverage.py; a base without the
decomposition fallback counts no op as decomposed), the two side by side in worker processes
of one thread.
Prints the counts side by side and the ops that changed class. With --write-docs: the section
in docs/benchmarks.md, and this checkout's measurement as docs/op_coverage.json and docs/ops.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _bench_common import (base_worktree, before_after_head, git_state, log, run_meta,
                           write_docs)

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- bench_coverage:start -->", "<!-- bench_coverage:end -->"
AFTER = "<!-- bench_analyse:end -->"
BASE = "d7768bb"       # the last commit before the decomposition fallback and the new ops

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default=BASE)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    t_start, load0 = time.perf_counter(), os.getloadavg()
    sys.path.insert(0, str(REPO))
    from t2n import coverage
    from t2n.bundles import ops_table
    work = Path(tempfile.mkdtemp(prefix="bench-coverage-"))
    log(f"measuring this checkout and {args.base} in parallel")
    from concurrent.futures import ThreadPoolExecutor
    os.environ["OMP_NUM_THREADS"] = "1"      # the workers: one thread each
    with base_worktree(args.base, work / "base") as base_tree, \
            ThreadPoolExecutor(max_workers=2) as pool:
        after_job = pool.submit(coverage.measure, tree=REPO)
        before_job = pool.submit(coverage.measure, tree=base_tree)
        after, before = after_job.result(), before_job.result()
    coverage.save(before, work / "before.json")
    coverage.save(after, work / "after.json")
    res = {"base": args.base, "samples_per_op": coverage.SAMPLES_PER_OP, "before": _counts(before), "after": _counts(after),
           "changed": _changed(before, after), "samples": (before.samples, after.samples),
           "opinfos": (before.opinfos, after.opinfos),
           "meta": run_meta("scripts/bench_coverage.py", t_start, load0)}
    res["meta"]["git"] = git_state()
    text = render(res)
    print(text)
    if args.write_docs:
        write_docs(text, START, END, after=AFTER)
        coverage.save(after, REPO / "docs" / "op_coverage.json")
        (REPO / "docs" / "ops.md").write_text(ops_table(markdown=True) + "\n"
                                              + coverage.render(after) + "\n")
        (REPO / "docs" / "bench_coverage.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


def _counts(cov) -> dict:
    return {"core": cov.counts(True), "other": cov.counts(False)}


def _changed(before, after) -> list:
    rows = []
    for name in sorted(set(before.ops) | set(after.ops)):
        b = before.ops.get(name)
        a = after.ops.get(name)
        was = b.status if b else "not traced"
        now = a.status if a else "not traced"
        if was != now:
            rows.append({"op": name, "core": bool((a or b).core), "before": was, "after": now,
                         "reason": a.reason if a else ""})
    return rows


def render(r: dict) -> str:
    meta = r["meta"]
    lines = before_after_head("Op coverage: `t2n ops --coverage` before and after", meta,
                              r["base"])
    add = lines.append
    add(f"Every OpInfo sample of torch's test database (first {r['samples_per_op']} usable samples each; "
        f"before: {r['samples'][0]} samples of {r['opinfos'][0]} OpInfos, after: "
        f"{r['samples'][1]} of {r['opinfos'][1]}) exported by t2n and run in tract against "
        f"torch. The full measured lists are in docs/ops.md.")
    add("")
    add("| ops | | direct | through decomposition | neither | not reached |")
    add("|---|---|---:|---:|---:|---:|")
    for key, label in (("core", "Core ATen opset"), ("other", "other ops torch.export keeps")):
        for when in ("before", "after"):
            c = r[when][key]
            add(f"| {label} | {when} | {c['direct']} | {c['decomposition']} | {c['neither']} "
                f"| {c['not measured']} |")
    add("")
    gained = [x for x in r["changed"] if x["after"] in ("direct", "decomposition")]
    lost = [x for x in r["changed"] if x["before"] in ("direct", "decomposition")
            and x["after"] not in ("direct", "decomposition")]
    add(f"Ops that now translate ({len(gained)}): " + ", ".join(
        f"`{x['op']}` ({x['after']})" for x in gained) + ".")
    add("")
    add(f"Ops that translated before and no longer do ({len(lost)}): " + (", ".join(
        f"`{x['op']}` ({x['reason']})" for x in lost) or "none") + ".")
    add("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
