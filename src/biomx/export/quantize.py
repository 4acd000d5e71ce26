"""int8 ONNX by ONNX Runtime's quantiser: static QDQ calibrated on training rows, else dynamic.

Static quantisation fixes activation ranges from calibration data (faster, usually as accurate);
some graphs defeat it (an op the calibrator cannot follow), and then dynamic quantisation
(weights only; activations scaled per batch at run time) still gives an int8 file. The sidecar
says which one was made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biomx.errors import ExportRefused
from biomx.export.trace import first_line, quiet
from biomx.plugins import import_extra

CALIBRATION_BATCH = 32


def reader(quantization, input_name: str, rows: np.ndarray):
    """A CalibrationDataReader over `rows` in batches."""

    class Rows(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{input_name: rows[i:i + CALIBRATION_BATCH]}
                                 for i in range(0, len(rows), CALIBRATION_BATCH)])  # fmt: skip

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    return Rows()


def write_int8(source: Path, target: Path, input_name: str, calibration: np.ndarray, model: str) -> str:
    """Quantise the fp32 ONNX file `source` into `target`; the method used, for the sidecar."""
    quantization = import_extra("onnxruntime.quantization", "biomx export --formats int8")
    q = quantization
    try:
        with quiet():
            q.quantize_static(str(source), str(target), reader(q, input_name, calibration),
                              quant_format=q.QuantFormat.QDQ, activation_type=q.QuantType.QInt8,
                              weight_type=q.QuantType.QInt8)  # fmt: skip
        return f"static QDQ (int8 weights and activations, calibrated on {len(calibration)} training rows)"
    except Exception as err:  # the calibrator or quantiser cannot handle this graph
        static_error = first_line(err)
        target.unlink(missing_ok=True)
    try:
        with quiet():
            q.quantize_dynamic(str(source), str(target), weight_type=q.QuantType.QInt8)
    except Exception as err:
        target.unlink(missing_ok=True)
        raise ExportRefused(f"{model}: cannot be quantised to int8 ({first_line(err)})") from None
    return f"dynamic (int8 weights; static quantisation failed: {static_error})"
