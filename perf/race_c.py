"""Race C: fused_text at full size against the same models served by infinity-emb, the
multi-model embedding server a platform team would deploy for them, the client fusing with
the same FuseMoE in its own process.

    python -m perf.race_c [--seconds 30] [--rounds 2] [--report-only]

- fusedembed: ``fused_text`` of the full profile in INT8 (FuseMoE FP32), the build ``make
  bench PROFILE=full`` serves, over gRPC with tritonclient.
- infinity-emb 0.0.78 (perf/requirements-infinity.txt, its own venv), one ``infinity_emb v2``
  process with a ``--model-id`` per model it serves as the pipeline computes it: E1
  (e5-large, "passage: " prefix sent by the client), E7 (CodeBERT), E8 and E11 (the
  MiniLMs), each mean pooled and normalised, batch size 32, ``--engine optimum`` over an
  INT8 ONNX file that sentence-transformers / optimum make of the project's Hugging Face
  folder (the file infinity's optimum engine prefers on a CPU; it was its fastest engine in
  Race A) where that engine runs the model (``ENGINES`` says where it does not and why),
  else ``--engine torch``. The client sends the four requests at once (one connection per
  model).
- What infinity-emb 0.0.78 has no embedder for, the client computes in its own process as
  Race B's hand-written pipeline does (perf/race_b.py, PyTorch FP32 at its defaults):
  ``CLIENT_BLOCKS`` says why for each; the four custom encoders and FuseMoE are the
  project's own code, as served; the texts pass the same validation and PII scrubbing.
  One change from the library's defaults: transformers pads every Longformer batch to its
  attention window (512 tokens), which made a request of 32 short texts take 70-90 s here,
  so the client's Longformer gets the window narrowed to its texts (``narrow_longformer``,
  exact for them), as the served side's short path is.

Both sides run at once on the machine but are measured in turn: each point (texts per
request, concurrent clients) is a window of ``--seconds`` for one side then the other,
``--rounds`` times, which goes first alternating. The ratio is the median over rounds of our
texts/s over infinity's in the window beside it. Before the race, both sides embed the same
32 texts: the lowest cosine per block and for FUSED says they do the same work.

Writes perf/reports/race-c-full.md, perf/results/race-c-full.json and the summary key
``full_vs_infinity_multimodel_throughput_ratio`` (best batch-32 texts/s, ours over theirs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from export import registry as r
from perf import provenance
from perf.race_a import InfinityServer, onnx_exports
from perf.workload import (
    FULL_RUN,
    REPORTS,
    RESULTS,
    RUN,
    T0,
    Send,
    closed_loop,
    full_build,
    machine,
    sentences,
    started_server,
    triton_send,
    update_summary,
)

RUN_C = RUN / "race-c"
REPOSITORY = FULL_RUN / "int8"
MODEL = "fused_text"
DIM = 1536
# (texts per request, concurrent clients); the heaviest last: at batch 32 and 8 clients the
# infinity side's memory grew until the kernel killed it on 24 GiB (see the report).
POINTS = ((32, 1), (1, 1), (1, 8), (32, 8))
OURS = "fusedembed (Triton, fused_text INT8)"
THEIRS = "infinity-emb (4 models) + client"
INFINITY_BLOCKS = ("E1", "E7", "E8", "E11")
# infinity's engine per model: optimum (INT8 ONNX) where it runs the model.
ENGINES = {"E1": "optimum", "E7": "torch", "E8": "optimum", "E11": "optimum"}
ENGINE_NOTES = {
    "E7": "the optimum engine truncates at config.max_position_embeddings (514 for RoBERTa, "
          "whose positions start after the padding index) instead of the tokenizer's 512, "
          "and its start-up warm-up failed in ONNX Runtime: `Gather node "
          "/embeddings/position_embeddings/Gather: indices element out of data bounds`",
}
# infinity-emb 0.0.78 embeds with sentence-transformers (torch) or optimum's
# ORTModelForFeatureExtraction (mean or CLS pooling of the last hidden state), or CLIP-like
# models from a whole CLIPModel with its processor; these blocks need more than that.
CLIENT_BLOCKS = {
    "E5": "Longformer with global attention on <s>: infinity's embedders pass no "
          "global_attention_mask, so every token attends locally only",
    "E6": "SPLADE: max pooling of log(1 + ReLU) over the MLM head's vocabulary logits; "
          "infinity 0.0.78 has no sparse embedder",
    "E10": "CLIP's projected text state: infinity's CLIP engine loads a whole CLIPModel "
           "with its image processor, and the pipeline's E10 text tower is a "
           "CLIPTextModelWithProjection",
    "E12": "ColBERT's document encoder ([D] marker, the 128-D linear head, punctuation left "
           "out of the pooled mean); infinity 0.0.78 has no late-interaction model",
}
# Lowest cosine to the served side, per block: infinity's INT8 file against our INT8 graph,
# two different dynamic quantisations of the same FP32 model, and the client's FP32 PyTorch
# against our INT8 graph. FUSED end to end is reported, not bounded: the full profile's
# FuseMoE is seeded, and its top-k routing of random experts moves a row to other experts
# (cosine near 0.5) on block differences of that size. The fusion step itself must agree.
AGREEMENT = 0.95
FUSION_STEP = "fusion step"
FUSION_AGREEMENT = 0.9999


def _serving_name(block: str) -> str:
    return block.lower()


def prepared_folders(repository: Path) -> dict[str, Path]:
    """Per block infinity serves: its Hugging Face folder (torch engine), or a copy of it with
    the INT8 ONNX file made by sentence-transformers' and optimum's exporters (optimum engine;
    in the libraries venv, once)."""
    from export.hf_folders import hf_folder

    out = {}
    for block in INFINITY_BLOCKS:
        spec = r.embedder(block)
        source = hf_folder(spec, repository, RUN / "hand-written" / repository.name)
        out[block] = (source if ENGINES[block] != "optimum" else
                      onnx_exports(source, RUN_C / "models" / spec.triton_model, "Race C"))
    return out


class Infinity(InfinityServer):
    """infinity_emb serving every folder of ``folders`` (block -> folder), each on its
    engine of ``ENGINES``, under the block's name in lower case."""

    def __init__(self, folders: dict[str, Path], log: Path) -> None:
        super().__init__({_serving_name(b): (f, ENGINES[b]) for b, f in folders.items()},
                         log, RUN_C / "hf-home")

    def embedder(self, block: str):  # type: ignore[override]
        """A function texts -> vectors of ``block``, its passage prefix put before each."""
        return super().embedder(_serving_name(block), r.embedder(block).convention.passage_prefix)


