"""export(): load -> compress -> trace -> translate -> write -> verify, one status line a stage."""
from __future__ import annotations

import copy
import io
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils import _pytree as pytree

from t2n import __version__, compress, resize, trace as trace_mod, verify
from t2n.errors import OptionError, WriteError
from t2n.memory import free_memory
from t2n.nnef import bundle as bundle_mod
from t2n.options import ExportOptions, resolve_tolerance
from t2n.quant import int8
from t2n.translate import Options as TranslateOptions, translate

__all__ = ["ExportResult", "export", "export_loaded", "free_memory", "IO_FILE", "TORCH_DTYPES",
           "kept_modes", "float_copy_for"]

log = logging.getLogger("t2n")

IO_FILE = "io.npz"          # example inputs and torch outputs, keyed by NNEF names
META_FILE = "t2n.json"      # what `t2n check` needs to rerun them


@dataclass
class ExportResult:
    path: Path
    bundle: bundle_mod.Bundle
    verification: verify.Verification | None
    timings: dict[str, float] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    # compressed exports: the compressed torch model against the float one, per output
    # (max_abs, cosine, ...): reported, never gated. The tract check (verification) compares
    # tract with the compressed torch model.
    quantization: list | None = None
    # bundles with dynamic axes: tract against torch with every symbol at a second size (and
    # masks partly padded), besides the traced example
    resized: verify.Verification | None = None

    @property
    def diffs(self):
        return self.verification.outputs if self.verification else []


class _Stages:
    def __init__(self, on_stage):
        self.timings: dict[str, float] = {}
        self.on_stage = on_stage

    @contextmanager
    def __call__(self, name: str, detail=lambda: ""):
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.timings[name] = dt
        text = detail() if callable(detail) else detail
        log.info("%-10s %6.2fs%s", name, dt, f"  {text}" if text else "")
        if self.on_stage:
            self.on_stage(name, dt, text)


def _flatten_outputs(out) -> tuple[list[torch.Tensor], list[str]]:
    leaves, _ = pytree.tree_flatten_with_path(out)
    tensors, names = [], []
    for path, leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            continue
        key = "_".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p))))
                       for p in path)
        tensors.append(leaf)
        names.append(key or "output")
    if len(names) == 1 and names[0] in ("0", "output"):
        names = ["output"]
    names = [n if not n[:1].isdigit() else f"output_{n}" for n in names]
    return tensors, names


# export dtype name -> torch dtype
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16}


