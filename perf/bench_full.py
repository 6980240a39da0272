"""``make bench PROFILE=full``: the full-size pipeline measured on this machine.

    python -m perf.bench_full [--race-b-texts 128] [--race-b-turns 3] [--race-a-seconds 10]

Every part alone on the machine, one after the other:

1. Builds: the ``full`` profile (every embedder at its published size, seeded weights where
   no checkpoint is found, E11 real; FuseMoE seeded) from nothing in FP32 and in INT8, timed.
2. Each build served: the server's start time, then the resident memory of every server
   process once warm (after two requests of 32 texts).
3. Roofline and where the time goes (perf/roofline.py): the machine's FP32 and INT8 peak;
   each model alone at STS-B dev lengths and at 512 tokens, FP32 and INT8.
4. Race B at full size (perf/race_b.py): fused_text in INT8 against the pipeline written by
   hand with transformers / sentence-transformers in FP32 at their defaults, same texts,
   taking turns; the served side's per-model queue and compute time from Triton's
   statistics; the agreement of the two sides' vectors.
5. Race A (perf/race_a.py): E11 served against infinity-emb and the in-process libraries.
6. Single-text latency (perf/single_text.py): one short text per request at concurrency 1
   and 8, p50 and p95, and each step's queue and compute time.
7. Race C (perf/race_c.py): fused_text against infinity-emb serving the same models in one
   multi-model server, the client fusing with the same FuseMoE.

Writes perf/reports/bench-full.md with plots beside it, perf/results/bench-full.json, and
the key figures into perf/results/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from perf import provenance, race_a, race_b, race_c, roofline, single_text
from perf.workload import (
    FULL_PLANS,
    FULL_RUN,
    REPORTS,
    RESULTS,
    T0,
    machine,
    sentences,
    server_memory,
    server_version,
    started_server,
    update_summary,
    versions,
)

RUN_FULL = FULL_RUN
PRECISIONS = ("fp32", "int8")
SERVED = "int8"  # the precision fused_text is raced in (it keeps the accuracy bound)
PLANS = FULL_PLANS
PARTIAL = RUN_FULL / "partial.json"  # what is measured so far (--resume)


def checkpoint(result: dict, start: float) -> None:
    """What is measured so far, so that ``--resume`` goes on after an interruption."""
    result["elapsed_s"] = result.get("resumed_at_s", 0.0) + time.perf_counter() - start
    PARTIAL.write_text(json.dumps(result, indent=2) + "\n")


def timed_build(repo: Path, precision: str) -> float:
    """Seconds to build the full profile in ``precision`` into ``repo`` from nothing."""
    from export.build import build

    shutil.rmtree(repo, ignore_errors=True)
    print(f"[build] full profile, {precision}, from nothing ...", flush=True)
    start = time.perf_counter()
    build(repo, "full", force=True, precision=PLANS[precision], fusemoe_checkpoint="seeded")
    return time.perf_counter() - start


def warm_memory(server, texts: list[str]) -> dict:
    """Resident MiB per process after two requests of 32 texts, and their latencies."""
    from fusedembed_client import FusedEmbedClient

    seconds = []
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        for chunk in (texts[:32], texts[32:64]):
            t = time.perf_counter()
            client.embed_batch(chunk, [T0] * len(chunk))
            seconds.append(time.perf_counter() - t)
    memory = server_memory(server)
    return {"first_batch_s": seconds[0], "warm_batch_s": seconds[1], "rss_mib": memory,
            "total_mib": sum(memory.values())}


def plots(result: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> str:
        fig.tight_layout()
        fig.savefig(REPORTS / name, dpi=110)
        plt.close(fig)
        return name

    names = []
    rows = result["roofline"][SERVED]["models"]
    blocks = [r["block"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "dev", "STS-B dev lengths"), (axes[1], "512", "512 tokens")):
        for k, precision in enumerate(PRECISIONS):
            ms = [r[key]["ms_per_batch"] for r in result["roofline"][precision]["models"]]
            ax.bar(np.arange(len(blocks)) + 0.4 * k, ms, 0.4, label=precision)
        ax.set_xticks(np.arange(len(blocks)) + 0.2, blocks)
        ax.set_ylabel("ms per batch of 32 (one thread)")
        ax.set_yscale("log")
        ax.set_title(f"Where the time goes: {title}")
        ax.legend()
    names.append(save(fig, "bench-full-time.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for precision, marker in zip(PRECISIONS, ("o", "s")):
        r = result["roofline"][precision]
        peak = r["peak"][precision]["1"]
        ax.scatter([m["dev"]["gflop_per_text"] for m in r["models"]],
                   [m["dev"]["gflop_per_s"] for m in r["models"]], marker=marker,
                   label=f"{precision} models (dev)")
        ax.axhline(peak, linestyle="--", linewidth=1, color="C0" if precision == "fp32" else "C1",
                   label=f"{precision} peak, one thread ({peak:.0f})")
        for m in r["models"]:
            ax.annotate(m["block"], (m["dev"]["gflop_per_text"], m["dev"]["gflop_per_s"]),
                        fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("GFLOP per text")
    ax.set_ylabel("GFLOP/s reached (one thread)")
    ax.set_title("Each model against this CPU's measured GEMM peak")
    ax.legend(fontsize=7)
    names.append(save(fig, "bench-full-roofline.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, precision in enumerate(PRECISIONS):
        mem = result["servers"][precision]["memory"]["rss_mib"]
        order = sorted(mem, key=lambda n: -result["servers"][SERVED]["memory"]["rss_mib"].get(n, 0))
        ax.barh(np.arange(len(order)) + 0.4 * k, [mem.get(n, 0) for n in order], 0.4,
                label=f"{precision}: {sum(mem.values()) / 1024:.1f} GiB in all")
    ax.set_yticks(np.arange(len(order)) + 0.2, order, fontsize=7)
    ax.set_xlabel("resident MiB, warm")
    ax.set_title("Memory of every server process (full profile)")
    ax.legend(fontsize=8)
    names.append(save(fig, "bench-full-memory.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    turns = result["race_b"]["turns"]
    ax.bar(["hand-written\n(FP32, libraries)", "fused_text\n(INT8, served)"],
           [np.median([t["hand_written"]["items_per_s"] for t in turns]),
            np.median([max(x["items_per_s"] for x in t["served"]) for t in turns])])
    ax.set_ylabel("texts / s (median of turns)")
    ax.set_title(f"Race B at full size: {result['race_b']['ratio']:.1f}x")
    names.append(save(fig, "bench-full-race-b.png"))
    return names


def write(result: dict, seconds: float) -> Path:
    rb, ra = result["race_b"], result["race_a"]
    served = result["servers"][SERVED]
    lines = [
        "# Benchmark at full size: fusedembed on this machine", "",
        (f"Command: `make bench PROFILE=full` (`python -m perf.bench_full`), "
         f"{seconds / 60:.0f} min in all, every part one after the other."), "",
        "## Machine and versions", "",
        f"- {machine()}.",
        "- " + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + f"; tritonserver {result['tritonserver']}.", "",
        "## The full profile", "",
        ("Every neural embedder at its source model's published size (export/registry.py "
         "`PublishedConfig`: layers, hidden, heads, intermediate, vocabulary, positions, "
         "attention window, projection), seeded random weights; E11 the real "
         "all-MiniLM-L6-v2; the RoBERTa and CLIP tokenizer families from their published "
         "vocabularies (export/vocabularies.py); FuseMoE seeded (training on random blocks "
         "means nothing)."), "",
        ("| precision | build from nothing s | server ready s | first request of 32 s | "
        "warm request of 32 s | resident GiB, all processes |"), "|---|---|---|---|---|---|"]
    for p in PRECISIONS:
        s = result["servers"][p]
        lines.append(f"| {p} | {result['builds'][p]:.0f} | {s['load_s']:.0f} | "
                     f"{s['memory']['first_batch_s']:.1f} | {s['memory']['warm_batch_s']:.1f} | "
                     f"{s['memory']['total_mib'] / 1024:.1f} |")
    lines += ["", "Resident memory of every server process once warm (MiB):", "",
              "| process | " + " | ".join(PRECISIONS) + " |", "|---" * (len(PRECISIONS) + 1) + "|"]
    for name in sorted(served["memory"]["rss_mib"], key=lambda n: -served["memory"]["rss_mib"][n]):
        lines.append(f"| {name} | " + " | ".join(
            f"{result['servers'][p]['memory']['rss_mib'].get(name, 0):.0f}" for p in PRECISIONS)
            + " |")
    lines += ["", "![memory](bench-full-memory.png)", "",
              "## Roofline and where the time goes", "",
              ("Each model alone in this process, one thread (as served: one instance, one "
               "thread each), batches of 32; FLOPs by the formula in perf/roofline.py at the "
               "token counts each model runs. E5 runs its exact ONNX path up to one "
               "attention window (512 tokens, so both columns), the reference LongformerModel "
               "past it.")]
    for p in PRECISIONS:
        lines += ["", f"### {p.upper()}", "", *roofline.tables(result["roofline"][p])]
    fraction = result["full_pipeline_fraction_of_peak"]
    gflop_per_text = result["roofline"][SERVED]["pipeline_gflop_per_text"]
    peak_all = result["roofline"][SERVED]["peak"][SERVED][str(result["roofline"][SERVED]["cores"])]
    lines += ["", "![time](bench-full-time.png)", "", "![roofline](bench-full-roofline.png)", "",
              (f"The served pipeline ({SERVED}) at batch 32: "
               f"{result['full_pipeline_texts_per_s']:.2f} texts/s x "
               f"{gflop_per_text:.1f} GFLOP per text = "
               f"{result['full_pipeline_texts_per_s'] * gflop_per_text:.0f}"
               f" GFLOP/s, **{100 * fraction:.0f} %** of the {SERVED} peak on all "
               f"{result['roofline'][SERVED]['cores']} cores ({peak_all:.0f} GFLOP/s); "
               "full_pipeline_fraction_of_peak."), "",
              "Served at batch 32 (Race B's served runs), per model, from Triton's statistics:",
              "", "| model | requests | queue ms | compute ms | mean batch | compute s in all |",
              "|---|---|---|---|---|---|"]
    for name, s in sorted(rb["models"].items(), key=lambda kv: -kv[1]["compute_s"]):
        lines.append(f"| {name} | {s['requests']} | {s['queue_ms']:.0f} | {s['compute_ms']:.0f} "
                     f"| {s['batch']:.1f} | {s['compute_s']:.1f} |")
    lines += ["", "## Race B at full size", "",
              (f"Same {rb['texts']} STS-B dev sentences on both sides, {len(rb['turns'])} turns "
               "taken in alternation (the server idles while the hand-written side runs). "
               "Hand-written: the pipeline a user writes with transformers / "
               "sentence-transformers, FP32, library defaults (torch on every core), the whole "
               "list per library call (perf/race_b.py says which library does which model). "
               f"Served: fused_text in {SERVED.upper()}, the same texts as requests of 32 from "
               "2 or 4 gRPC clients. Lowest cosine between the two sides' vectors on 32 of "
               "the texts: " + ", ".join(f"{k} {v:.4f}" for k, v in rb["agreement"].items())
               + "."), "", *race_b.table(rb), "",
              "Where each side spends its time, per model:", "", *race_b.time_table(rb), "",
              (f"full_pipeline_vs_naive_throughput_ratio = **{rb['ratio']:.2f}** (median over "
               "the turns; goal ≥ 5)."), "", "![race B](bench-full-race-b.png)", "",
              "## Race A: all-MiniLM-L6-v2 (E11) against the strongest peers", "",
              *race_a.section(ra), ""]
    if "single_text" in result:
        lines += ["## Single-text latency", "", *single_text.report_lines(result["single_text"]),
                  ""]
    if "race_c" in result:
        lines += ["## Race C: infinity-emb serving the same models", "",
                  *race_c.report_lines(result["race_c"]), ""]
    report = REPORTS / "bench-full.md"
    provenance.write(report, "\n".join(lines) + "\n", RUN_FULL / SERVED)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--race-b-texts", type=int, default=128)
    parser.add_argument("--race-b-turns", type=int, default=3)
    parser.add_argument("--race-a-seconds", type=float, default=10.0)
    parser.add_argument("--roofline-texts", type=int, default=256)
    parser.add_argument("--single-text-seconds", type=float, default=60.0)
    parser.add_argument("--race-c-seconds", type=float, default=30.0)
    parser.add_argument("--race-c-rounds", type=int, default=2)
    parser.add_argument("--report-only", action="store_true",
                        help="write the report and plots again from perf/results/bench-full.json")
    parser.add_argument("--resume", action="store_true",
                        help=f"keep the parts {PARTIAL.name} holds from an interrupted run")
    args = parser.parse_args(argv)
    if args.report_only:
        saved = json.loads((RESULTS / "bench-full.json").read_text())
        plots(saved)
        print(f"report: {write(saved, saved['elapsed_s'])}")
        return 0
    start = time.perf_counter()
    texts = sentences(512)
    result: dict = {"versions": versions(), "builds": {}, "servers": {}, "roofline": {}}
    if args.resume and PARTIAL.exists():
        result = json.loads(PARTIAL.read_text())
        result["resumed_at_s"] = result.get("elapsed_s", 0.0)
        print(f"resuming: {PARTIAL} holds {sorted(result)}", flush=True)
    repos = {p: RUN_FULL / p for p in PRECISIONS}
    for p in PRECISIONS:
        if p not in result["builds"]:
            result["builds"][p] = timed_build(repos[p], p)
            checkpoint(result, start)
    for p in PRECISIONS:
        if p in result["servers"]:
            continue
        print(f"[serve] {p}: start, warm-up, memory ...", flush=True)
        with started_server(repos[p], RUN_FULL / f"triton-{p}.log") as server:
            result["servers"][p] = {"load_s": server.load_s,
                                    "memory": warm_memory(server, texts)}
            result["tritonserver"] = server_version(server.http_url)
        checkpoint(result, start)
    for p in PRECISIONS:
        if p not in result["roofline"]:
            print(f"[roofline] {p}:", flush=True)
            result["roofline"][p] = roofline.measure(repos[p], args.roofline_texts)
            checkpoint(result, start)
    if "race_b" not in result:
        print("[race B] hand-written side: loading ...", flush=True)
        hand = race_b.HandWritten(repos[SERVED])
        race_texts = texts[:args.race_b_texts]
        with started_server(repos[SERVED], RUN_FULL / "triton-race-b.log") as server:
            race = race_b.race(hand, server.grpc_url, server.http_url, race_texts,
                               args.race_b_turns)
            race["agreement"] = race_b.agreement(hand, server.grpc_url, race_texts[:32])
        del hand
        result["race_b"] = race
        checkpoint(result, start)
    if "race_a" not in result:
        print("[race A]:", flush=True)
        result["race_a"] = race_a.race(texts, args.race_a_seconds)
        checkpoint(result, start)
    if "single_text" not in result:
        print("[single text]:", flush=True)
        result["single_text"] = single_text.measure(repos[SERVED], args.single_text_seconds)
        checkpoint(result, start)
    if "race_c" not in result:
        print("[race C]:", flush=True)
        result["race_c"] = race_c.measure(repos[SERVED], args.race_c_seconds,
                                          args.race_c_rounds)
        checkpoint(result, start)
    served = float(np.median([max(x["items_per_s"] for x in t["served"])
                              for t in result["race_b"]["turns"]]))
    result["full_pipeline_texts_per_s"] = served
    result["full_pipeline_fraction_of_peak"] = roofline.pipeline_fraction(
        result["roofline"][SERVED], served, SERVED)
    REPORTS.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result["elapsed_s"] = result.get("resumed_at_s", 0.0) + time.perf_counter() - start
    plots(result)
    report = write(result, result["elapsed_s"])
    (RESULTS / "bench-full.json").write_text(json.dumps(result, indent=2) + "\n")
    update_summary({
        "full_pipeline_vs_naive_throughput_ratio": round(result["race_b"]["ratio"], 3),
        "full_pipeline_texts_per_s": round(served, 3),
        "full_pipeline_fraction_of_peak": round(result["full_pipeline_fraction_of_peak"], 4),
        **race_a.summary_keys(result["race_a"]),
        "full_single_text_p50_ms": round(result["single_text"]["full_single_text_p50_ms"], 1),
        **race_c.summary_keys(result["race_c"]),
        "full_profile_resident_gib": {p: round(result["servers"][p]["memory"]["total_mib"] / 1024,
                                               2) for p in PRECISIONS}})
    print(f"report: {report}; cores used: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
