"""Compression registries: name -> fn(model, tokenizer, export_dirpath, local_dir) -> model."""
from t2n.compress import q4_0_methods, ptq  # noqa: F401, I001  (fill BUILTIN, in this order)
from t2n.compress import imatrix, gptq, autoround  # noqa: F401, I001  (calibrated Q4_0)
from t2n.compress import q8_methods  # noqa: F401, I001  (8-bit: Q8_1 tables, int8 rows)
from t2n.compress import mixed  # noqa: F401, I001  (t2n analyse's configurations)
from t2n.compress.layers import quantize_layers
from t2n.compress.q4_0_methods import quantize_q4_0
from t2n.compress.registry import BUILTIN, apply, describe, load_registry, resolve

__all__ = ["BUILTIN", "apply", "describe", "load_registry", "resolve", "quantize_layers",
           "quantize_q4_0"]
