"""Representative data for INT8 quantization: selection, the reader that feeds converters, the report."""

from calibration.report import calibration_report
from calibration.select import CalibrationSet, select_calibration

__all__ = ["CalibrationSet", "calibration_report", "select_calibration"]
