"""Race A's in-process libraries, run inside .run/libraries-venv (perf/requirements-libraries.txt).

    python perf/race_a_libraries.py prepare MODEL_DIR
    python perf/race_a_libraries.py loop SIDE MODEL_DIR SECONDS OUT.json

``prepare`` gives a copy of the all-MiniLM-L6-v2 checkpoint what each peer's documentation
says to use on a CPU: sentence-transformers' ONNX export (``onnx/model.onnx``), its dynamic
INT8 export for AVX-512 VNNI (``onnx/model_qint8_avx512_vnni.onnx``), and optimum's own
AVX-512 VNNI dynamic quantization (``onnx/model_quantized.onnx``, the file infinity-emb's
optimum engine prefers on a CPU: it picks a file whose name holds "quantize").

``loop`` runs one side's closed loops (perf.workload.closed_loop: batch 32 and 1,
concurrency 1 and 8, concurrent ``encode`` calls from threads) and writes the rows and the
vectors of the first 32 texts to OUT.json:

- ``st-onnx-int8``: ``SentenceTransformer(dir, backend="onnx")`` on the INT8 file;
- ``st-onnx``: the same on the FP32 ONNX export;
- ``fastembed``: ``TextEmbedding`` registered as a custom model over the same INT8 file
  (mean pooling, normalised), ONNX Runtime's default threads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

INT8_FILE = "onnx/model_qint8_avx512_vnni.onnx"
FP32_FILE = "onnx/model.onnx"
POINTS = ((32, 1), (32, 8), (1, 1), (1, 8))
DIM = 384


def prepare(model_dir: Path) -> None:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    model = SentenceTransformer(str(model_dir), backend="onnx", device="cpu")
    model.save_pretrained(str(model_dir))  # keeps onnx/model.onnx
    export_dynamic_quantized_onnx_model(model, "avx512_vnni", str(model_dir))
    quantizer = ORTQuantizer.from_pretrained(str(model_dir / "onnx"), file_name="model.onnx")
    quantizer.quantize(save_dir=str(model_dir / "onnx"), quantization_config=(
        AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)))


def make_side(side: str, model_dir: Path):
    if side.startswith("st-onnx"):
        from sentence_transformers import SentenceTransformer

        file_name = INT8_FILE if side == "st-onnx-int8" else FP32_FILE
        model = SentenceTransformer(str(model_dir), backend="onnx", device="cpu",
                                    model_kwargs={"file_name": file_name})
        return lambda: (lambda chunk: model.encode(chunk, batch_size=32,
                                                   normalize_embeddings=True))
    if side == "fastembed":
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        name = "local/all-MiniLM-L6-v2-int8"
        TextEmbedding.add_custom_model(model=name, pooling=PoolingType.MEAN, normalization=True,
                                       sources=ModelSource(hf=name), dim=DIM,
                                       model_file=INT8_FILE)
        model = TextEmbedding(model_name=name, specific_model_path=str(model_dir))
        return lambda: (lambda chunk: np.stack(list(model.embed(chunk, batch_size=32))))
    raise SystemExit(f"unknown side {side!r}")


def loop(side: str, model_dir: Path, seconds: float, out: Path) -> None:
    from perf.workload import closed_loop, sentences

    texts = sentences(512)
    make_send = make_side(side, model_dir)
    probe = make_send()(texts[:32])
    rows = []
    for batch, clients in POINTS:
        rows.append(closed_loop(make_send, texts, batch, clients, seconds, DIM))
        print(f"  {side}: batch {batch}, concurrency {clients}: "
              f"{rows[-1]['items_per_s']:.1f} texts/s, p95 {rows[-1]['p95_ms']:.0f} ms",
              flush=True)
    out.write_text(json.dumps({"rows": rows, "probe": np.asarray(probe).tolist()}))


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {d: version(d) for d in ("sentence-transformers", "fastembed", "optimum",
                                    "optimum-onnx", "onnxruntime", "transformers")}


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "prepare":
        prepare(Path(sys.argv[2]))
    elif command == "loop":
        loop(sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5]))
    elif command == "versions":
        print(json.dumps(versions()))
    else:
        raise SystemExit(f"unknown command {command!r}")
