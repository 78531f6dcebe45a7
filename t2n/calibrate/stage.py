"""The calibration stage of an export: build the data a compression asks for, and write the
compression's report beside the bundle once the bundle is published."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from t2n.calibrate.data import Calibration, calibration_for

__all__ = ["calibration_stage", "report_path", "write_report"]

log = logging.getLogger("t2n.calibrate")

_BUNDLE_SUFFIXES = (".tgz", ".tar", ".nnef")


def calibration_stage(compression: str, registry_path, *, data, samples, seqlen, seed: int,
                      device: str, observer: str, model, tokenizer, args=(), kwargs=None,
                      lm=None, entry: str = "") -> Calibration | None:
    """The (lazily read) calibration for ``compression``, or None when it takes none."""
    from t2n.compress.registry import load_registry, resolve, takes_calibration
    fn = resolve(compression, load_registry(registry_path), registry_path)
    if not takes_calibration(fn):
        if data is not None:
            log.warning("--calibration-data is ignored: %s takes no calibration", compression)
        return None
    return calibration_for(data, model=model, tokenizer=tokenizer, args=args, kwargs=kwargs,
                           lm=lm, samples=samples, seqlen=seqlen, seed=seed, device=device,
                           observer=observer, entry=entry)


def report_path(bundle: Path) -> Path:
    """``out.tgz`` / ``out`` / ``model.nnef.tgz`` -> ``out.calibration.json`` /
    ``model.calibration.json``, in the bundle's folder."""
    name = bundle.name
    while Path(name).suffix in _BUNDLE_SUFFIXES:
        name = name[: -len(Path(name).suffix)]
    return bundle.with_name(f"{name}.calibration.json")


def write_report(calibration: Calibration | None, bundle: Path) -> Path | None:
    """The compression's report as JSON beside ``bundle`` (written whole, or not at all)."""
    if calibration is None or not calibration.report:
        return None
    from t2n import __version__
    path = report_path(Path(bundle))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**calibration.report, "t2n_version": __version__}, indent=1,
                              default=str) + "\n")
    os.replace(tmp, path)
    log.info("calibration report: %s", path)
    return path
