"""Calibration: representative data and the block-by-block runner of calibrated compressions."""
from t2n.calibrate.data import Calibration, calibration_for, calibration_from

__all__ = ["Calibration", "calibration_for", "calibration_from"]
