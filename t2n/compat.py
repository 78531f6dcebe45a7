"""The versions of torch and transformers t2n was tested with, and the one place that reads
what differs between transformers releases (the name of a causal LM's cache argument).

``TESTED`` holds the lowest and highest release of each package the test suite passed on; the
same range is declared in pyproject.toml and scripts/constraints.txt pins the set-up to the
highest. A release outside the range gets one warning naming the range (``warn_untested``).
"""
from __future__ import annotations

import inspect
import logging
import re

from t2n.errors import OptionError

__all__ = ["TESTED", "versions", "untested", "warn_untested", "cache_argument"]

log = logging.getLogger("t2n")

# package -> (lowest, highest) release the test suite passed on
TESTED = {"torch": ("2.13.0", "2.13.0"), "transformers": ("5.23.0", "5.25.0")}

# what a causal LM's forward calls its key/value cache, newest spelling first
CACHE_ARGUMENTS = ("cache", "past_key_values")

_warned: set[str] = set()


def _release(version: str) -> tuple[int, int, int]:
    """``"5.25.0"`` / ``"2.13.0+cpu"`` / ``"5.26.0.dev0"`` -> (major, minor, patch)."""
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def versions() -> dict[str, str]:
    """Installed versions of python and the packages an export depends on."""
    import platform

    import numpy
    import torch
    import tract
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tract": tract.version(),
            "numpy": numpy.__version__}


def untested(package: str, version: str) -> str | None:
    """A one-line warning if ``version`` of ``package`` lies outside ``TESTED``, else None."""
    low, high = TESTED[package]
    if _release(low) <= _release(version) <= _release(high):
        return None
    span = low if low == high else f"{low} to {high}"
    return (f"{package} {version} is outside the range t2n was tested with ({span}); "
            f"if the export fails, install one in range (pip install '{package}=={high}')")


def warn_untested(package: str = "transformers") -> None:
    """Log ``untested(...)`` once per process for the installed release of ``package``."""
    if package in _warned:
        return
    _warned.add(package)
    module = __import__(package)
    message = untested(package, module.__version__)
    if message:
        log.warning(message)


def cache_argument(model) -> str:
    """The name under which ``model.forward`` takes its key/value cache: ``cache``
    (transformers >= 5.25) or ``past_key_values`` (earlier releases)."""
    params = inspect.signature(model.forward).parameters
    for name in CACHE_ARGUMENTS:
        if name in params:
            return name
    import transformers
    raise OptionError(
        f"{type(model).__name__}.forward takes no key/value cache argument "
        f"({' or '.join(CACHE_ARGUMENTS)}; transformers {transformers.__version__})",
        "export a transformers causal LM (…ForCausalLM); t2n was tested with transformers "
        f"{TESTED['transformers'][0]} to {TESTED['transformers'][1]}")