def narrow_longformer(hand, texts: list[str]) -> int:
    """The client's Longformer (E5) with its attention window narrowed to the smallest
    multiple of 64 whose half covers the longest of ``texts``: every token then attends to
    every other, as with the published 512, so the vectors are the same (the agreement
    check measures it), but a batch is padded to that window instead of to 512 tokens. The
    served side runs the same exact short path. Returns the window."""
    tok = hand.tokenizers["E5"]
    longest = max(len(ids) for ids in tok(hand.prepared(texts), truncation=True,
                                          max_length=hand.max_length["E5"])["input_ids"])
    model = hand.longformer
    published = max(model.config.attention_window)
    window = min(published, 64 * -(-2 * longest // 64))
    model.config.attention_window = [window] * model.config.num_hidden_layers
    for layer in model.encoder.layer:
        layer.attention.self.one_sided_attn_window_size = window // 2
    return window


def their_send(infinity: Infinity, hand) -> Send:
    """The client's pipeline: the four infinity requests at once, the rest in this process
    meanwhile, then FuseMoE."""
    embedders = {b: infinity.embedder(b) for b in INFINITY_BLOCKS}
    pool = ThreadPoolExecutor(len(embedders))

    def send(texts: list[str]) -> np.ndarray:
        prepared = hand.prepared(texts)
        pending = {b: pool.submit(e, prepared) for b, e in embedders.items()}
        blocks = hand.blocks(prepared, prepared=True)
        blocks |= {b: f.result() for b, f in pending.items()}
        return hand.fuse(blocks)
    return send


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _lowest_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(_l2(a) * _l2(b), axis=1)))


def agreement(infinity: Infinity, hand, grpc_url: str, texts: list[str]) -> dict[str, float]:
    """Lowest cosine between the two sides on the same texts: per block; ``fusion step``,
    the client's FuseMoE on the served blocks against the served FUSED (the same function);
    and ``FUSED`` end to end."""
    from fusedembed_client import FusedEmbedClient

    prepared = hand.prepared(texts)
    blocks = hand.blocks(prepared, prepared=True) | {
        b: infinity.embedder(b)(prepared) for b in INFINITY_BLOCKS}
    with FusedEmbedClient(grpc_url, "grpc") as client:
        served = client.embed_batch(texts, [T0] * len(texts), blocks=hand.order)
    served_blocks = {b: np.stack([e.blocks[b] for e in served]) for b in hand.order}
    served_fused = np.stack([e.vector for e in served])
    out = {"FUSED": _lowest_cosine(hand.fuse(blocks), served_fused),
           FUSION_STEP: _lowest_cosine(hand.fuse(served_blocks), served_fused)}
    return out | {b: _lowest_cosine(blocks[b], served_blocks[b]) for b in hand.order}


