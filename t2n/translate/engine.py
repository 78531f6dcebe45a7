"""Walk a torch.export graph and build the NNEF graph through the translator registry."""
from __future__ import annotations

import functools
import logging
import operator
import re
from collections import defaultdict

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from t2n.errors import T2NError, TranslationError, UnsupportedOpsError
from t2n.nnef.graph import Dim, Graph, Input, Operation, Ref, ref_names, renamed
from t2n.quant import GATHER_ONLY, W8Tensor, storage_of
from t2n.translate.context import Ctx, Options, Value
from t2n.translate.families.quantize import QUANT_META, plan_quantization
from t2n.translate.registry import EIGHT_BIT, lookup, op_name
from t2n.translate.weights import int8_rows_weight
from t2n.translate.widen import widen_f16_arithmetic

__all__ = ["translate", "torch_dtype_name", "missing_ops", "node_location"]

log = logging.getLogger(__name__)

_TORCH_DTYPES = {
    torch.float32: "f32", torch.float16: "f16", torch.float64: "f64",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "u8", torch.bool: "bool",
}

# Ops that only assert facts torch already checked while tracing: nothing to emit.
_IGNORED = {
    torch.ops.aten._assert_tensor_metadata.default,
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
    torch.ops.aten._assert_async.msg,
}
# Higher-order ops that only wrap a subgraph in a context (grad mode, autocast): the subgraph
# is translated in place. Value: index of the subgraph argument.
_WRAPPERS = {}
for _name, _index in (("wrap_with_set_grad_enabled", 1), ("wrap_with_autocast", 4)):
    _hop = getattr(torch.ops.higher_order, _name, None)
    if _hop is not None:
        _WRAPPERS[_hop] = _index


_SYM_TYPES = (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)


def torch_dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _TORCH_DTYPES:
        raise TranslationError(f"dtype {dtype} has no NNEF equivalent",
                               "convert the model with --dtype f32 or f16")
    return _TORCH_DTYPES[dtype]


class _Dims:
    """Turns torch symbolic sizes into tract integer expressions over named symbols."""

    def __init__(self, names: dict[str, str], ranges=None):
        self.names = names  # sympy symbol name (s41) -> tract symbol (S)
        self.ranges = dict(ranges or {})  # sympy symbol -> torch's ValueRanges for it

    def __call__(self, value):
        if isinstance(value, (int, bool)):
            return int(value)
        if isinstance(value, torch.SymInt):
            expr = value.node.expr
            if expr.is_number:
                return int(expr)
            return Dim(self.expr(expr))
        if isinstance(value, (float, torch.SymFloat)):
            if isinstance(value, torch.SymFloat):
                raise TranslationError("a symbolic float size is not supported",
                                       "make the size static or report the model")
            return value
        return value

    def expr(self, e) -> str:
        import sympy
        if e.is_Integer:
            return str(int(e))
        if e.is_Symbol:
            if str(e) not in self.names:
                raise TranslationError(
                    f"size symbol {e} is not tied to any dynamic axis",
                    "declare it with --dynamic-axes, or it is data-dependent (not supported)")
            return self.names[str(e)]
        if e.is_Add:
            return "(" + " + ".join(self.expr(a) for a in e.args) + ")"
        if e.is_Mul:
            return "(" + " * ".join(self.expr(a) for a in e.args) + ")"
        name = type(e).__name__
        if name in ("FloorDiv", "CleanDiv", "IntTrueDiv") and len(e.args) == 2:
            return f"({self.expr(e.args[0])} / {self.expr(e.args[1])})"
        if isinstance(e, sympy.Pow) and e.args[1].is_Integer and int(e.args[1]) > 0:
            return "(" + " * ".join([self.expr(e.args[0])] * int(e.args[1])) + ")"
        if name in ("Mod", "PythonMod") and e.args[1].is_Integer and int(e.args[1]) > 0:
            b = int(e.args[1])
            a = _positive_residue(e.args[0], b)
            if a.is_Integer:
                return str(int(a) % b)
            if self._lower(a) >= 0:
                # a size modulo a constant (chunk padding) as a - b * (a / b): tract's division
                # of sizes is floor division, right when no term of a is negative (tract splits
                # a quotient over a sum's terms)
                a = self.expr(a)
                return f"({a} - {b} * ({a} / {b}))"
        if name in ("Max", "Min"):
            chosen = self._extreme(e)
            if chosen is not None:
                return self.expr(chosen)
            return f"{name.lower()}(" + ", ".join(self.expr(a) for a in e.args) + ")"
        raise TranslationError(f"size expression {e} cannot be written for tract",
                               "make that axis static or report the model")

    def _lower(self, e):
        from torch.utils._sympy.value_ranges import bound_sympy
        return bound_sympy(e, self.ranges).lower

    def _extreme(self, e):
        """The argument of a Max/Min that the symbols' ranges show is always the result (a
        slice start ``max(0, 1 - S)`` is 0 for every length torch allowed), or None."""
        for a in e.args:
            others = [b for b in e.args if b is not a]
            diffs = [(a - b) if type(e).__name__ == "Max" else (b - a) for b in others]
            if all(self._lower(d) >= 0 for d in diffs):
                return a
        return None


