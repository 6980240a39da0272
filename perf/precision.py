"""Every precision against FP32: vector agreement, STS-B quality and speed on this CPU.

    python -m perf.precision [--profile pretrained|full] [--precisions fp16 int8 fp8]
                             [--sentences N]

Each precision variant (export/precision.py) of every neural embedder is built from the same
weights as the FP32 build of the profile, into .run/precision/<profile>-<precision>. Then:

- per model and precision: the min and mean cosine against FP32 over STS-B dev sentences
  (passages, batches of 32), and the speed of each variant in the same timed runs (one
  thread, texts/s);
- the STS-B test Spearman of the real E11 (all-MiniLM-L6-v2) at every precision, and for
  INT8 the layer groups of E11 kept in FP32 one at a time (which ones buy accuracy back);
- FuseMoE in INT8 against FP32 on the blocks of the same sentences.

Writes perf/reports/precision.md for the pretrained mix, precision-full.md for the full
profile (and .json beside each); the E11 INT8 Spearman goes to
perf/results/summary.json. FP8 runs here as Q/DQ emulation on ONNX Runtime's CPU provider:
its accuracy is what this measures; its speed is not an FP8 speed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from perf import provenance
from perf.workload import REPORTS, RUN, machine, update_summary

BATCH = 32
TARGET = {"fp16": 0.999, "int8": 0.99, "fp8": 0.99}  # min cosine to FP32 that a variant keeps
E11_BOUND = 0.005  # INT8 E11 STS-B test within this of FP32
# Dynamic INT8 scales each batch's activations: the same INT8 E11 scored with other batch
# sizes gives the spread a layer group must beat to count as buying accuracy back.
NOISE_BATCHES = (8, 16, 32, 64)
# E11 INT8 with one layer group kept in FP32 at a time (node-name substrings).
E11_GROUPS = {"attention query/key/value": ("attention/self/query", "attention/self/key",
                                            "attention/self/value"),
              "attention output": ("attention/output/dense",),
              "feed-forward in (intermediate)": ("intermediate/dense",),
              "feed-forward out": (r"layer\.\d+/output/dense",),
              "first layer": ("layer.0/",), "last layer": ("layer.5/",)}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def built(profile: str, precision: str) -> Path:
    from export.build import build
    from export.registry import EMBEDDERS, Input

    repo = RUN / "precision" / f"{profile}-{precision}"
    neural = {e.id for e in EMBEDDERS if e.input is Input.TOKENS}
    build(repo, profile, only=neural, precision=precision)
    return repo


def embed_all(model, tokenizer, texts: list[str], batch: int = BATCH,
              ) -> tuple[np.ndarray, float]:
    """Vectors of ``texts`` in batches, and the seconds it took (after a warm-up)."""
    batches = [tokenizer.encode(texts[i:i + batch]) for i in range(0, len(texts), batch)]
    model.embed(batches[0])
    start = time.perf_counter()
    out = np.concatenate([model.embed(b) for b in batches])
    return out, time.perf_counter() - start


def compare(repos: dict[str, Path], texts: list[str]) -> dict[str, dict]:
    from ensemble.stages import FamilyTokenizer, TokenEmbedder, version_dir
    from export.registry import EMBEDDERS, Input, Runtime, tokenizer_family

    runtime = Runtime(threads=1)
    results = {}
    for spec in EMBEDDERS:
        if spec.input is not Input.TOKENS:
            continue
        family = tokenizer_family(spec.tokenizer or "")
        tokenizer = FamilyTokenizer(version_dir(repos["fp32"], family.triton_model), family)
        row: dict = {"model": spec.triton_model}
        reference = None
        for precision, repo in repos.items():
            model = TokenEmbedder(spec, version_dir(repo, spec.triton_model), runtime)
            assert model.precision == precision, (spec.id, model.precision, precision)
            vectors, seconds = embed_all(model, tokenizer, texts)
            row["weights"] = ("pretrained" if model.info.get("pretrained")
                              else model.info.get("size", "tiny"))
            entry = {"texts_per_s": len(texts) / seconds}
            if precision == "fp32":
                reference = vectors
            else:
                c = cosines(reference, vectors)
                entry |= {"min": float(c.min()), "mean": float(c.mean())}
                kept = model.info.get("int8_kept_fp32")
                if kept is not None:
                    entry["kept_fp32"] = len(kept)
            row[precision] = entry
            print(f"{spec.id:>4} {precision}: {entry}", flush=True)
        results[spec.id] = row
    return results


def e11_sts(repos: dict[str, Path], data: Path) -> dict[str, float]:
    """STS-B test Spearman of the real E11 at every precision (pretrained weights only)."""
    from ensemble.stages import FamilyTokenizer, TokenEmbedder, version_dir
    from export.registry import embedder, tokenizer_family
    from perf.sts import load_split, spearman_of_cosines

    spec = embedder("E11")
    family = tokenizer_family(spec.tokenizer or "")
    pairs = load_split(data, "test")
    out = {}
    for precision, repo in repos.items():
        model = TokenEmbedder(spec, version_dir(repo, spec.triton_model))
        if not model.info.get("pretrained"):
            return {}
        tok = FamilyTokenizer(version_dir(repo, family.triton_model), family)
        a, _ = embed_all(model, tok, pairs.first)
        b, _ = embed_all(model, tok, pairs.second)
        out[precision] = spearman_of_cosines(a, b, pairs.gold)
        print(f"E11 STS-B test, {precision}: {out[precision]:.4f}", flush=True)
    return out


def e11_sensitivity(repo32: Path, data: Path, sentences: list[str]) -> list[dict]:
    """INT8 E11 with each layer group kept in FP32 in turn: STS-B test and cosines."""
    import onnx

    from ensemble.stages import FamilyTokenizer, TokenEmbedder, version_dir
    from export.layout import ONNX_FILE
    from export.precision import quantize_int8
    from export.registry import Runtime, embedder, tokenizer_family
    from perf.sts import load_split, spearman_of_cosines

    spec = embedder("E11")
    family = tokenizer_family(spec.tokenizer or "")
    tok = FamilyTokenizer(version_dir(repo32, family.triton_model), family)
    source = version_dir(repo32, spec.triton_model)
    reference = TokenEmbedder(spec, source)
    if not reference.info.get("pretrained"):
        return []
    names = [n.name for n in onnx.load(str(source / ONNX_FILE), load_external_data=False)
             .graph.node if n.op_type in ("MatMul", "Gemm")]
    pairs = load_split(data, "test")
    ref_vectors, _ = embed_all(reference, tok, sentences)
    rows = []
    variant = RUN / "precision" / "e11-sensitivity"
    for group, patterns in {"none (every MatMul INT8)": (), **E11_GROUPS}.items():
        keep = tuple(n for n in names if any(re.search(p, n) for p in patterns))
        if variant.exists():
            import shutil

            shutil.rmtree(variant)
        variant.mkdir(parents=True)
        for f in source.iterdir():
            if f.name != ONNX_FILE and f.is_file():
                (variant / f.name).write_bytes(f.read_bytes())
        quantize_int8(source / ONNX_FILE, variant / ONNX_FILE, keep)
        model = TokenEmbedder(spec, variant, Runtime(threads=1))
        vectors, seconds = embed_all(model, tok, sentences)
        a, _ = embed_all(model, tok, pairs.first)
        b, _ = embed_all(model, tok, pairs.second)
        c = cosines(ref_vectors, vectors)
        rows.append({"kept_fp32": group, "matmuls_kept": len(keep), "of": len(names),
                     "texts_per_s": len(sentences) / seconds,
                     "min": float(c.min()), "mean": float(c.mean()),
                     "sts_test": spearman_of_cosines(a, b, pairs.gold)})
        if not patterns:  # the noise floor: the same INT8 model, other batch compositions
            rows[-1]["sts_test_by_batch"] = {
                n: spearman_of_cosines(embed_all(model, tok, pairs.first, n)[0],
                                       embed_all(model, tok, pairs.second, n)[0], pairs.gold)
                for n in NOISE_BATCHES}
        print(f"E11 INT8, {group} in FP32: {rows[-1]}", flush=True)
    return rows


def fusemoe_int8(sentences: list[str]) -> dict:
    """FUSED with FuseMoE in INT8 against FP32, on the blocks of ``sentences`` from the
    project's repository (its trained checkpoint when it has one)."""
    import torch

    from ensemble import fusemoe
    from ensemble.pipeline import Pipeline
    from ensemble.stages import version_dir
    from ensemble.validation import Validator
    from export.registry import FUSEMOE_MODEL
    from export.repository import REPOSITORY

    pipeline = Pipeline(REPOSITORY)
    blocks = torch.from_numpy(pipeline.block_matrix(sentences, np.full(len(sentences), 0)))
    directory = version_dir(REPOSITORY, FUSEMOE_MODEL)
    fp32, manifest = fusemoe.load(directory, precision="fp32")
    int8, _ = fusemoe.load(directory, precision="int8")
    controls = Validator().controls(len(sentences))
    a = fusemoe.fuse(fp32, blocks, controls)
    b = fusemoe.fuse(int8, blocks, controls)
    c = cosines(a.fused.numpy(), b.fused.numpy())
    same = (a.selected_experts == b.selected_experts).all(dim=1).float().mean()
    return {"checkpoint": manifest.version, "min": float(c.min()), "mean": float(c.mean()),
            "same_experts": float(same), "texts": len(sentences)}