def point_summary(rows: dict[str, list[dict]]) -> dict:
    """One point's windows: each side's median texts/s and p95, and the median over rounds
    of ours over theirs (texts/s) and of ours over theirs (p95)."""
    ours, theirs = rows[OURS], rows[THEIRS]
    return {
        "ours_items_per_s": float(np.median([x["items_per_s"] for x in ours])),
        "theirs_items_per_s": float(np.median([x["items_per_s"] for x in theirs])),
        "ours_p95_ms": float(np.median([x["p95_ms"] for x in ours])),
        "theirs_p95_ms": float(np.median([x["p95_ms"] for x in theirs])),
        "throughput_ratio": float(np.median([a["items_per_s"] / b["items_per_s"]
                                             for a, b in zip(ours, theirs)])),
        "p95_ratio": float(np.median([a["p95_ms"] / b["p95_ms"]
                                      for a, b in zip(ours, theirs)])),
        "errors": sum(x["errors"] for side in rows.values() for x in side),
    }


def headline(points: list[dict]) -> float:
    """full_vs_infinity_multimodel_throughput_ratio: our best batch-32 texts/s over
    infinity's best batch-32 texts/s (medians over rounds)."""
    b32 = [p for p in points if p["batch"] == 32 and not p.get("failed")]
    return (max(p["ours_items_per_s"] for p in b32)
            / max(p["theirs_items_per_s"] for p in b32))


def measure(repository: Path, seconds: float, rounds: int) -> dict:
    from perf.race_b import HandWritten

    start = time.perf_counter()
    texts = sentences(512)
    folders = prepared_folders(repository)
    print("Race C: the client's own blocks (PyTorch FP32) ...", flush=True)
    hand = HandWritten(repository, only=set(CLIENT_BLOCKS))
    window = narrow_longformer(hand, texts)
    out: dict = {"longformer_window": window, "seconds": seconds, "rounds": rounds, "texts": len(texts),
                 "infinity_blocks": list(INFINITY_BLOCKS), "client_blocks": CLIENT_BLOCKS,
                 "engines": ENGINES, "engine_notes": ENGINE_NOTES,
                 "infinity_version": _infinity_version(), "points": []}
    with started_server(repository, RUN_C / "triton.log") as server, \
            Infinity(folders, RUN_C / "infinity.log") as infinity:
        out["load_s"] = {"triton": server.load_s, "infinity": infinity.load_s}
        out["agreement"] = agreement(infinity, hand, server.grpc_url, texts[:32])
        print(f"  agreement: {out['agreement']}", flush=True)
        low = {b: c for b, c in out["agreement"].items() if b != "FUSED" and c < (
            FUSION_AGREEMENT if b == FUSION_STEP else AGREEMENT)}
        if low:
            raise SystemExit(f"Race C sides disagree (lowest cosine below {AGREEMENT}, "
                             f"{FUSION_AGREEMENT} for the fusion step): {low}")
        sides = {OURS: lambda: triton_send("grpc", server.grpc_url, MODEL),
                 THEIRS: lambda: their_send(infinity, hand)}
        for batch, clients in POINTS:
            rows: dict[str, list[dict]] = {OURS: [], THEIRS: []}
            point: dict = {"batch": batch, "concurrency": clients, "rows": rows}
            try:
                for k in range(rounds):
                    order = (OURS, THEIRS) if k % 2 == 0 else (THEIRS, OURS)
                    for side in order:
                        row = closed_loop(sides[side], texts, batch, clients, seconds, DIM)
                        rows[side].append(row)
                        print(f"  batch {batch}, {clients} clients, round {k + 1}, {side}: "
                              f"{row['items_per_s']:.2f} texts/s, p95 {row['p95_ms']:.0f} ms "
                              f"({row['errors']} errors)", flush=True)
            except SystemExit as err:  # a side answered nothing in a window: said, not hidden
                point["failed"] = f"{side}, round {k + 1}: {err}"
                print(f"  batch {batch}, {clients} clients: {point['failed']}", flush=True)
            if not point.get("failed"):
                point |= point_summary(rows)
            out["points"].append(point)
    out["full_vs_infinity_multimodel_throughput_ratio"] = headline(out["points"])
    out["elapsed_s"] = time.perf_counter() - start
    return out


