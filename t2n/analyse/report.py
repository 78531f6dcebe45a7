"""What an analysis run leaves in its folder:

    configs/budget_NN.json   one mixed configuration per budget (``t2n export --mixed-config``)
    results.json             every figure: per budget, the uniform configurations, the run
    table.md                 budget, estimated loss, real loss, bytes, MACs, choices
    pareto.png               real and estimated loss against the constraint (matplotlib)
    report.html              one self-contained page (no network): a slider over the budgets
                             showing the figures, each unit's choice and the registered
                             artifacts (texts, benchmark figures, images inlined)

Written in a temporary folder beside the destination and moved in place whole.
"""
from __future__ import annotations

import base64
import html
import json
import math
import mimetypes
import os
import shutil
from pathlib import Path

__all__ = ["write_results", "table_markdown", "report_html"]


def _num(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return v


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table_markdown(results) -> str:
    meta = results.meta
    lines = [f"| {meta.get('constraint', 'budget')} budget | cost | estimated loss "
             f"({meta.get('estimator')}) | real loss | bytes | MACs | tract latency (ms) | "
             "choices |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for budget in sorted(results):
        r = results[budget]
        counts = ", ".join(f"{n} {c}" for c, n in sorted(r.config.counts().items()))
        lines.append(f"| {_fmt(budget)} | {_fmt(r.cost)} | {_fmt(r.objective)} | "
                     f"{_fmt(r.real_loss)} | {r.size_bytes:,} | {_fmt(r.macs)} | "
                     f"{_fmt(None if r.latency_s is None else r.latency_s * 1e3)} | {counts} |")
    lines.append("")
    lines.append("Uniform configurations (one method wherever it applies):")
    lines.append("")
    for label, u in results.uniform.items():
        lines.append(f"- {label}: cost {_fmt(u['cost'])}, bytes {u['bytes']:,}, real loss "
                     f"{_fmt(u['real_loss'])}")
    lines.append("")
    lines.append(f"Spearman correlation of estimated and real loss: {_fmt(results.spearman)}")
    if results.worse_than_uniform:
        lines.append("")
        lines.append("Worse than a uniform configuration of no greater cost:")
        for w in results.worse_than_uniform:
            lines.append(f"- budget {_fmt(w['budget'])}: real loss {_fmt(w['real_loss'])} > "
                         f"{w['uniform']} {_fmt(w['uniform_real_loss'])}")
    return "\n".join(lines) + "\n"


def _payload(results) -> dict:
    rows = []
    for i, budget in enumerate(sorted(results)):
        r = results[budget]
        images = {}
        for name, path in r.artifacts["images"].items():
            mime = mimetypes.guess_type(str(path))[0] or "image/png"
            images[name] = f"data:{mime};base64," + base64.b64encode(
                Path(path).read_bytes()).decode()
        rows.append({"index": i, "budget": budget, "cost": _num(r.cost),
                     "estimate": _num(r.objective), "real_loss": _num(r.real_loss),
                     "bytes": r.size_bytes, "macs": _num(r.macs),
                     "latency_ms": None if r.latency_s is None else r.latency_s * 1e3,
                     "choices": r.config.choices, "counts": r.config.counts(),
                     "config": f"configs/budget_{i:02d}.json",
                     "text": r.artifacts["text"], "benchmarks": r.artifacts["benchmarks"],
                     "images": images})
    return {"meta": results.meta, "rows": rows, "units": results.units,
            "uniform": results.uniform, "spearman": results.spearman,
            "worse_than_uniform": results.worse_than_uniform}


def report_html(results) -> str:
    data = json.dumps(_payload(results), default=lambda o: None).replace("</", "<\\/")
    title = html.escape(f"t2n analyse: {results.meta.get('constraint', '')} budgets")
    return _PAGE.replace("__TITLE__", title).replace("__DATA__", data)


def _pareto_png(results, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    budgets = sorted(results)
    cost = [results[b].cost for b in budgets]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(cost, [results[b].real_loss for b in budgets], "o-", label="real loss")
    ax.plot(cost, [results[b].objective for b in budgets], "s--", alpha=0.7,
            label=f"estimated ({results.meta.get('estimator')})")
    for label, u in results.uniform.items():
        ax.scatter([u["cost"]], [u["real_loss"]], marker="x", s=60)
        ax.annotate(label, (u["cost"], u["real_loss"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel(f"{results.meta.get('constraint')} (cost of the configuration)")
    ax.set_ylabel(f"task loss ({results.meta.get('loss')})")
    ax.set_title("t2n analyse: loss against budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(results, folder: Path) -> Path:
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        from t2n.errors import WriteError
        raise WriteError(f"analysis folder {folder} exists and is not empty",
                         "give a new folder, or remove this one")
    tmp = folder.with_name(f".{folder.name}.t2n-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for i, budget in enumerate(sorted(results)):
            results[budget].config.save(tmp / "configs" / f"budget_{i:02d}.json")
        payload = _payload(results)
        for row in payload["rows"]:
            row.pop("images")
        (tmp / "results.json").write_text(json.dumps(payload, indent=1,
                                                     default=lambda o: None) + "\n")
        (tmp / "table.md").write_text(table_markdown(results))
        if results:
            _pareto_png(results, tmp / "pareto.png")
        (tmp / "report.html").write_text(report_html(results))
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px;color:#222}
h1{font-size:1.3em} table{border-collapse:collapse;font-size:0.85em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left} th{background:#f3f3f3}
#metrics td:nth-child(2){text-align:right} .float{color:#888} pre{background:#f7f7f7;padding:6px}
#chart{border:1px solid #ddd} .sel{fill:#d62728} .pt{fill:#1f77b4} .uni{fill:#2ca02c}
</style></head><body>
<h1>__TITLE__</h1>
<p id="summary"></p>
<label for="budget">Budget: <span id="budget-label"></span></label><br>
<input type="range" id="budget" min="0" value="0" step="1" style="width:60%">
<svg id="chart" width="640" height="300" role="img" aria-label="loss against cost"></svg>
<h2>Selected configuration</h2>
<table id="metrics"></table>
<h3>Choices per unit</h3>
<table id="choices"><thead><tr><th>unit</th><th>choice</th></tr></thead><tbody></tbody></table>
<div id="artifacts"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const rows = DATA.rows;
const slider = document.getElementById("budget");
function fmt(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") return Math.abs(v) >= 1e4 ? v.toLocaleString("en-US", {maximumFractionDigits: 0}) : Number(v.toPrecision(4)).toString();
  return String(v);
}
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }
function drawChart(sel) {
  const svg = document.getElementById("chart"); while (svg.firstChild) svg.removeChild(svg.firstChild);
  const ns = "http://www.w3.org/2000/svg";
  const pts = rows.map(r => [r.cost, r.real_loss]).concat(Object.values(DATA.uniform).map(u => [u.cost, u.real_loss])).filter(p => p[1] !== null);
  if (!pts.length) return;
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = 0, y1 = Math.max(...ys) || 1;
  const X = x => 50 + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * 560, Y = y => 270 - (y - y0) / (y1 - y0) * 250;
  const axis = document.createElementNS(ns, "path"); axis.setAttribute("d", "M50 10 V270 H620"); axis.setAttribute("stroke", "#999"); axis.setAttribute("fill", "none"); svg.appendChild(axis);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", rows.filter(r => r.real_loss !== null).map(r => X(r.cost) + "," + Y(r.real_loss)).join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#1f77b4"); svg.appendChild(line);
  rows.forEach((r, i) => { if (r.real_loss === null) return; const c = document.createElementNS(ns, "circle"); c.setAttribute("cx", X(r.cost)); c.setAttribute("cy", Y(r.real_loss)); c.setAttribute("r", i === sel ? 7 : 4); c.setAttribute("class", i === sel ? "sel" : "pt"); c.addEventListener("click", () => { slider.value = i; show(i); }); svg.appendChild(c); });
  Object.entries(DATA.uniform).forEach(([k, u]) => { const t = document.createElementNS(ns, "text"); t.setAttribute("x", X(u.cost)); t.setAttribute("y", Y(u.real_loss) - 6); t.setAttribute("font-size", "10"); t.setAttribute("class", "uni"); t.textContent = "x " + k; svg.appendChild(t); });
  const lab = document.createElementNS(ns, "text"); lab.setAttribute("x", 330); lab.setAttribute("y", 295); lab.setAttribute("font-size", "11"); lab.setAttribute("text-anchor", "middle"); lab.textContent = DATA.meta.constraint + " (cost) vs real loss"; svg.appendChild(lab);
}
function show(i) {
  const r = rows[i]; if (!r) return;
  document.getElementById("budget-label").textContent = fmt(r.budget) + " (" + (i + 1) + " of " + rows.length + ")";
  const m = document.getElementById("metrics"); m.innerHTML = "";
  [["budget", r.budget], ["cost", r.cost], ["estimated loss (" + DATA.meta.estimator + ")", r.estimate], ["real loss", r.real_loss], ["bytes", r.bytes], ["MACs", r.macs], ["tract latency (ms)", r.latency_ms], ["configuration file", r.config]].forEach(([k, v]) => { const tr = el("tr"); tr.appendChild(el("th", k)); tr.appendChild(el("td", fmt(v))); m.appendChild(tr); });
  const counts = el("tr"); counts.appendChild(el("th", "choices")); counts.appendChild(el("td", Object.entries(r.counts).map(([k, n]) => n + " x " + k).join(", "))); counts.id = "counts"; m.appendChild(counts);
  const body = document.querySelector("#choices tbody"); body.innerHTML = "";
  Object.entries(r.choices).forEach(([u, c]) => { const tr = el("tr"); tr.appendChild(el("td", u)); tr.appendChild(el("td", c, c === "float" ? "float" : "")); body.appendChild(tr); });
  const a = document.getElementById("artifacts"); a.innerHTML = "";
  Object.entries(r.benchmarks).forEach(([name, figs]) => { a.appendChild(el("h3", name)); const t = el("table"); Object.entries(figs).forEach(([k, v]) => { const tr = el("tr"); tr.appendChild(el("th", k)); tr.appendChild(el("td", fmt(v))); t.appendChild(tr); }); a.appendChild(t); });
  Object.entries(r.text).forEach(([name, text]) => { a.appendChild(el("h3", name)); a.appendChild(el("pre", text)); });
  Object.entries(r.images).forEach(([name, src]) => { a.appendChild(el("h3", name)); const img = el("img"); img.src = src; img.alt = name; img.style.maxWidth = "100%"; a.appendChild(img); });
  document.body.dataset.selected = String(i);
  drawChart(i);
}
slider.max = Math.max(0, rows.length - 1);
slider.addEventListener("input", () => show(Number(slider.value)));
document.getElementById("summary").textContent = rows.length + " configurations; task " + DATA.meta.task + ", loss " + DATA.meta.loss + ", " + DATA.meta.units + " units; methods: " + (DATA.meta.methods || []).join(", ") + "; Spearman(estimated, real) = " + fmt(DATA.spearman);
show(0);
if (location.hash === "#selftest") {
  // a browser check: move the slider as a user would and record what the page then shows
  const before = document.getElementById("counts").textContent;
  slider.value = String(rows.length - 1);
  slider.dispatchEvent(new Event("input", {bubbles: true}));
  const after = document.getElementById("counts").textContent;
  document.body.dataset.selftest = JSON.stringify({before: before, after: after, selected: document.body.dataset.selected});
}
</script></body></html>
"""
