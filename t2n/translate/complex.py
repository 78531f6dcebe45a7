"""Complex tensors rewritten into real arithmetic on the torch.export graph (tract has none).

Rotary embeddings written with complex numbers (Llama 4: ``freqs_cis = polar(ones, angles)``,
``view_as_real(view_as_complex(x.reshape(..., -1, 2)) * freqs_cis)``) reach t2n as complex
ops. Before translation, each complex tensor of shape S is carried by a real tensor of shape
S + (2,): real part at index 0 and imaginary part at index 1 of a trailing axis, the layout of
``torch.view_as_real``. So ``view_as_complex`` and ``view_as_real`` become identities, complex
arithmetic becomes real arithmetic on the two parts (``(a+bi)(c+di) = (ac-bd) + (ad+bc)i``),
and shape ops act on the carrier with their axes counted in the complex tensor's rank.

A graph with no complex value is returned untouched. Complex ops with no rewrite here fail
once, listing every one of them; so do complex model inputs and outputs.
"""
from __future__ import annotations

import logging
import operator
from collections import Counter, defaultdict

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, TensorArgument
from torch.fx import Node

from t2n.errors import TraceError, UnsupportedOpsError

__all__ = ["REWRITTEN", "real_arithmetic"]

log = logging.getLogger(__name__)

aten = torch.ops.aten

# complex dtype -> dtype of its real carrier
_PART = {torch.complex32: torch.float16, torch.complex64: torch.float32,
         torch.complex128: torch.float64}


class _Unsupported(Exception):
    """An op met in a form that has no rewrite (e.g. roll over the flattened tensor)."""


def real_arithmetic(program: ExportedProgram) -> ExportedProgram:
    """``program`` with its complex values carried as real (..., 2) tensors (in place).

    Raises UnsupportedOpsError naming every complex op that has no rewrite, and TraceError
    for complex model inputs or outputs.
    """
    graph = program.graph
    if not any(_involves_complex(n) for n in graph.nodes):
        return program
    _check_boundary(program)
    missing = defaultdict(list)
    for node in graph.nodes:
        if node.op == "call_function" and _involves_complex(node) and node.target not in _RULES:
            missing[_name(node.target)].append(_where(node))
    if missing:
        raise _unsupported(missing)
    rewrite = _Rewrite(program)
    done = rewrite.run()
    log.info("complex arithmetic rewritten into real (re, im) pairs: %s", ", ".join(
        f"{name} x{count}" for name, count in sorted(done.items())))
    return program


def _is_complex(val) -> bool:
    if isinstance(val, torch.Tensor):
        return val.is_complex()
    if isinstance(val, (list, tuple)):
        return any(_is_complex(v) for v in val)
    return isinstance(val, complex)


def _involves_complex(node: Node) -> bool:
    if node.op == "output":
        return False
    if _is_complex(node.meta.get("val")):
        return True
    inputs = node.all_input_nodes
    return any(_is_complex(a.meta.get("val")) for a in inputs) or any(
        isinstance(a, complex) for a in list(node.args) + list(node.kwargs.values()))


def _name(target) -> str:
    from t2n.translate.registry import op_name
    return op_name(target)


def _where(node) -> str:
    from t2n.translate.engine import node_location
    return node_location(node)


def _unsupported(missing: dict) -> UnsupportedOpsError:
    items = []
    for name, where in sorted(missing.items()):
        places = sorted({w for w in where if w})
        place = f", in {'; '.join(places[:3])}" + (" ..." if len(places) > 3 else "") \
            if places else ""
        items.append(f"{name} (x{len(where)}{place})")
    n = len(missing)
    return UnsupportedOpsError(
        f"{n} complex op{'s' if n > 1 else ''} cannot be rewritten into real arithmetic "
        f"(tract has no complex numbers): " + ", ".join(items),
        "t2n rewrites view_as_complex, view_as_real, polar, complex, +, -, *, /, conj, abs, "
        "angle, exp and shape ops; compute the rest on the real and imaginary parts "
        "(torch.view_as_real) in the model's code",
        missing=sorted(missing))


