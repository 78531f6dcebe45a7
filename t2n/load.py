"""Load a model and its example inputs from a dotted path, a Hugging Face folder or hub id."""
from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from t2n.compat import warn_untested
from t2n.errors import LoadError, OptionError

__all__ = ["Loaded", "InputSpec", "load_model", "parse_input_shape", "read_example_inputs",
           "resolve_module_path", "TASKS", "SAMPLE_SENTENCE"]

log = logging.getLogger(__name__)

SAMPLE_SENTENCE = "t2n exports PyTorch models to NNEF so that tract can run them anywhere."

# --task name -> transformers Auto class name
TASKS = {
    "feature-extraction": "AutoModel",
    "text-generation": "AutoModelForCausalLM",
    "fill-mask": "AutoModelForMaskedLM",
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "text2text-generation": "AutoModelForSeq2SeqLM",
    "image-classification": "AutoModelForImageClassification",
    "audio-classification": "AutoModelForAudioClassification",
}

_DTYPES = {"f32": torch.float32, "float32": torch.float32, "f16": torch.float16,
           "float16": torch.float16, "f64": torch.float64, "i64": torch.int64,
           "int64": torch.int64, "i32": torch.int32, "int32": torch.int32, "i8": torch.int8,
           "u8": torch.uint8, "bool": torch.bool}


@dataclass
class Loaded:
    """A model ready to trace: module, example inputs, and where it came from."""

    module: torch.nn.Module
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    source: str = ""
    tokenizer: object = None
    folder: Path | None = None
    quantized: str | None = None    # a checkpoint's compression (the weights are compressed)

    @property
    def input_names(self) -> list[str]:
        names = list(_forward_params(self.module))[: len(self.args)]
        return names + list(self.kwargs)


@dataclass(frozen=True)
class InputSpec:
    """One ``--input-shape NAME=1,3,224,224[:dtype]``."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32


def parse_input_shape(text: str) -> InputSpec:
    m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*=\s*([0-9][0-9,\s]*)(?::\s*(\w+))?\s*", text)
    if not m:
        raise OptionError(f"bad --input-shape {text!r}",
                          "write NAME=DIM,DIM,...[:dtype], e.g. x=1,3,224,224:f32")
    dims = [d.strip() for d in m.group(2).split(",") if d.strip()]
    dtype = (m.group(3) or "f32").lower()
    if dtype not in _DTYPES:
        raise OptionError(f"bad dtype {dtype!r} in --input-shape {text!r}",
                          f"use one of: {', '.join(sorted(set(_DTYPES)))}")
    return InputSpec(m.group(1), tuple(int(d) for d in dims), _DTYPES[dtype])


def read_example_inputs(path) -> dict[str, torch.Tensor]:
    """Named tensors from an .npz (never unpickled) or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"example inputs file {path} does not exist", "check the path")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        elif path.suffix == ".safetensors":
            from safetensors.numpy import load_file
            arrays = load_file(str(path))
        else:
            raise LoadError(f"example inputs file {path} is neither .npz nor .safetensors",
                            "save the inputs with numpy.savez or safetensors")
    except LoadError:
        raise
    except Exception as e:
        raise LoadError(f"cannot read example inputs {path}: {e}",
                        "save them with numpy.savez (no object arrays) or safetensors") from e
    if not arrays:
        raise LoadError(f"example inputs file {path} holds no arrays", "save at least one input")
    tensors = {}
    for k, v in arrays.items():
        try:
            tensors[k] = torch.from_numpy(np.array(v))
        except TypeError as e:
            raise LoadError(f"example input {k!r} of {path} has dtype {v.dtype}, which torch "
                            "cannot hold", "save it as a float, integer or bool array") from e
    return tensors


