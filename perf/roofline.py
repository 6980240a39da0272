"""Roofline: the work each model does per text, this machine's peak, and where the time goes.

    python -m perf.roofline --repository .run/bench-full/int8 [--texts 256]

- FLOPs per text, by an exact formula over each model's architecture (read from the build:
  the published size, the toy size or the checkpoint's config) at the token counts each
  model really runs (its tokenizer, its convention's extra tokens, its truncation); a
  multiply-add is 2 FLOPs. Per encoder layer over n tokens of width h with an intermediate
  width i: 2n(4h^2 + 2hi) for the projections and the feed-forward, 4n^2h for attention.
  Heads: SPLADE's transform and vocabulary decoder 2n(h^2 + hV) plus the 30522x1536
  projection; ColBERT's 2nh*128; CLIP's 2hp projection of one state; E5's global first token
  6h^2 + 4Hnh per layer (its folded global attention). FuseMoE: the gate and the top-2
  experts. Custom encoders, pooling, LayerNorm and softmax are left out (memory-bound and
  small): the fractions below are of useful GEMM work.
- The peak, measured in the same run: one MatMul [512 x 1024] x [1024 x 4096] (a batch of
  32 texts of 16 tokens through e5-large's feed-forward) through ONNX Runtime, FP32 and
  dynamic INT8 (the same kernels the INT8 embedders run), on 1 and on every core.
- Per model, alone, one thread (as served: one instance, threads 1), batch 32: seconds for
  the STS-B dev sentences and for texts of 512 tokens (each model's own limit where lower),
  the GFLOP/s reached and its fraction of the one-thread peak of the model's precision.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perf.workload import REPORTS, RESULTS, sentences

BATCH = 32
PEAK_SHAPE = (512, 1024, 4096)  # M, K, N


@dataclass(frozen=True)
class Size:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab_size: int
    projection_dim: int | None = None


def model_size(spec, repo: Path) -> Size:
    """The architecture a built model runs (from its build record)."""
    from export.architectures import architecture
    from export.build import tokenizer_ids
    from export.registry import tokenizer_family

    info = json.loads((repo / spec.triton_model / "1" / "build.json").read_text())
    if info.get("pretrained"):
        from export.architectures import architecture as arch_of

        config = arch_of(spec).pretrained_config(Path(info["checkpoint"]))
        return Size(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                    config.intermediate_size, config.vocab_size,
                    getattr(config, "projection_dim", None))
    arch = architecture(spec)
    ids = tokenizer_ids(tokenizer_family(spec.tokenizer or ""), repo)
    size = arch.full_size(spec, ids) if info.get("size") == "full" else arch.tiny_size(spec, ids)
    return Size(size.layers, size.hidden, size.heads, size.intermediate, size.vocab_size,
                size.projection_dim)


def encoder_flops(size: Size, n: int) -> float:
    h, i = size.hidden, size.intermediate
    return size.layers * (2 * n * (4 * h * h + 2 * h * i) + 4 * n * n * h)


def text_flops(spec, size: Size, n: int) -> float:
    """FLOPs of one text of ``n`` tokens (as the model runs it) through ``spec``'s model."""
    from export.registry import Pooling

    flops = encoder_flops(size, n)
    h = size.hidden
    if spec.pooling is Pooling.SPLADE_MAX:
        flops += 2 * n * (h * h + h * size.vocab_size) + 2 * size.vocab_size * spec.dim
    elif spec.pooling is Pooling.COLBERT_MEAN:
        flops += 2 * n * h * spec.dim
    elif spec.pooling is Pooling.EOS_PROJECTION:
        flops += 2 * h * (size.projection_dim or spec.dim)
    if spec.id == "E5":  # the global first token of the short path, per layer
        flops += size.layers * (6 * h * h + 4 * size.heads * n * h)
    return float(flops)


def fusemoe_flops() -> float:
    from export.registry import FUSEMOE as c

    gate = 2 * (c.input_dim * c.gate_hidden + c.gate_hidden * c.num_experts)
    expert = 2 * (c.input_dim * c.expert_hidden + c.expert_hidden * c.output_dim)
    return float(gate + c.top_k * expert)


def tokens_run(embedder, batch) -> np.ndarray:
    """Tokens per text that ``embedder`` runs for passages: convention tokens in, cut to its
    limit."""
    from export.registry import Kind

    return np.minimum(embedder.token_counts(batch, Kind.PASSAGE),
                      embedder.token_limit(Kind.PASSAGE))


# --- peak ----------------------------------------------------------------------------------

def _matmul_graph(path: Path, k: int, n: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32) * 0.02
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="gemm")], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the exporter writes at opset 17; ONNX Runtime reads it
    onnx.save(model, str(path))


