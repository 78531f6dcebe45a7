"""LLM export: a transformers causal LM as one tract bundle with its KV cache as inputs/outputs."""
from t2n.llm.kv_export import BUNDLE_NAME, LLMExportResult, export_llm
from t2n.llm.runtime import LLMBundle
from t2n.llm.wrapper import KVCacheLLM, dynamic_axes, input_names, output_names

__all__ = ["export_llm", "LLMExportResult", "LLMBundle", "KVCacheLLM", "BUNDLE_NAME",
           "input_names", "output_names", "dynamic_axes"]