def _check_boundary(program: ExportedProgram) -> None:
    sig = program.graph_signature
    kinds = {s.arg.name: s.kind for s in sig.input_specs if hasattr(s.arg, "name")}
    for node in program.graph.nodes:
        if node.op == "placeholder" and kinds.get(node.name) == InputKind.USER_INPUT \
                and _is_complex(node.meta.get("val")):
            raise TraceError(f"model input {node.name} is complex: tract has no complex numbers",
                             "pass torch.view_as_real(x) and call torch.view_as_complex in "
                             "forward()")
        if node.op == "output":
            for i, out in enumerate(node.args[0]):
                if isinstance(out, Node) and _is_complex(out.meta.get("val")):
                    raise TraceError(f"model output {i} ({out.name}) is complex: tract has no "
                                     "complex numbers",
                                     "return torch.view_as_real(z) from forward() instead")


class _Rewrite:
    """Walks the graph once; ``carrier[node]`` is the real (..., 2) node of a complex node."""

    def __init__(self, program: ExportedProgram):
        from torch._guards import detect_fake_mode
        self.program = program
        self.graph = program.graph
        vals = [n.meta.get("val") for n in self.graph.nodes if n.op == "placeholder"]
        self.fake_mode = detect_fake_mode(vals) or torch._subclasses.FakeTensorMode()
        self.carrier: dict[Node, Node] = {}
        self.node: Node | None = None
        self._parts: dict[Node, tuple] = {}

    def run(self) -> Counter:
        done: Counter = Counter()
        dead = []
        for node in list(self.graph.nodes):
            if node.op == "placeholder" and _is_complex(node.meta.get("val")):
                self._state_to_real(node)
                self.carrier[node] = node
                continue
            if node.op != "call_function" or not _involves_complex(node):
                continue
            self.node = node
            with self.graph.inserting_before(node):
                try:
                    result = _RULES[node.target](self, *node.args, **node.kwargs)
                except _Unsupported as e:
                    where = _where(node)
                    raise UnsupportedOpsError(
                        f"complex {_name(node.target)}{' in ' + where if where else ''} "
                        f"cannot be rewritten into real arithmetic: {e}",
                        "compute it on the real and imaginary parts (torch.view_as_real) in "
                        "the model's code", missing=[_name(node.target)]) from e
            done[_name(node.target)] += 1
            dead.append(node)
            if result is None:
                continue
            if _is_complex(node.meta.get("val")):
                self.carrier[node] = result
            else:
                node.replace_all_uses_with(result)
        for node in reversed(dead):
            self.graph.erase_node(node)
        self._sync_outputs()
        self.program.graph_module.recompile()
        return done

    # -- graph building ---------------------------------------------------------------------
    def emit(self, target, *args, **kwargs) -> Node:
        """A new node computing ``target(*args, **kwargs)``, its fake value computed."""
        new = self.graph.call_function(target, tuple(args), kwargs)
        fake_args, fake_kwargs = torch.fx.node.map_arg(
            (new.args, new.kwargs), lambda n: n.meta["val"])
        with self.fake_mode:
            new.meta["val"] = target(*fake_args, **fake_kwargs)
        for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
            if key in self.node.meta:
                new.meta[key] = self.node.meta[key]
        return new

    def c(self, a):
        """The carrier of a complex node argument."""
        return self.carrier[a]

    def is_c(self, a) -> bool:
        return isinstance(a, Node) and _is_complex(a.meta.get("val"))

    def rank(self, a) -> int:
        return len(a.meta["val"].shape)

    def parts(self, carrier: Node) -> tuple[Node, Node]:
        if carrier not in self._parts:
            self._parts[carrier] = (self.emit(aten.select.int, carrier, -1, 0),
                                    self.emit(aten.select.int, carrier, -1, 1))
        return self._parts[carrier]

    def pack(self, re: Node, im: Node) -> Node:
        # parts of different shapes are broadcast (sizes compared as text: comparing
        # symbolic sizes would add guards)
        if list(map(str, re.meta["val"].shape)) != list(map(str, im.meta["val"].shape)):
            re, im = (self.emit(aten.add.Tensor, re, self.emit(aten.zeros_like.default, im)),
                      self.emit(aten.add.Tensor, im, self.emit(aten.zeros_like.default, re)))
        return self.emit(aten.stack.default, [re, im], -1)

    def lift(self, a) -> Node:
        """The carrier of a complex node, or of a real tensor node (imaginary part 0)."""
        if self.is_c(a):
            return self.c(a)
        dtype = _PART[self.node.meta["val"].dtype] if _is_complex(self.node.meta.get("val")) \
            else a.meta["val"].dtype
        if a.meta["val"].dtype != dtype:
            a = self.emit(aten.to.dtype, a, dtype)
        return self.pack(a, self.emit(aten.zeros_like.default, a))

    def out_part_dtype(self):
        return _PART[self.node.meta["val"].dtype]

    def _state_to_real(self, node: Node) -> None:
        """A complex parameter, buffer or constant is stored as its (..., 2) real view."""
        sig = self.program.graph_signature
        spec = next(s for s in sig.input_specs if getattr(s.arg, "name", None) == node.name)
        for table in (self.program.state_dict, self.program.constants):
            if spec.target in table:
                tensor = table[spec.target]
                real = torch.view_as_real(tensor.detach().resolve_conj()).clone()
                table[spec.target] = torch.nn.Parameter(real, requires_grad=False) \
                    if isinstance(tensor, torch.nn.Parameter) else real
                with self.fake_mode:
                    node.meta["val"] = self.fake_mode.from_tensor(real, static_shapes=True)
                return
        raise TraceError(f"complex state {spec.target} of the program was not found",
                         "report the model")

    def _sync_outputs(self) -> None:
        """Output specs name the output nodes: follow the replacements."""
        out = next(n for n in self.graph.nodes if n.op == "output")
        for spec, node in zip(self.program.graph_signature.output_specs, out.args[0]):
            if isinstance(spec.arg, TensorArgument) and isinstance(node, Node):
                spec.arg = TensorArgument(name=node.name)


