"""FP16 vs FP32: cosine of every neural embedder's vectors over the STS-B dev sentences.

    python -m perf.precision

Builds the FP16 variant (``export.build --precision fp16``) of each neural embedder into a
temporary repository from the same checkpoints as the project's FP32 build, runs both on
every distinct STS-B dev sentence (as passages), and writes
``perf/reports/precision-fp16.md`` (and ``.json``) with the min and mean cosine per model.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ensemble.stages import FamilyTokenizer, TokenBatch, TokenEmbedder, version_dir
from export.build import build
from export.registry import EMBEDDERS, Input, tokenizer_family
from export.repository import REPOSITORY
from perf.sts import DATA, REPORTS, load_split

TARGET = 0.999
CHUNK = 64


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def compare(repo32: Path, repo16: Path, sentences: list[str]) -> dict[str, dict]:
    results = {}
    for spec in EMBEDDERS:
        if spec.input is not Input.TOKENS:
            continue
        family = tokenizer_family(spec.tokenizer or "")
        tokenizer = FamilyTokenizer(version_dir(repo32, family.triton_model), family)
        fp32 = TokenEmbedder(spec, version_dir(repo32, spec.triton_model))
        fp16 = TokenEmbedder(spec, version_dir(repo16, spec.triton_model))
        assert fp16.info["precision"] == "fp16" and fp32.info.get("precision", "fp32") == "fp32"
        start = time.perf_counter()
        cos = []
        for i in range(0, len(sentences), CHUNK):
            batch: TokenBatch = tokenizer.encode(sentences[i:i + CHUNK])
            cos.append(cosines(fp32.embed(batch), fp16.embed(batch)))
        c = np.concatenate(cos)
        results[spec.id] = {"model": spec.triton_model, "runtime": fp32.runtime,
                            "weights": "pretrained" if fp32.info["pretrained"] else "tiny",
                            "min": float(c.min()), "mean": float(c.mean()),
                            "seconds": time.perf_counter() - start}
        print(f"{spec.id:>4}  min {c.min():.6f}  mean {c.mean():.6f}", flush=True)
    return results


def write_report(results: dict[str, dict], n: int) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    lines = ["# FP16 vs FP32 embeddings (STS-B dev sentences)", "",
             (f"{n} distinct sentences, embedded as passages. Command: `python -m perf.precision`."
             f" Machine: {platform.machine()}, Python {platform.python_version()}, ONNX Runtime "
             "CPU. FP16: `python -m export.build --precision fp16` (ONNX FP16 graphs from the "
             "dynamo exporter; E5 runs its PyTorch module in float16)."), "",
             "| block | model | weights | runtime | min cosine | mean cosine | ≥ 0.999 |",
             "|---|---|---|---|---|---|---|"]
    for block, r in results.items():
        ok = "yes" if r["min"] >= TARGET else "**no**"
        lines.append(f"| {block} | {r['model']} | {r['weights']} | {r['runtime']} | "
                     f"{r['min']:.6f} | {r['mean']:.6f} | {ok} |")
    path = REPORTS / "precision-fp16.md"
    path.write_text("\n".join(lines) + "\n")
    (REPORTS / "precision-fp16.json").write_text(json.dumps(
        {"sentences": n, "target": TARGET, "results": results}, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--checkpoints", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    pairs = load_split(args.data, "dev")
    sentences = sorted(set(pairs.first + pairs.second))
    neural = {e.id for e in EMBEDDERS if e.input is Input.TOKENS}
    build(REPOSITORY, "pretrained", checkpoint_dirs=args.checkpoints)
    with tempfile.TemporaryDirectory(prefix="fp16-") as tmp:
        repo16 = Path(tmp)
        build(repo16, "pretrained", checkpoint_dirs=args.checkpoints, only=neural,
              precision="fp16")
        results = compare(REPOSITORY, repo16, sentences)
    path = write_report(results, len(sentences))
    print(f"report: {path}")
    return 0 if all(r["min"] >= TARGET for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
