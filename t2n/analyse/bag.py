"""The bag of compression methods the analyser chooses from, and running them on the blocks.

A bag maps labels to methods: a registry compression (built-in or a user's registry by dotted
path) with options (``gptq_q4_0_all`` with ``damp=0.02`` is a variant of its own). Bags compose:
``Bag.union(a, b)`` or ``Bag(a, b)`` is the bag of bags. "Keep float" is always a choice and is
never in the bag.

Each method runs once on its own copy of the model (calibrated methods see the calibration data
as in an export); what the analyser keeps of a copy is, for every block, the module the method
left there (a Linear with Q4_0 weights, an 8-bit layer, ...) -- a block the method did not change
is not a choice for that method.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

from torch import nn

from t2n.errors import CompressionError

__all__ = ["Method", "Bag", "parse_method", "run_methods"]

log = logging.getLogger("t2n.analyse")


@dataclass(frozen=True)
class Method:
    """One choice of the bag: ``compression`` from ``registry`` (None: built-in) with
    ``options`` (``{name: value}``)."""
    compression: str
    options: tuple = ()          # sorted (key, value) pairs, so the method hashes
    registry: str | None = None

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return self.compression + (f"[{opts}]" if opts else "")

    def as_json(self) -> dict:
        out = {"compression": self.compression, "options": dict(self.options)}
        if self.registry:
            out["registry"] = self.registry
        return out

    @classmethod
    def from_json(cls, d: dict) -> Method:
        return cls(str(d["compression"]), tuple(sorted((d.get("options") or {}).items())),
                   d.get("registry"))


def parse_method(text: str, registry: str | None = None) -> Method:
    """``NAME`` or ``NAME[key=value,key=value]`` (values kept as text; the registry function's
    signature converts them, as --compression-option does)."""
    text = text.strip()
    name, _, rest = text.partition("[")
    options = []
    if rest:
        if not rest.endswith("]"):
            raise CompressionError(f"bad method {text!r}", "write NAME or NAME[key=value,...]")
        for item in filter(None, (s.strip() for s in rest[:-1].split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise CompressionError(f"bad option {item!r} in {text!r}", "write key=value")
            options.append((key.strip(), value.strip()))
    if not name:
        raise CompressionError(f"bad method {text!r}", "write NAME or NAME[key=value,...]")
    return Method(name.strip(), tuple(sorted(options)), registry)


@dataclass
class Bag:
    """Methods by label. ``Bag("gptq_q4_0_all", other_bag, "ptq_int8[percentile=99.9]")``."""
    methods: dict = field(default_factory=dict)

    def __init__(self, *items, registry: str | None = None):
        self.methods = {}
        for item in items:
            self.add(item, registry)

    def add(self, item, registry: str | None = None) -> None:
        if isinstance(item, Bag):
            for m in item.methods.values():
                self.add(m)
            return
        if isinstance(item, (list, tuple)):
            for x in item:
                self.add(x, registry)
            return
        method = item if isinstance(item, Method) else parse_method(str(item), registry)
        if method.label == "float":
            raise CompressionError("'float' is always a choice", "leave it out of the bag")
        self.methods.setdefault(method.label, method)

    @classmethod
    def union(cls, *bags) -> Bag:
        return cls(*bags)

    def __iter__(self):
        return iter(self.methods.values())

    def __len__(self) -> int:
        return len(self.methods)

    def check(self) -> None:
        """Every method resolves in its registry, and its options are parameters it takes."""
        from t2n.compress.registry import bind_options, load_registry, resolve
        if not self.methods:
            raise CompressionError("the bag of methods is empty",
                                   "give at least one compression, e.g. --method gptq_q4_0_all")
        for m in self:
            fn = resolve(m.compression, load_registry(m.registry), m.registry)
            bind_options(fn, m.compression, dict(m.options))


def run_methods(model: nn.Module, bag: Bag, units, *, make_calibration, tokenizer=None,
                progress=None) -> dict:
    """``{method label: {unit name: [module per block of the unit]}}``: each method applied to
    a copy of ``model``; a unit is a choice for a method when the method changed every block of
    it. ``make_calibration(method)`` gives the Calibration for a method (or None)."""
    from t2n import compress
    out = {}
    for m in bag:
        work = copy.deepcopy(model)
        cal = make_calibration(m)
        log.info("analyse: running %s", m.label)
        work = compress.apply(work, m.compression, registry_path=m.registry,
                              tokenizer=tokenizer, calibration=cal, options=dict(m.options))
        done = {}
        for unit in units:
            mods = [work.get_submodule(b) for b in unit.blocks]
            if all(unit.changed(i, mod) for i, mod in enumerate(mods)):
                done[unit.name] = mods
        if not done:
            log.warning("analyse: %s changed none of the blocks", m.label)
        out[m.label] = done
        del work
        if progress is not None:
            progress.update(1)
    return out