def write_report(profile: str, result: dict) -> Path:
    precisions = [p for p in result["precisions"] if p != "fp32"]
    lines = [f"# Precision variants against FP32 ({profile} profile)", "",
             (f"Command: `python -m perf.precision --profile {profile}`. {result['sentences']} "
              f"STS-B dev sentences ({result['sample']}), embedded as passages in batches of "
              f"32, one thread. Machine: {machine()}; ONNX Runtime's CPU provider. Variants "
              "(export/precision.py): FP16 (dynamo-exported half-precision graphs; E5's "
              "PyTorch path in float16), INT8 (ONNX Runtime dynamic quantization, int8 "
              "weights per output channel, activations per batch), FP8 E4M3 (nvidia-modelopt "
              "ONNX PTQ, `max` calibration on STS-B dev text; run here as Q/DQ emulation at "
              "graph optimisation `basic`: its speed is not an FP8 speed)."), "",
             "## Agreement with FP32 and speed", "",
             ("| block | model | weights | FP32 texts/s | "
              + " | ".join(f"{p.upper()} min cos | {p.upper()} mean cos | {p.upper()} texts/s"
                           for p in precisions) + " |"),
             "|---|---|---|---|" + "---|---|---|" * len(precisions)]
    for block, row in result["models"].items():
        cells = [f"{row[p]['min']:.5f} | {row[p]['mean']:.5f} | {row[p]['texts_per_s']:.1f}"
                 for p in precisions]
        lines.append(f"| {block} | {row['model']} | {row['weights']} | "
                     f"{row['fp32']['texts_per_s']:.1f} | " + " | ".join(cells) + " |")
    below = {p: [b for b, r in result["models"].items() if r[p]["min"] < TARGET[p]]
             for p in precisions}
    lines += ["", ("Seeded models keep their accuracy in a variant when its lowest cosine to "
                   "FP32 is at least " + ", ".join(f"{TARGET[p]} ({p.upper()})"
                                                  for p in precisions) + "; below it: "
                   + "; ".join(f"{p.upper()} " + (", ".join(below[p]) or "none")
                               for p in precisions)
                   + ". A pretrained model is judged on its task: the real E11's bound is its "
                     f"STS-B test Spearman within {E11_BOUND} of FP32 (below); its lowest "
                     "cosines come from dynamic INT8's one activation scale per tensor against "
                     "the activation outliers of real weights (sentence-transformers' own "
                     "avx512_vnni INT8 export does the same: perf/reports/bench.md, Race A).")]
    sts = result["e11_sts_test"]
    if sts:
        lines += ["", "## STS-B test, the real E11 (all-MiniLM-L6-v2)", "",
                  "| precision | Spearman | change vs FP32 |", "|---|---|---|"]
        for p, v in sts.items():
            lines.append(f"| {p} | {v:.4f} | {v - sts['fp32']:+.4f} |")
        if "int8" in sts:
            ok = abs(sts["int8"] - sts["fp32"]) <= E11_BOUND
            lines += ["", f"INT8 within {E11_BOUND} of FP32: **{'yes' if ok else 'no'}**."]
    if result["e11_sensitivity"]:
        lines += ["", "## INT8: which layers to keep in FP32 (E11, real weights)", "",
                  ("Every MatMul quantized, then each layer group kept in FP32 in turn; "
                   "cosines against FP32 E11 over the sentences above, STS-B test Spearman."),
                  "", "| kept in FP32 | MatMuls kept | min cos | mean cos | STS-B test | texts/s |",
                  "|---|---|---|---|---|---|"]
        for r in result["e11_sensitivity"]:
            lines.append(f"| {r['kept_fp32']} | {r['matmuls_kept']} of {r['of']} | "
                         f"{r['min']:.5f} | {r['mean']:.5f} | {r['sts_test']:.4f} | "
                         f"{r['texts_per_s']:.0f} |")
        base = result["e11_sensitivity"][0]
        spread = base["sts_test_by_batch"]
        noise = max(spread.values()) - min(spread.values())
        # Above the noise band by more than its own width.
        beyond = [r for r in result["e11_sensitivity"][1:]
                  if r["sts_test"] > max(spread.values()) + noise]
        lines += ["", ("Noise floor: the every-MatMul INT8 E11 scored with batches of "
                       + ", ".join(f"{n} ({v:.4f})" for n, v in spread.items())
                       + f": a spread of {noise:.4f}, since dynamic INT8 scales each batch's "
                       "activations. "
                       + ("Groups that beat that band by more than its width, so whose INT8 "
                          "costs accuracy: "
                          + ", ".join(f"{r['kept_fp32']} ({r['sts_test']:.4f}, "
                                      f"{r['texts_per_s']:.0f} texts/s)" for r in beyond)
                          + ". " if beyond else "No group beats that band by more than its "
                          "width. ")
                       + "INT8 builds keep no layer in FP32 (export/architectures.py "
                       "`int8_keep_fp32`): every-MatMul INT8 already stays within "
                       f"{E11_BOUND} of FP32 on the task, and each group kept in FP32 gives "
                       "up part of the INT8 speed (the texts/s column); keeping one is a line in "
                       "`int8_keep_fp32` (node-name substrings). The seeded models carry no "
                       "activation outliers, so their cosines say little about which of "
                       "their layers real weights would need in FP32.")]
    f = result.get("fusemoe")
    if f:
        lines += ["", "## FuseMoE in INT8", "",
                  (f"torch's dynamic int8 Linear (per output channel) against FP32 on the "
                   f"blocks of {f['texts']} of the sentences (checkpoint {f['checkpoint']}): "
                   f"FUSED min cosine {f['min']:.5f}, mean {f['mean']:.5f}; the same top-2 "
                   f"experts for {100 * f['same_experts']:.1f} % of the texts.")]
    lines += ["", ("Dynamic INT8 quantizes each batch's activations with one scale per "
                   "tensor, so an INT8 vector depends slightly on the texts batched with it "
                   "(FP32 vectors do not).")]
    path = report_path(profile)
    provenance.write(path, "\n".join(lines) + "\n",
                     RUN / "precision" / "full-fp32" if profile == "full" else None)
    path.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return path