def _positive_residue(a, b: int):
    """An expression congruent to ``a`` modulo ``b`` whose terms all have positive
    coefficients: an inner ``Mod(x, k*b)`` becomes x, each coefficient and the constant are
    taken modulo b (sizes are integers, so -x and (b - 1) * x leave the same remainder)."""
    import sympy
    a = a.replace(lambda x: type(x).__name__ in ("Mod", "PythonMod") and x.args[1].is_Integer
                  and int(x.args[1]) % b == 0, lambda x: x.args[0])
    terms = []
    for term in sympy.Add.make_args(sympy.expand(a)):
        coeff, rest = term.as_coeff_Mul()
        if not coeff.is_Integer:
            return a
        coeff = int(coeff) % b
        if coeff:
            terms.append(coeff * rest)
    return sympy.Add(*terms) if terms else sympy.Integer(0)


def node_location(node) -> str:
    """Where a node comes from: module path and file:line of the user code."""
    parts = []
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        path = re.sub(r"L\['self'\]\.?", "", path)
        path = re.sub(r"\._modules\['([^']+)'\]", r".\1", path)
        if path:
            parts.append(path)
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    if frames:
        file, line = frames[-1]
        parts.append(f"{file.rsplit('/', 1)[-1]}:{line}")
    return ", ".join(parts)


def _is_symbolic(node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, _SYM_TYPES) and not isinstance(val, torch.Tensor)


def missing_ops(program: ExportedProgram) -> dict[str, list]:
    """Ops with no translator: name -> list of locations, one per node (subgraphs included)."""
    missing: dict[str, list] = defaultdict(list)
    for node in _untranslated(program.graph_module):
        missing[op_name(node.target)].append(node_location(node))
    return dict(missing)


def _untranslated(owner, found=None):
    """The call nodes of ``owner`` (a GraphModule, its subgraphs included) that no translator
    takes; with ``found`` (a Counter) their targets are counted there instead."""
    nodes = []
    for node in owner.graph.nodes:
        if node.op == "get_attr":
            sub = getattr(owner, node.target)
            if isinstance(sub, torch.fx.GraphModule):
                nodes += _untranslated(sub)
            continue
        if node.op != "call_function" or node.target in _IGNORED or node.target in _WRAPPERS:
            continue
        if node.target is operator.getitem or _is_symbolic(node):
            continue
        if lookup(node.target) is None:
            nodes.append(node)
    if found is not None:
        found.update(n.target for n in nodes)
    return nodes


def unsupported_error(missing: dict[str, list]) -> UnsupportedOpsError:
    items = []
    for name, where in sorted(missing.items()):
        places = sorted({w for w in where if w})
        place = f", in {'; '.join(places[:3])}" + (" ..." if len(places) > 3 else "") if places else ""
        items.append(f"{name} (x{len(where)}{place})")
    n = len(missing)
    return UnsupportedOpsError(
        f"{n} op{'s' if n > 1 else ''} {'have' if n > 1 else 'has'} no NNEF translator: "
        + ", ".join(items),
        "see 't2n ops' for what is supported; add a translator with @translates",
        missing=sorted(missing))


