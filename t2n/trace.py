"""Capture a model with torch.export, keeping high-level ops (no decomposition)."""
from __future__ import annotations

import logging
import warnings

import torch
from torch.export import Dim, ExportedProgram

from t2n.compat import warn_untested
from t2n.errors import OptionError, TraceError
from t2n.moe import static_experts
from t2n.ssm import scan_forms
from t2n.trace_patches import symbolic_rnn_shapes
from t2n.translate.complex import real_arithmetic

__all__ = ["bfloat16_as", "capture", "dynamic_shapes_for", "has_bfloat16"]

log = logging.getLogger(__name__)


def dynamic_shapes_for(module, args, kwargs, dynamic_axes: dict, input_names: list[str]):
    """torch.export's ``dynamic_shapes`` from ``{input name: {axis: symbol}}``."""
    if not dynamic_axes:
        return None
    symbols: dict[str, Dim] = {}
    by_name = dict(zip(input_names, list(args) + list(kwargs.values())))
    for name, axes in dynamic_axes.items():
        if name not in by_name:
            raise OptionError(f"dynamic axis given for unknown input {name!r}",
                              f"inputs are: {', '.join(input_names)}")
        tensor = by_name[name]
        for axis, symbol in axes.items():
            if not -tensor.dim() <= axis < tensor.dim():
                raise OptionError(f"input {name} has rank {tensor.dim()}, no axis {axis}",
                                  "fix --dynamic-axes")
            if tensor.shape[axis] < 2:
                raise OptionError(f"dynamic axis {name}:{axis} has size {tensor.shape[axis]} in "
                                  "the example inputs", "use an example of size 2 or more there")
            symbols.setdefault(symbol, Dim.DYNAMIC)
    shapes = []
    for name in input_names:
        axes = dynamic_axes.get(name, {})
        shapes.append({a % by_name[name].dim(): symbols[s] for a, s in axes.items()} or None)
    import inspect
    sig = list(inspect.signature(module.forward).parameters.values())
    var = [i for i, p in enumerate(sig) if p.kind == p.VAR_POSITIONAL]
    if not kwargs:
        if var:  # forward(*args): torch wants the varargs as one nested tuple
            k = var[0]
            rest = tuple(shapes[k:len(args)])
            return tuple(shapes[:k]) + ((rest,) if rest else ())
        return tuple(shapes)
    params = [p.name for p in sig]
    keys = params[: len(args)] + list(kwargs)
    return dict(zip(keys, shapes))


def capture(module: torch.nn.Module, args: tuple, kwargs: dict | None = None, *,
            dynamic_axes: dict | None = None, input_names: list[str] | None = None
            ) -> ExportedProgram:
    """torch.export the module; failures become one TraceError naming the module and reason."""
    warn_untested("torch")
    kwargs = kwargs or {}
    names = input_names or [f"input_{i}" for i in range(len(args) + len(kwargs))]
    dynamic = dynamic_shapes_for(module, args, kwargs, dynamic_axes or {}, names)
    try:
        with warnings.catch_warnings(), symbolic_rnn_shapes(), static_experts(module), \
                scan_forms(module):
            warnings.simplefilter("ignore")
            program = torch.export.export(module, tuple(args), kwargs, dynamic_shapes=dynamic,
                                          strict=False)
    except Exception as e:
        fixed = _specialized(str(e), names)
        if fixed:
            name, axis, size = fixed
            raise TraceError(f"torch.export fixed axis {axis} of input {name} to {size}: the "
                             "model's code requires that size, so it cannot be dynamic",
                             "drop this dynamic axis or change the code that depends on the "
                             "size") from e
        reason = _reason(e)
        raise TraceError(f"torch.export could not capture {type(module).__name__}: {reason}",
                         "see torch.export's docs for the construct named; -v shows the trace"
                         ) from e
    _check_still_dynamic(program, names, dynamic_axes or {})
    if _mutates(program.graph):
        # In-place writes (possibly into views, e.g. y[:, 1:3] = v) are made functional
        # (slice_scatter, index_put, ...). An empty table decomposes nothing else.
        program = program.run_decompositions({})
    # tract has no complex numbers: complex values become real (..., 2) pairs
    return real_arithmetic(program)


