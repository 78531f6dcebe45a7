"""A mixed-precision configuration: for every unit (a block, or blocks sharing a weight), one
method of the bag or float. Saved as JSON, applied by ``t2n export --mixed-config FILE``,
``t2n export-llm --mixed-config FILE`` and ``MixedConfig.apply``.

File format::

    {"format": "t2n-mixed", "version": 1,
     "methods": {"gptq_q4_0_all": {"compression": "gptq_q4_0_all", "options": {}}, ...},
     "units": {"model.layers.0.mlp.down_proj": {"blocks": ["model.layers.0.mlp.down_proj"],
                                                "choice": "gptq_q4_0_all"}, ...},
     "summary": {"constraint": "size", "budget": ..., "cost": ..., "estimate": ..., ...}}

Applying runs each method the configuration uses on a copy of the float model (with the
calibration an export would give it) and moves the chosen blocks' modules into the model; the
analyser applies from the modules it already has.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

from torch import nn

from t2n.analyse.bag import Method
from t2n.errors import CompressionError, LoadError

__all__ = ["FORMAT", "MixedConfig"]

log = logging.getLogger("t2n.analyse")

FORMAT, VERSION = "t2n-mixed", 1
FLOAT = "float"


class MixedConfig:
    """``units``: {unit name: [block names]}; ``choices``: {unit name: method label or
    "float"}; ``methods``: {label: Method}; ``summary``: figures of the run that chose it."""

    def __init__(self, units: dict, choices: dict, methods: dict, summary: dict | None = None):
        self.units, self.choices, self.methods = dict(units), dict(choices), dict(methods)
        self.summary = dict(summary or {})
        unknown = {c for c in self.choices.values() if c != FLOAT and c not in self.methods}
        if unknown:
            raise CompressionError(f"mixed configuration uses unknown method(s) "
                                   f"{', '.join(sorted(unknown))}", "list them under 'methods'")

    def counts(self) -> dict:
        out: dict = {}
        for c in self.choices.values():
            out[c] = out.get(c, 0) + 1
        return out

    # -- files ---------------------------------------------------------------------------------
    def as_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION,
                "methods": {k: m.as_json() for k, m in self.methods.items()
                            if k in set(self.choices.values())},
                "units": {u: {"blocks": list(self.units[u]), "choice": self.choices[u]}
                          for u in self.units},
                "summary": self.summary}

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.as_json(), indent=1, default=float) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> MixedConfig:
        path = Path(path)
        fix = "give a file written by 't2n analyse' (configs/*.json in its output folder)"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise LoadError(f"mixed configuration {path} does not exist", fix) from e
        except (OSError, ValueError) as e:
            raise LoadError(f"mixed configuration {path} is unreadable: {e}", fix) from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LoadError(f"{path} is not a t2n mixed configuration", fix)
        if data.get("version") != VERSION:
            raise LoadError(f"{path} is a version {data.get('version')} mixed configuration; "
                            f"this t2n reads version {VERSION}", "run 't2n analyse' again")
        try:
            methods = {k: Method.from_json(v) for k, v in data["methods"].items()}
            units = {u: list(v["blocks"]) for u, v in data["units"].items()}
            choices = {u: str(v["choice"]) for u, v in data["units"].items()}
        except (KeyError, TypeError, AttributeError) as e:
            raise LoadError(f"{path} is missing {e} in its units or methods", fix) from e
        return cls(units, choices, methods, data.get("summary"))

    # -- applying ------------------------------------------------------------------------------
    def apply(self, model: nn.Module, *, cache: dict | None = None, calibration=None,
              tokenizer=None) -> nn.Module:
        """Put each unit's chosen method in ``model`` (in place; returned). ``cache``: {label:
        {unit: [modules]}} from the analyser; other methods run on a copy of ``model`` with
        ``calibration``. ``remove(model)`` puts the float blocks back."""
        from t2n import compress
        from t2n.quant.int8 import set_submodule
        named = dict(model.named_modules())
        prefix = _prefix(named, [b for blocks in self.units.values() for b in blocks])
        if prefix:   # the model inside a wrapper (export-llm's KV-cache module)
            units = {u: [prefix + b for b in blocks] for u, blocks in self.units.items()}
            shifted = MixedConfig(units, self.choices, self.methods, self.summary)
            return shifted.apply(model, cache=cache, calibration=calibration,
                                 tokenizer=tokenizer)
        originals = getattr(model, "_t2n_mixed_originals", None)
        if originals is None:
            originals = {b: named[b] for blocks in self.units.values() for b in blocks}
        picked: dict = {}
        for label in sorted({c for c in self.choices.values() if c != FLOAT}):
            units = [u for u, c in self.choices.items() if c == label]
            if cache is not None and label in cache and all(u in cache[label] for u in units):
                source = {u: copy.deepcopy(cache[label][u]) for u in units}
            else:
                m = self.methods[label]
                work = copy.deepcopy(_float_view(model, originals))
                work = compress.apply(work, m.compression, registry_path=m.registry,
                                      tokenizer=tokenizer, calibration=calibration,
                                      options=dict(m.options))
                source = {u: [work.get_submodule(b) for b in self.units[u]] for u in units}
                del work
            picked.update(source)
        for u, blocks in self.units.items():
            mods = picked.get(u) or [originals[b] for b in blocks]
            for b, mod in zip(blocks, mods):
                set_submodule(model, b, mod)
        model._t2n_mixed_originals = originals
        log.info("mixed configuration: %s", ", ".join(f"{n} x {c}" for c, n in
                                                      sorted(self.counts().items())))
        return model

    def remove(self, model: nn.Module) -> nn.Module:
        """Put back the float blocks ``apply`` replaced."""
        from t2n.quant.int8 import set_submodule
        originals = getattr(model, "_t2n_mixed_originals", None)
        if originals is None:
            return model
        for b, mod in originals.items():
            set_submodule(model, b, mod)
        del model._t2n_mixed_originals
        return model


def _prefix(named: dict, blocks: list) -> str:
    """"" when the blocks are modules of the model, else the path of the submodule they are
    modules of (e.g. "model." for a wrapper holding the model as .model)."""
    if all(b in named for b in blocks):
        return ""
    for name in named:
        if name and all(f"{name}.{b}" in named for b in blocks):
            return name + "."
    missing = next(b for b in blocks if b not in named)
    raise CompressionError(f"the model has no module {missing!r} named in the mixed "
                           "configuration", "apply it to the model it was made for")


def _float_view(model: nn.Module, originals: dict) -> nn.Module:
    """``model`` with its float blocks in place (the model a method should start from)."""
    from t2n.quant.int8 import set_submodule
    current = {b: model.get_submodule(b) for b in originals}
    if all(current[b] is originals[b] for b in originals):
        return model
    view = copy.deepcopy(model)
    for b, mod in originals.items():
        set_submodule(view, b, copy.deepcopy(mod))
    return view
