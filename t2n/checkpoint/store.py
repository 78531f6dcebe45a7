"""Quantized checkpoints: a folder a compressed model is saved to once and exported from many
times.

Layout (written whole into a temporary folder beside the destination, then moved in place)::

    model.safetensors     every tensor of the model, each stored once (tied ones once):
                          a float tensor as it is; a Q4_0 weight ``NAME`` as two tensors,
                          ``NAME.q4_0_scales`` (float16 [n_blocks]) and ``NAME.q4_0_levels``
                          (uint8 [n_blocks, 16], two levels per byte as GGML/tract pack them:
                          low nibble value j, high nibble value j + 16, stored as level + 8);
                          an 8-bit weight (ptq_int8) as ``NAME.int8_levels`` (int8, or uint8
                          for an unsigned grid), its scale and zero point in the map; a Q8_1
                          table as ``NAME.q8_1_scales`` (float16 [n_blocks]) and
                          ``NAME.q8_1_levels`` (int8 [n_blocks, 32]); an int8-rows weight
                          (w8_per_row) as ``NAME.w8_levels`` (int8, its shape) and
                          ``NAME.w8_scales`` (float32 [rows])
    quantization.json     the map: format and version, how to rebuild the module (a
                          transformers class with its config, or a dotted path), the 8-bit
                          layers that replace float ones (their input/output quantization),
                          and for each tensor name its storage (float / q4_0 / int8 / q8_1 /
                          w8_per_row), logical
                          shape and float dtype, or the name it is tied to; plus the record of
                          how it was made
                          (compression, options, calibration source and digest, t2n version)
    config.json, tokenizer files   as transformers writes them (Hugging Face models)

Loading reads JSON and safetensors only (never unpickles), builds the module without
allocating its weights (on the meta device) and puts the stored tensors in: a Q4_0 weight
comes back as the same read-only ``Q4_0Tensor`` the compressors produce (``Q8_1Tensor``,
``W8Tensor`` likewise).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from t2n.errors import LoadError, WriteError
from t2n.quant.q4_0 import BLOCK, BLOCK_BYTES, Q4_0Tensor
from t2n.quant.q8_1 import Q8_1Tensor
from t2n.quant.w8 import W8Tensor

__all__ = ["FORMAT", "MAP_NAME", "WEIGHTS_NAME", "Checkpoint", "is_checkpoint",
           "save_quantized", "load_quantized", "read_map"]

log = logging.getLogger(__name__)

FORMAT, VERSION = "t2n-quantized", 1
MAP_NAME, WEIGHTS_NAME = "quantization.json", "model.safetensors"
_SCALES, _LEVELS = ".q4_0_scales", ".q4_0_levels"
_INT8 = ".int8_levels"
_Q8_1_SCALES, _Q8_1_LEVELS = ".q8_1_scales", ".q8_1_levels"
_W8_LEVELS, _W8_SCALES = ".w8_levels", ".w8_scales"
_QDTYPES = {"qint8": torch.qint8, "quint8": torch.quint8}
_REMAKE = "quantize the model again with 't2n quantize'"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the module, its tokenizer (or None) and the record of how it was
    quantized (``compression``, ``options``, ``calibration``, ``t2n_version``...)."""
    module: nn.Module
    tokenizer: object = None
    record: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def compression(self) -> str | None:
        return self.record.get("compression")


def is_checkpoint(path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / MAP_NAME).is_file()


# -- save ---------------------------------------------------------------------------------------
def _tensors(model: nn.Module):
    """``(name, tensor, kind)`` of every parameter and buffer, tied ones included (kind
    ``param``/``buffer``), in module order."""
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for leaf, t in module._parameters.items():
            if t is not None:
                yield prefix + leaf, t, "param"
        for leaf, t in module._buffers.items():
            if t is not None:
                yield prefix + leaf, t, "buffer"


def _builder(model: nn.Module, source: str | None) -> dict:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string") \
            and type(model).__module__.startswith("transformers"):
        return {"kind": "transformers", "class": type(model).__name__}
    if source and ":" in source:
        return {"kind": "module", "path": source}
    raise WriteError(f"cannot record how to rebuild a {type(model).__name__}",
                     "save a transformers model, or give source='package.module:attr' (the "
                     "dotted path t2n loaded it from)")


def _qparams_out(qparams) -> list | None:
    if qparams is None:
        return None
    scale, zero_point, dtype = qparams
    return [float(scale), int(zero_point), str(dtype).replace("torch.", "")]


