"""FP8 (E4M3) Q/DQ ONNX with nvidia-modelopt's ONNX PTQ, calibrated on the CPU.

    <modelopt venv>/bin/python export/fp8_quantize.py SOURCE.onnx TARGET.onnx CALIB.npz

Runs in the venv of export/requirements-modelopt.txt (modelopt pins its own onnx and
onnxruntime), so it imports nothing of the project. ``CALIB.npz`` holds one array per graph
input (the tokens of STS-B dev sentences). ``high_precision_dtype="fp32"`` keeps the
non-quantized parts in FP32 so that ONNX Runtime's CPU provider can run the graph. Only the
inputs of MatMul/Gemm get Q/DQ (the GEMMs TensorRT runs in FP8): modelopt's default also
quantized CLIP's causal-mask ``Where`` and the residual ``Add`` outputs, and CLIP's vectors
came out NaN (every row of the tiny CLIP; perf/reports/precision.md). Calibration
is "max" (amax per tensor, the usual FP8 recipe): the entropy histogram of the default
fails on CLIP too, the mask holding the lowest float.
"""

import sys

import numpy as np
from modelopt.onnx.quantization import quantize


def main(source: str, target: str, calibration: str) -> int:
    data = dict(np.load(calibration))
    quantize(source, quantize_mode="fp8", calibration_data=data, calibration_method="max",
             op_types_to_quantize=["MatMul", "Gemm"], calibration_eps=["cpu"],
             high_precision_dtype="fp32", output_path=target, log_level="WARNING")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
