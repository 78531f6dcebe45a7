"""Measured op coverage: for torch's Core ATen opset and for the higher-level ops torch.export
keeps, which translate directly, which through torch's decomposition, and which do neither, with
the reason.

Measured, not read off the registry: every OpInfo of torch's own test database
(``torch.testing._internal.common_methods_invocations.op_db``) gives its first sample inputs
(float32 where the op takes it, else int64, else bool); each sample's call is exported by t2n
(torch.export, translation with the decomposition fallback) and run in tract against torch at
the ``approximate`` tolerance. An op of an exported graph is counted

- ``direct``: it has a translator and a sample using it passed in tract;
- ``decomposition``: it has none, and a sample using it passed after torch decomposed it;
- ``neither``: no sample using it passed; the reason is t2n's own error (no translator and
  no decomposition that translates, a translator's refusal such as a data-dependent shape, or
  tract's result differing from torch's).

A sample whose graph, decomposed to the Core ATen opset by torch (``run_decompositions()``, as
a user's graph can arrive), holds Core ATen ops its own graph did not is exported a second time
in that form (the "Core ATen pass"): the core ops a high-level op stands for (convolution,
_softmax, the .Scalar overloads, ...) are measured as well. Core ATen ops that no sample reaches
are listed apart (``not measured``), with what the registry and torch's tables say about them.
"""
from __future__ import annotations

import functools
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["Coverage", "OpStatus", "core_aten_ops", "measure"]

log = logging.getLogger("t2n.coverage")

SAMPLES_PER_OP = 2
MAX_ELEMENTS = 1 << 16
RANK = {"direct": 0, "decomposition": 1, "neither": 2}
# OpInfos whose result is uninitialized memory (torch.empty and kin)
UNINITIALIZED = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided",
                 "empty_permuted"}


@dataclass
class OpStatus:
    op: str
    core: bool
    status: str = "not measured"     # direct | decomposition | neither | not measured
    reason: str = ""
    samples: int = 0                  # exported samples whose graph holds the op
    passed: int = 0


@dataclass
class Coverage:
    ops: dict = field(default_factory=dict)          # name -> OpStatus
    opinfos: int = 0
    samples: int = 0
    not_traced: dict = field(default_factory=dict)   # OpInfo name -> reason
    torch_version: str = torch.__version__
    core_samples: int = 0                             # samples also run as Core ATen graphs

    def counts(self, core: bool) -> dict:
        out = {"direct": 0, "decomposition": 0, "neither": 0, "not measured": 0}
        for s in self.ops.values():
            if s.core == core:
                out[s.status] += 1
        return out


@functools.lru_cache(maxsize=None)
def _core_overloads() -> frozenset:
    """The Core ATen overloads as a set, scanned once per process (every sample asks)."""
    return frozenset(core_aten_ops().values())


def core_aten_ops() -> dict:
    """{name: OpOverload} of every aten op overload tagged ``core`` (the Core ATen opset)."""
    out = {}
    packets = {n.split("::", 1)[1].split(".", 1)[0]
               for n in torch._C._dispatch_get_all_op_names() if n.startswith("aten::")}
    for name in sorted(packets):
        packet = getattr(torch.ops.aten, name, None)
        if not isinstance(packet, torch._ops.OpOverloadPacket):
            continue
        for overload in packet.overloads():
            op = getattr(packet, overload)
            if torch.Tag.core in op.tags:
                out[str(op)] = op
    return out


class _Call(torch.nn.Module):
    """One OpInfo sample as a module: its tensors are the inputs, the rest is closed over."""

    def __init__(self, fn, sample):
        super().__init__()
        self.fn = fn
        structure = (sample.input, sample.args, sample.kwargs)
        leaves, self.spec = torch.utils._pytree.tree_flatten(structure)
        self.slots = [i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor)]
        self.leaves = leaves
        self.inputs = tuple(leaves[i].detach().clone() for i in self.slots)

    def forward(self, *tensors):
        leaves = list(self.leaves)
        for i, t in zip(self.slots, tensors):
            leaves[i] = t
        first, args, kwargs = torch.utils._pytree.tree_unflatten(leaves, self.spec)
        out = self.fn(first, *args, **kwargs)
        flat = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        return tuple(flat)


def _usable(sample) -> bool:
    leaves = torch.utils._pytree.tree_leaves((sample.input, sample.args, sample.kwargs))
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    return bool(tensors) and all(
        t.layout == torch.strided and not t.is_complex() and t.numel() <= MAX_ELEMENTS
        and t.device.type == "cpu" for t in tensors)


