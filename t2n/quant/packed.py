"""The torch side shared by the read-only quantized tensors of ``t2n.quant`` (Q4_0, Q8_1, int8
rows).

A ``PackedTensor`` is a wrapper subclass that stands for a float tensor (its ``shape`` and
``dtype``) while holding only plain inner tensors (its packed form). Every op that reads it gets
the dequantized float tensor, computed again at each use and never cached, so its results are
plain tensors; ``detach``/``alias``/``clone`` and ``.to()`` (a device, or another float dtype,
which only relabels the dequantized dtype) keep it packed, so a model converted to f16 keeps
its quantized weights; ``embedding`` decodes only the rows looked up. Ops that would write to it
(in-place and ``out=`` variants, ``t[i] = v``, ``t.data = v``) raise. ``torch.export`` keeps
it as it is in the program's state dict, where the translator finds it by parameter name.

Q4_0, Q8_1 and int8-rows tensors all use it: a subclass names its inner tensors, rebuilds
itself from them and decodes.
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

__all__ = ["PackedTensor"]

aten = torch.ops.aten

# Ops whose result is the same packed tensor (possibly moved or relabelled to another float
# dtype); every other op sees the dequantized float tensor.
_KEEP = {aten.detach.default, aten.alias.default, aten.clone.default, aten._to_copy.default}


class PackedTensor(torch.Tensor):
    """Base class; subclasses define ``INNER`` (names of the inner tensors), ``_make(inner,
    shape, dtype)``, ``dequantize()`` and ``_lookup(indices)`` (the rows of a 2-D table)."""

    INNER: tuple[str, ...] = ()

    @classmethod
    def _wrap(cls, shape, dtype: torch.dtype, device) -> PackedTensor:
        """The wrapper itself (a subclass's ``__new__`` returns it)."""
        return torch.Tensor._make_wrapper_subclass(cls, torch.Size(shape), dtype=dtype,
                                                   device=device, requires_grad=False)

    @classmethod
    def _make(cls, inner: dict, shape, dtype: torch.dtype) -> PackedTensor:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.dequantize()[indices]

    @property
    def nbytes_packed(self) -> int:
        """Bytes of the packed form (what the bundle stores, without .dat headers)."""
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in self.INNER)

    def __repr__(self, *, tensor_contents=None) -> str:
        return (f"{type(self).__name__}(shape={list(self.shape)}, dtype={self.dtype}, "
                f"{self.nbytes_packed} bytes packed)")

    def __tensor_flatten__(self):
        return list(self.INNER), (tuple(self.shape), self.dtype)

    @classmethod
    def __tensor_unflatten__(cls, inner, meta, outer_size, outer_stride):
        return cls._make(inner, *meta)

    def _remade(self, fn, dtype: torch.dtype) -> PackedTensor:
        return self._make({n: fn(getattr(self, n)) for n in self.INNER}, tuple(self.shape), dtype)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__setitem__:
            _read_only(cls, "t[...] = value")
        if _is_data_setter(func):
            _read_only(cls, "t.data = value")
        if func is torch.Tensor.numpy:  # a copy: torch refuses .numpy() on tensor subclasses
            return args[0].dequantize().numpy(**kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                target = args[i] if i < len(args) else kwargs.get(arg.name)
                hit = [t for t in _leaves(target) if isinstance(t, PackedTensor)]
                if hit:
                    _read_only(type(hit[0]), str(func))
        first = args[0] if args else None
        if func is aten.embedding.default and isinstance(first, PackedTensor) \
                and first.dim() == 2:
            return first._lookup(args[1])
        if func in _KEEP and isinstance(first, PackedTensor):
            kept = _kept(func, first, kwargs)
            if kept is not None:
                return kept
        return func(*tree_map(_plain, args), **tree_map(_plain, kwargs))


def _kept(func, t: PackedTensor, kwargs) -> PackedTensor | None:
    """``func(t)`` still packed, or None when the result cannot stay packed."""
    if func is aten.clone.default:
        return t._remade(torch.clone, t.dtype)
    if func is not aten._to_copy.default:
        return t._remade(lambda x: x, t.dtype)
    dtype = kwargs.get("dtype") or t.dtype
    if not dtype.is_floating_point or kwargs.get("layout") not in (None, torch.strided):
        return None
    device = kwargs.get("device") or t.device
    return t._remade(lambda x: x.to(device, copy=True), dtype)


def _plain(value):
    return value.dequantize() if isinstance(value, PackedTensor) else value


def _is_data_setter(func) -> bool:
    return (getattr(func, "__name__", None) == "__set__"
            and getattr(getattr(func, "__self__", None), "__name__", None) == "data")


def _leaves(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _read_only(cls, what: str):
    raise RuntimeError(f"{cls.__name__} is read-only: {what} would write to it; use "
                       f"t.dequantize() for a float copy or {cls.__name__}.from_float(new) to "
                       "replace it")
