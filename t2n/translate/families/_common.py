"""Small helpers shared by the op families."""
from __future__ import annotations

import operator

import torch

from t2n.errors import TranslationError
from t2n.nnef.graph import Dim
from t2n.translate.context import Ctx, Value

__all__ = ["axis", "promote", "operand", "same_dtype", "dim_add", "is_static"]

_TORCH = {"f16": torch.float16, "f32": torch.float32, "f64": torch.float64,
          "i8": torch.int8, "i16": torch.int16, "i32": torch.int32, "i64": torch.int64,
          "u8": torch.uint8, "bool": torch.bool}
_NAME = {v: k for k, v in _TORCH.items()}


def axis(dim: int, rank: int) -> int:
    """A non-negative axis; rank-0 tensors accept axis 0 and -1."""
    if rank == 0 and dim in (0, -1):
        return 0
    if not -rank <= dim < rank:
        raise TranslationError(f"axis {dim} out of range for rank {rank}", "check the model")
    return dim % rank


def promote(*operands) -> str:
    """torch's result dtype for tensors and Python scalars."""
    tensors = [o for o in operands if isinstance(o, Value) and o.dtype]
    dtype = None
    for t in tensors:
        if t.rank == 0 and len(tensors) > 1:
            continue
        dtype = _TORCH[t.dtype] if dtype is None else torch.promote_types(dtype, _TORCH[t.dtype])
    if dtype is None:  # only rank-0 tensors
        for t in tensors:
            dtype = _TORCH[t.dtype] if dtype is None else torch.promote_types(dtype, _TORCH[t.dtype])
    for o in operands:
        if isinstance(o, bool) or o is None or isinstance(o, Value):
            continue
        if isinstance(o, float) and (dtype is None or not dtype.is_floating_point):
            dtype = torch.float32
        elif isinstance(o, int) and dtype is None:
            dtype = torch.int64
    return _NAME[dtype] if dtype is not None else "f32"


def operand(ctx: Ctx, x, dtype: str) -> Value:
    """A tensor operand of ``dtype``: casts tensors, materializes Python scalars."""
    if isinstance(x, Value):
        return ctx.cast(x, dtype)
    if isinstance(x, Dim):
        v = ctx.op("tract_core_cast", _dim_tensor(ctx, x), to=dtype, shape=(), dtype=dtype,
                   name="dim")
        return v
    if isinstance(x, bool):
        x = int(x) if dtype != "bool" else x
    return ctx.scalar(x, dtype)


def _dim_tensor(ctx, d: Dim):
    return d


def same_dtype(ctx: Ctx, *xs, dtype: str | None = None) -> list[Value]:
    """Operands of one dtype and one rank (tract aligns ranks on the left, torch on the right,
    so lower-rank tensors get leading unit axes; rank-0 values broadcast as they are)."""
    dtype = dtype or promote(*xs)
    values = [operand(ctx, x, dtype) for x in xs]
    rank = max((v.rank for v in values if v.shape is not None), default=0)
    return [broadcast_rank(ctx, v, rank) for v in values]


def broadcast_rank(ctx: Ctx, v: Value, rank: int) -> Value:
    """``v`` with leading unit axes added up to ``rank`` (rank-0 values are left alone)."""
    if v.shape is None or v.rank == 0 or v.rank >= rank:
        return v
    n = rank - v.rank
    return ctx.op("unsqueeze", v, axes=list(range(n)), shape=(1,) * n + tuple(v.shape),
                  dtype=v.dtype, name=f"{v.name}_r{rank}")


def outputs_read(ctx: Ctx) -> set | None:
    """The indices of a multi-output node's outputs that some op reads (None when a user
    takes the whole tuple)."""
    read = set()
    for user in ctx.node.users:
        if user.target is not operator.getitem:
            return None
        if user.users:
            read.add(user.args[1])
    return read


def is_static(d) -> bool:
    return isinstance(d, int)


def dim_add(a, b):
    """Sum of two sizes that may be symbolic."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if isinstance(b, int) and b == 0:
        return a
    if isinstance(a, int) and a == 0:
        return b
    return Dim(f"({_expr(a)} + {_expr(b)})")


def dim_sub(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    if isinstance(b, int) and b == 0:
        return a
    return Dim(f"({_expr(a)} - {_expr(b)})")


def dim_mul(a, b):
    """Product of two sizes that may be symbolic."""
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 1 or b == 1:
        return b if a == 1 else a
    return Dim(f"({_expr(a)} * {_expr(b)})")


def _expr(d) -> str:
    return d.expr if isinstance(d, Dim) else str(d)
