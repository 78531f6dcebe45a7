"""Find a compression function by name in the built-in registry or a user's registry module.

A registry is a mapping of name -> callable ``fn(model, tokenizer, export_dirpath, local_dir)``
that returns the model with chosen weights swapped for quantized tensors (the contract
torch-to-nnef registries follow, so existing registry modules work unchanged).
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping

from t2n.errors import CompressionError, LoadError
from t2n.memory import drop_weight_pages, free_memory

__all__ = ["BUILTIN", "load_registry", "resolve", "apply", "describe"]

log = logging.getLogger(__name__)

# Filled by the method modules of this package (one file per method).
BUILTIN: dict = {}


def load_registry(path: str | None) -> Mapping:
    """The registry at ``pkg.mod:NAME`` / ``pkg.mod.NAME``, or the built-in one."""
    if not path:
        return BUILTIN
    from t2n.load import resolve_module_path
    try:
        registry = resolve_module_path(path)
    except LoadError as e:
        raise CompressionError(f"compression registry {path!r}: {e.message}", e.hint) from e
    if not isinstance(registry, Mapping):
        raise CompressionError(f"compression registry {path!r} is a {type(registry).__name__}, "
                               "not a mapping", "point to a dict of name -> function")
    bad = [k for k, v in registry.items() if not callable(v)]
    if bad:
        raise CompressionError(f"compression registry {path!r} has entries that are not "
                               f"callable: {', '.join(map(str, bad))}",
                               "map each name to fn(model, tokenizer, export_dirpath, local_dir)")
    return registry


def resolve(name: str, registry: Mapping, registry_path: str | None = None):
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, [str(k) for k in registry], n=1)
    where = f"registry {registry_path}" if registry_path else "the built-in registry"
    hint = (f"did you mean {close[0]!r}? " if close else "") + (
        f"known: {', '.join(sorted(map(str, registry)))}" if registry else f"{where} is empty")
    raise CompressionError(f"unknown compression {name!r} in {where}",
                           hint + "; see 't2n compressions'")


def describe(registry: Mapping) -> list[tuple[str, str]]:
    """(name, first docstring line) for each entry."""
    rows = []
    for name, fn in registry.items():
        doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
        rows.append((str(name), doc[0] if doc else ""))
    return rows


def apply(model, name: str, *, registry_path: str | None = None, tokenizer=None,
          export_dirpath=None, local_dir=None, calibration=None):
    """Run compression ``name`` on ``model``; returns the compressed model.

    ``calibration`` (t2n.compress.ptq.Calibration: representative inputs and the observer) is
    passed as the keyword ``calibration`` to functions that declare it or take ``**kwargs``.

    Memory: the pages of weights mapped from files (read by a float reference pass before) are
    handed back first, and the heap is trimmed of the quantization temporaries after.
    """
    registry = load_registry(registry_path)
    fn = resolve(name, registry, registry_path)
    drop_weight_pages(model)
    extra = {"calibration": calibration} if calibration is not None and _takes(
        fn, "calibration") else {}
    try:
        # keywords, as torch-to-nnef calls them: registries written as fn(model, **kwargs) work
        result = fn(model, tokenizer=tokenizer, export_dirpath=export_dirpath,
                    local_dir=local_dir, **extra)
    except CompressionError:
        raise
    except Exception as e:
        raise CompressionError(f"compression {name!r} failed: {type(e).__name__}: {e}",
                               "check the registry function; -v shows the traceback") from e
    if result is None:
        result = model  # functions that change the model in place
    free_memory()
    return result


def _takes(fn, keyword: str) -> bool:
    import inspect
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in params)
