"""Run a bundle in tract and compare its outputs with torch's, output by output."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from t2n.errors import OptionError, VerificationError

__all__ = ["TOLERANCES", "OutputDiff", "Verification", "run_tract", "compare", "check",
           "load_tract_model", "tract_error_line", "mismatch_error"]

log = logging.getLogger(__name__)

# name -> (atol, rtol, allowed outlier fraction), as tract's own approximation levels:
# |tract - torch| <= atol + rtol * |torch| must hold except for that fraction of elements.
TOLERANCES = {
    "exact": (0.0, 0.0, 0.0),
    "close": (1e-7, 1e-7, 0.0),
    "approximate": (1e-4, 5e-4, 0.0),
    "very": (5e-2, 1e-2, 0.0),
    "super": (0.1, 0.05, 0.0001),
    "ultra": (0.2, 0.1, 0.0005),
}
# a failed output whose max difference exceeds this fraction of the output's range is a
# translation bug, not a matter of tolerance
GROSS_FRACTION = 0.01
# Outputs of 8-bit graphs are checked within one quantization step per value (tract's integer
# arithmetic and torch's float one may round a value to the neighbouring level), and as a
# whole: an SQNR floor and no shift of their mean by half a step or more (flips go either way;
# a wrong zero point moves every value the same way). Measured SQNRs of tract against torch's
# fake-quantized model: 44 to 62 dB on the test models, 17 to 19 dB on all-MiniLM-L6-v2 with
# ptq_int8 (six layers carry the flips on); a broken requantization gives 0 dB or less.
MIN_SQNR_DB = 10.0
MAX_MEAN_SHIFT = 0.5
# tract loosens two levels for f16 outputs.
_F16_TOLERANCES = {"close": (1e-3, 1e-3, 0.0), "approximate": (1e-3, 5e-3, 0.0)}


def tolerance_for(name: str, dtype) -> tuple[float, float, float]:
    if name not in TOLERANCES:
        raise OptionError(f"unknown tolerance {name!r}",
                          f"use one of: {', '.join(TOLERANCES)}")
    if np.dtype(dtype) == np.float16 and name in _F16_TOLERANCES:
        return _F16_TOLERANCES[name]
    return TOLERANCES[name]


@dataclass
class OutputDiff:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    cosine: float
    outliers: int
    passed: bool
    problem: str = ""
    span: float = 0.0        # torch output's range (max - min of its finite values)
    bound: float = 0.0       # the absolute tolerance each value was held to
    flips: float = 0.0       # share of values allowed beyond it (8-bit level flips)
    sqnr: float = float("inf")  # torch output's power over the difference's, in dB
    worst: tuple = ()        # index of the largest difference
    worst_values: tuple = () # (tract, torch) there

    @property
    def gross(self) -> bool:
        """Far beyond any tolerance: a max difference above GROSS_FRACTION of the range and
        above twice the bound each value was held to (one 8-bit step, for instance)."""
        if self.passed:
            return False
        if self.flips:   # 8-bit level flips carried through layers: gross only without signal
            return self.sqnr < 0
        return not np.isfinite(self.max_abs) or self.max_abs > max(
            GROSS_FRACTION * max(self.span, 1e-6), 2 * self.bound)


@dataclass
class Verification:
    tolerance: str
    outputs: list[OutputDiff] = field(default_factory=list)
    tract_ms: float = 0.0
    runner: str = "tract bindings"
    sizes: dict = field(default_factory=dict)   # symbol sizes of a check at a second size

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def summary(self, most: int = 3) -> str:
        """One line: the outputs (the ``most`` worst by max abs diff when there are more)."""
        shown = self.outputs
        if len(shown) > most:
            shown = sorted(shown, key=lambda o: (o.passed, -o.max_abs))[:most]
        parts = [f"{o.name}: max_abs={o.max_abs:.3g} max_rel={o.max_rel:.3g} cos={o.cosine:.7f}"
                 + ("" if o.passed else f" FAIL ({o.problem})") for o in shown]
        if len(shown) < len(self.outputs):
            parts.append(f"... {len(self.outputs)} outputs, worst shown")
        return "; ".join(parts)

    def report(self) -> str:
        """Several lines: every output with its worst element (what ``-v`` shows)."""
        lines = [f"tract vs torch ({self.tolerance}, {self.runner}):"]
        for o in self.outputs:
            where = ""
            if o.worst:
                where = (f" worst at {list(o.worst)}: tract {o.worst_values[0]:.6g} torch "
                         f"{o.worst_values[1]:.6g}")
            lines.append(f"  {o.name} {list(o.shape)}: {'ok' if o.passed else 'FAIL'} "
                         f"max_abs={o.max_abs:.3g} ({o.max_abs / max(o.span, 1e-12):.2%} of "
                         f"range {o.span:.3g}) max_rel={o.max_rel:.3g} cos={o.cosine:.7f} "
                         f"outliers={o.outliers}{where}")
        return "\n".join(lines)


def mismatch_error(result: Verification, what: str, nothing_written: str,
                   flag: str = "--check-io") -> VerificationError:
    """The error for a failed check. Outputs off by more than GROSS_FRACTION of their range
    are a translation bug: the message says so instead of suggesting a looser tolerance.
    ``what``: where it happened ("on", "in prompt mode on"); the full report goes to the
    debug log (``-v``)."""
    bad = [o for o in result.outputs if not o.passed]
    log.debug("%s", result.report())
    gross = [o for o in bad if o.gross]
    if gross:
        worst = max(gross, key=lambda o: o.max_abs / max(o.span, 1e-12))
        return VerificationError(
            f"tract disagrees with torch {what} {', '.join(o.name for o in gross)} far beyond "
            f"any tolerance (max abs diff {worst.max_abs:.3g}, "
            f"{worst.max_abs / max(worst.span, 1e-12):.0%} of {worst.name}'s range): a "
            "translation bug, not a tolerance setting",
            f"{nothing_written}; rerun with -v for a per-output report (and --dump-io to keep "
            "the failing bundle with its inputs), and please report the model",
            verification=result)
    return VerificationError(
        f"tract disagrees with torch {what} {', '.join(o.name for o in bad)}: "
        f"{bad[0].problem} (max abs diff {bad[0].max_abs:.3g})",
        f"{nothing_written}; try a looser {flag} level, rerun with -v for a per-output "
        "report, or report the model", verification=result)


def tract_error_line(err: Exception) -> str:
    """The useful part of a tract error: the innermost causes, without the Rust backtrace."""
    text = str(err).split("Stack backtrace:")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip() != "Caused by:"]
    causes = [ln.split(": ", 1)[1] if ln[:1].isdigit() and ": " in ln else ln for ln in lines]
    return " / ".join(causes[-2:]) if causes else text.strip()


def load_tract_model(path):
    import tract
    nnef = tract.nnef().with_tract_extra().with_tract_transformers()
    return nnef.load(str(path))


def run_tract(path, inputs: list[np.ndarray], *, binary: str | None = None,
              budget_s: float = 1.0):
    """Outputs of the bundle at ``path`` on ``inputs`` and its run time in ms.

    The time is the median of warm runs repeated within ``budget_s`` (at least one run; the
    first, cold run counts only when it is the only one).
    """
    if binary:
        return _run_binary(path, inputs, binary)
    arrays = [np.asarray(a, order="C") for a in inputs]
    try:
        runnable = load_tract_model(path).into_runnable()
        t0 = time.perf_counter()
        outs = runnable.run(arrays)
        times = [time.perf_counter() - t0]
        warm, spent = [], times[0]
        while spent + times[0] < budget_s and len(warm) < 20:
            t0 = time.perf_counter()
            runnable.run(arrays)
            warm.append(time.perf_counter() - t0)
            spent += warm[-1]
        return [o.to_numpy() for o in outs], float(np.median(warm or times) * 1000)
    except Exception as e:  # tract raises TractError for anything it cannot load or run
        if type(e).__name__ != "TractError":
            raise
        raise VerificationError(f"tract could not run the bundle: {tract_error_line(e)}",
                                "run with -v for details; report the model if t2n wrote it") from e


def _run_binary(path, inputs, binary):
    exe = shutil.which(binary) or binary
    if not os.access(exe, os.X_OK):
        raise OptionError(f"tract binary {binary} is not an executable",
                          "give the path of a tract command-line binary")
    with tempfile.TemporaryDirectory() as tmp:
        model = load_tract_model(path)
        names = [model.input_name(i) for i in range(model.input_count())]
        inp, out = Path(tmp, "inputs.npz"), Path(tmp, "outputs.npz")
        np.savez(inp, **dict(zip(names, inputs)))
        cmd = [exe, str(path), "--nnef-tract-core", "--nnef-tract-extra",
               "--nnef-tract-transformers", "--input-facts-from-bundle", str(inp), "run",
               "--input-from-bundle", str(inp), "--save-outputs-npz", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        ms = (time.perf_counter() - t0) * 1000
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise VerificationError(f"{binary} failed on the bundle: {last}",
                                    "run the command with -v to see it in full")
        with np.load(out) as got:
            outputs = [got[model.output_name(i)] for i in range(model.output_count())]
        return outputs, ms


def compare(got: list[np.ndarray], expected: list[np.ndarray], names: list[str],
            tolerance: str = "approximate", steps: dict | None = None) -> Verification:
    """Compare tract outputs with torch's under a named tolerance.

    ``steps`` maps an output name to its quantization step (the scale of an 8-bit output
    dequantized at the end): that output's absolute tolerance is at least one step, as tract's
    own approximate check of quantized types (atol = scale). A value ``(step, fraction)``
    also lets that fraction of the values go beyond it (float outputs of 8-bit graphs, where
    torch's float and tract's integer arithmetic can round a value to neighbouring levels).
    """
    result = Verification(tolerance)
    for name, a, b in zip(names, got, expected):
        result.outputs.append(_diff(name, np.asarray(a), np.asarray(b), tolerance,
                                    (steps or {}).get(name, 0.0)))
    if len(got) != len(expected):
        result.outputs.append(OutputDiff("<count>", (), float("inf"), float("inf"), 0.0, 0, False,
                                         f"tract gave {len(got)} outputs, torch {len(expected)}"))
    return result


def _diff(name, a, b, tolerance, step=0.0) -> OutputDiff:
    if a.shape != b.shape:
        return OutputDiff(name, b.shape, float("inf"), float("inf"), 0.0, b.size, False,
                          f"shape {a.shape} != torch {b.shape}")
    atol, rtol, outlier_frac = tolerance_for(tolerance, b.dtype if b.dtype.kind == "f" else a.dtype)
    step, flips = step if isinstance(step, (tuple, list)) else (step, 0.0)
    if step:
        # one quantization step, and a little float slack for the dequantize arithmetic
        atol = max(atol, step * (1 + 1e-3))
        outlier_frac = max(outlier_frac, flips)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        diff = _diff_values(name, a, b, atol, rtol, outlier_frac)
    diff.bound, diff.flips = atol, (flips if step else 0.0)
    if step and diff.passed and b.size:
        shift = float(np.mean(np.nan_to_num(a.astype(np.float64) - b.astype(np.float64))))
        if diff.sqnr < MIN_SQNR_DB:
            diff.passed = False
            diff.problem = f"SQNR {diff.sqnr:.1f} dB below the {MIN_SQNR_DB:g} dB floor"
        elif abs(shift) >= MAX_MEAN_SHIFT * step:
            diff.passed = False
            diff.problem = (f"mean shifted by {shift / step:+.2f} of the 8-bit step {step:.3g} "
                            "(a zero point or rounding offset)")
    return diff


def _diff_values(name, a, b, atol, rtol, outlier_frac) -> OutputDiff:
    x, y = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(x) & np.isnan(y)
    same_inf = np.isinf(x) & np.isinf(y) & (np.sign(x) == np.sign(y))
    err = np.where(both_nan | same_inf, 0.0, np.abs(x - y))
    err = np.nan_to_num(err, nan=np.inf)
    bad = err > atol + rtol * np.abs(np.nan_to_num(y))
    outliers = int(bad.sum())
    max_abs = float(err.max()) if err.size else 0.0
    rel = err / np.maximum(np.abs(np.nan_to_num(y)), 1e-12)
    max_rel = float(rel.max()) if rel.size else 0.0
    fx, fy = np.nan_to_num(x).ravel(), np.nan_to_num(y).ravel()
    nx, ny = np.linalg.norm(fx), np.linalg.norm(fy)
    cos = float(fx @ fy / (nx * ny)) if nx > 0 and ny > 0 else (1.0 if nx == ny else 0.0)
    passed = outliers == 0 if outlier_frac == 0 else outliers / max(1, b.size) <= outlier_frac
    problem = "" if passed else (f"{outliers}/{b.size} values outside atol={atol:g} rtol={rtol:g}")
    noise = float(np.sum((fx - fy) ** 2))
    sqnr = float("inf") if noise == 0 else 10 * np.log10(max(float(fy @ fy), 1e-300) / noise)
    finite = y[np.isfinite(y)]
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    worst, values = (), ()
    if err.size:
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape))
        values = (float(x[worst]), float(y[worst]))
    return OutputDiff(name, b.shape, max_abs, max_rel, cos, outliers, passed, problem,
                      span=span, sqnr=sqnr, worst=worst, worst_values=values)


def check(path, inputs: list[np.ndarray], expected: list[np.ndarray], names: list[str],
          tolerance: str = "approximate", *, binary: str | None = None,
          steps: dict | None = None, budget_s: float = 1.0) -> Verification:
    """Run the bundle in tract on ``inputs`` and compare with ``expected`` (torch's outputs);
    ``steps``: quantization steps of 8-bit outputs (see :func:`compare`)."""
    tolerance_for(tolerance, np.float32)
    got, ms = run_tract(path, inputs, binary=binary, budget_s=budget_s)
    result = compare(got, expected, names, tolerance, steps)
    result.tract_ms = ms
    result.runner = binary or "tract bindings"
    return result