def _to_dtype(module: torch.nn.Module, args, kwargs, dtype: str | None):
    if dtype is None:
        return module, args, kwargs
    tdtype = TORCH_DTYPES[dtype]
    module = module.to(tdtype)

    def conv(t):
        return t.to(tdtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
    return module, tuple(conv(a) for a in args), {k: conv(v) for k, v in kwargs.items()}


@contextmanager
def kept_modes(model: torch.nn.Module):
    """Restore every submodule's train/eval mode on exit (exports switch them to eval)."""
    modes = [(m, m.training) for m in model.modules()] \
        if isinstance(model, torch.nn.Module) else []
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def float_copy_for(model: torch.nn.Module, dtype: str | None) -> torch.nn.Module:
    """``model`` itself, or a deep copy when converting it to ``dtype`` would change the
    caller's weights (an f16 export of an f32 model must not round the caller's copy)."""
    if dtype not in TORCH_DTYPES or not isinstance(model, torch.nn.Module):
        return model   # nothing to convert (a bad dtype is refused by the options)
    target = TORCH_DTYPES[dtype]
    if all(t.dtype == target for t in list(model.parameters()) + list(model.buffers())
           if t.is_floating_point()):
        return model
    log.info("converting a copy of the model to %s (the caller's model is left as it is)",
             dtype)
    return copy.deepcopy(model)


def export_loaded(module: torch.nn.Module, args, path, options: ExportOptions, *,
                  kwargs=None, tokenizer=None, on_stage=None, progress=False,
                  release=None, properties=None) -> ExportResult:
    """Export an already loaded module with example inputs ``args``/``kwargs`` to ``path``.

    ``release``, if given, is called once the bundle is written and torch is no longer needed:
    a caller that owns the only reference to the model drops it there, so that tract's copy of
    the weights (verification) never sits in memory beside torch's. ``properties`` are added
    to the bundle's properties fragment.
    """
    path = Path(path)
    stages = _Stages(on_stage)
    if isinstance(args, torch.Tensor):
        args = (args,)
    args, kwargs = tuple(args or ()), dict(kwargs or {})
    if not all(isinstance(a, torch.Tensor) for a in list(args) + list(kwargs.values())):
        raise OptionError("example inputs must be tensors", "pass a tensor or a tuple of tensors")
    # refuse an existing destination before doing any work
    if path.exists() and not options.overwrite:
        raise WriteError(f"destination {path} already exists",
                                    "pass --overwrite (API: overwrite=True) or choose another path")
    module.eval()
    module, args, kwargs = _to_dtype(module, args, kwargs, options.dtype)

    forward_names = _input_names(module, args, kwargs)
    names = list(options.input_names) if options.input_names else forward_names
    if len(names) != len(forward_names):
        raise OptionError(f"{len(names)} input names for {len(forward_names)} inputs",
                          f"give one name per input ({', '.join(forward_names)})")
    unknown = [k for k in options.dynamic_axes if k not in names]
    if unknown:
        raise OptionError(f"dynamic axes name unknown input(s) {', '.join(unknown)}",
                          f"inputs are: {', '.join(names)}")

    float_outputs = calibration = None
    if options.compression:
        compress.load_registry(options.compression_registry)  # fail fast on a bad registry
        from t2n.calibrate.stage import calibration_stage
        calibration = calibration_stage(
            options.compression, options.compression_registry, data=options.calibration_data,
            samples=options.calibration_samples, seqlen=options.calibration_seqlen,
            seed=options.seed, device=options.device, observer=options.observer,
            model=module, tokenizer=tokenizer, args=args, kwargs=kwargs)
        with torch.no_grad():
            float_outputs = [t.detach().numpy() for t in
                             _flatten_outputs(module(*args, **kwargs))[0]]
        with stages("compress", lambda: options.compression):
            module = compress.apply(module, options.compression,
                                    registry_path=options.compression_registry,
                                    tokenizer=tokenizer, export_dirpath=path,
                                    local_dir=None, calibration=calibration,
                                    options=options.compression_options)

    eager_reference = None
    if int8.is_eager_quantized(module):
        # torch.export cannot capture packed quantized modules: trace a float rewrite with
        # fake quantization, check tract against the quantized model itself
        with torch.no_grad():
            eager_reference = _flatten_outputs(module(*args, **kwargs))
        with stages("rewrite", "torch.ao quantized modules as 8-bit fake quantization"):
            module = int8.from_eager(module)

    with stages("reference", "torch forward on the example inputs"):
        with torch.no_grad():
            ref_tensors, ref_names = eager_reference or _flatten_outputs(
                module(*args, **kwargs))
    out_names = list(options.output_names) if options.output_names else ref_names
    resized = None
    if options.check_io and options.dynamic_axes:
        with stages("reference2", lambda: f"torch forward at a second size of {resized.label}"
                    if resized else "no second size"):
            resized = _resized_reference(module, args, kwargs, names, options.dynamic_axes)
    quantization = None
    if float_outputs is not None:
        # quantization error: the compressed torch model against the float one (shown only)
        quantization = verify.compare([t.detach().numpy() for t in ref_tensors], float_outputs,
                                      out_names, "approximate").outputs
        log.info("%-10s %s", "quantized", "; ".join(
            f"{d.name}: max_abs={d.max_abs:.3g} cos={d.cosine:.6f} vs float"
            for d in quantization))

    with stages("trace", "torch.export"):
        program = trace_mod.capture(module, args, kwargs, dynamic_axes=options.dynamic_axes,
                                    input_names=names)
    if trace_mod.has_bfloat16(program):
        program, ref_tensors, resized = _bfloat16_boundary(program, options, args, kwargs,
                                                           ref_tensors, resized, names)

    with stages("translate", lambda: f"{len(graph.operations)} NNEF ops, "
                f"{len(graph.variables)} tensors"):
        graph = translate(program, input_names=names, output_names=out_names,
                          dynamic_axes=options.dynamic_axes,
                          options=TranslateOptions(options.f32_attention, options.f32_norm,
                                                   options.f16_arithmetic))
        graph.assertions = [f"{s} >= {n}" for s, n in sorted(options.symbol_min.items())]
        graph.properties.update(_properties(options))
        graph.properties.update(properties or {})
    del program

    inputs = [t.detach().numpy() for t in list(args) + list(kwargs.values())]
    expected = [t.detach().numpy() for t in ref_tensors]
    input_ids = [i.name for i in graph.inputs]
    extra = {}
    if options.dump_io:
        extra = _io_files(graph, inputs, expected, options)

    folder = bundle_mod.staging(path, options.overwrite)
    try:
        with stages("write", lambda: f"{bundle.nbytes / 1e6:.1f} MB in {len(bundle.files)} files"):
            bundle = _write(graph, folder, extra, progress)
        output_names = list(graph.outputs)
        output_steps = dict(graph.output_steps)
        del graph, module, args, kwargs, ref_tensors
        if release is not None:
            release()
        free_memory()
        result_v = None
        if options.check_io:
            with stages("verify", lambda: f"{'ok' if result_v.passed else 'MISMATCH'} "
                        f"({options.check_io}) tract {result_v.tract_ms:.1f} ms; "
                        f"{result_v.summary()}"):
                # tract reads the staged folder; a .tar/.tgz is packed from the same files
                result_v = verify.check(folder, inputs, expected, output_names,
                                        options.check_io, binary=options.tract_binary,
                                        steps=output_steps)
            if not result_v.passed:
                raise verify.mismatch_error(result_v, "on",
                                            _kept_failed(folder, path, options.dump_io))
            if resized is not None:
                with stages("verify2", lambda: f"{'ok' if second.passed else 'MISMATCH'} at "
                            f"{resized.label}; {second.summary()}"):
                    second = verify.check(folder, resized.inputs, resized.expected,
                                          output_names, options.check_io,
                                          binary=options.tract_binary, steps=output_steps,
                                          budget_s=0.0)
                second.sizes = resized.sizes
                if not second.passed:
                    raise verify.mismatch_error(second, f"at {resized.label} on",
                                                _kept_failed(folder, path, options.dump_io))
        with stages("publish", lambda: f"{path} ({bundle_mod.bundle_format(path)})"):
            bundle.path = bundle_mod.publish(folder, path, options.tgz_level)
        from t2n.calibrate.stage import write_report
        write_report(calibration, bundle.path)
    except BaseException:
        bundle_mod.discard(folder)
        raise
    return ExportResult(bundle.path, bundle, result_v, stages.timings, input_ids, output_names,
                        quantization, second if resized is not None and result_v else None)


def _bfloat16_boundary(program, options: ExportOptions, args, kwargs, ref_tensors, resized,
                       names):
    """tract runs no bfloat16: the model's bfloat16 code (casts, autocast regions, stored
    tensors) computes in the asked dtype instead, and torch's reference is recomputed on that
    graph, so the check measures the export alone; one log line says what changed and by how
    much the outputs moved."""
    if options.dtype is None:
        raise OptionError("the model computes or stores values in bfloat16, which tract does "
                          "not run", "pass --dtype f32 or --dtype f16 (API: dtype='f32'); its "
                          "bfloat16 code then computes in that type")
    program, changed = trace_mod.bfloat16_as(program, TORCH_DTYPES[options.dtype])
    module = program.module()
    with torch.no_grad():
        outputs, _ = _flatten_outputs(module(*args, **kwargs))
    moved = [float((new.double() - old.double()).abs().max()) for new, old in
             zip(outputs, ref_tensors) if new.is_floating_point() and new.numel()
             and new.shape == old.shape]
    log.info("%-10s %s", "bfloat16", f"bfloat16 code computed in {options.dtype} (tract has "
             "no bfloat16): " + ", ".join(f"{kind} {n}" for kind, n in changed.items())
             + f"; outputs moved by {max(moved, default=0.0):.3g} at most from the model's")
    if resized is not None:
        resized = _resized_reference(module, args, kwargs, names, options.dynamic_axes)
    return program, outputs, resized


class _Resized(NamedTuple):
    inputs: list        # numpy arrays, every dynamic axis at its second size
    expected: list      # torch's outputs on them
    sizes: dict         # symbol -> second size

    @property
    def label(self) -> str:
        return ", ".join(f"{s}={n}" for s, n in self.sizes.items())


def _resized_reference(module, args, kwargs, names, dynamic_axes) -> _Resized | None:
    """Inputs and torch outputs with every dynamic axis at a second size (3 more than traced,
    else 1 less) and masks partly padded; None (with a warning) if torch runs at neither."""
    tensors = list(args) + list(kwargs.values())
    traced = resize.traced_sizes(tensors, names, dynamic_axes)
    problem = None
    for step in (3, -1):
        sizes = resize.second_sizes(traced, step)
        if sizes == traced:
            continue
        inputs = resize.resized_inputs(tensors, names, dynamic_axes, sizes)
        try:
            with torch.no_grad():
                out, _ = _flatten_outputs(module(*inputs[:len(args)],
                                                 **dict(zip(kwargs, inputs[len(args):]))))
        except Exception as e:  # the model refuses that size: try the other one
            problem = f"{type(e).__name__}: {e}"
            continue
        return _Resized([t.detach().numpy() for t in inputs],
                        [t.detach().numpy() for t in out], sizes)
    log.warning("the dynamic axes were checked at their traced sizes only: torch did not run "
                "at a second size (%s)", problem or "every symbol has size 1")
    return None


def _kept_failed(folder: Path, path: Path, dump_io: bool) -> str:
    """With --dump-io, the failing bundle (and its inputs and torch's outputs) is kept
    beside the destination as ``<name>.failed`` for `t2n check` and a report; the
    destination itself is untouched."""
    if not dump_io:
        return f"nothing was written to {path}"
    failed = path.with_name(path.name + ".failed")
    bundle_mod.discard(failed)
    os.replace(folder, failed)
    return f"nothing was written to {path}; the failing bundle is kept in {failed}"


def _write(graph, folder, extra, progress):
    if not progress:
        return bundle_mod.write_files(graph, folder, extra)
    from tqdm import tqdm
    # shown only when writing lasts more than 2 s
    with tqdm(total=len(graph.variables), unit="tensor", desc="write", leave=False,
              delay=2) as bar:
        return bundle_mod.write_files(graph, folder, extra, progress=lambda n: bar.update(1))


def _input_names(module, args, kwargs) -> list[str]:
    import inspect
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[: len(args)]]
    names += [f"input_{i}" for i in range(len(names), len(args))]
    return names + list(kwargs)