def _dtype(info):
    supported = info.supported_dtypes("cpu")
    for dtype in (torch.float32, torch.int64, torch.bool):
        if dtype in supported:
            return dtype
    return None


def _graph_ops(program) -> set:
    """The op overloads of a captured program that translation looks at."""
    from t2n.translate.engine import _IGNORED, _WRAPPERS, _is_symbolic
    ops = set()
    for gm in program.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for n in gm.graph.nodes:
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) \
                    and n.target not in _IGNORED and n.target not in _WRAPPERS \
                    and not _is_symbolic(n):
                ops.add(n.target)
    return ops


def _kind(op) -> str:
    """Why an op can have no tract form at all, from torch's own tags ('' when none says)."""
    tags = set(getattr(op, "tags", ()))
    if torch.Tag.dynamic_output_shape in tags or torch.Tag.data_dependent_output in tags:
        return "data-dependent output shape (tract needs shapes that follow from the inputs')"
    if torch.Tag.nondeterministic_seeded in tags:
        return "random numbers (a bundle computes a deterministic function)"
    return ""


def _reason(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]


def _sample_outcome(module, inputs, folder: Path):
    """(ops of the captured graph, None when it exported and passed in tract, else the error)."""
    import t2n
    from t2n.trace import _mutates
    # the ops as torch.export gives them (in-place writes made functional, as t2n does), before
    # any rewrite of t2n's: a failure of those is then blamed on the ops, not lost
    program = torch.export.export(module, inputs, strict=False)
    if _mutates(program.graph):
        program = program.run_decompositions({})
    ops = _graph_ops(program)
    try:
        t2n.export(module, inputs, folder / "b", check_io="approximate", overwrite=True)
        return ops, None
    except Exception as error:   # every failure is a measured outcome
        return ops, error


class _Unlifted(torch.nn.Module):
    """An unlifted exported program as a plain module (it refuses eval(), which t2n.export
    calls: held outside the module tree, its weights are traced as constants)."""

    def __init__(self, graph_module):
        super().__init__()
        object.__setattr__(self, "graph_module", graph_module)

    def forward(self, *tensors):
        return self.graph_module(*tensors)


def _core_outcome(module, inputs, folder: Path, seen: set):
    """The sample decomposed to the Core ATen opset: (its ops, its error or None) when that
    graph holds core ops ``seen`` lacks, else None."""
    import t2n
    program = torch.export.export(module, inputs, strict=False).run_decompositions()
    ops = _graph_ops(program)
    if not (ops & _core_overloads()) - seen:
        return None
    try:
        t2n.export(_Unlifted(program.module()), inputs, folder / "core",
                   check_io="approximate", overwrite=True)
        return ops, None
    except Exception as error:   # every failure is a measured outcome
        return ops, error


def _blame(ops: set, error: Exception) -> dict:
    """{op name: reason} for the ops a failed export names (all its ops when none is named)."""
    from t2n.errors import UnsupportedOpsError
    from t2n.translate.registry import op_name
    names = {op_name(op) for op in ops}
    by_name = {op_name(op): op for op in ops}
    if isinstance(error, UnsupportedOpsError):
        missing = set(error.missing) & names
        if missing:
            return {m: _kind(by_name[m]) or "no translator, and no torch decomposition into "
                    "ops that translate" for m in missing}
    text = str(error)
    named = {n for n in names if text.startswith(n + " ") or text.startswith(n + ":")}
    reason = _reason(error)
    return {n: reason for n in (named or names)}


def _opinfo_records(info, folder: Path) -> tuple[list, str | None]:
    """([{"ops": [(name, direct?)], "passed": bool, "blamed": {op: reason}}] per sample of one
    OpInfo, the reason it could not be traced or None)."""
    from t2n.translate.registry import lookup, op_name
    dtype = _dtype(info)
    if dtype is None:
        return [], None
    if info.name in UNINITIALIZED:
        return [], "its output is uninitialized memory: nothing to compare"
    try:
        samples = [s for s in info.sample_inputs("cpu", dtype) if _usable(s)]
    except Exception as e:        # noqa: BLE001 - torch's own sample generator failed
        return [], _reason(e)
    records, untraced = [], None
    for sample in samples[:SAMPLES_PER_OP]:
        module = _Call(info.op, sample).eval()
        try:
            with torch.no_grad():
                first, second = module(*module.inputs), module(*module.inputs)
            if not first:
                continue               # no tensor output
            if not all(a.shape == b.shape and torch.equal(a, b) or
                       (a.is_floating_point() and torch.allclose(a, b, equal_nan=True))
                       for a, b in zip(first, second)):
                untraced = untraced or "its output is not a function of its inputs"
                continue               # torch.empty_like, random ops: nothing to compare
            ops, error = _sample_outcome(module, module.inputs, folder)
        except Exception as e:         # noqa: BLE001 - torch.export itself refused the call
            untraced = untraced or _reason(e)
            continue
        records.append({"ops": [(op_name(op), lookup(op) is not None) for op in ops],
                        "passed": error is None,
                        "blamed": _blame(ops, error) if error is not None else {}})
        try:
            core = _core_outcome(module, module.inputs, folder, ops)
        except Exception:              # noqa: BLE001 - torch could not decompose the graph
            core = None
        if core is not None:
            core_ops, error = core
            records.append({"ops": [(op_name(op), lookup(op) is not None) for op in core_ops],
                            "passed": error is None, "pass": "core",
                            "blamed": _blame(core_ops, error) if error is not None else {}})
    return records, untraced