def _meta_value(val, dims: _Dims):
    if isinstance(val, torch.Tensor):
        return Value("", tuple(dims(d) for d in val.shape), _TORCH_DTYPES.get(val.dtype))
    if isinstance(val, (list, tuple)):
        return tuple(_meta_value(v, dims) for v in val)
    return None


def _symbol_names(program: ExportedProgram, user_inputs: dict, dynamic_axes: dict) -> dict:
    names = {}
    for placeholder, axes in dynamic_axes.items():
        node = user_inputs.get(placeholder)
        if node is None:
            continue
        shape = node.meta["val"].shape
        for axis, symbol in axes.items():
            size = shape[axis]
            if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                names[str(size.node.expr)] = symbol
    return names


def translate(program: ExportedProgram, *, input_names: list[str] | None = None,
              output_names: list[str] | None = None, dynamic_axes: dict | None = None,
              options: Options | None = None) -> Graph:
    """Build the NNEF graph of ``program``.

    ``input_names`` rename the user inputs in order, ``output_names`` name the flattened
    outputs. ``dynamic_axes`` maps an input name to {axis: tract symbol}. Parameters held
    as block-quantized tensors (t2n.quant) are written in their own storage format.
    """
    from t2n.translate.decompose import decompose_missing
    program = decompose_missing(program)
    missing = missing_ops(program)
    if missing:
        raise unsupported_error(missing)

    graph = Graph()
    ctx = Ctx(graph, options)
    sig = program.graph_signature
    specs = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user_nodes = [n for n in placeholders if specs[n.name].kind == InputKind.USER_INPUT]
    names = list(input_names or [])
    if names and len(names) != len(user_nodes):
        raise TranslationError(f"{len(names)} input names given for {len(user_nodes)} inputs",
                               f"give one name per input: {[n.name for n in user_nodes]}")
    user_name = {n.name: (names[i] if names else n.name) for i, n in enumerate(user_nodes)}
    dims = _Dims(_symbol_names(program, {user_name[n.name]: n for n in user_nodes},
                               dynamic_axes or {}), program.range_constraints)
    graph.symbols = sorted(set(dims.names.values()))
    state = program.state_dict
    constants = program.constants

    env: dict = {}
    for node in placeholders:
        spec = specs[node.name]
        val = node.meta["val"]
        if spec.kind == InputKind.USER_INPUT:
            if not isinstance(val, torch.Tensor):
                env[node] = dims(val)
                continue
            name = _identifier(user_name[node.name])
            ctx.reserve(name)
            shape = tuple(dims(d) for d in val.shape)
            dtype = torch_dtype_name(val.dtype)
            graph.inputs.append(Input(name, dtype, shape))
            env[node] = Value(name, shape, dtype)
            continue
        target = spec.target
        tensor = state[target] if target in state else constants[target]
        if not isinstance(tensor, torch.Tensor):
            raise TranslationError(f"constant {target} of type {type(tensor).__name__} "
                                   "is not a tensor", "keep only tensors as module state")
        name = ctx.fresh(_identifier(target))
        dtype = torch_dtype_name(tensor.dtype)
        stored = storage_of(tensor)
        if isinstance(tensor, W8Tensor):  # int8 levels and row scales, dequantized in the graph
            env[node] = int8_rows_weight(ctx, name, target, tensor, dtype)
        elif stored is not None and stored[0] in GATHER_ONLY and not _only_gathered(node):
            # tract cannot multiply by such a table: its float values are written instead
            log.info("%s: %s table also read by %s, not only by embedding lookups: written "
                     "in float", target, stored[0], ", ".join(sorted(
                         {op_name(u.target) for u in node.users if not _gathers(u, node)})))
            env[node] = ctx.variable(name, target, tuple(tensor.shape), dtype,
                                     _lazy_numpy_dequantized(tensor))
        elif stored is not None:  # block-quantized: written in its own format, declared as float
            env[node] = ctx.variable(name, target, tuple(tensor.shape), dtype, tensor,
                                     storage=stored[0], encode=stored[1])
        else:
            env[node] = ctx.variable(name, target, tuple(tensor.shape), dtype,
                                     _lazy_numpy(tensor))

    plan_quantization(program.graph)
    outputs = _run_graph(ctx, program.graph_module, program.graph, env, dims)
    if ctx.options.f16_arithmetic == "f32":
        widen_f16_arithmetic(graph, outputs)
    _set_outputs(ctx, outputs, output_names)
    _prune(graph)
    return graph


