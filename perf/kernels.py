"""Faster kernels at equal accuracy: each full-size model through each runtime and quantisation.

    python -m perf.kernels [--texts 64] [--blocks E1,E6] [--variants ort-int8-fused,...]

The full profile's FP32 graphs (built into .run/bench-full/fp32 when missing), each model
alone, one thread, batches of 32 STS-B dev sentences (padded to the batch's longest), through:

- ``ort-fp32``: the FP32 graph in ONNX Runtime, in the session the server makes (graph
  optimisation "extended", the registry's default);
- ``ort-int8-dynamic``: what the ``int8`` build serves (export/precision.py): dynamic
  quantisation of every MatMul, weights per channel, activations per batch at run time;
- ``ort-int8-fused``: ONNX Runtime's transformer optimiser first (attention, LayerNorm,
  GELU and skip-LayerNorm fusions for the model's heads and width), then the same dynamic
  INT8 (the attention's projections become one quantised attention operator);
- ``ort-int8-static``: static INT8 QDQ, weights per channel, activations calibrated
  (MinMax) on STS-B train sentences;
- ``openvino-fp32``, ``openvino-bf16``: OpenVINO's CPU plugin on the same graph, with its
  inference precision set;
- ``openvino-int8``: NNCF post-training quantisation (transformer preset) calibrated on STS-B
  train sentences, run by OpenVINO.

Per model and variant: milliseconds per batch of 32, the lowest and mean cosine of its
outputs to FP32's, and the seconds the variant took to make. The peak of one MatMul in FP32
and dynamic INT8 (perf/roofline.py) is measured in the same run. OpenVINO and NNCF come from
perf/requirements-kernels.txt, installed into the venv when missing. Writes
perf/reports/kernels-full.md (+ perf/results/kernels-full.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from perf import provenance
from perf.workload import FULL_RUN, REPORTS, RESULTS, ROOT, RUN, full_build, machine, sentences

REPOSITORY = FULL_RUN / "fp32"
WORK = RUN / "kernels"
REQUIREMENTS = ROOT / "perf" / "requirements-kernels.txt"
BATCH = 32
SERVED = "ort-int8-dynamic"  # what the full profile's int8 build serves
VARIANTS = ("ort-fp32", SERVED, "ort-int8-fused", "ort-int8-static", "openvino-fp32",
            "openvino-bf16", "openvino-int8")
CALIBRATION_TEXTS = 128  # STS-B train sentences for the static variants
Run = Callable[[np.ndarray, np.ndarray], np.ndarray]
Batches = list[tuple[np.ndarray, np.ndarray]]


def ensure_openvino() -> None:
    """OpenVINO and NNCF, pinned, into this venv when missing."""
    if all(importlib.util.find_spec(m) for m in ("openvino", "nncf")):
        return
    print(f"kernels: installing {REQUIREMENTS.name} ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-r",
                    str(REQUIREMENTS)], check=True)


def token_batches(tokenizer, texts: list[str]) -> Batches:
    """``texts`` as batches of ids and masks, each cut to its longest row."""
    out = []
    for i in range(0, len(texts), BATCH):
        tb = tokenizer.encode(texts[i:i + BATCH])
        n = int(tb.attention_mask.sum(1).max())
        out.append((np.ascontiguousarray(tb.input_ids[:, :n], dtype=np.int64),
                    np.ascontiguousarray(tb.attention_mask[:, :n], dtype=np.int64)))
    return out


def ort_runner(path: Path) -> Run:
    """``path`` in the ONNX Runtime session the server makes (ensemble.stages.onnx_session),
    on the CPU with one thread."""
    from ensemble.stages import Placement, onnx_session
    from export.registry import Runtime

    session, _ = onnx_session(path, Runtime(threads=1), Placement())
    names = [i.name for i in session.get_inputs()]
    return lambda ids, mask: session.run(None, {names[0]: ids, names[1]: mask})[0]


def openvino_runner(model, precision: str | None) -> Run:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]
    return lambda ids, mask: next(iter(request.infer({names[0]: ids, names[1]: mask}).values()))


def optimiser_type(spec) -> str:
    """The transformer optimiser's model type for a block's architecture."""
    return "clip" if spec.id == "E10" else "bert"


def make(variant: str, spec, source: Path, work: Path, calibration: Batches, size) -> Run:
    """The runner of ``variant`` for the FP32 graph ``source`` (files made under ``work``)."""
    from export.precision import quantize_int8

    work.mkdir(parents=True, exist_ok=True)
    if variant == "ort-fp32":
        return ort_runner(source)
    if variant == SERVED:
        quantize_int8(source, work / "int8.onnx")
        return ort_runner(work / "int8.onnx")
    if variant == "ort-int8-fused":
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers.optimizer import optimize_model

        fused = optimize_model(str(source), model_type=optimiser_type(spec),
                               num_heads=size.heads, hidden_size=size.hidden, opt_level=0)
        stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
        print(f"  {spec.id} fused operators: {stats}", flush=True)
        fused.save_model_to_file(str(work / "fused.onnx"))
        # The fused graph holds com.microsoft operators that ONNX's shape inference does not
        # type: their outputs are FP32.
        quantize_dynamic(str(work / "fused.onnx"), str(work / "fused-int8.onnx"),
                         weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return ort_runner(work / "fused-int8.onnx")
    if variant == "ort-int8-static":
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        names = ort_input_names(source)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.rows = iter(calibration)

            def get_next(self):
                row = next(self.rows, None)
                return None if row is None else {names[0]: row[0], names[1]: row[1]}

        quantize_static(str(source), str(work / "static-int8.onnx"), Reader(),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"])
        return ort_runner(work / "static-int8.onnx")
    if variant in ("openvino-fp32", "openvino-bf16"):
        return openvino_runner(str(source), variant.split("-")[1].replace("fp32", "f32"))
    if variant == "openvino-int8":
        import nncf
        import openvino as ov

        model = ov.Core().read_model(str(source))
        names = [i.get_any_name() for i in model.inputs]
        data = nncf.Dataset(calibration, lambda b: {names[0]: b[0], names[1]: b[1]})
        quantised = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=sum(len(b[0]) for b in calibration))
        return openvino_runner(quantised, None)
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


def ort_input_names(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initialisers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initialisers]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the cosine of the two outputs flattened (ColBERT's are per token)."""
    from perf.precision import cosines as row_cosines

    return row_cosines(a.reshape(len(a), -1).astype(np.float64),
                       b.reshape(len(b), -1).astype(np.float64))


