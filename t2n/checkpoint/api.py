"""``t2n.quantize``: compress a model with a registry compression (calibrated or not) and keep
the record of how, so that ``save_quantized`` writes it beside the weights."""
from __future__ import annotations

from torch import nn

from t2n import compress

__all__ = ["quantize"]


def quantize(model: nn.Module, compression: str, *, tokenizer=None, calibration=None,
             calibration_samples: int | None = None, calibration_seqlen: int | None = None,
             seed: int = 0, device: str = "cpu", options: dict | None = None,
             registry: str | None = None, args=(), kwargs=None, lm: bool | None = None,
             observer: str = "minmax") -> nn.Module:
    """``model`` compressed with ``compression`` (in place; returned). ``calibration``: what
    ``--calibration-data`` takes (a text file or folder, ``hf:NAME``, an .npz/.safetensors of
    inputs, or a list of input dicts; None: data-free); ``args``/``kwargs``: example inputs of
    a model that is not a causal LM. The record of the run is kept in
    ``model.t2n_quantization`` for ``save_quantized``."""
    from t2n.calibrate.stage import calibration_stage
    compress.load_registry(registry)
    cal = calibration_stage(compression, registry, data=calibration, samples=calibration_samples,
                            seqlen=calibration_seqlen, seed=seed, device=device,
                            observer=observer, model=model, tokenizer=tokenizer, args=args,
                            kwargs=kwargs, lm=lm)
    out = compress.apply(model, compression, registry_path=registry, tokenizer=tokenizer,
                         calibration=cal, options=options)
    out.t2n_quantization = {"compression": compression, "options": dict(options or {}),
                            "registry": registry,
                            "calibration": (cal.report or {}).get("calibration") if cal else None,
                            "report": dict(cal.report) if cal else None}
    return out
