"""Export options as a frozen dataclass that rejects bad values with the fix in the message."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from t2n.errors import OptionError
from t2n.verify import TOLERANCES

__all__ = ["ExportOptions", "parse_dynamic_axis", "resolve_tolerance", "DTYPES",
           "F16_ARITHMETIC"]

DTYPES = ("f32", "f16")
# how an f16 bundle computes element-wise arithmetic: on f32 copies (tract has no vectorized
# f16 element-wise kernels on x86) or in f16 itself (CPUs with f16 arithmetic, ARMv8.2+)
F16_ARITHMETIC = ("f32", "native")


@dataclass(frozen=True)
class ExportOptions:
    dtype: str | None = None                 # None keeps the model's own float type
    f32_attention: bool = False              # with f16: attention computed in f32
    f32_norm: bool = False                   # with f16: norms computed in f32
    f16_arithmetic: str = "f32"              # with f16: element-wise ops in f32 or native f16
    dynamic_axes: dict = field(default_factory=dict)   # {input: {axis: symbol}}
    # {symbol: smallest size it takes at run time}, told to tract (a symbol known to be >= 1
    # lets tract pick its vectorized element-wise kernels for the shapes that carry it)
    symbol_min: dict = field(default_factory=dict)
    input_names: tuple | None = None
    output_names: tuple | None = None
    check_io: str | None = "approximate"     # None: no verification
    tract_binary: str | None = None
    dump_io: bool = False
    overwrite: bool = False
    compression: str | None = None
    compression_registry: str | None = None
    tgz_level: int = 0                       # gzip level of a .tgz bundle (0: stored)
    # calibration of compressions that observe activations (ptq_int8, imatrix, GPTQ,
    # AutoRound): a file, a folder, hf:DATASET, or samples; None samples/seqlen: the method's
    calibration_data: object = None
    calibration_samples: int | None = None
    calibration_seqlen: int | None = None
    seed: int = 0
    device: str = "cpu"                      # where calibration work runs (cpu, cuda, cuda:N)
    compression_options: dict = field(default_factory=dict)   # parameters of the compression
    observer: str = "minmax"

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in DTYPES:
            raise OptionError(f"unknown dtype {self.dtype!r}", f"use one of: {', '.join(DTYPES)}")
        if (self.f32_attention or self.f32_norm) and self.dtype != "f16":
            raise OptionError("--f32-attn/--f32-norm only apply to an f16 export",
                              "add --dtype f16 or drop them")
        if self.f16_arithmetic not in F16_ARITHMETIC:
            raise OptionError(f"unknown f16 arithmetic {self.f16_arithmetic!r}",
                              f"use one of: {', '.join(F16_ARITHMETIC)}")
        if self.check_io is not None and self.check_io not in TOLERANCES:
            raise OptionError(f"unknown tolerance {self.check_io!r}",
                              f"use one of: {', '.join(TOLERANCES)}")
        if not isinstance(self.dynamic_axes, dict):
            raise OptionError("dynamic_axes must be a dict like {'input_ids': {1: 'S'}}",
                              "fix the dynamic_axes argument")
        for name, axes in self.dynamic_axes.items():
            if not isinstance(axes, dict) or not all(
                    isinstance(a, int) and isinstance(s, str) and re.fullmatch(r"[A-Za-z_]\w*", s)
                    for a, s in axes.items()):
                raise OptionError(f"bad dynamic axes for {name!r}: {axes!r}",
                                  "give {axis (int): symbol name (identifier)}, e.g. {1: 'S'}")
        symbols = {s for axes in self.dynamic_axes.values() for s in axes.values()}
        for symbol, size in self.symbol_min.items():
            if symbol not in symbols or not isinstance(size, int) or size < 0:
                raise OptionError(f"bad smallest size {size!r} for symbol {symbol!r}",
                                  "give {symbol of a dynamic axis: size >= 0}")
        if not (isinstance(self.tgz_level, int) and 0 <= self.tgz_level <= 9):
            raise OptionError(f"bad tgz level {self.tgz_level!r}", "use 0 (no compression) to 9")
        if self.calibration_data is not None and not self.compression:
            raise OptionError("--calibration-data given without --compression",
                              "add -c ptq_int8, imatrix_q4_0_all, gptq_q4_0_all, ...")
        if self.observer not in ("minmax", "percentile"):
            raise OptionError(f"unknown observer {self.observer!r}",
                              "use one of: minmax, percentile")
        for key, low in (("calibration_samples", 1), ("calibration_seqlen", 2)):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, int) and value >= low):
                raise OptionError(f"bad {key.replace('_', ' ')} {value!r}",
                                  f"give {low} or more")
        if self.compression_options and not self.compression:
            raise OptionError("--compression-option given without --compression",
                              "add -c NAME (see 't2n compressions')")
        from t2n.calibrate.device import check_device
        check_device(self.device)
        if self.compression_registry and not self.compression:
            raise OptionError("--compression-registry given without --compression",
                              "add -c NAME (see 't2n compressions')")


def resolve_tolerance(check_io, dtype: str | None, compression: str | None = None) -> str | None:
    """The tolerance to check at: None (no check) for None/False, ``"auto"`` chosen from the
    export (approximate; very for f16 or 4-bit weights; super for f16 with 4-bit weights, since
    tract's f16 kernels on 4-bit weights accumulate differently from torch's f16 matmuls: on
    SmolLM2's 30 layers a few logits in 100,000 differ by up to 0.1), or the level given. The
    CLI and the API share it."""
    if not check_io:
        return None
    if check_io != "auto":
        return check_io
    four_bit = bool(compression) and compression != "ptq_int8"
    if dtype == "f16":
        return "super" if four_bit else "very"
    # 4-bit weights: tract's Q4_0 kernels work on the weights in f16 (q * d is not always exact
    # there), so its logits differ from torch's f32 product by a few 1e-4 on a 30-layer model
    return "very" if four_bit else "approximate"


def parse_dynamic_axis(text: str) -> tuple[str, int, str]:
    """``input_ids:1=S`` -> ("input_ids", 1, "S")."""
    m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*:\s*(-?\d+)\s*=\s*([A-Za-z_]\w*)\s*", text)
    if not m:
        raise OptionError(f"bad --dynamic-axes {text!r}",
                          "write INPUT:AXIS=SYMBOL, e.g. input_ids:1=S")
    return m.group(1), int(m.group(2)), m.group(3)