def _run_graph(ctx: Ctx, owner, fx_graph, env: dict, dims: _Dims) -> list:
    """Translate the nodes of ``fx_graph`` (placeholders already in ``env``); returns the
    values of its outputs."""
    outputs = []
    for node in fx_graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            outputs = [env.get(o) if o is not None else None for o in node.args[0]]
            continue
        if node.op == "get_attr":
            env[node] = getattr(owner, node.target)
            continue
        if node.op != "call_function":
            raise TranslationError(f"graph node {node.name} of kind {node.op} is not supported",
                                   "report the model")
        if node.target in _IGNORED:
            continue
        if node.target is operator.getitem:
            env[node] = env[node.args[0]][node.args[1]]
            continue
        if _is_symbolic(node):
            env[node] = dims(node.meta["val"])
            continue
        if node.target in _WRAPPERS:
            index = _WRAPPERS[node.target]
            sub = env[node.args[index]]
            inner = {p: _resolve(a, env) for p, a in zip(
                [n for n in sub.graph.nodes if n.op == "placeholder"], node.args[index + 1:])}
            env[node] = tuple(_run_graph(ctx, sub, sub.graph, inner, dims))
            continue
        translator = lookup(node.target)
        ctx.node = node
        ctx.out = _meta_value(node.meta.get("val"), dims)
        ctx.out_quant = node.meta.get(QUANT_META)
        args = _resolve(node.args, env)
        kwargs = {k: _resolve(v, env) for k, v in node.kwargs.items()}
        fn = translator.fn
        eight_bit = EIGHT_BIT.get(node.target)
        if eight_bit is not None and (ctx.out_quant is not None or _reads_8bit((args, kwargs))):
            # the op's 8-bit handler, handed the op's translator for what stays float
            fn = functools.partial(_with_float_fn, eight_bit, translator.fn)
        elif not translator.quantized:
            args, kwargs = ctx.dequantize_all(args), ctx.dequantize_all(kwargs)
        try:
            env[node] = fn(ctx, *args, **kwargs)
            if _mutates_first_argument(node.target) and isinstance(node.args[0], torch.fx.Node):
                env[node.args[0]] = env[node]  # later readers of the mutated tensor see it
        except TranslationError as e:
            where = node_location(node)
            raise TranslationError(f"{op_name(node.target)}{' in ' + where if where else ''}: "
                                   f"{e.message}", e.hint) from e
        except T2NError:
            raise
        except Exception as e:  # a translator bug: name the op and where it comes from
            where = node_location(node)
            raise TranslationError(
                f"{op_name(node.target)}{' in ' + where if where else ''}: the translator "
                f"failed with {type(e).__name__}: {e}",
                "please report this t2n bug with the model; rerun with -v for the traceback"
            ) from e
    return outputs


def _with_float_fn(handler, float_fn, ctx, *args, **kwargs):
    return handler(ctx, float_fn, *args, **kwargs)


def _reads_8bit(value) -> bool:
    if isinstance(value, Value):
        return value.quant is not None
    if isinstance(value, (list, tuple)):
        return any(_reads_8bit(v) for v in value)
    if isinstance(value, dict):
        return any(_reads_8bit(v) for v in value.values())
    return False


def _mutates_first_argument(target) -> bool:
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    alias = schema.arguments[0].alias_info
    return bool(alias is not None and alias.is_write)


