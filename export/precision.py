"""Precision variants of the built models: what each precision is and how it is made.

- ``fp32``: the exported graph as is.
- ``fp16``: the module in half precision through the dynamo exporter (export/onnx_export.py).
- ``int8``: ONNX Runtime dynamic quantization of the FP32 graph: weights int8 per output
  channel, activations quantized per batch at run time (the VNNI kernels of this CPU).
  FuseMoE, served by PyTorch, gets torch's dynamic int8 ``Linear`` at load time.
- ``fp8``: E4M3 Q/DQ ONNX for TensorRT on Hopper, from NVIDIA's ``nvidia-modelopt`` ONNX PTQ
  calibrated on STS-B dev text. It runs on ONNX Runtime's CPU provider as Q/DQ emulation,
  which is how its accuracy is measured here; it is not a CPU speed-up.

A precision is chosen per model at build time (``python -m export.build --precision
int8,E6=fp32``) and recorded in ``build.json`` and the served config.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
ROOT = Path(__file__).resolve().parent.parent
# nvidia-modelopt pins onnx / onnxruntime(-gpu) versions of its own: it runs in a venv of
# its own, made from export/requirements-modelopt.txt.
MODELOPT_VENV = ROOT / ".run" / "modelopt-venv"
MODELOPT_REQUIREMENTS = ROOT / "export" / "requirements-modelopt.txt"
FP8_SCRIPT = Path(__file__).resolve().parent / "fp8_quantize.py"


@dataclass(frozen=True)
class PrecisionPlan:
    """A default precision and per-block exceptions, e.g. ``int8,E6=fp32``."""

    default: str = "fp32"
    overrides: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> PrecisionPlan:
        default, overrides = "fp32", []
        for part in filter(None, (p.strip() for p in text.split(","))):
            block, sep, value = part.partition("=")
            value = value if sep else block
            if value not in PRECISIONS:
                raise ValueError(f"unknown precision {value!r} in {text!r}; "
                                 f"available: {', '.join(PRECISIONS)}")
            if sep:
                if not re.fullmatch(r"E\d+|fusemoe", block):
                    raise ValueError(f"{block!r} in {text!r}: a block is E1 ... E12 or fusemoe")
                overrides.append((block, value))
            else:
                default = value
        return cls(default, tuple(overrides))

    def of(self, block: str) -> str:
        return dict(self.overrides).get(block, self.default)

    def __str__(self) -> str:
        return ",".join([self.default, *(f"{b}={p}" for b, p in self.overrides)])


def quantize_int8(source: Path, target: Path, keep_fp32: tuple[str, ...] = ()) -> list[str]:
    """Dynamic INT8 of every MatMul/Gemm with a constant weight, per output channel, except
    the nodes whose names contain one of ``keep_fp32``; returns the names kept in FP32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    kept = [n.name for n in graph.node
            if n.op_type in ("MatMul", "Gemm") and any(k in n.name for k in keep_fp32)]
    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=kept)
    return kept


def quantize_torch_int8(module):
    """torch's dynamic int8 ``Linear`` (per output channel) for a module served by PyTorch.
    torch marks these kernels deprecated in favour of torchao; they still run here."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)


def modelopt_python() -> Path:
    """The Python of the nvidia-modelopt venv, made once from its requirements."""
    python = MODELOPT_VENV / "bin" / "python"
    stamp = MODELOPT_VENV / "requirements.txt"
    wanted = MODELOPT_REQUIREMENTS.read_text()
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    print("fp8: installing nvidia-modelopt into .run/modelopt-venv (a few minutes, ~2 GB)",
          flush=True)
    subprocess.run(["rm", "-rf", str(MODELOPT_VENV)], check=True)
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    subprocess.run([str(base), "-m", "venv", str(MODELOPT_VENV)], check=True)
    pip = [str(MODELOPT_VENV / "bin" / "pip"), "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(MODELOPT_REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return python


def quantize_fp8(source: Path, target: Path, calibration: dict[str, np.ndarray]) -> None:
    """E4M3 Q/DQ graph of ``source`` calibrated on ``calibration`` (input name -> array),
    made by nvidia-modelopt in its own venv."""
    target.parent.mkdir(parents=True, exist_ok=True)
    data = target.with_suffix(".calibration.npz")
    np.savez(data, **calibration)
    try:
        subprocess.run([str(modelopt_python()), str(FP8_SCRIPT), str(source), str(target),
                        str(data)], check=True)
    finally:
        data.unlink(missing_ok=True)
        for staged in source.parent.glob(f"{source.stem}_*.onnx"):  # modelopt's intermediates
            staged.unlink()
