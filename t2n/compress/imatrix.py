"""imatrix_q4_0: Q4_0 scales searched per 32-block for the least error weighted by how strongly
each input column is driven (the importance matrix: the mean of x^2 of the layer's inputs over
the calibration tokens), as llama.cpp's imatrix quantization does; see q4_0_fit.fit_scales.

``weighting``: ``imatrix`` weights column j by its mean square input (the expected output
error of the block, cross terms left out); ``llama`` multiplies that by
``sqrt(sigma^2 + x_j^2)`` (the row's weight variance plus the weight's square), llama.cpp's
own choice for Q4_0, which also favours large weights.

``scale_min``/``scale_max``: the candidate scales, as multiples of GGML's own (the peak on the
end level). Below 1 the peak is clipped; the weighted error on the calibration inputs likes that
when the peak's column is weakly driven there, but other text drives it too. On SmolLM2-135M
(Q4_0 on every decoder Linear, the table in 8 bits, calibrated on Python's documentation) the
candidates 0.7-1.1x give 30.03 perplexity on the GPL-3 text in torch and 0.9-1.45x give 28.91,
where llama.cpp's own imatrix Q4_0 of the same importance gives 30.21.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from t2n.compress.blockwise import ALL, LINEAR, CommonOptions, Method, entry
from t2n.compress.q4_0_fit import BLOCK, fit_scales
from t2n.compress.registry import BUILTIN
from t2n.errors import CompressionError

__all__ = ["Imatrix", "ImatrixOptions", "imatrix_weights"]

WEIGHTINGS = ("imatrix", "llama")


@dataclass(frozen=True)
class ImatrixOptions(CommonOptions):
    weighting: str = "imatrix"
    steps: int = 16          # candidate scales per orientation
    scale_min: float = 0.9   # the candidates, as multiples of GGML's scale (peak / 8)
    scale_max: float = 1.45

    def __post_init__(self):
        super().__post_init__()
        scales = (self.scale_min, self.scale_max)
        if not (all(isinstance(v, (int, float)) for v in scales) and 0 < scales[0] <= scales[1]):
            raise CompressionError(f"options scale_min={self.scale_min!r}, "
                                   f"scale_max={self.scale_max!r}",
                                   "give 0 < scale_min <= scale_max (e.g. 0.9 and 1.45)")
        if self.weighting not in WEIGHTINGS:
            raise CompressionError(f"option weighting={self.weighting!r}",
                                   f"use one of: {', '.join(WEIGHTINGS)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise CompressionError(f"option steps={self.steps!r}", "give a positive integer")


def imatrix_weights(weight: torch.Tensor, importance: torch.Tensor | None,
                    weighting: str = "imatrix") -> torch.Tensor | None:
    """Weights of the error of ``weight [out, k]``'s blocks, as ``fit_scales`` takes them:
    ``[k/32, 32]`` (one row per block column) or ``[n_blocks, 32]``."""
    if importance is None:
        return None
    if weighting != "llama":   # the same weights for every row: fit_scales repeats them
        return importance.reshape(-1, BLOCK)
    sigma2 = (weight * weight).mean(dim=1, keepdim=True)
    return (importance.reshape(1, -1) * torch.sqrt(sigma2 + weight * weight)).reshape(-1, BLOCK)


class Imatrix(Method):
    name = "imatrix"

    def quantize_layer(self, name, module, weight, stat):
        w = imatrix_weights(weight, self.importance(stat), self.options.weighting)
        o = self.options
        return fit_scales(weight.reshape(-1, BLOCK), w, steps=o.steps,
                          spread=(o.scale_min, o.scale_max))


BUILTIN.update({
    "imatrix_q4_0": entry(Imatrix, ImatrixOptions, LINEAR,
                          "Q4_0 on Linear, scales searched for the least error weighted by the "
                          "calibration inputs' importance (imatrix)"),
    "imatrix_q4_0_all": entry(Imatrix, ImatrixOptions, ALL,
                              "Q4_0 on Linear, Embedding, Conv1d, Conv2d, imatrix-weighted scale "
                              "search (tied weights through their Linear)"),
})