def _forward_params(module) -> dict:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {k: p for k, p in params.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _signature(module, params: dict, most: int = 8) -> str:
    """``Small.forward(x, mask=...)``: the parameters example inputs are matched with."""
    shown = [k if p.default is p.empty else f"{k}=..." for k, p in params.items()]
    if len(shown) > most:
        shown = shown[:most] + [f"... {len(params)} in all"]
    return f"{type(module).__name__}.forward({', '.join(shown)})"


def _match_inputs(module, named: dict) -> tuple[tuple, dict]:
    """Example inputs as forward's (args, kwargs): by name when every name is a parameter,
    else in order. Raises LoadError naming an input forward does not take, a required
    parameter no input fills, or an input beyond the last parameter."""
    try:
        every = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        every = None
    params = _forward_params(module)
    by_name = all(k in params for k in named)
    if every is None or any(p.kind == p.VAR_POSITIONAL for p in every):
        # forward(*args) or no signature: nothing to check the names against
        return ((), named) if by_name else (tuple(named.values()), {})
    sig = _signature(module, params)
    if by_name:
        filled = list(named)
    elif any(k in params for k in named):
        unknown = next(k for k in named if k not in params)
        raise LoadError(f"example input {unknown!r} is not a parameter of {sig}",
                        "drop it, or rename it after the parameter it stands for")
    else:  # no name matches: in order, as np.savez(path, a, b) names them arr_0, arr_1
        positional = [k for k, p in params.items() if p.kind != p.KEYWORD_ONLY]
        if len(named) > len(positional):
            extra = list(named)[len(positional)]
            raise LoadError(f"example input {extra!r} has no parameter left in {sig} "
                            f"({len(named)} inputs for {len(positional)} parameters)",
                            "drop it, or name the inputs after the parameters")
        filled = positional[:len(named)]
    missing = [k for k, p in params.items() if p.default is p.empty and k not in filled]
    if missing:
        raise LoadError(f"example inputs lack {missing[0]!r}, required by {sig}",
                        f"give an input named {missing[0]!r}")
    return ((), named) if by_name else (tuple(named.values()), {})


def _try_forward(module, args: tuple, kwargs: dict, source, cast: bool) -> None:
    """Run forward once on inputs read from a file, so that a misshaped or mistyped input is
    a one-line LoadError here, not a torch traceback in the middle of the export. ``cast``:
    float inputs take the weights' float type first, as the export does for ``--dtype``."""
    weights = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)

    def fit(t):
        return t.to(weights) if cast and weights is not None and t.is_floating_point() else t
    try:
        with torch.no_grad():
            module(*(fit(a) for a in args), **{k: fit(v) for k, v in kwargs.items()})
    except Exception as e:
        names = list(_forward_params(module))[:len(args)] + list(kwargs)
        shown = ", ".join(f"{n} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
                          for n, t in zip(names, list(args) + list(kwargs.values())))
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        sig = _signature(module, _forward_params(module))
        raise LoadError(f"{sig} fails on the example inputs of {source} ({shown}): {first}",
                        "give inputs of the shapes and dtypes the model expects") from e