def _identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    return ident if ident and not ident[0].isdigit() else "t_" + ident


def _lazy_numpy(tensor: torch.Tensor):
    def produce():
        t = tensor.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.contiguous().numpy()
    return produce


def _lazy_numpy_dequantized(tensor):
    return lambda: _lazy_numpy(tensor.dequantize())()


def _gathers(user, node) -> bool:
    return user.target is torch.ops.aten.embedding.default and user.args[0] is node


def _only_gathered(node) -> bool:
    """Whether every reader of placeholder ``node`` is an embedding lookup in it."""
    return all(_gathers(u, node) for u in node.users)


def _resolve(arg, env):
    if isinstance(arg, torch.fx.Node):
        return env[arg]
    if isinstance(arg, (list, tuple)):
        return type(arg)(_resolve(a, env) for a in arg)
    if isinstance(arg, dict):
        return {k: _resolve(v, env) for k, v in arg.items()}
    return arg


# float outputs of 8-bit graphs: share of values allowed beyond one step of the coarsest
# activation (values that torch's and tract's arithmetic round to neighbouring levels)
# (all-MiniLM-L6-v2 with ptq_int8: 1.8% of last_hidden_state at 26 tokens; the SQNR floor and
# the mean-shift bound of the verification hold such outputs as a whole)
FLIP_FRACTION = 0.05


def _set_outputs(ctx: Ctx, values: list, names: list[str] | None) -> None:
    """Name the graph outputs: the producing op's result is renamed when it can be, so that
    tract reports the outputs under these names; otherwise a copy is emitted."""
    graph = ctx.graph
    if names and len(names) != len(values):
        raise TranslationError(f"{len(names)} output names given for {len(values)} outputs",
                               "give one name per output")
    produced = {o: op for op in graph.operations for o in op.outputs}
    renames: dict[str, str] = {}
    for i, value in enumerate(values):
        if not isinstance(value, Value):
            raise TranslationError(f"output {i} is not a tensor ({value!r})",
                                   "return only tensors from forward()")
        name = ctx.fresh(_identifier(names[i]) if names else f"output_{i}")
        if value.quant is not None:  # graph outputs are float, as torch's
            graph.output_steps[name] = value.quant[0]
            value = ctx.dequantize(value)
            if value.name not in produced:  # the cast was just emitted
                produced[value.name] = graph.operations[-1]
        elif graph.activation_steps:
            # a float output computed from 8-bit activations: torch's float arithmetic and
            # tract's integer one may round a value near a level boundary to neighbouring
            # levels, so the output may move by what one level of its coarsest 8-bit
            # ancestor moves (the verification also holds it to an SQNR floor)
            steps = [graph.activation_steps[a] for a in _ancestors(value.name, produced)
                     if a in graph.activation_steps]
            if steps:
                graph.output_steps[name] = (max(steps), FLIP_FRACTION)
        if value.name in produced and value.name not in renames:
            renames[value.name] = name
        else:
            graph.operations.append(Operation([name], "copy", [Ref(renames.get(value.name, value.name))]))
        graph.outputs.append(name)
    if renames:
        for op in graph.operations:
            op.outputs = [renames.get(o, o) for o in op.outputs]
            op.args = renamed(op.args, renames)
            op.attrs = {k: renamed(v, renames) for k, v in op.attrs.items()}


def _ancestors(name: str, produced: dict) -> set[str]:
    """``name`` and every tensor it is computed from."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        op = produced.get(current)
        if op is not None:
            todo.extend(ref_names(op.args) | ref_names(list(op.attrs.values())))
    return seen


def _prune(graph: Graph) -> None:
    """Drop operations whose results are never used, then unused variables."""
    live = set(graph.outputs)
    kept = []
    for op in reversed(graph.operations):
        if any(o in live for o in op.outputs):
            kept.append(op)
            ref_names(op.args, live)
            ref_names(list(op.attrs.values()), live)
    graph.operations = kept[::-1]
    graph.variables = [v for v in graph.variables if v.name in live]
    graph.quant = {k: v for k, v in graph.quant.items() if k in live}