def _properties(options: ExportOptions) -> dict:
    import tract
    props = {"t2n_version": __version__, "torch_version": torch.__version__.split("+")[0],
             "tract_version": tract.version()}
    if options.dtype:
        props["t2n_dtype"] = options.dtype
    if options.dtype == "f16":
        props["t2n_f16_arithmetic"] = options.f16_arithmetic
    if options.compression:
        props["t2n_compression"] = options.compression
    return props


def _io_files(graph, inputs, expected, options) -> dict[str, bytes]:
    buf = io.BytesIO()
    arrays = {i.name: a for i, a in zip(graph.inputs, inputs)}
    arrays.update({n: a for n, a in zip(graph.outputs, expected)})
    np.savez(buf, **arrays)
    meta = {"inputs": [i.name for i in graph.inputs], "outputs": list(graph.outputs),
            "output_steps": dict(graph.output_steps),
            "tolerance": options.check_io or "approximate", "t2n_version": __version__}
    return {IO_FILE: buf.getvalue(), META_FILE: json.dumps(meta, indent=1).encode()}


def export(model: torch.nn.Module, args, path, *, kwargs=None, input_names=None,
           output_names=None, dynamic_axes=None, dtype=None, compression=None,
           compression_registry=None, check_io="auto", overwrite: bool = False,
           dump_io: bool = False, tract_binary: str | None = None, f32_attention: bool = False,
           f32_norm: bool = False, f16_arithmetic: str = "f32", tgz_level: int = 0,
           calibration_data=None, calibration_samples: int | None = None,
           calibration_seqlen: int | None = None, seed: int = 0, device: str = "cpu",
           compression_options=None, observer: str = "minmax",
           tokenizer=None, symbol_min=None) -> ExportResult:
    """Export ``model`` called on ``args`` (a tensor or a tuple) to an NNEF bundle at ``path``.

    ``check_io`` names the tolerance (exact, close, approximate, very, super, ultra), is
    "auto" (the CLI's default: approximate, very for f16) or None/False to skip running the
    bundle in tract. Raises subclasses of T2NError.

    ``calibration_data`` (calibrated compressions: ptq_int8, imatrix/gptq/autoround_q4_0*): a
    text file or folder, ``hf:DATASET``, an .npz/.safetensors file or a list of input samples
    (see t2n.calibrate.data); ``calibration_samples``/``calibration_seqlen`` default to the
    method's own sizes, ``seed`` makes the draw repeatable, ``device`` (cpu, cuda, cuda:N) is
    where the calibration work runs. ``compression_options`` ({key: value}) set the
    compression's parameters. A calibrated compression's report is written beside the bundle
    (``NAME.calibration.json``).
    A model converted by ``torch.ao.quantization`` (eager mode) is exported as an 8-bit graph.
    ``tokenizer`` is handed to compression functions and reads a text calibration file.
    A compression changes ``model`` in place (as registry functions do): pass a copy to keep
    the float model. The caller's model keeps its dtype (an export to another dtype converts a
    copy) and its train/eval modes. ``symbol_min`` ({symbol: size}) tells tract the smallest
    size a dynamic axis takes (e.g. {"S": 1}), which lets it use faster kernels.
    ``f16_arithmetic`` (f16 bundles): "f32" computes element-wise arithmetic on f32 copies
    (faster in tract on x86, which has no vectorized f16 element-wise kernels), "native" keeps
    it in f16 (CPUs with f16 arithmetic, ARMv8.2 and later); recorded in the bundle's
    properties.
    """
    if not isinstance(model, torch.nn.Module):
        raise OptionError(f"model is a {type(model).__name__}, not a torch.nn.Module",
                          "pass an nn.Module")
    options = ExportOptions(
        dtype=dtype, f32_attention=f32_attention, f32_norm=f32_norm,
        f16_arithmetic=f16_arithmetic, dynamic_axes=dict(dynamic_axes or {}),
        symbol_min=dict(symbol_min or {}),
        input_names=tuple(input_names) if input_names else None,
        output_names=tuple(output_names) if output_names else None,
        check_io=resolve_tolerance(check_io, dtype, compression), tract_binary=tract_binary,
        dump_io=dump_io,
        overwrite=overwrite, compression=compression, compression_registry=compression_registry,
        tgz_level=tgz_level, calibration_data=calibration_data,
        calibration_samples=calibration_samples, calibration_seqlen=calibration_seqlen,
        seed=seed, device=device, compression_options=dict(compression_options or {}),
        observer=observer)
    with kept_modes(model):
        return export_loaded(float_copy_for(model, dtype), args, path, options, kwargs=kwargs,
                             tokenizer=tokenizer)
