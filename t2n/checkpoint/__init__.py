"""Quantized checkpoints: quantize once, save, reload and export many times."""
from t2n.checkpoint.store import (Checkpoint, is_checkpoint, load_quantized, read_map,
                                  save_quantized)

__all__ = ["Checkpoint", "is_checkpoint", "load_quantized", "read_map", "save_quantized"]