def measure(repository: Path, texts: int, blocks: list[str] | None,
            variants: tuple[str, ...]) -> dict:
    from ensemble.stages import FamilyTokenizer, version_dir
    from export.registry import EMBEDDERS, Input, tokenizer_family
    from perf.roofline import model_size, peak

    full_build("fp32", repository)
    if any(v.startswith("openvino") for v in variants):
        ensure_openvino()
    from ensemble import corpus

    sample, calibration_texts = sentences(texts), corpus.sentences("train")[:CALIBRATION_TEXTS]
    result: dict = {"texts": len(sample), "calibration_texts": len(calibration_texts),
                    "variants": list(variants),
                    "peak_1_thread": {p: peak(1, p) for p in ("fp32", "int8")}, "models": {}}
    for spec in EMBEDDERS:
        source = version_dir(repository, spec.triton_model) / "model.onnx"
        if spec.input is not Input.TOKENS or (blocks and spec.id not in blocks) \
                or not source.is_file():
            continue
        family = tokenizer_family(spec.tokenizer or "")
        tokenizer = FamilyTokenizer(version_dir(repository, family.triton_model), family)
        batches = token_batches(tokenizer, sample)
        calibration = token_batches(tokenizer, calibration_texts)
        size = model_size(spec, repository)
        reference_run = ort_runner(source)
        reference = [reference_run(*b) for b in batches]  # per batch: ColBERT's are per token
        del reference_run
        rows = {}
        for variant in variants:
            start = time.perf_counter()
            try:
                run = make(variant, spec, source, WORK / spec.id / variant, calibration, size)
            except Exception as err:  # noqa: BLE001 - a variant that cannot be made is reported
                rows[variant] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
                print(f"  {spec.id} {variant}: {rows[variant]['error']}", flush=True)
                continue
            made_s = time.perf_counter() - start
            try:
                out = [run(*b) for b in batches]  # also the warm-up
            except Exception as err:  # noqa: BLE001 - made, but its runtime cannot run it
                rows[variant] = {"error": f"runs: {type(err).__name__}: {str(err)[-300:]}"}
                print(f"  {spec.id} {variant}: {rows[variant]['error']}", flush=True)
                continue
            start = time.perf_counter()
            for b in batches:
                run(*b)
            ms = (time.perf_counter() - start) / len(batches) * 1000
            c = np.concatenate([cosines(o, r) for o, r in zip(out, reference)])
            rows[variant] = {"ms_per_batch": ms, "min_cos": float(c.min()),
                             "mean_cos": float(c.mean()), "made_s": made_s}
            print(f"  {spec.id} {variant:<17} {ms:8.0f} ms/32  cos min {c.min():.5f}",
                  flush=True)
            del run
        result["models"][spec.id] = {"model": spec.triton_model, "heads": size.heads,
                                     "hidden": size.hidden, "layers": size.layers,
                                     "variants": rows}
        WORK.mkdir(parents=True, exist_ok=True)  # what is measured so far, should a model fail
        (WORK / "partial.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def totals(result: dict) -> dict[str, float | None]:
    """Per variant, the one-thread ms per batch of 32 summed over the models (None when a
    model could not run it)."""
    out: dict[str, float | None] = {}
    for v in result["variants"]:
        times = [m["variants"].get(v, {}).get("ms_per_batch") for m in result["models"].values()]
        out[v] = None if any(t is None for t in times) else float(sum(times))
    return out


def report_lines(result: dict) -> list[str]:
    p = result["peak_1_thread"]
    lines = [(f"{result['texts']} STS-B dev sentences in batches of {BATCH}, each model alone on "
              f"one thread; static variants calibrated on {result['calibration_texts']} STS-B "
              f"train sentences. One MatMul's peak in the same run: FP32 {p['fp32']:.0f} "
              f"GFLOP/s, dynamic INT8 {p['int8']:.0f} (one thread)."), "",
             ("| block | variant | ms per 32 | vs served INT8 | min cos to FP32 | mean cos | "
              "made in s |"), "|---|---|---|---|---|---|---|"]
    for block, m in result["models"].items():
        served = m["variants"].get(SERVED, {}).get("ms_per_batch")
        for v in result["variants"]:
            r = m["variants"].get(v)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {block} | {v} | could not be made: {r['error']} | | | | |")
                continue
            speed = f"{served / r['ms_per_batch']:.2f}x" if served else ""
            lines.append(f"| {block} | {v} | {r['ms_per_batch']:.0f} | {speed} | "
                         f"{r['min_cos']:.5f} | {r['mean_cos']:.5f} | {r['made_s']:.0f} |")
    sums = totals(result)
    served = sums.get(SERVED)
    lines += ["", "Every model measured, one batch of 32 each, back to back (ms):", "",
              "| variant | ms | vs served INT8 |", "|---|---|---|"]
    for v, total in sums.items():
        if total is None:
            lines.append(f"| {v} | (a model could not run it) | |")
        else:
            lines.append(f"| {v} | {total:.0f} | "
                         f"{f'{served / total:.2f}x' if served else ''} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--blocks", default="", help="comma-separated, e.g. E1,E6 (all)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    start = time.perf_counter()
    result = measure(args.repository, args.texts,
                     [b for b in args.blocks.split(",") if b] or None, variants)
    result["elapsed_s"] = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kernels-full.json").write_text(json.dumps(result, indent=2) + "\n")
    command = " ".join(["python -m perf.kernels", *(argv if argv is not None else sys.argv[1:])])
    text = "\n".join(["# Kernels at full size: each model through each runtime and quantisation",
                      "", (f"Command: `{command}` ({result['elapsed_s'] / 60:.0f} min). "
                           f"Machine: {machine()}."), "", *report_lines(result), ""])
    REPORTS.mkdir(parents=True, exist_ok=True)
    report = provenance.write(REPORTS / "kernels-full.md", text, args.repository)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