def _qparams_in(value) -> tuple | None:
    if value is None:
        return None
    scale, zero_point, dtype = value
    return float(scale), int(zero_point), _QDTYPES[dtype]


def _eight_bit_layers(model: nn.Module) -> tuple[dict, dict]:
    """``(layers, weights)``: each 8-bit layer ptq_int8 made (name -> how to rebuild it around
    the float layer it replaced) and the weight parameters they hold (id -> weight qparams)."""
    from t2n.quant.int8 import FakeQuant, QuantizedConv, QuantizedLinear, _QuantizedLayer
    layers, weights = {}, {}
    for name, m in model.named_modules():
        if type(m) in (QuantizedLinear, QuantizedConv):
            layers[name] = {"type": "linear" if type(m) is QuantizedLinear else "conv",
                            "weight": _qparams_out(m.w_qparams),
                            "input": _qparams_out(m.in_qparams),
                            "output": _qparams_out(m.out_qparams), "relu": bool(m.relu)}
            weights[id(m.weight)] = m.w_qparams
        elif isinstance(m, (FakeQuant, _QuantizedLayer)):
            raise WriteError(f"{name or 'the model'} is a {type(m).__name__}, which a checkpoint "
                             "cannot store", "save models compressed by ptq_int8 or to Q4_0")
    return layers, weights


def _int8_levels(name: str, t: torch.Tensor, qparams) -> torch.Tensor:
    """The integer levels of a weight on its 8-bit grid (refused if it is off the grid)."""
    scale, zero_point, dtype = qparams
    lo, hi = (-128, 127) if dtype == torch.qint8 else (0, 255)
    w = t.detach().cpu().float()
    q = (torch.round(w / scale) + zero_point).clamp(lo, hi)
    if not torch.equal((q - zero_point) * scale, w):
        raise WriteError(f"8-bit weight {name} is not on its grid (scale {scale}, zero point "
                         f"{zero_point})", "save the model ptq_int8 returned, unchanged")
    return q.to(torch.int8 if dtype == torch.qint8 else torch.uint8)