# -- arithmetic on (re, im) -----------------------------------------------------------------
def _number(x) -> complex:
    """A scalar operand as a complex (symbolic scalars are not rewritten)."""
    if isinstance(x, Node):
        raise _Unsupported("a symbolic scalar operand")
    return complex(x)


def _tensor(x) -> bool:
    return isinstance(x, Node) and isinstance(x.meta.get("val"), torch.Tensor)


def _mul(rw: _Rewrite, a, b):
    if (rw.is_c(b) and not rw.is_c(a)) or not _tensor(a):
        a, b = b, a                           # a complex tensor first, else a tensor first
    if rw.is_c(a) and rw.is_c(b):
        ar, ai = rw.parts(rw.c(a))
        br, bi = rw.parts(rw.c(b))
        re = rw.emit(aten.sub.Tensor, rw.emit(aten.mul.Tensor, ar, br),
                     rw.emit(aten.mul.Tensor, ai, bi))
        im = rw.emit(aten.add.Tensor, rw.emit(aten.mul.Tensor, ar, bi),
                     rw.emit(aten.mul.Tensor, ai, br))
        return rw.pack(re, im)
    if rw.is_c(a) and _tensor(b):             # complex * real tensor
        return rw.emit(aten.mul.Tensor, rw.c(a), rw.emit(aten.unsqueeze.default, b, -1))
    s = _number(b)
    if rw.is_c(a):                            # complex * number
        if s.imag == 0:
            return rw.emit(aten.mul.Tensor, rw.c(a), s.real)
        ar, ai = rw.parts(rw.c(a))
        re = rw.emit(aten.sub.Tensor, rw.emit(aten.mul.Tensor, ar, s.real),
                     rw.emit(aten.mul.Tensor, ai, s.imag))
        im = rw.emit(aten.add.Tensor, rw.emit(aten.mul.Tensor, ar, s.imag),
                     rw.emit(aten.mul.Tensor, ai, s.real))
        return rw.pack(re, im)
    # real tensor * complex number
    x = a if a.meta["val"].dtype == rw.out_part_dtype() else \
        rw.emit(aten.to.dtype, a, rw.out_part_dtype())
    return rw.pack(rw.emit(aten.mul.Tensor, x, s.real), rw.emit(aten.mul.Tensor, x, s.imag))