def peak(threads: int, precision: str, repeats: int = 20) -> float:
    """GFLOP/s of one [M x K] x [K x N] MatMul through ONNX Runtime (median of repeats)."""
    import onnxruntime as ort

    from export.precision import quantize_int8

    m, k, n = PEAK_SHAPE
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fp32.onnx"
        _matmul_graph(path, k, n)
        if precision == "int8":
            quantize_int8(path, Path(tmp) / "int8.onnx")
            path = Path(tmp) / "int8.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
        for _ in range(3):
            session.run(None, {"x": x})
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            session.run(None, {"x": x})
            times.append(time.perf_counter() - t)
    return 2 * m * k * n / float(np.median(times)) / 1e9


def peaks(cores: int) -> dict[str, dict[int, float]]:
    out = {p: {t: peak(t, p) for t in sorted({1, cores})} for p in ("fp32", "int8")}
    for p, by in out.items():
        print(f"  peak {p}: " + ", ".join(f"{t} thread(s) {g:.0f} GFLOP/s" for t, g in by.items()),
              flush=True)
    return out


# --- per model -----------------------------------------------------------------------------

def long_texts(n: int) -> list[str]:
    """Texts of at least 512 tokens in every family (STS-B sentences run together)."""
    pool = sentences(2000)
    return [" ".join(pool[(j * 97 + k) % len(pool)] for k in range(60)) for j in range(n)]


def per_model(repo: Path, texts: list[str], peak_1: dict[str, float]) -> list[dict]:
    """Each neural model alone, one thread, batch 32: STS-B dev texts and 512-token texts."""
    from ensemble.stages import FamilyTokenizer, TokenBatch, TokenEmbedder, version_dir
    from export.registry import EMBEDDERS, Input, Runtime, tokenizer_family

    runtime = Runtime(threads=1)
    long = long_texts(BATCH)
    rows = []
    for spec in EMBEDDERS:
        if spec.input is not Input.TOKENS:
            continue
        family = tokenizer_family(spec.tokenizer or "")
        tok = FamilyTokenizer(version_dir(repo, family.triton_model), family)
        model = TokenEmbedder(spec, version_dir(repo, spec.triton_model), runtime)
        size = model_size(spec, repo)
        row = {"block": spec.id, "model": spec.triton_model, "precision": model.precision,
               "weights": "pretrained" if model.info.get("pretrained")
               else model.info.get("size", "tiny")}
        for name, corpus in (("dev", texts), ("512", long)):
            batches = [tok.encode(corpus[i:i + BATCH]) for i in range(0, len(corpus), BATCH)]
            if name == "512":  # every model at 512 tokens, or at its own limit when lower
                batches = [TokenBatch(b.input_ids[:, :512], b.attention_mask[:, :512])
                           for b in batches]
            model.embed(batches[0])  # warm-up
            start = time.perf_counter()
            for b in batches:
                model.embed(b)
            seconds = time.perf_counter() - start
            tokens = np.concatenate([tokens_run(model, b) for b in batches])
            flops = sum(text_flops(spec, size, int(n)) for n in tokens)
            prec = "int8" if model.precision == "int8" else "fp32"
            row[name] = {"texts": len(tokens), "tokens_mean": float(tokens.mean()),
                         "seconds": seconds, "ms_per_batch": seconds / len(batches) * 1000,
                         "texts_per_s": len(tokens) / seconds,
                         "gflop_per_text": flops / len(tokens) / 1e9,
                         "gflop_per_s": flops / seconds / 1e9,
                         "fraction_of_peak": flops / seconds / 1e9 / peak_1[prec]}
        print(f"  {spec.id:>4} {row['precision']}: dev {row['dev']['ms_per_batch']:.0f} ms/32 "
              f"({row['dev']['fraction_of_peak']:.0%} of peak), 512 tokens "
              f"{row['512']['ms_per_batch']:.0f} ms/32 ({row['512']['fraction_of_peak']:.0%})",
              flush=True)
        rows.append(row)
    return rows