def save_quantized(model: nn.Module, path, *, tokenizer=None, record: dict | None = None,
                   source: str | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` (compressed by a t2n compression) as a checkpoint folder at ``path``.

    ``record``: how it was made (defaults to what ``t2n.quantize`` attached to the model);
    ``source``: the dotted path to rebuild a model that is not a transformers one."""
    from safetensors.torch import save_file
    from t2n import __version__
    from t2n.nnef.bundle import staging
    path = Path(path)
    builder = _builder(model, source)
    record = dict(record if record is not None else getattr(model, "t2n_quantization", {}))
    record.setdefault("t2n_version", __version__)
    layers, int8_weights = _eight_bit_layers(model)
    folder = staging(path, overwrite)
    try:
        stored: dict[str, torch.Tensor] = {}
        entries: dict[str, dict] = {}
        seen: dict[int, str] = {}
        for name, t, kind in _tensors(model):
            key = id(t)
            if key in seen:
                entries[name] = {"tied_to": seen[key], "kind": kind}
                continue
            seen[key] = name
            shape, dtype = list(t.shape), str(t.dtype).replace("torch.", "")
            if isinstance(t, Q4_0Tensor):
                raw = t.packed.detach().cpu()
                stored[name + _SCALES] = raw[:, :2].contiguous().view(torch.float16).reshape(-1)
                stored[name + _LEVELS] = raw[:, 2:].contiguous()
                entries[name] = {"storage": "q4_0", "shape": shape, "dtype": dtype,
                                 "kind": kind}
            elif isinstance(t, Q8_1Tensor):
                raw = t.packed.detach().cpu()
                stored[name + _Q8_1_SCALES] = raw[:, 0:2].contiguous().view(torch.float16) \
                    .reshape(-1)
                stored[name + _Q8_1_LEVELS] = raw[:, 4:].contiguous().view(torch.int8)
                entries[name] = {"storage": "q8_1", "shape": shape, "dtype": dtype,
                                 "kind": kind}
            elif isinstance(t, W8Tensor):
                stored[name + _W8_LEVELS] = t.levels.detach().cpu().contiguous()
                stored[name + _W8_SCALES] = t.scales.detach().cpu().contiguous()
                entries[name] = {"storage": "w8_per_row", "shape": shape, "dtype": dtype,
                                 "kind": kind}
            elif key in int8_weights:
                scale, zero_point, qdtype = _qparams_out(int8_weights[key])
                stored[name + _INT8] = _int8_levels(name, t, int8_weights[key])
                entries[name] = {"storage": "int8", "scale": scale, "zero_point": zero_point,
                                 "qdtype": qdtype, "shape": shape, "dtype": dtype,
                                 "kind": kind}
            else:
                if type(t) not in (torch.Tensor, nn.Parameter):
                    raise WriteError(f"tensor {name} is a {type(t).__name__}, which a "
                                     "checkpoint cannot store",
                                     "save models compressed to Q4_0 or left in float")
                stored[name] = t.detach().cpu().contiguous()
                entries[name] = {"storage": "float" if t.is_floating_point() else "plain",
                                 "shape": shape, "dtype": dtype, "kind": kind}
        save_file(stored, str(folder / WEIGHTS_NAME), metadata={"format": FORMAT})
        qmap = {"format": FORMAT, "version": VERSION, "builder": builder,
                "record": record, "tensors": entries}
        if layers:
            qmap["int8_layers"] = layers
        (folder / MAP_NAME).write_text(json.dumps(qmap, indent=1, default=str) + "\n")
        if builder["kind"] == "transformers":
            model.config.save_pretrained(folder)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(folder)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(folder, path)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    log.info("checkpoint: %s (%d tensors, %.1f MB)", path, len(stored),
             (path / WEIGHTS_NAME).stat().st_size / 1e6)
    return path


# -- load ---------------------------------------------------------------------------------------
def read_map(path) -> dict:
    """The checkpoint's quantization map, checked."""
    path = Path(path)
    try:
        qmap = json.loads((path / MAP_NAME).read_text())
    except FileNotFoundError as e:
        raise LoadError(f"{path} is not a t2n checkpoint (no {MAP_NAME})", _REMAKE) from e
    except (OSError, ValueError) as e:
        raise LoadError(f"{path / MAP_NAME} is unreadable: {e}", _REMAKE) from e
    if not isinstance(qmap, dict) or qmap.get("format") != FORMAT:
        raise LoadError(f"{path / MAP_NAME} is not a t2n quantization map", _REMAKE)
    if qmap.get("version") != VERSION:
        raise LoadError(f"{path} is a version {qmap.get('version')} checkpoint; this t2n reads "
                        f"version {VERSION}", "quantize again with this t2n version")
    return qmap


def _build(path: Path, builder: dict, dtype: torch.dtype | None) -> nn.Module:
    if builder.get("kind") == "transformers":
        import transformers
        cls = getattr(transformers, str(builder.get("class")), None)
        if cls is None:
            raise LoadError(f"{path} was saved from transformers' {builder.get('class')}, "
                            f"which transformers {transformers.__version__} lacks",
                            "install the transformers version it was made with")
        config = transformers.AutoConfig.from_pretrained(path)
        if hasattr(config, "use_cache"):
            config.use_cache = False
        with torch.device("meta"):
            return cls._from_config(config, dtype=dtype or torch.float32)
    if builder.get("kind") == "module":
        from t2n.load import _module_from_path
        return _module_from_path(builder["path"])
    raise LoadError(f"{path / MAP_NAME} does not say how to rebuild the model", _REMAKE)


def _set(model: nn.Module, name: str, value: torch.Tensor, kind: str) -> None:
    mod_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(mod_name) if mod_name else model
    except AttributeError as e:
        raise LoadError(f"the rebuilt model has no module for tensor {name}", _REMAKE) from e
    if kind == "param":
        module._parameters[leaf] = value if isinstance(value, nn.Parameter) else \
            nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[leaf] = value


def _swap_int8_layers(path: Path, model: nn.Module, layers: dict) -> None:
    """Put the 8-bit layers back in place of the float ones they replaced."""
    from t2n.quant.int8 import QuantizedConv, QuantizedLinear, set_submodule
    for name, spec in layers.items():
        try:
            base = model.get_submodule(name)
            w_q, in_q, out_q = (_qparams_in(spec[k]) for k in ("weight", "input", "output"))
            if spec["type"] == "linear":
                new = QuantizedLinear(base.weight, base.bias, w_q, out_q, spec["relu"], in_q)
            else:
                new = QuantizedConv(base, w_q, out_q, spec["relu"], in_q)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise LoadError(f"{path / MAP_NAME}: 8-bit layer {name} cannot be rebuilt ({e})",
                            _REMAKE) from e
        set_submodule(model, name, new)


def load_quantized(path, *, dtype: str | None = None) -> Checkpoint:
    """The model of checkpoint ``path``, its tokenizer and record. ``dtype`` ("f32"/"f16"):
    the float type of its float tensors (Q4_0 weights keep their blocks)."""
    from safetensors import safe_open
    path = Path(path)
    qmap = read_map(path)
    want = {"f16": torch.float16, "f32": torch.float32, None: None}[dtype]
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise LoadError(f"{path} has no {WEIGHTS_NAME}", _REMAKE)
    model = _build(path, qmap.get("builder", {}), want)
    _swap_int8_layers(path, model, qmap.get("int8_layers", {}))
    entries = qmap.get("tensors", {})
    loaded: dict[str, torch.Tensor] = {}
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())

        def get(key):
            if key not in keys:
                raise LoadError(f"{weights} lacks tensor {key}", _REMAKE)
            return f.get_tensor(key)
        for name, e in entries.items():
            if "tied_to" in e:
                continue
            float_dtype = getattr(torch, e.get("dtype", "float32"))
            if e.get("storage") == "q4_0":
                scales, levels = get(name + _SCALES), get(name + _LEVELS)
                n = int(np.prod(e["shape"])) // BLOCK
                if tuple(scales.shape) != (n,) or tuple(levels.shape) != (n, BLOCK // 2):
                    raise LoadError(f"{weights}: Q4_0 tensor {name} {e['shape']} has scales "
                                    f"{list(scales.shape)} and levels {list(levels.shape)}",
                                    _REMAKE)
                packed = torch.empty((n, BLOCK_BYTES), dtype=torch.uint8)
                packed[:, :2] = scales.contiguous().view(torch.uint8).reshape(n, 2)
                packed[:, 2:] = levels
                value = Q4_0Tensor(packed, e["shape"], want or float_dtype)
            elif e.get("storage") == "q8_1":
                scales, levels = get(name + _Q8_1_SCALES), get(name + _Q8_1_LEVELS)
                try:
                    value = Q8_1Tensor.from_blocks(scales, levels, e["shape"],
                                                   want or float_dtype)
                except (TypeError, ValueError) as err:
                    raise LoadError(f"{weights}: Q8_1 tensor {name} {e['shape']}: {err}",
                                    _REMAKE) from err
            elif e.get("storage") == "w8_per_row":
                levels, scales = get(name + _W8_LEVELS), get(name + _W8_SCALES)
                if list(levels.shape) != list(e["shape"]):
                    raise LoadError(f"{weights}: int8-rows tensor {name} is "
                                    f"{list(levels.shape)}, the map says {e['shape']}", _REMAKE)
                try:
                    value = W8Tensor.from_levels(levels, scales, want or float_dtype)
                except (TypeError, ValueError) as err:
                    raise LoadError(f"{weights}: int8-rows tensor {name}: {err}",
                                    _REMAKE) from err
            elif e.get("storage") == "int8":
                levels = get(name + _INT8)
                if list(levels.shape) != list(e["shape"]):
                    raise LoadError(f"{weights}: 8-bit tensor {name} is {list(levels.shape)}, "
                                    f"the map says {e['shape']}", _REMAKE)
                # the same float values ptq_int8 put on the grid, bit for bit
                value = (levels.to(torch.float32) - int(e["zero_point"])) * float(e["scale"])
                value = value.to(want or float_dtype)
            else:
                value = get(name)
                if list(value.shape) != list(e["shape"]):
                    raise LoadError(f"{weights}: tensor {name} is {list(value.shape)}, the map "
                                    f"says {e['shape']}", _REMAKE)
                if want is not None and value.is_floating_point():
                    value = value.to(want)
            loaded[name] = value
    objects: dict[str, torch.Tensor] = {}
    for name, e in entries.items():
        source = e.get("tied_to", name)
        if source not in loaded:
            raise LoadError(f"{path / MAP_NAME}: tensor {name} is tied to {source}, which is "
                            "not stored", _REMAKE)
        kind = e.get("kind", "param")
        if source not in objects:
            value = loaded[source]
            objects[source] = nn.Parameter(value, requires_grad=False) \
                if entries[source].get("kind", "param") == "param" else value
        _set(model, name, objects[source], kind)
    missing = [n for n, t, _ in _tensors(model) if t.is_meta]
    if missing:
        raise LoadError(f"{path} lacks {len(missing)} tensor(s) of the model, e.g. "
                        f"{missing[0]}", _REMAKE)
    model.eval()
    model.t2n_quantization = dict(qmap.get("record", {}))
    tokenizer = None
    if qmap["builder"].get("kind") == "transformers" and any(
            (path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        import transformers
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        except Exception as e:   # a model without a usable tokenizer still exports
            log.debug("no tokenizer for %s: %s", path, e)
    return Checkpoint(model, tokenizer, model.t2n_quantization, path)