def _random_input(spec: InputSpec, vocab: int | None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if spec.dtype.is_floating_point:
        return torch.randn(spec.shape, generator=gen).to(spec.dtype)
    if spec.dtype == torch.bool:
        return torch.ones(spec.shape, dtype=torch.bool)
    if "mask" in spec.name:
        return torch.ones(spec.shape, dtype=spec.dtype)
    if "type_ids" in spec.name:
        return torch.zeros(spec.shape, dtype=spec.dtype)
    high = vocab if (vocab and "ids" in spec.name) else 10
    return torch.randint(0, high, spec.shape, generator=gen, dtype=spec.dtype)


def resolve_module_path(spec: str):
    """Import ``pkg.mod:attr`` (or ``pkg.mod.attr``) with the current directory importable."""
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
    else:
        mod_name, _, attr = spec.rpartition(".")
    if not mod_name or not attr:
        raise LoadError(f"{spec!r} is not a dotted path", "write it as package.module:attribute")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise LoadError(f"cannot import module {mod_name!r} ({e})",
                        "run from the folder holding it or install it") from e
    except Exception as e:
        raise LoadError(f"importing {mod_name!r} failed: {type(e).__name__}: {e}",
                        "fix the module so that it imports") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            raise LoadError(f"module {mod_name!r} has no attribute {attr!r}",
                            f"it has: {', '.join(names[:12])}")
        obj = getattr(obj, part)
    return obj


def _module_from_path(spec: str) -> torch.nn.Module:
    obj = resolve_module_path(spec)
    if isinstance(obj, torch.nn.Module):
        return obj
    if callable(obj):
        try:
            obj = obj()
        except TypeError as e:
            raise LoadError(f"{spec} could not be called without arguments: {e}",
                            "point to a class or factory that takes no arguments") from e
    if not isinstance(obj, torch.nn.Module):
        raise LoadError(f"{spec} gave a {type(obj).__name__}, not a torch.nn.Module",
                        "point to an nn.Module, its class, or a factory returning one")
    return obj


def _hub_folder(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HOME
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:
        raise LoadError(f"model {repo_id!r} is not in the local Hugging Face cache "
                        f"(HF_HOME={os.environ.get('HF_HOME', HF_HOME)})",
                        f"download it first (huggingface-cli download {repo_id}) or give "
                        "a local folder") from e


def _hf_model(folder: Path, task: str | None, dtype: torch.dtype):
    import transformers
    from transformers import AutoConfig
    warn_untested("transformers")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as e:
        raise LoadError(f"{folder} has no readable Hugging Face config.json: {e}",
                        "point to a model folder with config.json") from e
    if hasattr(config, "use_cache"):
        config.use_cache = False
    if task:
        if task not in TASKS:
            raise OptionError(f"unknown task {task!r}", f"use one of: {', '.join(TASKS)}")
        cls = getattr(transformers, TASKS[task])
    else:
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        cls = cls or transformers.AutoModel
    try:
        model = cls.from_pretrained(folder, config=config, dtype=dtype)
    except Exception as e:
        raise LoadError(f"transformers could not load {folder} as {cls.__name__}: {e}",
                        "pass --task to choose another model class") from e
    tokenizer = None
    if any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        except Exception as e:  # a model without a usable tokenizer still exports
            log.debug("no tokenizer for %s: %s", folder, e)
    return model, tokenizer, config


def _gguf_model(path: Path, dtype: torch.dtype):
    """A causal LM from a GGUF file, dequantized to ``dtype`` by transformers."""
    import transformers
    warn_untested("transformers")
    name, folder = path.name, path.parent
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                                  dtype=dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except ImportError as e:
        raise LoadError(f"reading {path} needs the gguf package: {e}",
                        "pip install gguf accelerate") from e
    except Exception as e:
        raise LoadError(f"transformers could not load {path}: {e}",
                        "check that it is a GGUF file of an architecture transformers reads"
                        ) from e
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model, tokenizer, model.config


def load_model(spec: str, *, task: str | None = None, input_shapes=(), example_inputs=None,
               need_inputs: bool = True, dtype: str | None = None,
               lossless: bool = False, keep_q4_0: bool = False) -> Loaded:
    """Load ``spec``: ``module.path:attr``, a Hugging Face folder, a t2n checkpoint folder
    (already quantized: ``Loaded.quantized`` names its compression), a .gguf file, or a cached
    hub id.
    ``need_inputs=False``: the caller makes its own example inputs (export-llm).
    ``dtype`` ("f32" or "f16", default f32): the float type Hugging Face and GGUF weights are
    loaded in, so that an f16 export never holds a float32 copy of the model.
    ``lossless``: a GPTQ-layout checkpoint whose weights cannot be carried into Q4_0 exactly
    is refused instead of requantized. ``keep_q4_0``: a GGUF file's Q4_0 tensors are carried
    into the model as they are (its weights stay quantized: pass it when no other compression
    follows)."""
    if dtype not in (None, "f32", "f16"):
        raise OptionError(f"unknown dtype {dtype!r}", "use f32 or f16")
    weights = torch.float16 if dtype == "f16" else torch.float32
    specs = [parse_input_shape(s) if isinstance(s, str) else s for s in input_shapes]
    path = Path(spec)
    tokenizer = folder = config = quantized = None
    from t2n.checkpoint import is_checkpoint, load_quantized
    if is_checkpoint(path):
        ck = load_quantized(path, dtype=dtype)
        module, tokenizer = ck.module, ck.tokenizer
        config = getattr(module, "config", None)
        quantized = ck.compression or "unknown"
    elif path.is_file() and path.suffix == ".gguf":
        module, tokenizer, config = _gguf_model(path, weights)
        if keep_q4_0:
            from t2n.checkpoint.gguf_q4_0 import carry_q4_0
            if carry_q4_0(module, path):
                quantized = "gguf q4_0"
    elif path.is_dir():
        folder = path
    elif ":" in spec and not path.exists():
        module = _module_from_path(spec)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not path.exists():
        folder = _hub_folder(spec)
    elif path.exists():
        raise LoadError(f"{spec} is a file, not a model",
                        "give a Hugging Face model folder, a .gguf file or a module.path:attr")
    else:
        raise LoadError(f"model {spec!r} not found",
                        "give module.path:attr, a Hugging Face model folder, or a cached hub id")
    if folder is not None:
        if not (folder / "config.json").exists():
            raise LoadError(f"{folder} has no config.json",
                            "point to a Hugging Face model folder")
        from t2n.checkpoint.gptq_format import gptq_config, load_gptq
        qc = gptq_config(folder)
        if qc is not None:   # 4-bit weights of another tool: carried into Q4_0
            module, tokenizer = load_gptq(folder, dtype=dtype, lossless=lossless)
            config = module.config
            quantized = f"{qc.get('quant_method')} checkpoint"
        else:
            module, tokenizer, config = _hf_model(folder, task, weights)
    module.eval()

    vocab = getattr(config, "vocab_size", None) if config is not None else None
    named: dict[str, torch.Tensor] = {}
    if example_inputs is not None:
        named.update(read_example_inputs(example_inputs))
    for s in specs:
        named[s.name] = _random_input(s, vocab)
    if not named and tokenizer is not None:
        enc = tokenizer([SAMPLE_SENTENCE], return_tensors="pt")
        params = _forward_params(module)
        named = {k: v for k, v in enc.items() if k in params}
    if not named and need_inputs:
        raise LoadError(f"model {spec} needs example inputs",
                        "pass --input-shape NAME=1,3,224,224 or --example-inputs FILE")
    args, kwargs = _match_inputs(module, named) if named else ((), {})
    if example_inputs is not None:
        _try_forward(module, args, kwargs, example_inputs, cast=dtype is not None)
    return Loaded(module, args, kwargs, source=spec, tokenizer=tokenizer, folder=folder,
                  quantized=quantized)
