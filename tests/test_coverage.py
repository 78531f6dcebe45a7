"""Measured op coverage (t2n/coverage.py, `t2n ops --coverage`, docs/ops.md)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t2n import coverage
from t2n.bundles import ops_table
from t2n.translate.decompose import decomposition_of
from t2n.translate.registry import lookup

DOCS = Path(__file__).resolve().parent.parent / "docs"
ONLY = {"add", "nn.functional.unfold", "logcumsumexp", "nonzero", "softmax"}


@pytest.fixture(scope="module")
def measured():
    return coverage.measure(only=ONLY)


def test_each_op_is_classified_by_what_passed_in_tract(measured):
    ops = measured.ops
    assert measured.opinfos >= len(ONLY) and measured.samples >= len(ONLY)   # softmax: 2
    add = ops["aten.add.Tensor"]
    assert add.core and add.status == "direct" and add.passed >= 1
    # unfold is im2col, which has no translator: it passes through torch's decomposition
    im2col = ops["aten.im2col.default"]
    assert im2col.status == "decomposition" and im2col.passed >= 1
    assert lookup(torch.ops.aten.im2col.default) is None
    logcumsumexp = ops["aten.logcumsumexp.default"]
    assert logcumsumexp.status == "neither" and logcumsumexp.passed == 0
    assert "no translator" in logcumsumexp.reason
    # the reason comes from torch's own tags where they say why there is no tract form
    assert "data-dependent output shape" in ops["aten.nonzero.default"].reason
    # softmax's graph holds aten.softmax.int; its Core ATen form, aten._softmax, is reached
    # by the second pass only (add's graph is Core ATen already: no second pass)
    assert ops["aten.softmax.int"].status == "direct"
    assert ops["aten._softmax.default"].status == "direct" and ops["aten._softmax.default"].core
    assert 0 < measured.core_samples < measured.samples
    # core ops no sample reached are listed with what the tables say
    unreached = [s for s in ops.values() if s.status == "not measured"]
    assert unreached and all(s.core and s.reason for s in unreached)
    assert len(coverage.core_aten_ops()) == sum(s.core for s in ops.values())


def test_coverage_saves_loads_and_renders(measured, tmp_path):
    path = tmp_path / "cov.json"
    coverage.save(measured, path)
    again = coverage.load(path)
    assert again.ops == measured.ops and again.samples == measured.samples
    text = coverage.render(again)
    assert "| Core ATen opset |" in text and "`aten.im2col.default`" in text
    assert "neither: aten.logcumsumexp.default" in coverage.summary(again)


def _t2n(*args):
    return subprocess.run([sys.executable, "-m", "t2n.cli", *args], capture_output=True,
                          text=True)


def test_cli_shows_a_saved_measurement_and_refuses_bad_input(measured, tmp_path):
    path = tmp_path / "cov.json"
    coverage.save(measured, path)
    proc = _t2n("ops", "--coverage", "--from-json", str(path), "--markdown")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(ops_table(markdown=True))
    assert "## Coverage, measured" in proc.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    proc = _t2n("ops", "--coverage", "--from-json", str(bad))
    assert proc.returncode == 2 and "is not a coverage measurement" in proc.stderr
    proc = _t2n("ops", "--json", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and "add --coverage" in proc.stderr


def test_docs_ops_md_holds_the_registry_and_a_consistent_measurement():
    """docs/ops.md = the registry table + the measured coverage of docs/op_coverage.json
    (regenerate both: t2n ops --coverage --markdown --json docs/op_coverage.json >
    docs/ops.md); the measurement must still agree with the registry."""
    measured = coverage.load(DOCS / "op_coverage.json")
    expected = ops_table(markdown=True) + "\n" + coverage.render(measured) + "\n"
    assert (DOCS / "ops.md").read_text() == expected, "docs/ops.md is stale"
    core = coverage.core_aten_ops()
    for name, status in measured.ops.items():
        if status.status == "direct":
            op = core.get(name) or _op(name)
            assert lookup(op) is not None, f"{name} is measured direct but has no translator"
        if status.status == "decomposition":
            op = core.get(name) or _op(name)
            assert lookup(op) is None and decomposition_of(op) is not None, name
    assert json.loads((DOCS / "op_coverage.json").read_text())["samples"] > 100


def _op(name: str):
    _, packet, overload = name.split(".", 2)
    return getattr(getattr(torch.ops.aten, packet), overload)