def _div(rw: _Rewrite, a, b):
    if not _tensor(b):
        s = _number(b)
        if s.imag == 0 and rw.is_c(a):
            return rw.emit(aten.div.Tensor, rw.c(a), s.real)
        return _mul(rw, a, 1 / s)
    if not rw.is_c(b):                        # complex / real tensor
        return rw.emit(aten.div.Tensor, rw.c(a), rw.emit(aten.unsqueeze.default, b, -1))
    if not _tensor(a):
        raise _Unsupported("a number divided by a complex tensor")
    ar, ai = rw.parts(rw.lift(a))
    br, bi = rw.parts(rw.c(b))
    den = rw.emit(aten.add.Tensor, rw.emit(aten.mul.Tensor, br, br),
                  rw.emit(aten.mul.Tensor, bi, bi))
    re = rw.emit(aten.add.Tensor, rw.emit(aten.mul.Tensor, ar, br),
                 rw.emit(aten.mul.Tensor, ai, bi))
    im = rw.emit(aten.sub.Tensor, rw.emit(aten.mul.Tensor, ai, br),
                 rw.emit(aten.mul.Tensor, ar, bi))
    return rw.pack(rw.emit(aten.div.Tensor, re, den), rw.emit(aten.div.Tensor, im, den))


def _add(rw: _Rewrite, a, b, alpha=1, negate=False):
    """a + alpha * b (a - alpha * b with ``negate``)."""
    if _number(alpha).imag != 0:
        raise _Unsupported("a complex alpha")
    alpha = -alpha if negate else alpha
    if not _tensor(b):                        # tensor + number
        return _plus_number(rw, rw.lift(a), _number(b) * alpha)
    cb = rw.lift(b)
    if alpha != 1:
        cb = rw.emit(aten.mul.Tensor, cb, alpha)
    if not _tensor(a):                        # number + tensor
        return _plus_number(rw, cb, _number(a))
    return rw.emit(aten.add.Tensor, rw.lift(a), cb)


def _plus_number(rw: _Rewrite, carrier: Node, s: complex) -> Node:
    if s == 0:
        return carrier
    re, im = rw.parts(carrier)
    if s.real:
        re = rw.emit(aten.add.Tensor, re, s.real)
    if s.imag:
        im = rw.emit(aten.add.Tensor, im, s.imag)
    return rw.pack(re, im)


# -- rules: op -> fn(rw, *node.args, **node.kwargs) -> replacement node ---------------------
_RULES: dict = {}


def _rule(*targets):
    def register(fn):
        for t in targets:
            _RULES[t] = fn
        return fn
    return register