WORKER = r"""
import importlib.util, json, sys, types, warnings
warnings.filterwarnings("ignore")
tree, module_file, out, start = sys.argv[1:5]
if tree:
    sys.path.insert(0, tree)
import t2n.translate
try:
    import t2n.translate.decompose
except ImportError:            # a tree from before the decomposition fallback
    shim = types.ModuleType("t2n.translate.decompose")
    shim.decomposition_of = lambda op: None
    sys.modules["t2n.translate.decompose"] = shim
spec = importlib.util.spec_from_file_location("t2n_coverage_worker", module_file)
cov = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = cov
spec.loader.exec_module(cov)
cov.worker(out, int(start), None if len(sys.argv) < 6 else set(json.loads(sys.argv[5])))
"""


def worker(out: str, start: int, only=None) -> None:
    """Measure the OpInfos from index ``start`` on, one JSON line each in ``out`` (a line
    naming an OpInfo is written before it runs, so that a crash is known by its name)."""
    import json
    from torch.testing._internal.common_methods_invocations import op_db
    logging.getLogger("t2n").setLevel(logging.ERROR)
    infos = [i for i in op_db if only is None or i.name in only]
    with tempfile.TemporaryDirectory(prefix="t2n-coverage-") as tmp, open(out, "a") as f:
        for index in range(start, len(infos)):
            info = infos[index]
            f.write(json.dumps({"index": index, "start": info.name}) + "\n")
            f.flush()
            records, untraced = _opinfo_records(info, Path(tmp))
            f.write(json.dumps({"index": index, "name": info.name, "records": records,
                                "untraced": untraced, "counted": _dtype(info) is not None})
                    + "\n")
            f.flush()


def measure(progress=None, only=None, tree=None) -> Coverage:
    """Run every OpInfo sample through t2n and tract (see the module docstring), in a worker
    process restarted after a crash (tract aborts the process on some inputs: that OpInfo is
    recorded as crashed). ``only``: OpInfo names to restrict the run to; ``tree``: measure the
    t2n of another source tree (benchmarks)."""
    import json
    import subprocess
    import sys
    from torch.testing._internal.common_methods_invocations import op_db
    total = len([i for i in op_db if only is None or i.name in only])
    lines: list = []
    with tempfile.TemporaryDirectory(prefix="t2n-coverage-") as tmp:
        out = Path(tmp) / "records.jsonl"
        out.touch()
        start, done = 0, 0
        while start < total:
            cmd = [sys.executable, "-c", WORKER, str(tree or ""), str(Path(__file__)),
                   str(out), str(start)] + ([json.dumps(sorted(only))] if only else [])
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
            _, err = proc.communicate()
            lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
            finished = [x for x in lines if "records" in x]
            if progress is not None:
                progress.update(len(finished) - done)
            done = len(finished)
            last = max((x["index"] for x in finished), default=-1)
            if proc.returncode == 0 and last == total - 1:
                break
            begun = [x for x in lines if "start" in x and x["index"] > last]
            if not begun:       # the worker died before any OpInfo: a real error
                raise RuntimeError(f"the coverage worker failed: {err[-1000:]}")
            crashed = begun[0]
            tail = (err.strip().splitlines() or ["no message"])
            reason = next((ln.strip() for ln in tail if "panicked" in ln), tail[-1].strip())
            lines.append({"index": crashed["index"], "name": crashed["start"], "records": [],
                          "untraced": f"the process crashed: {reason[:200]}",
                          "counted": True})
            with open(out, "a") as f:
                f.write(json.dumps(lines[-1]) + "\n")
            start = crashed["index"] + 1
        lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    return _aggregate([x for x in lines if "records" in x])


