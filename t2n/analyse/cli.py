"""`t2n analyse MODEL -o DIR -m METHOD ...`: the command line of the analyser."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from t2n.errors import OptionError

__all__ = ["run_analyse"]

log = logging.getLogger("t2n.analyse")


def _listed(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in (x.strip() for x in value.split(",")) if v]
    return [str(v) for v in value]


def run_analyse(o: dict) -> None:
    from t2n.analyse import Analyser, Bag
    from t2n.analyse.parallel import init_from_env, is_main, rank, world_size
    from t2n.load import load_model
    if not o.get("model") or not o.get("output"):
        raise OptionError("analyse needs MODEL and -o FOLDER",
                          "t2n analyse MODEL -o FOLDER -m METHOD [-m METHOD ...]")
    methods = [o["method"]] if isinstance(o.get("method"), str) else list(o.get("method") or ())
    if not methods:
        raise OptionError("analyse needs at least one method",
                          "give -m NAME for each compression of the bag (see 't2n compressions')")
    output = Path(o["output"])
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise OptionError(f"destination {output} already exists",
                          "give a new folder for the results")
    bag = Bag(*methods, registry=o.get("compression_registry"))
    bag.check()
    if init_from_env(o.get("device") or "cpu"):   # started by torchrun
        log.info("analyse: process %d of %d", rank(), world_size())
    t0 = time.perf_counter()
    shapes = o.get("input_shape") or ()
    loaded = load_model(o["model"], task=o.get("model_task"),
                        input_shapes=[shapes] if isinstance(shapes, str) else shapes,
                        example_inputs=o.get("example_inputs"))
    if loaded.quantized:
        raise OptionError(f"{o['model']} is already quantized ({loaded.quantized})",
                          "analyse the float model")
    log.info("%-10s %6.2fs  %s (%s)", "load", time.perf_counter() - t0, o["model"],
             type(loaded.module).__name__)
    blocks = o.get("block")
    analyser = Analyser(loaded.module, bag, block_names=list(blocks) if blocks else None,
                        calibration_data=o.get("calibration_data"),
                        validation_data=o.get("validation_data"), task=o.get("task"),
                        loss=o.get("loss"), tokenizer=loaded.tokenizer,
                        samples=int(o.get("samples") or 8), seqlen=int(o.get("seqlen") or 256),
                        seed=int(o.get("seed") or 0), device=o.get("device") or "cpu",
                        float_dtype=o.get("dtype") or "f32", args=loaded.args,
                        kwargs=loaded.kwargs, progress=is_main(),
                        analysis_data=o.get("analysis_data"))
    t0 = time.perf_counter()
    results = analyser.run(o.get("min"), o.get("max"), int(o.get("num_configs") or 5),
                           constraint_values=_listed(o.get("constraint_values")),
                           constraint_type=o.get("constraint") or "size",
                           loss_estimator=o.get("estimator") or "value",
                           num_real_loss_batches=int(o.get("real_loss_batches") or 32),
                           measure_latency=not o.get("no_latency"))
    results.meta["model"] = str(o["model"])
    results.meta["seconds"] = time.perf_counter() - t0
    results.meta["processes"] = world_size()
    if not is_main():
        return
    folder = results.save(output)
    from t2n.analyse.report import table_markdown
    click.echo(table_markdown(results), nl=False)
    click.echo(f"{folder}: {len(results)} configuration(s) in configs/, report.html, "
               f"pareto.png ({results.meta['seconds']:.1f} s)")
