"""t2n: export PyTorch models to NNEF bundles that the tract engine runs, verified in tract."""
__version__ = "0.1.0"

from t2n.errors import (CompressionError, LoadError, OptionError, T2NError,  # noqa: E402
                        TraceError, TranslationError, UnsupportedOpsError, VerificationError,
                        WriteError)
from t2n.pipeline import ExportResult, export  # noqa: E402

__all__ = ["export", "ExportResult", "T2NError", "OptionError", "LoadError", "CompressionError",
           "TraceError", "UnsupportedOpsError", "TranslationError", "WriteError",
           "VerificationError", "__version__"]