def _axis(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


@_rule(aten.view_as_complex.default)
def _view_as_complex(rw, self):
    return self


@_rule(aten.view_as_real.default)
def _view_as_real(rw, self):
    return rw.c(self)


@_rule(aten.polar.default)
def _polar(rw, abs, angle):
    return rw.pack(rw.emit(aten.mul.Tensor, abs, rw.emit(aten.cos.default, angle)),
                   rw.emit(aten.mul.Tensor, abs, rw.emit(aten.sin.default, angle)))


@_rule(aten.complex.default)
def _complex(rw, real, imag):
    return rw.pack(real, imag)


@_rule(aten.real.default)
def _real(rw, self):
    return rw.parts(rw.c(self))[0]


@_rule(aten.imag.default)
def _imag(rw, self):
    return rw.parts(rw.c(self))[1]


@_rule(aten.mul.Tensor, aten.mul.Scalar)
def _mul_rule(rw, self, other):
    return _mul(rw, self, other)


@_rule(aten.div.Tensor, aten.div.Scalar)
def _div_rule(rw, self, other):
    return _div(rw, self, other)


@_rule(aten.add.Tensor, aten.add.Scalar)
def _add_rule(rw, self, other, alpha=1):
    return _add(rw, self, other, alpha)


@_rule(aten.sub.Tensor, aten.sub.Scalar)
def _sub_rule(rw, self, other, alpha=1):
    return _add(rw, self, other, alpha, negate=True)


@_rule(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub_rule(rw, self, other, alpha=1):
    return _add(rw, other, self, alpha, negate=True)


@_rule(aten.neg.default)
def _neg(rw, self):
    return rw.emit(aten.neg.default, rw.c(self))


@_rule(aten.conj.default, aten._conj.default, aten.conj_physical.default)
def _conj(rw, self):
    re, im = rw.parts(rw.c(self))
    return rw.pack(re, rw.emit(aten.neg.default, im))


@_rule(aten.abs.default)
def _abs(rw, self):
    c = rw.c(self)
    return rw.emit(aten.sqrt.default, rw.emit(aten.sum.dim_IntList,
                                              rw.emit(aten.mul.Tensor, c, c), [-1]))


@_rule(aten.angle.default)
def _angle(rw, self):
    re, im = rw.parts(rw.c(self))
    return rw.emit(aten.atan2.default, im, re)


@_rule(aten.exp.default)
def _exp(rw, self):
    re, im = rw.parts(rw.c(self))
    e = rw.emit(aten.exp.default, re)
    return rw.pack(rw.emit(aten.mul.Tensor, e, rw.emit(aten.cos.default, im)),
                   rw.emit(aten.mul.Tensor, e, rw.emit(aten.sin.default, im)))


@_rule(aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default,
       aten.lift_fresh_copy.default, aten.resolve_conj.default, aten.resolve_neg.default)
def _same(rw, self, *args, **kwargs):
    return rw.c(self)


@_rule(aten._assert_tensor_metadata.default)
def _drop(rw, *args, **kwargs):
    return None


@_rule(aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default, aten.type_as.default,
       aten.to.other, aten.to.device)
def _to(rw, self, *args, **kwargs):
    """Conversions: complex -> complex of another width, real -> complex (imaginary 0),
    complex -> real (torch keeps the real part)."""
    out = rw.node.meta["val"].dtype
    if rw.is_c(self) and out.is_complex:
        c, want = rw.c(self), _PART[out]
        return c if c.meta["val"].dtype == want else rw.emit(aten.to.dtype, c, want)
    if rw.is_c(self):
        re = rw.parts(rw.c(self))[0]
        return re if re.meta["val"].dtype == out else rw.emit(aten.to.dtype, re, out)
    return rw.lift(self)


@_rule(aten.zeros_like.default)
def _zeros_like(rw, self, **kwargs):
    c = rw.lift(self)
    return rw.emit(aten.zeros_like.default, c)


@_rule(aten.ones_like.default)
def _ones_like(rw, self, **kwargs):
    re = rw.parts(rw.lift(self))[0]
    return rw.pack(rw.emit(aten.ones_like.default, re), rw.emit(aten.zeros_like.default, re))


@_rule(aten.where.self)
def _where_rule(rw, condition, self, other):
    if not (isinstance(self, Node) and isinstance(other, Node)):
        raise _Unsupported("where() with a number operand")
    return rw.emit(aten.where.self, rw.emit(aten.unsqueeze.default, condition, -1),
                   rw.lift(self), rw.lift(other))


# shape ops: the carrier gets the same op, its axes counted in the complex rank
@_rule(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _view(rw, self, size):
    return rw.emit(rw.node.target, rw.c(self), list(size) + [2])


@_rule(aten.expand.default)
def _expand(rw, self, size, implicit=False):
    return rw.emit(aten.expand.default, rw.c(self), list(size) + [2])


@_rule(aten.repeat.default)
def _repeat(rw, self, repeats):
    return rw.emit(aten.repeat.default, rw.c(self), list(repeats) + [1])


@_rule(aten.unsqueeze.default)
def _unsqueeze(rw, self, dim):
    return rw.emit(aten.unsqueeze.default, rw.c(self), _axis(dim, rw.rank(self) + 1))


@_rule(aten.squeeze.dim)
def _squeeze_dim(rw, self, dim):
    return rw.emit(aten.squeeze.dim, rw.c(self), _axis(dim, rw.rank(self)))


@_rule(aten.squeeze.dims)
def _squeeze_dims(rw, self, dim):
    return rw.emit(aten.squeeze.dims, rw.c(self), [_axis(d, rw.rank(self)) for d in dim])


@_rule(aten.squeeze.default)
def _squeeze(rw, self):
    dims = [i for i, s in enumerate(self.meta["val"].shape) if s == 1]
    return rw.emit(aten.squeeze.dims, rw.c(self), dims) if dims else rw.c(self)


@_rule(aten.permute.default)
def _permute(rw, self, dims):
    rank = rw.rank(self)
    return rw.emit(aten.permute.default, rw.c(self), [_axis(d, rank) for d in dims] + [rank])


@_rule(aten.transpose.int)
def _transpose(rw, self, dim0, dim1):
    rank = rw.rank(self)
    return rw.emit(aten.transpose.int, rw.c(self), _axis(dim0, rank), _axis(dim1, rank))


@_rule(aten.slice.Tensor)
def _slice(rw, self, dim=0, start=None, end=None, step=1):
    return rw.emit(aten.slice.Tensor, rw.c(self), _axis(dim, rw.rank(self)), start, end, step)


@_rule(aten.select.int)
def _select(rw, self, dim, index):
    return rw.emit(aten.select.int, rw.c(self), _axis(dim, rw.rank(self)), index)


@_rule(aten.narrow.default)
def _narrow(rw, self, dim, start, length):
    return rw.emit(aten.narrow.default, rw.c(self), _axis(dim, rw.rank(self)), start, length)


@_rule(aten.flatten.using_ints)
def _flatten(rw, self, start_dim=0, end_dim=-1):
    rank = rw.rank(self)
    if rank == 0:
        return rw.emit(aten.unsqueeze.default, rw.c(self), 0)
    return rw.emit(aten.flatten.using_ints, rw.c(self), _axis(start_dim, rank),
                   _axis(end_dim, rank))


@_rule(aten.unflatten.int)
def _unflatten(rw, self, dim, sizes):
    return rw.emit(aten.unflatten.int, rw.c(self), _axis(dim, rw.rank(self)), sizes)


@_rule(aten.flip.default)
def _flip(rw, self, dims):
    return rw.emit(aten.flip.default, rw.c(self), [_axis(d, rw.rank(self)) for d in dims])


@_rule(aten.roll.default)
def _roll(rw, self, shifts, dims=()):
    if not dims:
        raise _Unsupported("roll over the flattened tensor (no dims)")
    return rw.emit(aten.roll.default, rw.c(self), shifts, [_axis(d, rw.rank(self)) for d in dims])


@_rule(aten.index.Tensor)
def _index(rw, self, indices):
    return rw.emit(aten.index.Tensor, rw.c(self), indices)


@_rule(aten.index_select.default)
def _index_select(rw, self, dim, index):
    return rw.emit(aten.index_select.default, rw.c(self), _axis(dim, rw.rank(self)), index)


@_rule(aten.cat.default)
def _cat(rw, tensors, dim=0):
    rank = max(rw.rank(t) for t in tensors)
    return rw.emit(aten.cat.default, [rw.lift(t) for t in tensors], _axis(dim, rank))


@_rule(aten.stack.default)
def _stack(rw, tensors, dim=0):
    return rw.emit(aten.stack.default, [rw.lift(t) for t in tensors],
                   _axis(dim, rw.rank(tensors[0]) + 1))


@_rule(aten.split.Tensor, aten.split_with_sizes.default)
def _split(rw, self, split_size, dim=0):
    return rw.emit(rw.node.target, rw.c(self), split_size, _axis(dim, rw.rank(self)))


@_rule(aten.chunk.default)
def _chunk(rw, self, chunks, dim=0):
    return rw.emit(aten.chunk.default, rw.c(self), chunks, _axis(dim, rw.rank(self)))


@_rule(aten.unbind.int)
def _unbind(rw, self, dim=0):
    return rw.emit(aten.unbind.int, rw.c(self), _axis(dim, rw.rank(self)))


@_rule(operator.getitem)
def _getitem(rw, seq, index):
    return rw.emit(operator.getitem, rw.c(seq), index)


@_rule(aten.sym_size.int)
def _sym_size(rw, self, dim):
    return rw.emit(aten.sym_size.int, rw.c(self), _axis(dim, rw.rank(self)))


@_rule(aten.sum.dim_IntList, aten.mean.dim)
def _reduce(rw, self, dim=None, keepdim=False, *, dtype=None):
    rank = rw.rank(self)
    dims = [_axis(d, rank) for d in dim] if dim else list(range(rank))
    kwargs = {"dtype": _PART.get(dtype, dtype)} if dtype is not None else {}
    return rw.emit(rw.node.target, rw.c(self), dims, keepdim, **kwargs)


REWRITTEN = sorted(_name(t) for t in _RULES)