def _infinity_version() -> str:
    from perf.race_a import infinity_version

    return infinity_version()


def report_lines(result: dict) -> list[str]:
    ratio = result["full_vs_infinity_multimodel_throughput_ratio"]
    lines = [
        (f"Both sides up at once, measured in turn: a window of {result['seconds']:.0f} s per "
         f"side and point, rounds: {result['rounds']} (which side goes first alternates "
         "from round to round; medians over rounds). perf/race_c.py says how each side is "
         "set up."), "",
        (f"infinity-emb {result['infinity_version']} serves "
         + ", ".join(f"{b} ({result['engines'][b]} engine"
                     + (", INT8 ONNX" if result["engines"][b] == "optimum" else ", FP32") + ")"
                     for b in result["infinity_blocks"])
         + ", mean pooling, batch size 32 each, in one process."
         + "".join(f" {b} not on the optimum engine: {why}."
                   for b, why in result["engine_notes"].items())
         + " The client computes the rest in its own process (PyTorch FP32), because "
         "infinity has no embedder for them (its Longformer with the attention window "
         f"narrowed to {result['longformer_window']} tokens, which covers every text of the "
         "race, instead of padding each batch to 512):"), "",
        *[f"- {b}: {why}" for b, why in result["client_blocks"].items()], "",
        (f"Ready in {result['load_s']['triton']:.0f} s (Triton) and "
         f"{result['load_s']['infinity']:.0f} s (infinity). Lowest cosine between the two "
         "sides on 32 texts: " + ", ".join(f"{b} {c:.4f}" for b, c in
                                          result["agreement"].items())
         + f". The {FUSION_STEP} is the client's FuseMoE on the served blocks against the "
         "served FUSED. FUSED end to end is not bounded: the full profile's FuseMoE is "
         "seeded, and its top-k routing sends a row to other random experts on block "
         "differences of this size."), "",
        ("| texts per request | clients | ours texts/s | theirs texts/s | throughput ratio "
         "| ours p95 ms | theirs p95 ms | p95 ratio | errors |"),
        "|---|---|---|---|---|---|---|---|---|"]
    for p in result["points"]:
        if p.get("failed"):
            lines.append(f"| {p['batch']} | {p['concurrency']} | failed: {p['failed']} "
                         "| | | | | | |")
            continue
        lines.append(
            f"| {p['batch']} | {p['concurrency']} | {p['ours_items_per_s']:.2f} | "
            f"{p['theirs_items_per_s']:.2f} | {p['throughput_ratio']:.2f} | "
            f"{p['ours_p95_ms']:.0f} | {p['theirs_p95_ms']:.0f} | {p['p95_ratio']:.2f} | "
            f"{p['errors']} |")
    lower = all(p["p95_ratio"] < 1 for p in result["points"] if not p.get("failed"))
    lines += ["", (f"full_vs_infinity_multimodel_throughput_ratio = **{ratio:.2f}** (best "
                   f"batch-32 texts/s, ours over theirs; goal ≥ 1.5: "
                   f"{'met' if ratio >= 1.5 else 'not met'}); p95 lower at every point: "
                   f"{'yes' if lower else 'no'}.")]
    return lines


def write(result: dict, repository: Path) -> Path:
    text = "\n".join([
        "# Race C at full size: fused_text against infinity-emb serving the same models", "",
        (f"Command: `python -m perf.race_c` ({result['elapsed_s'] / 60:.0f} min). "
         f"Machine: {machine()}."), "", *report_lines(result), ""])
    REPORTS.mkdir(parents=True, exist_ok=True)
    return provenance.write(REPORTS / "race-c-full.md", text, repository)


def summary_keys(result: dict) -> dict:
    return {"full_vs_infinity_multimodel_throughput_ratio": round(
        result["full_vs_infinity_multimodel_throughput_ratio"], 3)}


def run(repository: Path, seconds: float, rounds: int) -> dict:
    full_build("int8", repository)
    result = measure(repository, seconds, rounds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "race-c-full.json").write_text(json.dumps(result, indent=2) + "\n")
    update_summary(summary_keys(result))
    print(f"report: {write(result, repository)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--report-only", action="store_true",
                        help="write the report again from perf/results/race-c-full.json")
    args = parser.parse_args(argv)
    if args.report_only:
        saved = json.loads((RESULTS / "race-c-full.json").read_text())
        print(f"report: {write(saved, args.repository)}")
        return 0
    run(args.repository, args.seconds, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
