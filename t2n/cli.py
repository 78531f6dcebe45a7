"""The t2n command line. The only module that prints, sets log levels or picks exit codes."""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import click

from t2n.errors import OptionError, T2NError

log = logging.getLogger("t2n")

_F16_ARITHMETIC_HELP = ("With f16: element-wise arithmetic on f32 copies (f32: faster in tract "
                        "on x86) or in f16 (native: for CPUs with f16 arithmetic, ARMv8.2+).")

_CONFIG_KEYS = {  # keys accepted in --config FILE.toml ([export] table or top level)
    "model", "output", "task", "input_shape", "example_inputs", "dynamic_axes", "dtype",
    "f32_attn", "f32_norm", "f16_arithmetic", "input_names", "output_names", "check_io",
    "no_verify",
    "tract_binary", "dump_io", "overwrite", "compression", "compression_registry", "tgz_level",
    "calibration_data", "calibration_samples", "calibration_seqlen", "seed", "device",
    "compression_option", "observer", "lossless", "mixed_config",
}


def _calibration_options(fn):
    """The calibration flags export and export-llm share."""
    from t2n.calibrate.device import DEVICE_HELP
    options = [
        click.option("--calibration-data", metavar="FILE|FOLDER|hf:NAME",
                     help="Data for calibrated compressions (imatrix/gptq/autoround_q4_0*, "
                          "ptq_int8): a text file, a folder of .txt files, hf:DATASET from the "
                          "local datasets cache, or an .npz/.safetensors of input_ids or model "
                          "inputs. Default: text sampled from a causal LM itself."),
        click.option("--calibration-samples", type=click.IntRange(min=1), default=None,
                     help="Calibration samples (token windows) [default: the method's]."),
        click.option("--calibration-seqlen", type=click.IntRange(min=2), default=None,
                     help="Tokens per calibration window [default: the method's]."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the calibration draw and of sampled calibration text."),
        click.option("--compression-option", "compression_option", multiple=True,
                     metavar="KEY=VALUE", help="Set a parameter of the compression (e.g. "
                     "iters=50, damp=0.02); repeatable."),
        click.option("--device", default="cpu", show_default=True,
                     help=f"Where calibration runs: {DEVICE_HELP}."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _parse_compression_options(values) -> dict:
    """``("iters=50", "damp=0.02")`` -> ``{"iters": "50", "damp": "0.02"}`` (converted to
    each parameter's type by the registry)."""
    if isinstance(values, dict):
        return dict(values)
    out = {}
    for text in [values] if isinstance(values, str) else values or ():
        key, sep, value = str(text).partition("=")
        if not sep or not key.strip():
            raise OptionError(f"bad --compression-option {text!r}", "write KEY=VALUE, e.g. "
                              "iters=50")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


_MIXED_HELP = ("A mixed-precision configuration written by 't2n analyse' (configs/*.json): "
               "each block compressed by the method chosen for it.")


def _mixed(o: dict, compression_key: str = "compression") -> None:
    """``--mixed-config FILE`` as the compression ``mixed_config`` with ``config=FILE`` (the
    file is read now, so a bad one fails before any work)."""
    path = o.get("mixed_config")
    if not path:
        return
    if o.get(compression_key):
        raise OptionError("give -c or --mixed-config, not both",
                          "the configuration names each block's compression")
    from t2n.analyse.config import MixedConfig
    MixedConfig.load(path)
    o[compression_key] = "mixed_config"
    opts = o.get("compression_option") or ()
    o["compression_option"] = list([opts] if isinstance(opts, str) else opts) + \
        [f"config={Path(path).resolve()}"]


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("t2n: %(message)s" if not verbose
                                           else "t2n %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        for noisy in ("transformers", "torch", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        import warnings
        warnings.filterwarnings("ignore")


def _fail(err: T2NError, verbose: int):
    if verbose:
        import traceback
        traceback.print_exception(err)
    click.echo(f"error: {err}", err=True)
    sys.exit(err.exit_code)


def _run(ctx, fn, *args, **kwargs):
    verbose = ctx.obj.get("verbose", 0) if ctx.obj else 0
    try:
        return fn(*args, **kwargs)
    except T2NError as e:
        _fail(e, verbose)


def _print_version(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from t2n import __version__
    from t2n.compat import TESTED, untested, versions

    found = versions()
    click.echo(f"t2n {__version__} (" + ", ".join(f"{k} {v}" for k, v in found.items()) + ")")
    for package in TESTED:
        message = untested(package, found[package])
        if message:
            click.echo(f"warning: {message}", err=True)
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Debug logs and tracebacks.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version,
              help="Show t2n's version and those of python, torch, transformers, tract, numpy.")
@click.pass_context
def main(ctx, verbose):
    """Export PyTorch models to NNEF bundles that tract runs, and prove it."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    _setup_logging(verbose)


def _load_config(path, keys=None, table="export") -> dict:
    keys = _CONFIG_KEYS if keys is None else keys
    if path is None:
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise OptionError(f"config file {path} does not exist", "check the path") from None
    except tomllib.TOMLDecodeError as e:
        raise OptionError(f"config file {path} is not valid TOML: {e}", "fix the file") from None
    data = data.get(table, data)
    unknown = sorted(set(k.replace("-", "_") for k in data) - keys)
    if unknown:
        raise OptionError(f"config file {path} has unknown keys: {', '.join(unknown)}",
                          f"use: {', '.join(sorted(keys))}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _merged(ctx, config: dict, name: str, value):
    """A flag given on the command line wins over the config file."""
    source = ctx.get_parameter_source(name)
    if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
        return value
    return config.get(name, value)


@main.command()
@click.argument("model", required=False)
@click.argument("output", required=False, type=click.Path(path_type=Path))
@click.option("--task", help="transformers task choosing the Auto class (e.g. feature-extraction).")
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D,D,..[:dtype]",
              help="Example input with random values; repeatable.")
@click.option("--example-inputs", type=click.Path(path_type=Path),
              help=".npz or .safetensors file of named example inputs.")
@click.option("--dynamic-axes", "dynamic_axes", multiple=True, metavar="INPUT:AXIS=SYMBOL",
              help="Make an input axis symbolic in tract, e.g. input_ids:1=S; repeatable.")
@click.option("--dtype", type=click.Choice(["f32", "f16"]), help="Float type of the bundle.")
@click.option("--f32-attn", "f32_attn", is_flag=True, help="With f16: attention in f32.")
@click.option("--f32-norm", "f32_norm", is_flag=True, help="With f16: norms in f32.")
@click.option("--f16-arithmetic", "f16_arithmetic", type=click.Choice(["f32", "native"]),
              default="f32", show_default=True, help=_F16_ARITHMETIC_HELP)
@click.option("--input-names", help="Comma-separated names for the graph inputs.")
@click.option("--output-names", help="Comma-separated names for the graph outputs.")
@click.option("--check-io", default=None,
              type=click.Choice(["exact", "close", "approximate", "very", "super", "ultra"]),
              help="Tolerance of the tract-vs-torch check [default: approximate; very for f16 or "
                   "a Q4_0 compression].")
@click.option("--no-verify", is_flag=True, help="Do not run the bundle in tract.")
@click.option("--tract-binary", type=click.Path(path_type=Path),
              help="Verify with this tract command-line binary instead of the bindings.")
@click.option("--dump-io", is_flag=True, help="Store example inputs/outputs for 't2n check'.")
@click.option("--overwrite", is_flag=True, help="Replace an existing destination.")
@click.option("--tgz-level", type=click.IntRange(0, 9), default=0, show_default=True,
              help="gzip level of a .tgz bundle (0 stores: weights barely compress).")
@click.option("--lossless", is_flag=True,
              help="A GPTQ-layout checkpoint must convert to Q4_0 exactly (else an error).")
@click.option("-c", "--compression", help="Compression name (see 't2n compressions').")
@click.option("--compression-registry", metavar="PKG.MOD:NAME",
              help="Registry of compressions, by dotted path.")
@_calibration_options
@click.option("--observer", type=click.Choice(["minmax", "percentile"]), default="minmax",
              show_default=True, help="How ptq_int8 turns observed values into ranges.")
@click.option("--mixed-config", "mixed_config", type=click.Path(path_type=Path),
              help=_MIXED_HELP)
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML file with any of these options; flags override it.")
@click.pass_context
def export(ctx, config_file, **flags):
    """Export MODEL (module.path:attr, Hugging Face folder or cached hub id) to OUTPUT.

    OUTPUT is a directory, or a .tar / .tgz archive, chosen by its suffix.
    """
    _run(ctx, _export, ctx, config_file, flags)


def _export(ctx, config_file, flags):
    from t2n.load import load_model
    from t2n.options import ExportOptions, parse_dynamic_axis, resolve_tolerance
    from t2n.pipeline import export_loaded

    config = _load_config(config_file)
    o = {k: _merged(ctx, config, k, v) for k, v in flags.items()}
    if not o["model"] or not o["output"]:
        raise OptionError("export needs MODEL and OUTPUT",
                          "t2n export MODEL OUTPUT (or give them in --config)")
    _mixed(o)
    axes: dict = {}
    dyn = o["dynamic_axes"]
    for spec in ([dyn] if isinstance(dyn, str) else dyn or ()):
        name, ax, sym = parse_dynamic_axis(spec)
        axes.setdefault(name, {})[ax] = sym

    def names(v):
        return tuple(n.strip() for n in v.split(",")) if isinstance(v, str) else (
            tuple(v) if v else None)
    quantized = _checkpoint_compression(o["model"], o["compression"])
    options = ExportOptions(
        dtype=o["dtype"], f32_attention=bool(o["f32_attn"]), f32_norm=bool(o["f32_norm"]),
        f16_arithmetic=o["f16_arithmetic"],
        dynamic_axes=axes, input_names=names(o["input_names"]),
        output_names=names(o["output_names"]),
        check_io=None if o["no_verify"] else resolve_tolerance(
            o["check_io"] or "auto", o["dtype"], o["compression"] or quantized),
        tract_binary=str(o["tract_binary"]) if o["tract_binary"] else None,
        dump_io=bool(o["dump_io"]), overwrite=bool(o["overwrite"]),
        compression=o["compression"], compression_registry=o["compression_registry"],
        tgz_level=int(o["tgz_level"]), calibration_data=o["calibration_data"],
        calibration_samples=o["calibration_samples"], calibration_seqlen=o["calibration_seqlen"],
        seed=int(o["seed"]), device=o["device"],
        compression_options=_parse_compression_options(o["compression_option"]),
        observer=o["observer"])
    output = Path(o["output"])
    if output.exists() and not options.overwrite:
        raise OptionError(f"destination {output} already exists",
                          "pass --overwrite or choose another path")
    import time
    t0 = time.perf_counter()
    shapes = o["input_shape"]
    loaded = load_model(o["model"], task=o["task"],
                        input_shapes=[shapes] if isinstance(shapes, str) else shapes or (),
                        example_inputs=o["example_inputs"], dtype=o["dtype"],
                        lossless=bool(o["lossless"]), keep_q4_0=not o["compression"])
    if loaded.quantized and not quantized:   # a GGUF file whose Q4_0 tensors were kept
        quantized = loaded.quantized
        options = dataclasses.replace(options, check_io=None if o["no_verify"] else
                                      resolve_tolerance(o["check_io"] or "auto", o["dtype"],
                                                        quantized))
    log.info("%-10s %6.2fs  %s (%s)", "load", time.perf_counter() - t0, o["model"],
             type(loaded.module).__name__)
    # the model is referenced only through `loaded`, so that release() can free it before
    # tract loads its own copy of the weights for verification
    result = export_loaded(loaded.module, loaded.args, output, options, kwargs=loaded.kwargs,
                           tokenizer=loaded.tokenizer, progress=True,
                           release=lambda: setattr(loaded, "module", None),
                           properties={"t2n_compression": quantized} if quantized else None)
    v = result.verification
    verdict = "not verified" if v is None else (
        f"verified in tract ({v.tolerance}), tract {v.tract_ms:.1f} ms")
    click.echo(f"{result.path}: {result.bundle.nbytes / 1e6:.2f} MB, {verdict}")


def _checkpoint_compression(model, compression) -> str | None:
    """The compression of checkpoint ``model`` (None for any other model); refuses a second
    compression on top of it."""
    from t2n.checkpoint import is_checkpoint, read_map
    from t2n.checkpoint.gptq_format import gptq_config
    if not model or not Path(model).is_dir():
        return None
    other = gptq_config(model)
    if is_checkpoint(model):
        done = read_map(model).get("record", {}).get("compression") or "unknown"
    elif other is not None:
        done = f"{other.get('quant_method')} checkpoint"
    else:
        return None
    if compression:
        raise OptionError(f"{model} is a checkpoint already quantized with {done}",
                          "drop -c to export it as it is, or quantize the original model")
    return done


@main.command()
@click.argument("model", required=False)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Checkpoint folder to write.")
@click.option("-c", "--compression", help="Compression name (see 't2n compressions').")
@click.option("--compression-registry", metavar="PKG.MOD:NAME",
              help="Registry of compressions, by dotted path.")
@click.option("--task", help="transformers task choosing the Auto class (e.g. feature-extraction).")
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D,D,..[:dtype]",
              help="Example input with random values; repeatable.")
@click.option("--example-inputs", type=click.Path(path_type=Path),
              help=".npz or .safetensors file of named example inputs.")
@click.option("--lossless", is_flag=True,
              help="A GPTQ-layout checkpoint must convert to Q4_0 exactly (else an error).")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
@_calibration_options
@click.pass_context
def quantize(ctx, **flags):
    """Quantize MODEL once and save it as a checkpoint folder (-o) that 't2n export' and
    't2n export-llm -s' export without quantizing again."""
    _run(ctx, _quantize, flags)


def _quantize(o):
    import time
    from t2n.checkpoint import save_quantized
    from t2n.checkpoint.api import quantize as quantize_model
    from t2n.load import load_model
    if not o["model"] or not o["output"] or not o["compression"]:
        raise OptionError("quantize needs MODEL, -o CHECKPOINT and -c COMPRESSION",
                          "t2n quantize MODEL -c NAME -o CHECKPOINT")
    output = Path(o["output"])
    if output.exists() and not o["overwrite"]:
        raise OptionError(f"destination {output} already exists",
                          "pass --overwrite or choose another path")
    _checkpoint_compression(o["model"], o["compression"])
    from t2n import compress
    compress.load_registry(o["compression_registry"])   # fail fast on a bad registry
    t0 = time.perf_counter()
    loaded = load_model(o["model"], task=o["task"], input_shapes=o["input_shape"] or (),
                        example_inputs=o["example_inputs"], lossless=o["lossless"])
    log.info("%-10s %6.2fs  %s (%s)", "load", time.perf_counter() - t0, o["model"],
             type(loaded.module).__name__)
    t0 = time.perf_counter()
    model = quantize_model(loaded.module, o["compression"], tokenizer=loaded.tokenizer,
                           calibration=o["calibration_data"],
                           calibration_samples=o["calibration_samples"],
                           calibration_seqlen=o["calibration_seqlen"], seed=int(o["seed"]),
                           device=o["device"],
                           options=_parse_compression_options(o["compression_option"]),
                           registry=o["compression_registry"], args=loaded.args,
                           kwargs=loaded.kwargs)
    seconds = time.perf_counter() - t0
    model.t2n_quantization.update(source=o["model"], seconds=seconds)
    log.info("%-10s %6.2fs  %s", "compress", seconds, o["compression"])
    path = save_quantized(model, output, tokenizer=loaded.tokenizer, overwrite=o["overwrite"],
                          source=o["model"] if ":" in o["model"] else None)
    size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    click.echo(f"{path}: {size:.2f} MB, {o['compression']} in {seconds:.1f} s")


_ANALYSE_KEYS = {"model", "output", "method", "compression_registry", "block", "task",
                 "loss", "constraint", "min", "max", "num_configs", "constraint_values",
                 "estimator", "real_loss_batches", "samples", "seqlen", "validation_data",
                 "analysis_data",
                 "calibration_data", "seed", "device", "dtype", "input_shape",
                 "example_inputs", "model_task", "no_latency"}


@main.command()
@click.argument("model", required=False)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="New folder for the results (configs/, table, report.html).")
@click.option("-m", "--method", multiple=True, metavar="NAME[key=value,...]",
              help="A compression of the bag (repeatable; options make variants).")
@click.option("--compression-registry", metavar="PKG.MOD:NAME",
              help="Registry the methods come from, by dotted path.")
@click.option("--block", multiple=True, help="A module to decide on (repeatable) [default: "
              "every Linear, Conv and Embedding].")
@click.option("--task", type=click.Choice(["classification", "regression", "causal-lm",
                                           "embedding"]),
              help="The loss: KL, MSE, KL or cosine distance [default: causal-lm for causal "
                   "LMs, else classification].")
@click.option("--loss", metavar="PKG.MOD:FN", help="Your own loss fn(reference, output).")
@click.option("--constraint", type=click.Choice(["size", "macs", "latency"]), default="size",
              show_default=True, help="What the budget limits (latency: measured in tract, "
              "budgets in seconds or as 12ms).")
@click.option("--min", "min", help="Smallest budget (a number, or 1.1x the cheapest).")
@click.option("--max", "max", help="Largest budget [default: the float model's].")
@click.option("--num-configs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--constraint-values", help="Comma-separated budgets (instead of the sweep).")
@click.option("--estimator", type=click.Choice(["value", "grad"]), default="value",
              show_default=True, help="value: measured per choice; grad: Fisher estimate.")
@click.option("--no-latency", "no_latency", is_flag=True,
              help="Do not time each chosen configuration end to end in tract.")
@click.option("--real-loss-batches", type=click.IntRange(min=1), default=32,
              show_default=True, help="Validation batches for each configuration's loss.")
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True,
              help="Analysis samples (token windows), as many again to validate.")
@click.option("--seqlen", type=click.IntRange(min=2), default=256, show_default=True,
              help="Tokens per analysis window.")
@click.option("--calibration-data", metavar="FILE|FOLDER|hf:NAME",
              help="Data of the analysis and of calibrated methods (as export takes it).")
@click.option("--analysis-data", metavar="FILE|FOLDER|hf:NAME|sampled",
              help="Data of the estimates and real losses when not the calibration data; "
                   "'sampled': text sampled from the model (causal LMs).")
@click.option("--validation-data", metavar="FILE|FOLDER|hf:NAME",
              help="Separate data for the real losses [default: other windows of the "
                   "calibration data].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Where estimates run.")
@click.option("--dtype", type=click.Choice(["f32", "f16"]), default="f32", show_default=True,
              help="Float type of the bundle (the size of a block kept in float).")
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D,D,..[:dtype]",
              help="Example input shape (models given by dotted path).")
@click.option("--example-inputs", type=click.Path(path_type=Path),
              help=".npz of example inputs, one array per forward argument.")
@click.option("--model-task", help="transformers task choosing the Auto class.")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML file with any of these options ([analyse] table); flags override it.")
@click.pass_context
def analyse(ctx, config_file, **flags):
    """Choose a compression (or float) for every block of MODEL under a sweep of budgets."""
    config = _load_config(config_file, _ANALYSE_KEYS, table="analyse")
    o = {k: _merged(ctx, config, k, v) for k, v in flags.items()}
    from t2n.analyse.cli import run_analyse
    _run(ctx, run_analyse, o)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--check-io", default=None,
              type=click.Choice(["exact", "close", "approximate", "very", "super", "ultra"]),
              help="Tolerance (default: the one stored at export).")
@click.option("--tract-binary", type=click.Path(path_type=Path),
              help="Run with this tract command-line binary instead of the bindings.")
@click.pass_context
def check(ctx, bundle, check_io, tract_binary):
    """Rerun the inputs stored in BUNDLE (exported with --dump-io) and compare outputs."""
    from t2n.bundles import check_bundle
    v = _run(ctx, check_bundle, bundle, check_io, str(tract_binary) if tract_binary else None)
    for o in v.outputs:
        click.echo(f"{o.name}: max_abs={o.max_abs:.3g} max_rel={o.max_rel:.3g} "
                   f"cosine={o.cosine:.7f} {'ok' if o.passed else 'FAIL ' + o.problem}")
    click.echo(f"{bundle}: {'ok' if v.passed else 'MISMATCH'} ({v.tolerance}), "
               f"tract {v.tract_ms:.1f} ms")
    if not v.passed:
        sys.exit(1)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.pass_context
def info(ctx, bundle):
    """Inputs, outputs, op counts and tensor bytes of BUNDLE (or of a checkpoint: tensors by
    storage format, bytes, how it was made)."""
    from t2n.bundles import bundle_info
    from t2n.checkpoint import is_checkpoint
    if is_checkpoint(bundle):
        from t2n.checkpoint.info import checkpoint_info
        click.echo(_run(ctx, checkpoint_info, bundle))
        return
    report = _run(ctx, bundle_info, bundle)
    click.echo(report.text())


@main.command()
@click.option("--markdown", is_flag=True, help="Print docs/ops.md.")
@click.option("--coverage", is_flag=True,
              help="Measure which ops of torch's Core ATen opset (and the others torch.export "
                   "keeps) translate, directly or through decomposition: every OpInfo sample "
                   "of torch's test database exported and run in tract (minutes).")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="With --coverage: also write the measurement as JSON.")
@click.option("--from-json", "from_json", type=click.Path(exists=True, path_type=Path),
              help="With --coverage: show a saved measurement instead of measuring.")
@click.pass_context
def ops(ctx, markdown, coverage, json_path, from_json):
    """List the ATen ops t2n translates, by family."""
    from t2n.bundles import ops_table
    if not coverage:
        if json_path or from_json:
            _fail(OptionError("--json and --from-json go with --coverage", "add --coverage"), 0)
        click.echo(ops_table(markdown=markdown))
        return
    from t2n import coverage as cov_mod
    if from_json:
        measured = _run(ctx, cov_mod.load, from_json)
    else:
        measured = _run(ctx, _measure_coverage)
        if json_path:
            cov_mod.save(measured, json_path)
    if markdown:
        click.echo(ops_table(markdown=True) + "\n" + cov_mod.render(measured))
    else:
        click.echo(cov_mod.summary(measured))


def _measure_coverage():
    from tqdm import tqdm

    from t2n import coverage as cov_mod
    try:
        from torch.testing._internal.common_methods_invocations import op_db
    except ImportError as e:
        raise OptionError(f"torch's test database needs {e.name}",
                          f"pip install {e.name} (a test dependency of torch)") from e
    with tqdm(total=len(op_db), desc="OpInfos", unit="", leave=False) as bar:
        return cov_mod.measure(progress=bar)


@main.command()
@click.option("--compression-registry", metavar="PKG.MOD:NAME", help="Registry to list.")
@click.pass_context
def compressions(ctx, compression_registry):
    """List the compression names of the active registry."""
    from t2n.compress import describe, load_registry
    registry = _run(ctx, load_registry, compression_registry)
    rows = describe(registry)
    if not rows:
        click.echo("(no compressions in this registry)")
    width = max((len(n) for n, _ in rows), default=0)
    for name, doc in rows:
        click.echo(f"{name:<{width}}  {doc}")




# -- LLMs -------------------------------------------------------------------------------------
_LLM_CONFIG_KEYS = {"model_slug", "export_dirpath", "dtype", "f32_attn", "f32_norm",
                    "f16_arithmetic", "calibration_data", "calibration_samples",
                    "calibration_seqlen", "seed", "device", "compression_option",
                    "compression", "compression_registry", "dump_with_tokenizer_and_conf",
                    "tract_check_io_tolerance", "no_verify", "overwrite", "num_logits_to_keep",
                    "export_dir_struct", "lossless", "mixed_config"}
_TOLERANCES = ["exact", "close", "approximate", "very", "super", "ultra"]


def _llm_options(fn):
    """The export-llm options; flag names also accept torch-to-nnef's spellings."""
    options = [
        click.option("-s", "--model-slug", "--model", "model_slug",
                     help="Hub id in the local cache, Hugging Face folder, or .gguf file."),
        click.option("-e", "--export-dirpath", "export_dirpath", type=click.Path(path_type=Path),
                     help="Folder to write model/model.nnef.tgz (and tokenizer/) into."),
        click.option("-dt", "--dtype", "--force-module-dtype", "dtype",
                     type=click.Choice(["f32", "f16"]), help="Float type of the bundle."),
        click.option("-f32-attn", "--f32-attn", "--force-f32-attention", "f32_attn",
                     is_flag=True, help="With f16: attention in f32."),
        click.option("-f32-norm", "--f32-norm", "--force-f32-normalization", "f32_norm",
                     is_flag=True, help="With f16: norms in f32."),
        click.option("--f16-arithmetic", "f16_arithmetic", type=click.Choice(["f32", "native"]),
                     default="f32", show_default=True, help=_F16_ARITHMETIC_HELP),
        click.option("-c", "--compression", "--compression-method", "compression",
                     help="Compression name (see 't2n compressions')."),
        click.option("--compression-registry", metavar="PKG.MOD:NAME",
                     help="Registry of compressions, by dotted path."),
        click.option("-dwtac", "--dump-with-tokenizer-and-conf", "dump_with_tokenizer_and_conf",
                     is_flag=True, help="Write the tokenizer and config.json beside the bundle."),
        click.option("-tt", "--tract-check-io-tolerance", "tract_check_io_tolerance",
                     type=click.Choice(_TOLERANCES), default=None,
                     help="Tolerance of the tract checks [default: approximate; very for f16 or a "
                          "Q4_0 compression; super for f16 with a compression]."),
        click.option("-nv", "--no-verify", "no_verify", is_flag=True,
                     help="Do not run the bundle in tract."),
        click.option("--overwrite", "-iaed", "--ignore-already-exist-dir", "overwrite",
                     is_flag=True, help="Replace an existing bundle."),
        click.option("--num-logits-to-keep", type=int, default=1, show_default=True,
                     help="Logits rows returned: 1 the last token, 0 every input token."),
        click.option("--export-dir-struct", type=click.Choice(["deep", "flat"]), default="deep",
                     show_default=True, help="deep: model/ and tokenizer/ sub-folders."),
        click.option("--lossless", is_flag=True, help="A GPTQ-layout checkpoint must "
                     "convert to Q4_0 exactly (else an error)."),
        click.option("--mixed-config", "mixed_config", type=click.Path(path_type=Path),
                     help=_MIXED_HELP),
        click.option("--config", "config_file", type=click.Path(path_type=Path),
                     help="TOML file with any of these options; flags override it."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return _calibration_options(fn)


def _export_llm(ctx, config_file, flags):
    from t2n.llm import export_llm
    from t2n.options import resolve_tolerance
    from t2n.load import load_model
    config = _load_config(config_file, _LLM_CONFIG_KEYS, table="export-llm")
    o = {k: _merged(ctx, config, k, v) for k, v in flags.items()}
    if not o["model_slug"] or not o["export_dirpath"]:
        raise OptionError("export-llm needs a model and an export folder",
                          "t2n export-llm -s MODEL -e EXPORT_DIR")
    _mixed(o)
    import time
    t0 = time.perf_counter()
    quantized = _checkpoint_compression(o["model_slug"], o["compression"])
    loaded = load_model(o["model_slug"], need_inputs=False, dtype=o["dtype"],
                        lossless=bool(o["lossless"]), keep_q4_0=not o["compression"])
    quantized = quantized or loaded.quantized
    log.info("%-10s %6.2fs  %s (%s)", "load", time.perf_counter() - t0, o["model_slug"],
             type(loaded.module).__name__)
    tolerance = None if o["no_verify"] else resolve_tolerance(
        o["tract_check_io_tolerance"] or "auto", o["dtype"], o["compression"] or quantized)
    result = export_llm(loaded.module, loaded.tokenizer, o["export_dirpath"], dtype=o["dtype"],
                        compression=o["compression"],
                        compression_registry=o["compression_registry"],
                        f32_attention=bool(o["f32_attn"]), f32_norm=bool(o["f32_norm"]),
                        f16_arithmetic=o["f16_arithmetic"], check_io=tolerance,
                        overwrite=bool(o["overwrite"]),
                        dump_tokenizer_and_conf=bool(o["dump_with_tokenizer_and_conf"]),
                        num_logits_to_keep=int(o["num_logits_to_keep"]),
                        export_dir_struct=o["export_dir_struct"],
                        calibration_data=o["calibration_data"],
                        calibration_samples=o["calibration_samples"],
                        calibration_seqlen=o["calibration_seqlen"], seed=int(o["seed"]),
                        device=o["device"],
                        compression_options=_parse_compression_options(
                            o["compression_option"]),
                        release=lambda: setattr(loaded, "module", None),
                        quantized_with=quantized)
    size = result.path.stat().st_size / 1e6
    verdict = "not verified" if tolerance is None else f"verified in tract ({tolerance})"
    click.echo(f"{result.path}: {size:.2f} MB, {verdict}")
    return result, loaded.tokenizer


@main.command("export-llm")
@_llm_options
@click.pass_context
def export_llm_command(ctx, config_file, **flags):
    """Export a causal LM with its KV cache as graph inputs/outputs (prefill and decode)."""
    _run(ctx, _export_llm, ctx, config_file, flags)


# torch-to-nnef's flags that t2n has no use for: (flags, what its value does, why ignored)
_IGNORED_T2N_FLAGS = [
    (("-idt", "--force-inputs-dtype"), str, "inputs take the model's dtype"),
    (("-mp", "--merge-peft"), bool, "t2n loads no PEFT adapters; merge them into the model "
                                    "folder first"),
    (("-f32-lin-acc", "--force-f32-linear-accumulator"), bool,
     "tract accumulates matmuls in f32 already"),
    (("--reify-sdpa-operator",), bool, "attention is written as matmul/softmax/matmul, which "
                                       "tract runs faster"),
    (("--transformers-attn-implementation",), str, "the model's own attention is traced"),
    (("--transformers-experts-implementation",), str, "the model's own experts are traced"),
    (("--upcast-quant",), str, "Q4_0 weights run as they are in tract"),
    (("--hf-download-n-retries",), str, "t2n reads the local Hugging Face cache only"),
    (("--trust-remote-code/--no-trust-remote-code",), bool,
     "t2n loads transformers' own classes only"),
    (("--device-map",), str, "export runs on the CPU"),
    (("-n", "--naming-scheme"), str, "tensors are named after the model's parameters"),
    (("--tract-specific-path",), str, "the bundle is checked with the tract Python bindings"),
]


def _ignored_dest(flags: tuple) -> str:
    """The parameter name of one of torch-to-nnef's ignored flags."""
    return "ignored_" + flags[-1].split("/")[0].lstrip("-").replace("-", "_")


def _torch_to_nnef_options(fn):
    """torch-to-nnef's remaining flags: -d/--local-dir, --tract-specific-version and
    -td/-sgts are used; the others are accepted with a warning that they are ignored."""
    options = [
        click.option("-d", "--local-dir", "local_dir", type=click.Path(path_type=Path),
                     help="Local Hugging Face folder of the model (used when -s is absent)."),
        click.option("--tract-specific-version", "tract_version",
                     help="tract version the bundle is for (t2n writes for and checks with the "
                          "installed tract; another version gets a warning)."),
        click.option("-td", "--test-display-token-gens", "display_tokens", is_flag=True,
                     help="After export, print a greedy continuation generated in tract."),
        click.option("-sgts", "--sample-generation-total-size", "sample_tokens", type=int,
                     default=6, show_default=True, help="Tokens generated for -td."),
    ]
    for flags, kind, why in _IGNORED_T2N_FLAGS:
        options.append(click.option(*flags, _ignored_dest(flags), is_flag=kind is bool, default=None,
                                    help=f"Accepted, ignored: {why}."))
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Debug logs and tracebacks.")
@_llm_options
@_torch_to_nnef_options
@click.pass_context
def export_llm_main(ctx, verbose, config_file, local_dir, tract_version, display_tokens,
                    sample_tokens, **flags):
    """t2n_export_llm_to_tract: `t2n export-llm` under torch-to-nnef's command name, taking
    its flags too."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    _setup_logging(verbose)
    for flags_, _kind, why in _IGNORED_T2N_FLAGS:
        if flags.pop(_ignored_dest(flags_)) is not None:
            log.warning("%s is ignored: %s", flags_[-1].split("/")[0], why)
    if local_dir is not None:
        if flags["model_slug"]:
            log.warning("-s %s: the model is read from -d %s", flags["model_slug"], local_dir)
        flags["model_slug"] = str(local_dir)
    if tract_version:
        import tract
        if tract_version.lstrip("v") != tract.version():
            log.warning("--tract-specific-version %s: the bundle is written for and checked with "
                        "tract %s (the installed bindings)", tract_version, tract.version())
    if flags["compression_registry"] and flags["compression_registry"].startswith(
            "torch_to_nnef."):
        log.warning("--compression-registry %s: t2n's built-in registry is used "
                    "(see 't2n compressions')", flags["compression_registry"])
        flags["compression_registry"] = None
    result = _run(ctx, _export_llm, ctx, config_file, flags)
    if display_tokens and result is not None:
        _run(ctx, _show_generation, result, sample_tokens)


def _show_generation(exported, n: int) -> None:
    from t2n.llm import LLMBundle
    from t2n.llm.kv_export import SAMPLE_TEXT
    result, tokenizer = exported
    if tokenizer is None:
        raise OptionError("-td needs the model's tokenizer", "export a folder with a tokenizer")
    prompt = SAMPLE_TEXT.split(",")[0]
    tokens = LLMBundle(result.path).generate(tokenizer(prompt)["input_ids"], n)
    click.echo(f"{prompt}|{tokenizer.decode(tokens, skip_special_tokens=True)}")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("-n", "--max-new-tokens", default=32, show_default=True, type=int)
@click.pass_context
def generate(ctx, export_dir, prompt, max_new_tokens):
    """Greedy decoding in tract with the bundle and tokenizer of EXPORT_DIR."""
    from t2n.llm.cli_tools import generate_text
    text, tokens, seconds = _run(ctx, generate_text, export_dir, prompt, max_new_tokens)
    click.echo(text)
    click.echo(f"{len(tokens)} tokens in {seconds:.2f} s: {len(tokens) / seconds:.1f} tokens/s",
               err=True)


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--text", "text_file", required=True, type=click.Path(path_type=Path),
              help="Text file to score.")
@click.option("--window", default=256, show_default=True, type=int, help="Tokens per window.")
@click.option("--windows", default=8, show_default=True, type=int, help="Number of windows.")
@click.pass_context
def perplexity(ctx, export_dir, text_file, window, windows):
    """Perplexity of a text, computed by tract running the bundle of EXPORT_DIR."""
    from t2n.llm.cli_tools import perplexity_of
    value, n = _run(ctx, perplexity_of, export_dir, text_file, window, windows)
    click.echo(f"perplexity {value:.4f} over {n} predicted tokens ({windows} windows of "
               f"{window})")


if __name__ == "__main__":
    main()
