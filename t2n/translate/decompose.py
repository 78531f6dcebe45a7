"""torch's own decompositions, for the ops that have no translator, and for those alone.

An op with no translator is replaced by torch's decomposition of it (torch.export's default
table: the Core ATen decompositions and the CompositeImplicitAutograd kernels; else the wider
``torch._decomp`` table), applied with ``ExportedProgram.run_decompositions`` restricted to the
missing ops, so the high-level ops that translate stay whole (tract's fast operators: sdpa,
layer norm, ...). The ops a decomposition brings in are looked at again, until nothing missing
decomposes further; what is left is reported by the translator as before.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

import torch
from torch.export import ExportedProgram

from t2n.translate.registry import op_name

__all__ = ["decompose_missing", "decomposition_of", "missing_targets"]

log = logging.getLogger("t2n.translate")


def decomposition_of(op) -> Callable | None:
    """torch's decomposition of ``op`` (an OpOverload), or None when it has none."""
    if not isinstance(op, torch._ops.OpOverload):
        return None
    table = _default_table()
    if op in table:
        return table[op]
    from torch._decomp import decomposition_table
    if op in decomposition_table:
        return decomposition_table[op]
    if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd"):
        return op.decompose       # the op's own composite kernel
    return None


_DEFAULT = None


def _default_table():
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = torch.export.default_decompositions()
    return _DEFAULT


def missing_targets(program: ExportedProgram) -> Counter:
    """{op overload: node count} of the ops with no translator (subgraphs included)."""
    from t2n.translate.engine import _untranslated
    found: Counter = Counter()
    _untranslated(program.graph_module, found)
    return found


def decompose_missing(program: ExportedProgram) -> ExportedProgram:
    """``program`` with every op that has no translator, but whose torch decomposition ends in
    ops that translate, decomposed; an op whose decomposition leaves untranslatable ops stays
    as it is (the error then names the user's op, not the pieces of its decomposition)."""
    for op in sorted(missing_targets(program), key=op_name):
        done = _decomposed(program, op, frozenset())
        if done is not None:
            program, ops = done
            log.info("decomposed (no translator): %s", ", ".join(ops))
    return program


def _decomposed(program: ExportedProgram, op, outer: frozenset):
    """(program with ``op`` decomposed, names of the ops decomposed), following the new ops
    its decomposition brings in, or None when the result does not translate in full."""
    fn = decomposition_of(op)
    if fn is None or op in outer:
        return None
    before = missing_targets(program)
    try:
        out = program.run_decompositions({op: fn})
    except Exception as e:          # torch could not apply its own decomposition here
        log.debug("decomposing %s failed: %s", op_name(op), e)
        return None
    after = missing_targets(out)
    if op in after:
        return None
    names = [f"{op_name(op)} x{before[op]}"]
    for new in sorted((t for t in after if t not in before), key=op_name):
        done = _decomposed(out, new, outer | {op})
        if done is None:
            return None
        out, more = done
        names += more
    return out, names
