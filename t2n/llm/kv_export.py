"""export_llm(): a Hugging Face causal LM as one tract bundle for prefill and decode.

The bundle takes the new token ids and every layer's past keys/values and returns the logits and
the updated keys/values (names, order and layout of torch-to-nnef's LLM bundles, see docs/llm.md).
S (new tokens) and P (past tokens) are tract symbols, so one bundle serves a prompt with an
empty cache (P = 0) as well as one-token decoding.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from t2n import compress, ssm, verify
from t2n.calibrate.stage import calibration_stage, write_report
from t2n.compat import cache_argument, warn_untested
from t2n.errors import OptionError, WriteError
from t2n.llm.runtime import LLMBundle
from t2n.llm.wrapper import (ATTENTION, STATE_ONLY, SYMBOL_MIN, KVCacheLLM, dynamic_axes, empty_past,
                             input_names, layout_of, new_cache, output_names, past_from_cache)
from t2n.options import ExportOptions, resolve_tolerance
from t2n.pipeline import TORCH_DTYPES, ExportResult, export_loaded, float_copy_for

__all__ = ["export_llm", "LLMExportResult", "BUNDLE_NAME"]

log = logging.getLogger("t2n")

BUNDLE_NAME = "model.nnef.tgz"    # torch-to-nnef's file name
DIR_STRUCTS = ("deep", "flat")    # deep: model/ and tokenizer/ sub-folders (torch-to-nnef default)
# Example sizes for torch.export: >= 2 on dynamic axes, and P != S so that they stay 2 symbols.
EXAMPLE_PAST, EXAMPLE_NEW = 5, 3
PROMPT_LEN = 6                    # the prompt checked in tract with an empty cache
SAMPLE_TEXT = ("A river carries water from the hills to the sea, shaping valleys, feeding "
               "fields and towns along its banks, and changing its course over the years.")


@dataclass
class LLMExportResult:
    path: Path                    # the bundle, <export_dir>/model/model.nnef.tgz by default
    export_dir: Path
    export: ExportResult          # t2n's export; its verification ran P=5, S=3
    # tract against torch per inference mode: "prompt" (P=0, S=6), "text_generation" (S=1)
    modes: dict[str, verify.Verification] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    # compressed exports: the compressed torch model against the float one (never gated)
    quantization: list | None = None
    timings: dict[str, float] = field(default_factory=dict)


def export_llm(model: torch.nn.Module, tokenizer, export_dir, *, dtype=None, compression=None,
               compression_registry=None, f32_attention=False, f32_norm=False,
               f16_arithmetic="f32",
               check_io="auto", overwrite=False, dump_tokenizer_and_conf=False,
               num_logits_to_keep: int = 1, export_dir_struct: str = "deep",
               tgz_level: int = 0, calibration_data=None, calibration_samples=None,
               calibration_seqlen=None, seed: int = 0, device: str = "cpu",
               compression_options=None, release=None,
               quantized_with: str | None = None) -> LLMExportResult:
    """Export a transformers causal LM with its KV cache as inputs/outputs to ``export_dir``.

    ``tokenizer`` (may be None unless ``dump_tokenizer_and_conf``) gives the example tokens and
    is handed to compression functions. ``num_logits_to_keep``: logits rows returned (1: the
    last token; 0: every input token). ``check_io`` (a tolerance name, "auto" as the CLI, or
    None) checks the
    bundle in tract against torch on the export example, on a prompt with P = 0 and on a
    one-token decode step; on a mismatch nothing is written.

    The caller's model keeps its train/eval modes and dtype (a ``dtype`` conversion works on a
    copy); a ``compression`` changes it in place, as registry functions do.

    Calibrated compressions (imatrix/gptq/autoround_q4_0*) read ``calibration_data`` (a text
    file or folder, ``hf:DATASET``, or an .npz of ``input_ids`` windows; None samples text from
    the model itself) in ``calibration_samples`` windows of ``calibration_seqlen`` tokens (the
    method's defaults when None), drawn with ``seed``, and work on ``device``;
    ``compression_options`` set the compression's parameters. Their report is written beside
    the bundle (``model/model.calibration.json``). ``quantized_with``: the compression a model
    loaded from a checkpoint was quantized with (recorded in the bundle, sets the tolerance).

    Memory: the weights go to the bundle tensor by tensor (no second copy), and torch's model
    is dropped before tract loads the bundle. A caller holding the only other reference to
    ``model`` passes ``release`` (called at that point) to drop it too, as the CLI does; the
    model is then converted in place.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise OptionError(f"model is a {type(model).__name__}",
                          "pass a transformers causal LM (e.g. AutoModelForCausalLM)")
    if export_dir_struct not in DIR_STRUCTS:
        raise OptionError(f"unknown export_dir_struct {export_dir_struct!r}",
                          f"use one of: {', '.join(DIR_STRUCTS)}")
    if dump_tokenizer_and_conf and tokenizer is None:
        raise OptionError("dump_tokenizer_and_conf without a tokenizer", "pass the tokenizer")
    # validates dtype, f32_* flags, tolerance and tgz level before any work
    options = ExportOptions(dtype=dtype, f32_attention=f32_attention, f32_norm=f32_norm,
                            f16_arithmetic=f16_arithmetic,
                            check_io=resolve_tolerance(check_io, dtype,
                                                       compression or quantized_with),
                            tgz_level=tgz_level, calibration_data=calibration_data,
                            calibration_samples=calibration_samples,
                            calibration_seqlen=calibration_seqlen, seed=seed, device=device,
                            compression_options=dict(compression_options or {}),
                            compression=compression)
    if compression_registry and not compression:
        raise OptionError("compression_registry given without compression",
                          "add compression=NAME (see 't2n compressions')")
    if compression:
        compress.load_registry(compression_registry)  # fail fast on a bad registry
    export_dir = Path(export_dir)
    model_dir = export_dir / "model" if export_dir_struct == "deep" else export_dir
    tokenizer_dir = export_dir / "tokenizer" if export_dir_struct == "deep" else export_dir
    bundle_path = model_dir / BUNDLE_NAME
    if bundle_path.exists() and not overwrite:
        raise WriteError(f"destination {bundle_path} already exists",
                         "pass overwrite=True or choose another export_dir")

    restore = None
    if release is None:
        # the caller keeps its model: a dtype conversion works on a copy, and its train/eval
        # modes come back once torch is done with it (or on a failure). A caller handing the
        # model over (release) gets it used in place: no reference to it is kept here.
        modes = [(m, m.training) for m in model.modules()]
        model = float_copy_for(model, dtype)

        def restore():
            for m, training in modes:
                m.training = training
        release = restore
    try:
        warn_untested("transformers")
        model = _prepared(model, dtype)
        config = model.config
        ids = _sample_ids(model, tokenizer, max(EXAMPLE_PAST + EXAMPLE_NEW, PROMPT_LEN + 1))
        with torch.no_grad():
            past, layout = _prefill(model, ids[:, :EXAMPLE_PAST])
        wrapper = KVCacheLLM(model, num_logits_to_keep, layout).eval()
        del model  # from here on the model is reached only through `held` (see _release)
        args = (ids[:, EXAMPLE_PAST:EXAMPLE_PAST + EXAMPLE_NEW], *past)
        timings: dict[str, float] = {}

        quantization = calibration = None
        if compression:
            t0 = time.perf_counter()
            with torch.no_grad():
                float_out = [t.numpy() for t in wrapper(*args)]
            calibration = calibration_stage(
                compression, compression_registry, data=calibration_data,
                samples=calibration_samples, seqlen=calibration_seqlen, seed=seed,
                device=device, observer="minmax", model=wrapper.model, tokenizer=tokenizer,
                lm=True, entry="model")
            wrapper = compress.apply(wrapper, compression, registry_path=compression_registry,
                                     tokenizer=tokenizer, export_dirpath=export_dir, local_dir=None,
                                     calibration=calibration, options=compression_options)
            wrapper.eval()
            with torch.no_grad():
                quantized = [t.numpy() for t in wrapper(*args)]
            quantization = verify.compare(quantized, float_out, output_names(layout),
                                          "approximate").outputs
            timings["compress"] = time.perf_counter() - t0
            log.info("%-10s %6.2fs  %s", "compress", timings["compress"], compression)
        # torch's side of the tract checks, computed now: tract runs after the model is dropped
        checks = _mode_references(wrapper, ids, past, layout) if options.check_io else {}
        held = [wrapper]
        del wrapper

        def _release():
            held.clear()
            if release is not None:
                release()

        created = [d for d in (export_dir, model_dir) if not d.exists()]
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".t2n-llm-", dir=model_dir))
        try:
            export_options = ExportOptions(
                dtype=dtype, f32_attention=f32_attention, f32_norm=f32_norm,
                f16_arithmetic=f16_arithmetic, dynamic_axes=dynamic_axes(layout),
                symbol_min={s: v for s, v in SYMBOL_MIN.items()
                            if s == "S" or not set(layout) <= set(STATE_ONLY)},  # P: keys
                input_names=tuple(input_names(layout)),
                output_names=tuple(output_names(layout)), check_io=None, tgz_level=tgz_level)
            exported = export_loaded(held[0], args, staging / BUNDLE_NAME, export_options,
                                     tokenizer=tokenizer, release=_release,
                                     properties={"t2n_compression": compression
                                                 or quantized_with}
                                     if compression or quantized_with else None)
            timings.update(exported.timings)
            modes = {}
            if options.check_io:
                t0 = time.perf_counter()
                modes = _check_modes(exported.path, checks, options.check_io)
                exported.verification = modes.pop("export")
                timings["verify"] = time.perf_counter() - t0
            os.replace(exported.path, bundle_path)
            write_report(calibration, bundle_path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            for folder in reversed(created):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise
        shutil.rmtree(staging, ignore_errors=True)
        exported.path = exported.bundle.path = bundle_path
        if dump_tokenizer_and_conf:
            config.to_json_file(model_dir / "config.json", use_diff=False)
            tokenizer.save_pretrained(tokenizer_dir)
        return LLMExportResult(bundle_path, export_dir, exported, modes, exported.input_names,
                               exported.output_names, quantization, timings)
    except BaseException:
        if restore is not None:
            restore()
        raise


def _prepared(model, dtype):
    model.eval()
    if dtype is not None:
        return model.to(TORCH_DTYPES[dtype])
    kinds = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if torch.bfloat16 in kinds:
        raise OptionError("the model holds bfloat16 weights, which tract does not run",
                          "pass dtype='f16' or dtype='f32'")
    return model


def _sample_ids(model, tokenizer, n: int) -> torch.Tensor:
    """[1, n] token ids: the sample text through the tokenizer, or seeded random ids."""
    vocab = model.get_input_embeddings().num_embeddings
    if tokenizer is not None:
        ids = torch.as_tensor(tokenizer(SAMPLE_TEXT)["input_ids"], dtype=torch.long).reshape(-1)
        ids = ids[ids < vocab]
        if ids.numel():
            return ids.repeat(-(-n // ids.numel()))[:n].reshape(1, n)
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))


def _prefill(model, ids: torch.Tensor) -> tuple[list[torch.Tensor], tuple[str, ...]]:
    """The cache after ``ids`` (one full, non-sliding, attention layer per attention layer of
    the model; conv and recurrent states per state-space layer) and each layer's kind."""
    cache = new_cache(model)
    model(ids, use_cache=True, **{cache_argument(model): cache})
    if not cache.layers:
        raise OptionError(f"{type(model).__name__} filled no cache layer",
                          "export_llm supports decoders with a transformers cache")
    layout = layout_of(cache)
    unknown = [i for i, kind in enumerate(layout) if kind != ATTENTION and not any(
        ssm.rewritable(m) and getattr(m, "layer_idx", None) == i for m in model.modules())]
    if unknown:
        known = ", ".join(sorted(name.rsplit(".", 1)[1] for name in ssm.SSM_MIXERS))
        raise OptionError(f"{type(model).__name__}: no t2n form for the state-space mixer of "
                          f"layer(s) {unknown}", f"t2n knows {known}")
    return past_from_cache(cache), layout


def _mode_references(wrapper: KVCacheLLM, ids, past, layout) -> dict[str, tuple[list, list]]:
    """Inputs and torch outputs of the three tract checks: the export example (P = 5, S = 3),
    a prompt with an empty cache (P = 0) and the next single token (S = 1) after it."""
    empty = empty_past(past, layout)
    example = (ids[:, EXAMPLE_PAST:EXAMPLE_PAST + EXAMPLE_NEW], *past)
    prompt = (ids[:, :PROMPT_LEN], *empty)
    with torch.no_grad():
        expected_example = wrapper(*example)
        expected_prompt = wrapper(*prompt)
        decode = (ids[:, PROMPT_LEN:PROMPT_LEN + 1], *expected_prompt[1:])
        expected_decode = wrapper(*decode)

    def arrays(tensors):
        return [t.detach().numpy() for t in tensors]
    return {"export": (arrays(example), arrays(expected_example)),
            "prompt": (arrays(prompt), arrays(expected_prompt)),
            "text_generation": (arrays(decode), arrays(expected_decode))}


def _check_modes(bundle_path, checks: dict, tolerance: str) -> dict[str, verify.Verification]:
    """Load the bundle in tract once and run each check of ``checks`` against torch's outputs."""
    llm = LLMBundle(bundle_path)
    names = llm.output_names
    modes = {}
    for mode, (inputs, expected) in checks.items():
        t0 = time.perf_counter()
        logits, cache = llm.step(inputs[0], inputs[1:])
        ms = (time.perf_counter() - t0) * 1000
        modes[mode] = result = verify.compare([logits, *cache], expected, names, tolerance)
        result.tract_ms, result.runner = ms, "tract bindings"
        log.info("%-10s %s (%s): %s", mode, "ok" if result.passed else "MISMATCH", tolerance,
                 result.summary())
        if not result.passed:
            raise verify.mismatch_error(result, f"in {mode} mode on", "nothing was written",
                                        flag="--tract-check-io-tolerance")
    return modes
