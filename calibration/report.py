"""What a model was calibrated on, as recorded in the bundle manifest."""

from __future__ import annotations

from collections.abc import Sequence

from calibration.select import CalibrationSet
from devices.host import package_version


def calibration_report(
    calibration_set: CalibrationSet,
    method: str,
    converter: str,
    class_names: Sequence[str],
) -> dict:
    """A JSON-ready record of the calibration for the bundle manifest.

    Args:
        calibration_set: The images used.
        method: Calibration method as the converter names it (for example ``Percentile``).
        converter: Distribution name of the converter package (``onnxruntime``, ``ai-edge-quantizer``,
            ...); its installed version is recorded beside it.
        class_names: Names of the class indices, for readable counts.

    Returns:
        ``count``, ``images_per_class`` (name -> images containing it), ``negatives``, ``sources``,
        ``sha256``, ``seed``, ``method``, ``converter`` and ``converter_version``.
    """
    per_class = {
        (class_names[c] if 0 <= c < len(class_names) else str(c)): n for c, n in calibration_set.class_counts.items()
    }
    return {
        "count": len(calibration_set),
        "images_per_class": per_class,
        "negatives": calibration_set.negatives,
        "sources": dict(calibration_set.sources),
        "sha256": calibration_set.sha256,
        "seed": calibration_set.seed,
        "method": method,
        "converter": converter,
        "converter_version": package_version(converter),
    }
