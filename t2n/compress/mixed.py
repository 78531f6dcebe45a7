"""mixed_config: each block compressed by the method a 't2n analyse' configuration chose for it
(``t2n export --mixed-config FILE`` is ``-c mixed_config --compression-option config=FILE``)."""
from __future__ import annotations

from t2n.compress.registry import BUILTIN
from t2n.errors import CompressionError

__all__ = ["mixed_config"]


def mixed_config(model, tokenizer=None, export_dirpath=None, local_dir=None, *,
                 calibration=None, config: str = ""):
    """Mixed precision: each block's method from a configuration of 't2n analyse'"""
    if not config:
        raise CompressionError("mixed_config needs a configuration file",
                               "pass --mixed-config FILE (a configs/*.json of 't2n analyse')")
    from t2n.analyse.config import MixedConfig
    return MixedConfig.load(config).apply(model, calibration=calibration, tokenizer=tokenizer)


BUILTIN["mixed_config"] = mixed_config
