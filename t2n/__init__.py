"""t2n: export PyTorch models to NNEF bundles that the tract engine runs, verified in tract."""
__version__ = "0.1.0"

from t2n.errors import (CompressionError, LoadError, OptionError, T2NError,  # noqa: E402
                        TraceError, TranslationError, UnsupportedOpsError, VerificationError,
                        WriteError)
from t2n.pipeline import ExportResult, export  # noqa: E402
from t2n.checkpoint import load_quantized, save_quantized  # noqa: E402
from t2n.checkpoint.api import quantize  # noqa: E402

__all__ = ["export", "ExportResult", "quantize", "save_quantized", "load_quantized", "T2NError", "OptionError", "LoadError", "CompressionError",
           "TraceError", "UnsupportedOpsError", "TranslationError", "WriteError",
           "VerificationError", "__version__"]