def fusemoe_row(repo: Path, peak_1: dict[str, float], texts: int) -> dict:
    """FuseMoE alone, one thread, batch 32, on random unit blocks."""
    import torch

    from ensemble import fusemoe
    from ensemble.validation import Validator
    from export.registry import FUSEMOE, FUSEMOE_MODEL

    torch.set_num_threads(1)
    model, _ = fusemoe.load(repo / FUSEMOE_MODEL / "1")
    info = json.loads((repo / FUSEMOE_MODEL / "1" / "build.json").read_text())
    x = torch.nn.functional.normalize(torch.randn(BATCH, FUSEMOE.input_dim), dim=-1)
    controls = Validator().controls(BATCH)
    fusemoe.fuse(model, x, controls)
    start = time.perf_counter()
    rounds = max(1, texts // BATCH)
    for _ in range(rounds):
        fusemoe.fuse(model, x, controls)
    seconds = time.perf_counter() - start
    precision = info.get("precision", "fp32")
    flops = fusemoe_flops() * BATCH * rounds
    return {"block": "FuseMoE", "model": FUSEMOE_MODEL, "precision": precision,
            "texts": BATCH * rounds, "seconds": seconds,
            "ms_per_batch": seconds / rounds * 1000, "gflop_per_text": fusemoe_flops() / 1e9,
            "gflop_per_s": flops / seconds / 1e9,
            "fraction_of_peak": flops / seconds / 1e9 / peak_1[precision]}


def measure(repo: Path, texts: int) -> dict:
    import os

    cores = os.cpu_count() or 1
    print("roofline: peak GEMM (ONNX Runtime) ...", flush=True)
    peak_all = peaks(cores)
    peak_1 = {p: by[1] for p, by in peak_all.items()}
    print("roofline: each model alone, one thread, batch 32 ...", flush=True)
    rows = per_model(repo, sentences(texts), peak_1)
    fuse = fusemoe_row(repo, peak_1, texts)
    per_text = sum(r["dev"]["gflop_per_text"] for r in rows) + fuse["gflop_per_text"]
    one_thread_s = sum(r["dev"]["seconds"] / r["dev"]["texts"] for r in rows) \
        + fuse["seconds"] / fuse["texts"]
    return {"cores": cores, "peak": {p: {str(t): g for t, g in by.items()}
                                     for p, by in peak_all.items()},
            "peak_shape": PEAK_SHAPE, "models": rows, "fusemoe": fuse,
            "pipeline_gflop_per_text": per_text,
            # Every model back to back on one core: the texts/s all cores give at best.
            "ideal_texts_per_s": cores / one_thread_s}


def pipeline_fraction(result: dict, texts_per_s: float, precision: str) -> float:
    """The served pipeline's useful GFLOP/s over the all-core peak of ``precision``."""
    peak_all = result["peak"][precision][str(result["cores"])]
    return texts_per_s * result["pipeline_gflop_per_text"] / peak_all


def tables(result: dict) -> list[str]:
    p = result["peak"]
    cores = str(result["cores"])
    lines = [
        (f"Peak, one MatMul {' x '.join(map(str, result['peak_shape']))} (M x K x N) through "
         f"ONNX Runtime: FP32 {p['fp32']['1']:.0f} GFLOP/s on one thread, {p['fp32'][cores]:.0f} "
         f"on {cores}; dynamic INT8 {p['int8']['1']:.0f} on one thread, {p['int8'][cores]:.0f} "
         f"on {cores} (INT8 ops counted as FLOPs)."), "",
        ("| block | model | weights | precision | GFLOP/text (dev) | dev tokens | dev ms/32 | "
         "dev GFLOP/s | dev % of peak | 512-token GFLOP/text | 512 ms/32 | 512 GFLOP/s | "
         "512 % of peak |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        d, x = r["dev"], r["512"]
        lines.append(
            f"| {r['block']} | {r['model']} | {r['weights']} | {r['precision']} | "
            f"{d['gflop_per_text']:.2f} | {d['tokens_mean']:.1f} | {d['ms_per_batch']:.0f} | "
            f"{d['gflop_per_s']:.0f} | {100 * d['fraction_of_peak']:.0f} | "
            f"{x['gflop_per_text']:.1f} ({x['tokens_mean']:.0f} tokens) | "
            f"{x['ms_per_batch']:.0f} | {x['gflop_per_s']:.0f} | "
            f"{100 * x['fraction_of_peak']:.0f} |")
    f = result["fusemoe"]
    lines.append(f"| FuseMoE | fusemoe | | {f['precision']} | {f['gflop_per_text']:.2f} | | "
                 f"{f['ms_per_batch']:.0f} | {f['gflop_per_s']:.0f} | "
                 f"{100 * f['fraction_of_peak']:.0f} | | | | |")
    per_text = {r["block"]: r["dev"]["seconds"] / r["dev"]["texts"] for r in result["models"]}
    total = sum(per_text.values())
    lines += ["", ("Share of the pipeline's one-thread time per text at STS-B dev lengths: "
                   + ", ".join(f"{b} {100 * t / total:.0f} %"
                               for b, t in sorted(per_text.items(), key=lambda kv: -kv[1]))
                   + f". Pipeline: {result['pipeline_gflop_per_text']:.1f} GFLOP per text; "
                   f"every model back to back on each of the {result['cores']} cores would "
                   f"give at most {result['ideal_texts_per_s']:.1f} texts/s.")]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--texts", type=int, default=256)
    args = parser.parse_args(argv)
    result = measure(args.repository, args.texts)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "roofline.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(tables(result)))
    print(f"(written to {RESULTS / 'roofline.json'}; `make bench PROFILE=full` writes the "
          f"report {REPORTS / 'bench-full.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