def _aggregate(results: list) -> Coverage:
    from t2n.translate.decompose import decomposition_of
    from t2n.translate.registry import lookup
    core = core_aten_ops()
    cov = Coverage()
    for name in core:
        cov.ops[name] = OpStatus(name, True)
    for result in results:
        if result["counted"]:
            cov.opinfos += 1
        if result["untraced"]:
            cov.not_traced[result["name"]] = result["untraced"]
        for record in result["records"]:
            if record.get("pass") == "core":
                cov.core_samples += 1
            else:
                cov.samples += 1
            for key, direct in record["ops"]:
                status = cov.ops.setdefault(key, OpStatus(key, key in core))
                status.samples += 1
                if record["passed"]:
                    status.passed += 1
                    won = "direct" if direct else "decomposition"
                    if status.status not in RANK or RANK[won] < RANK[status.status]:
                        status.status, status.reason = won, ""
                elif key in record["blamed"] and status.status == "not measured":
                    status.status, status.reason = "neither", record["blamed"][key]
    for key, status in cov.ops.items():
        if status.status == "not measured" and status.core:
            op = core[key]
            if lookup(op) is not None:
                status.reason = "has a translator; no sample reached it"
            elif decomposition_of(op) is not None:
                status.reason = "no translator; torch decomposes it; no sample reached it"
            else:
                status.reason = _kind(op) or "no translator and no torch decomposition"
        elif status.status == "not measured":
            status.status = "neither"   # a traced op whose samples all failed elsewhere
            status.reason = status.reason or "no passing sample"
    return cov


def save(cov: Coverage, path) -> None:
    import dataclasses
    import json
    data = dataclasses.asdict(cov)
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def load(path) -> Coverage:
    import json

    from t2n.errors import OptionError
    try:
        data = json.loads(Path(path).read_text())
        data["ops"] = {k: OpStatus(**v) for k, v in data["ops"].items()}
        return Coverage(**data)
    except (ValueError, KeyError, TypeError) as e:
        raise OptionError(f"{path} is not a coverage measurement ({type(e).__name__}: {e})",
                          "write one with t2n ops --coverage --json FILE") from e


def summary(cov: Coverage) -> str:
    """Plain-text counts and the ops that do neither (``t2n ops --coverage``)."""
    lines = [f"{cov.samples} samples of {cov.opinfos} OpInfos exported and run in tract "
             f"({cov.core_samples} also as Core ATen graphs)"]
    for label, core in (("Core ATen opset", True), ("other ops torch.export keeps", False)):
        c = cov.counts(core)
        lines.append(f"{label}: {c['direct']} direct, {c['decomposition']} through "
                     f"decomposition, {c['neither']} neither, {c['not measured']} not reached")
    for s in sorted(cov.ops.values(), key=lambda s: s.op):
        if s.status == "neither":
            lines.append(f"  neither: {s.op}: {s.reason}")
    return "\n".join(lines)


def render(cov: Coverage) -> str:
    """The coverage tables (docs/ops.md's "Coverage" section)."""
    lines = []
    add = lines.append
    add("## Coverage, measured")
    add("")
    add(f"Generated by `t2n ops --coverage --markdown` (torch {cov.torch_version}): "
        f"{cov.samples} samples of {cov.opinfos} OpInfos of torch's test database exported "
        f"and run in tract against torch (approximate tolerance), {cov.core_samples} of them "
        f"a second time decomposed to the Core ATen opset (where that reaches core ops their "
        f"own graph lacks). An op counts as translated when a sample whose graph holds it "
        f"passed.")
    add("")
    add("| ops | direct | through decomposition | neither | not reached by a sample |")
    add("|---|---:|---:|---:|---:|")
    for label, core in (("Core ATen opset", True), ("other ops torch.export keeps", False)):
        c = cov.counts(core)
        add(f"| {label} | {c['direct']} | {c['decomposition']} | {c['neither']} | "
            f"{c['not measured']} |")
    add("")
    for title, pick in (("Through decomposition", lambda s: s.status == "decomposition"),
                        ("Neither (with the reason)", lambda s: s.status == "neither"),
                        ("Core ATen ops no sample reached", lambda s: s.status == "not measured")):
        rows = sorted((s for s in cov.ops.values() if pick(s)), key=lambda s: s.op)
        add(f"### {title} ({len(rows)})")
        add("")
        if not rows:
            add("(none)")
            add("")
            continue
        add("| op | core | samples passed | reason |")
        add("|---|---|---:|---|")
        for s in rows:
            reason = s.reason.replace("|", "\\|")
            add(f"| `{s.op}` | {'yes' if s.core else ''} | {s.passed}/{s.samples} | {reason} |")
        add("")
    return "\n".join(lines)