def has_bfloat16(program: ExportedProgram) -> bool:
    """Whether the graph computes or stores anything in bfloat16 (subgraphs included)."""
    state = list(program.state_dict.values()) + list(program.constants.values())
    if any(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 for t in state):
        return True
    for gm in program.graph_module.modules():
        if isinstance(gm, torch.fx.GraphModule) and any(
                _bfloat16_in(n.meta.get("val")) or _bfloat16_in((n.args, n.kwargs))
                for n in gm.graph.nodes):
            return True
    return False


def bfloat16_as(program: ExportedProgram, dtype: torch.dtype) -> tuple[ExportedProgram, dict]:
    """tract runs no bfloat16: ``program`` retraced with every bfloat16 in it (casts, dtypes of
    created tensors, autocast regions, stored tensors) turned into ``dtype``; and what was
    changed, {kind: count}. A program without bfloat16 comes back as it is."""
    changed: dict = {}

    def count(kind):
        changed[kind] = changed.get(kind, 0) + 1

    def swap(value):
        if value is torch.bfloat16:
            return dtype
        if isinstance(value, (list, tuple)):
            return type(value)(swap(v) for v in value)
        return value

    autocast = getattr(torch.ops.higher_order, "wrap_with_autocast", None)
    for gm in program.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            if node.target is autocast and node.args[1] is torch.bfloat16 and node.args[2]:
                # the region computes in the types of its inputs (the asked type) instead
                node.args = node.args[:2] + (False,) + node.args[3:]
                count("autocast regions")
                continue
            if _bfloat16_in((node.args, node.kwargs)):
                node.args = swap(node.args)
                node.kwargs = {k: swap(v) for k, v in node.kwargs.items()}
                if node.target is not torch.ops.aten._assert_tensor_metadata.default:
                    count("casts/dtypes")
        gm.recompile()
    for table in (program.state_dict, program.constants):
        for key, tensor in list(table.items()):
            if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.bfloat16:
                converted = tensor.detach().to(dtype)
                table[key] = torch.nn.Parameter(converted, requires_grad=False) \
                    if isinstance(tensor, torch.nn.Parameter) else converted
                count("stored tensors")
    if not changed and not has_bfloat16(program):
        return program, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = program.run_decompositions({})   # retraced: every value's type follows
    if has_bfloat16(program):
        raise TraceError("bfloat16 values are left in the graph after casting the model's "
                         f"bfloat16 code to {dtype}", "report the model; -v shows the trace")
    return program, changed


def _bfloat16_in(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dtype == torch.bfloat16
    if isinstance(value, (list, tuple)):
        return any(_bfloat16_in(v) for v in value)
    if isinstance(value, dict):
        return any(_bfloat16_in(v) for v in value.values())
    return value is torch.bfloat16


def _mutates(graph) -> bool:
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and any(
                a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
            return True
    return False


def _check_still_dynamic(program: ExportedProgram, names: list[str], dynamic_axes: dict):
    """torch.export fixes a size the model's code depends on; say so instead of silently
    exporting a static axis."""
    from torch.export.graph_signature import InputKind
    user = [s.arg.name for s in program.graph_signature.input_specs
            if s.kind == InputKind.USER_INPUT]
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for name, placeholder in zip(names, user):
        shape = nodes[placeholder].meta["val"].shape
        for axis, symbol in dynamic_axes.get(name, {}).items():
            if not isinstance(shape[axis], torch.SymInt):
                raise TraceError(
                    f"torch.export fixed axis {axis} of input {name} to {shape[axis]}: the "
                    f"model's code requires that size, so {symbol} cannot be dynamic",
                    "drop this dynamic axis or change the code that depends on the size")


def _specialized(message: str, names: list[str]):
    """(input name, axis, size) when torch refused a dynamic axis the code fixes."""
    import re
    m = re.search(r"L\['(args|kwargs)'\]((?:\[[^\]]+\])+)\.size\(\)\[(\d+)\] as dynamic but "
                  r"your code specialized it to be a constant \((\d+)\)", message)
    if not m:
        return None
    keys = re.findall(r"\[([^\]]+)\]", m.group(2))
    if m.group(1) == "kwargs":
        name = keys[0].strip("'")
    else:
        index = int(keys[-1]) if keys[-1].isdigit() else 0
        name = names[index] if index < len(names) else f"#{index}"
    return name, int(m.group(3)), int(m.group(4))


def _reason(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    head = lines[0] if lines else type(err).__name__
    return f"{type(err).__name__}: {head}"[:400]
