"""The device calibration work runs on: blocks move there one at a time, the model stays in
host memory."""
from __future__ import annotations

import re

import torch

from t2n.errors import OptionError

__all__ = ["check_device", "DEVICE_HELP"]

DEVICE_HELP = "cpu, cuda or cuda:N"


def check_device(device: str) -> torch.device:
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise OptionError(f"unknown device {device!r}", f"use {DEVICE_HELP}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"--device {device}: this torch sees no CUDA device",
                              "use --device cpu, or a machine with a GPU and a CUDA build of "
                              "torch")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise OptionError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                              "device(s)", f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device(device)