def report_path(profile: str) -> Path:
    """perf/reports/precision.md (the pretrained mix, the default) or precision-<profile>.md."""
    return REPORTS / ("precision.md" if profile == "pretrained" else f"precision-{profile}.md")


def main(argv: list[str] | None = None) -> int:
    from export.stsb import DATA
    from export.stsb import sentences as split_sentences

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="pretrained", choices=("pretrained", "full"))
    parser.add_argument("--precisions", nargs="+", default=["fp16", "int8", "fp8"])
    parser.add_argument("--sentences", type=int, default=0,
                        help="a sample of the dev sentences (every k-th); default all (pretrained)"
                             " or 256 (full)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--report-only", action="store_true",
                        help="write the report again from the report's .json")
    args = parser.parse_args(argv)
    if args.report_only:
        saved = json.loads(report_path(args.profile).with_suffix(".json").read_text())
        print(f"report: {write_report(args.profile, saved)}")
        return 0
    every = split_sentences("dev", args.data)
    n = args.sentences or (256 if args.profile == "full" else len(every))
    step = max(1, len(every) // n)
    texts = every[::step][:n]
    sample = "all of them" if len(texts) == len(every) else f"every {step}th, sorted"
    repos = {"fp32": built(args.profile, "fp32")}
    repos |= {p: built(args.profile, p) for p in args.precisions}
    result = {"profile": args.profile, "precisions": list(repos), "sentences": len(texts),
              "sample": sample, "models": compare(repos, texts),
              "e11_sts_test": e11_sts(repos, args.data)}
    # E11 is the same real model in both profiles: its sweep runs with the pretrained one.
    result["e11_sensitivity"] = (e11_sensitivity(repos["fp32"], args.data, texts)
                                 if "int8" in repos and args.profile == "pretrained" else [])
    if args.profile == "pretrained" and "int8" in repos:
        result["fusemoe"] = fusemoe_int8(texts[:512])
    path = write_report(args.profile, result)
    if "int8" in result["e11_sts_test"]:
        update_summary({"e11_int8_sts_test_spearman": round(result["e11_sts_test"]["int8"], 4),
                        "e11_fp32_sts_test_spearman": round(result["e11_sts_test"]["fp32"], 4)})
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
