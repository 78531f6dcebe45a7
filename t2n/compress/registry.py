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

__all__ = ["BUILTIN", "load_registry", "resolve", "apply", "describe", "bind_options",
           "option_names", "takes_calibration"]

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
          export_dirpath=None, local_dir=None, calibration=None, options=None):
    """Run compression ``name`` on ``model``; returns the compressed model.

    ``options`` (``{key: value}``, values may be text) set keyword parameters of the function:
    an unknown key is an error listing the valid ones.

    ``calibration`` (t2n.compress.ptq.Calibration: representative inputs and the observer) is
    passed as the keyword ``calibration`` to functions that declare it or take ``**kwargs``.

    Memory: the pages of weights mapped from files (read by a float reference pass before) are
    handed back first, and the heap is trimmed of the quantization temporaries after.
    """
    registry = load_registry(registry_path)
    fn = resolve(name, registry, registry_path)
    extra = bind_options(fn, name, options)
    drop_weight_pages(model)
    if calibration is not None and _takes(fn, "calibration"):
        extra["calibration"] = calibration
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
    if calibration is not None:
        calibration.loader = None   # its closure holds the model
        if calibration.report:
            calibration.report["compression"] = name
    free_memory()
    return result


def _params(fn) -> list:
    """``fn``'s parameters (none when it has no inspectable signature)."""
    import inspect
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []


def takes_calibration(fn) -> bool:
    """Whether ``fn`` declares a ``calibration`` parameter (a calibrated compression)."""
    return any(p.name == "calibration" for p in _params(fn))


def _takes(fn, keyword: str) -> bool:
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in _params(fn))


_FIXED = {"model", "tokenizer", "export_dirpath", "local_dir", "calibration"}


def option_names(fn) -> list[str]:
    """The keyword parameters of a compression function a user may set (its options)."""
    return [p.name for p in _params(fn) if p.name not in _FIXED
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def bind_options(fn, name: str, options: Mapping | None) -> dict:
    """``options`` checked against ``fn``'s parameters and converted to the type of each
    default (values given as text, like ``--compression-option iters=50``, become numbers)."""
    if not options:
        return {}
    valid = option_names(fn)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise CompressionError(
            f"compression {name!r} has no option {', '.join(map(repr, unknown))}",
            f"valid options: {', '.join(valid)}" if valid else f"{name!r} takes no options")
    params = {p.name: p for p in _params(fn)}
    return {k: _convert(k, v, params[k]) for k, v in options.items()}


def _convert(key: str, value, param):
    if not isinstance(value, str):
        return value
    default = param.default
    kind = param.annotation if isinstance(param.annotation, type) else (
        type(default) if default is not param.empty and default is not None else None)
    text = value.strip()
    if text.lower() in ("none", "null") and (default is None or kind is None):
        return None
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind in (int, float):
            return kind(text)
    except ValueError:
        article = "an" if kind.__name__[0] in "aeiou" else "a"
        raise CompressionError(f"option {key}={value!r} is not {article} {kind.__name__}",
                               f"give {key}=<{kind.__name__}>") from None
    if kind is None:
        import ast
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return text
