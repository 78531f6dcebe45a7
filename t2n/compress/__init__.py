"""Compression registries: name -> fn(model, tokenizer, export_dirpath, local_dir) -> model."""
from t2n.compress import ptq, q4_0_methods  # noqa: F401  (fill BUILTIN)
from t2n.compress.layers import quantize_layers
from t2n.compress.q4_0_methods import quantize_q4_0
from t2n.compress.registry import BUILTIN, apply, describe, load_registry, resolve

__all__ = ["BUILTIN", "apply", "describe", "load_registry", "resolve", "quantize_layers",
           "quantize_q4_0"]
