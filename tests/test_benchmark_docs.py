"""The README's figures cannot drift from the benchmarks: its comparison with torch-to-nnef is the
rendering of the committed result files docs/bench_*.json (written with docs/benchmarks.md by the
scripts' --write-docs), every figure in it appears in the matching section of docs/benchmarks.md,
and its compression table lists exactly the built-in registry."""
from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
FIX = ("run the benchmark with --write-docs, or re-render the table with "
       "`cd scripts && ../.venv/bin/python -c 'import _bench_common as b; b.write_readme()'`")


@pytest.fixture(scope="module")
def bench():
    """scripts/_bench_common.py (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location("_bench_common",
                                                  ROOT / "scripts" / "_bench_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_bench_common", module)
    spec.loader.exec_module(module)
    return module


def between(text: str, start: str, end: str) -> str:
    assert start in text and end in text, f"markers {start} ... {end} missing"
    return text.split(start, 1)[1].split(end, 1)[0]


def readme_block(bench) -> str:
    return between(README.read_text(), bench.README_START, bench.README_END).lstrip("\n")


@pytest.mark.parametrize("name", ["bench_export", "bench_llm", "bench_quality"])
def test_result_file_is_committed(bench, name):
    results = bench.load_results()
    assert results[name] is not None, f"docs/{name}.json is missing: run scripts/{name}.py " \
                                      f"--write-docs"


def test_readme_comparison_is_the_rendering_of_the_results(bench):
    assert readme_block(bench) == bench.readme_section(bench.load_results()), \
        f"README.md's comparison table is stale: {FIX}"


@pytest.mark.parametrize("name", ["bench_export", "bench_llm", "bench_quality"])
def test_readme_figures_appear_in_the_benchmarks_section(bench, name):
    results = bench.load_results()
    alone = {k: (v if k == name else None) for k, v in results.items()}
    figures = bench.figures_of(bench.readme_section(alone))
    assert figures, f"no figure of {name} in the README table"
    section = between(BENCHMARKS.read_text(), f"<!-- {name}:start -->", f"<!-- {name}:end -->")
    missing = sorted({f for f in figures if f not in section})
    assert not missing, f"README figures not in the {name} section of docs/benchmarks.md: " \
                        f"{missing}; {FIX}"


def test_a_changed_figure_is_caught(bench):
    """The check can fail: one ratio changed in the results gives another table."""
    results = copy.deepcopy(bench.load_results())
    ratios = results["bench_export"]["models"]["minilm"]["ratios"]["t2n"]
    ratios["wall"] = 9.87
    perturbed = bench.readme_section(results)
    assert perturbed != readme_block(bench)
    assert "9.87×" in bench.figures_of(perturbed)
    assert "9.87×" not in BENCHMARKS.read_text()


def test_compression_table_lists_the_registry():
    from t2n.compress import BUILTIN
    text = README.read_text()
    section = between(text, "## Compression: 4-bit weights tract runs natively", "\n## ")
    names = []
    for line in section.splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([^`]+)`", line.split("|")[1])
    assert len(names) == len(set(names)), f"a name is listed twice: {names}"
    assert sorted(names) == sorted(BUILTIN), \
        f"README compression table {sorted(names)} != registry {sorted(BUILTIN)} " \
        f"(see `t2n compressions`)"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_launcher_reports_three_peak_readings(bench, tmp_path):
    """A child that touches 64 MiB then hands the pages back (madvise): every reading is there,
    and the peak covers the 64 MiB."""
    child = tmp_path / "child.py"
    child.write_text("import mmap, time\nn = 64 << 20\nm = mmap.mmap(-1, n)\n"
                     "for i in range(0, n, 4096):\n    m[i] = 1\ntime.sleep(0.1)\n"
                     "m.madvise(mmap.MADV_DONTNEED)\ntime.sleep(0.1)\n")
    res = bench.run_measured([sys.executable, "-S", str(child)], tmp_path / "o.log",
                             tmp_path / "e.log", 60, {}, series=True)
    peak = bench.peak_of(res)
    assert res["code"] == 0 and res["proc"]
    assert peak.sampled is not None and peak.hwm is not None and peak.samples > 5
    assert peak.bytes >= 64 << 20
    assert peak.sources and set(peak.sources) <= {bench.RU_MAXRSS, bench.SAMPLER, bench.VMHWM}
    assert res["series"] and max(rss for _, rss, _ in res["series"]) * 1024 == peak.sampled
