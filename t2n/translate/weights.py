"""Stored weights whose float values are computed in the graph: int8 levels with one float32
scale per row (``t2n.quant.w8.W8Tensor``, the ``w8_per_row*`` compressions).

For a weight ``NAME`` of shape ``[m, ...]`` (dtype the model's float type)::

    NAME       = variable<integer>(label = "TARGET", shape = [m, ...]);        int8 .dat
    NAME_scale = variable<scalar>(label = "TARGET.scale", shape = [m, 1, ...]); float32 .dat
    NAME_f32   = mul(tract_core_cast(NAME, to = "f32"), NAME_scale);
    NAME_f16   = tract_core_cast(NAME_f32, to = "f16");     (f16 models only)

Readers of the weight (linear, conv, ...) get the last value; tract folds it into a float
constant at load (``linalg`` cuts weights above ``FOLD_VALUES`` into row pieces so that it
does). An embedding lookup gathers the int8 rows and their scales instead and dequantizes only
those (``gather_rows``); the whole-table operations are then pruned as unused.
"""
from __future__ import annotations

from t2n.translate.context import Ctx, Value

__all__ = ["int8_rows_weight", "gather_rows"]


def int8_rows_weight(ctx: Ctx, name: str, label: str, tensor, dtype: str) -> Value:
    """Declare ``tensor`` (a W8Tensor) as its levels and scales and emit its dequantization;
    returns the float weight of ``dtype``."""
    shape = tuple(tensor.shape)
    levels = ctx.variable(name, label, shape, "i8", lambda: tensor.levels.cpu().numpy(),
                          storage="w8_per_row")
    scale_shape = tuple(tensor.scale_shape)
    scales = ctx.variable(ctx.fresh(f"{name}_scale"), f"{label}.scale", scale_shape, "f32",
                          lambda: tensor.scales.cpu().numpy().reshape(scale_shape),
                          storage="w8_per_row")
    wide = ctx.op("tract_core_cast", levels, to="f32", shape=shape, dtype="f32",
                  name=f"{name}_i8_f32")
    value = ctx.op("mul", wide, scales, shape=shape, dtype="f32", name=f"{name}_f32")
    if dtype != "f32":
        value = ctx.op("tract_core_cast", value, to=dtype, shape=shape, dtype=dtype,
                       name=f"{name}_{dtype}")
    ctx.int8_rows[value.name] = (levels, scales)
    return value


def gather_rows(ctx: Ctx, weight: Value, indices: Value) -> Value | None:
    """``embedding(weight, indices)`` on the int8 rows when ``weight`` is an int8-rows weight
    (None otherwise): gather levels and scales, dequantize the rows looked up."""
    parts = ctx.int8_rows.get(weight.name) if isinstance(weight, Value) else None
    if parts is None:
        return None
    levels, scales = parts
    out = tuple(ctx.out.shape)
    rows = ctx.op("tract_core_gather", levels, indices, axis=0, shape=out, dtype="i8",
                  name=f"{levels.name}_rows")
    row_scales = ctx.op("tract_core_gather", scales, indices, axis=0,
                        shape=tuple(indices.shape) + (1,), dtype="f32",
                        name=f"{scales.name}_rows")
    wide = ctx.op("tract_core_cast", rows, to="f32", shape=out, dtype="f32")
    value = ctx.op("mul", wide, row_scales, shape=out, dtype="f32")
    return ctx.cast(value, ctx.out.dtype)
