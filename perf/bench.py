"""``make bench``: the real perf_analyzer against fused_text, and Race B against a naive
in-process pipeline, measured one after the other in one run on this machine.

    python -m perf.bench [--interval-ms 8000] [--concurrency 1 2 4 8]

1. Race B, naive side: the same stages one after another in this Python process
   (ensemble.pipeline.Pipeline.embed), batches of 32 STS-B dev sentences; no server running.
2. The server is started; perf_analyzer (gRPC) measures fused_text at batch 1 over the
   concurrency range and at batch 32; Triton's statistics API, read before and after each
   measurement, gives every model's queue and compute time per request and batch size.

Writes perf/reports/bench.md, bench-throughput.png, bench-latency.png, and the key figures
to perf/results/summary.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from perf import tools
from perf.sts import DATA, ROOT, load_split

REPORTS = ROOT / "perf" / "reports"
RESULTS = ROOT / "perf" / "results"
RUN = ROOT / ".run" / "bench"
T0 = 1_700_000_000
MODEL = "fused_text"
# This 2-core machine also runs perf_analyzer and the OS: windows vary by 10-40 %.
STABILITY = 50  # max/min of the last 3 windows, per cent
MAX_TRIALS = 6


def sentences(n: int) -> list[str]:
    pairs = load_split(DATA, "dev")
    return sorted(set(pairs.first + pairs.second))[:n]


def input_data(texts: list[str], path: Path) -> Path:
    """perf_analyzer's --input-data JSON: one step per text, TEXT and TIMESTAMP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": [{"TEXT": [t], "TIMESTAMP": [T0]} for t in texts]}))
    return path


def naive_pipeline(texts: list[str], batch: int, rounds: int) -> dict:
    """Items/s of the stages run one after another in one process, batch by batch."""
    from ensemble.pipeline import Pipeline
    from export.repository import REPOSITORY

    pipeline = Pipeline(REPOSITORY)
    pipeline.embed(texts[:batch], np.full(batch, T0))  # warm-up
    seconds = []
    for r in range(rounds):
        chunk = texts[(r * batch) % len(texts):][:batch]
        start = time.perf_counter()
        pipeline.embed(chunk, np.full(len(chunk), T0))
        seconds.append(time.perf_counter() - start)
        print(f"  naive pipeline: batch {r + 1}/{rounds} {seconds[-1] * 1000:.0f} ms", flush=True)
    med = float(np.median(seconds))
    return {"batch": batch, "rounds": rounds, "median_ms": med * 1000,
            "p95_ms": float(np.percentile(seconds, 95)) * 1000, "items_per_s": batch / med}


def served_pipeline(grpc_url: str, texts: list[str], batch: int, rounds: int,
                    concurrency: int) -> dict:
    """Items/s of fused_text on exactly the naive side's batches: ``concurrency`` clients
    each sending the same ``rounds`` batches of ``batch`` distinct texts."""
    import threading

    from fusedembed_client import FusedEmbedClient

    chunks = [texts[(r * batch) % len(texts):][:batch] for r in range(rounds)]
    with FusedEmbedClient(grpc_url, "grpc") as client:
        client.embed_batch(chunks[0], [T0] * len(chunks[0]))  # warm-up
    latencies: list[float] = []

    def worker() -> None:
        with FusedEmbedClient(grpc_url, "grpc") as client:
            for chunk in chunks:
                t = time.perf_counter()
                client.embed_batch(chunk, [T0] * len(chunk))
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    items = concurrency * sum(len(c) for c in chunks)
    print(f"  fused_text, Race B inputs, concurrency {concurrency}: {items / wall:.1f} texts/s",
          flush=True)
    return {"batch": batch, "rounds": rounds, "concurrency": concurrency,
            "items_per_s": items / wall, "median_ms": float(np.median(latencies)) * 1000,
            "p95_ms": float(np.percentile(latencies, 95)) * 1000}


def model_stats(url: str) -> dict[str, dict[str, int]]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics()["model_stats"]
    finally:
        client.close()
    out = {}
    for m in stats:
        s = m["inference_stats"]
        out[m["name"]] = {"requests": int(s["success"]["count"]),
                          "inferences": int(m["inference_count"]),
                          "executions": int(m["execution_count"]),
                          "queue_ns": int(s["queue"]["ns"]),
                          "compute_ns": int(s["compute_infer"]["ns"])
                          + int(s["compute_input"]["ns"]) + int(s["compute_output"]["ns"])}
    return out


def stats_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    out = {}
    for name, a in after.items():
        b = before.get(name, {k: 0 for k in a})
        requests = a["requests"] - b["requests"]
        executions = a["executions"] - b["executions"]
        if requests <= 0:
            continue
        out[name] = {"requests": requests,
                     "queue_ms": (a["queue_ns"] - b["queue_ns"]) / requests / 1e6,
                     "compute_ms": (a["compute_ns"] - b["compute_ns"]) / requests / 1e6,
                     "batch": (a["inferences"] - b["inferences"]) / max(executions, 1)}
    return out


def perf_analyzer(grpc_url: str, http_url: str, data: Path, batch: int, concurrency: int,
                  interval_ms: int) -> dict:
    csv_path = RUN / f"pa-b{batch}-c{concurrency}.csv"
    before = model_stats(http_url)
    cmd = [str(tools.perf_analyzer()), "-m", MODEL, "-u", grpc_url, "-i", "grpc",
           "-b", str(batch), "--concurrency-range", f"{concurrency}:{concurrency}",
           "--input-data", str(data),
           # A batch of 32 takes about a second here: longer windows, so each holds enough.
           "--measurement-interval", str(interval_ms * (2 if batch > 1 else 1)),
           "--stability-percentage", str(STABILITY), "--max-trials", str(MAX_TRIALS),
           "-f", str(csv_path)]
    print(f"  perf_analyzer batch {batch} concurrency {concurrency} ...", flush=True)
    done = subprocess.run(cmd, env=tools.environment(), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"perf_analyzer failed ({done.returncode}):\n{done.stdout[-2000:]}"
                         f"\n{done.stderr[-2000:]}")
    after = model_stats(http_url)
    with open(csv_path) as f:
        row = next(csv.DictReader(f))
    result = {"batch": batch, "concurrency": concurrency,
              "items_per_s": float(row["Inferences/Second"]),
              "p50_ms": float(row["p50 latency"]) / 1000, "p90_ms": float(row["p90 latency"]) / 1000,
              "p95_ms": float(row["p95 latency"]) / 1000, "p99_ms": float(row["p99 latency"]) / 1000,
              "models": stats_delta(before, after), "command": " ".join(cmd[1:])}
    print(f"    {result['items_per_s']:.1f} items/s, p50 {result['p50_ms']:.0f} ms, "
          f"p99 {result['p99_ms']:.0f} ms", flush=True)
    return result


def plot(runs: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = [r for r in runs if r["batch"] == 1]
    c = [r["concurrency"] for r in single]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(c, [r["items_per_s"] for r in single], marker="o", label="batch 1")
    for r in runs:
        if r["batch"] > 1:
            ax.scatter([r["concurrency"]], [r["items_per_s"]], marker="s",
                       label=f"batch {r['batch']}, concurrency {r['concurrency']}")
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("texts / s")
    ax.set_title("fused_text throughput (perf_analyzer, gRPC)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    throughput = REPORTS / "bench-throughput.png"
    fig.savefig(throughput, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        ax.plot(c, [r[key] for r in single], marker="o", label=key.replace("_ms", ""))
    ax.set_xlabel("concurrency (batch 1)")
    ax.set_ylabel("latency, ms")
    ax.set_title("fused_text latency (perf_analyzer, gRPC)")
    ax.legend()
    fig.tight_layout()
    latency = REPORTS / "bench-latency.png"
    fig.savefig(latency, dpi=110)
    plt.close(fig)
    return [throughput, latency]


def write(runs: list[dict], naive: dict, race_b: list[dict], version: str,
          args: argparse.Namespace, seconds: float) -> tuple[Path, Path]:
    import torch

    REPORTS.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(runs)
    best = max(runs, key=lambda r: r["items_per_s"])
    served_b = max(race_b, key=lambda r: r["items_per_s"])
    ratio = served_b["items_per_s"] / naive["items_per_s"]
    lines = [
        "# Benchmark: fused_text with perf_analyzer, and Race B", "",
        (f"Command: `make bench` (`python -m perf.bench`), {seconds / 60:.1f} min. Machine: "
         f"{platform.machine()}, 2 CPU cores, {platform.system()}; Python "
         f"{platform.python_version()}, torch {torch.__version__}; {version}; tritonserver "
         "from nvidia-pytriton 0.7.0 (Triton 2.51); the server and perf_analyzer share the "
         "machine's cores. Settings: gRPC, STS-B dev sentences as inputs, measurement "
         f"window {args.interval_ms} ms ({2 * args.interval_ms} ms at batch 32), stability "
         f"{STABILITY} %, at most {MAX_TRIALS} windows per point; every "
         "model's config as committed (dynamic batching, preferred sizes 8/16/32, "
         "2 ms queue delay, one instance each)."), "",
        "## Throughput and latency", "",
        "| batch | concurrency | texts/s | p50 ms | p90 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['batch']} | {r['concurrency']} | {r['items_per_s']:.1f} | "
                     f"{r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['p95_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} |")
    lines += ["", "![throughput](bench-throughput.png)", "", "![latency](bench-latency.png)", "",
              (f"## Where the time goes (batch {best['batch']}, concurrency "
              f"{best['concurrency']}; Triton statistics, per request)"), "",
              "| model | requests | queue ms | compute ms | mean batch |", "|---|---|---|---|---|"]
    for name, s in sorted(best["models"].items(), key=lambda kv: -kv[1]["compute_ms"]):
        lines.append(f"| {name} | {s['requests']} | {s['queue_ms']:.1f} | {s['compute_ms']:.1f} "
                     f"| {s['batch']:.1f} |")
    lines += ["", "## Race B: the pipeline served vs run naively in one process", "",
              (f"Same inputs on both sides: {naive['rounds']} batches of {naive['batch']} "
               "distinct STS-B dev sentences. Naive: the twelve stages and FuseMoE one after "
               "another in one Python process (`ensemble.pipeline.Pipeline.embed`), measured "
               "first with no server running. Served: fused_text over gRPC, the same batches "
               "sent by 1 or 2 clients at once."), "",
              "| path | clients | texts/s | median ms per batch | p95 ms |", "|---|---|---|---|---|",
              (f"| naive in-process | 1 | {naive['items_per_s']:.1f} | {naive['median_ms']:.0f} | "
               f"{naive['p95_ms']:.0f} |")]
    lines += [(f"| fused_text | {r['concurrency']} | {r['items_per_s']:.1f} | "
               f"{r['median_ms']:.0f} | {r['p95_ms']:.0f} |") for r in race_b]
    lines += ["", (f"pipeline_vs_naive_throughput_ratio = **{ratio:.2f}** (best served row over "
              "naive; goal ≥ 1.5).")]
    report = REPORTS / "bench.md"
    report.write_text("\n".join(lines) + "\n")
    summary = RESULTS / "summary.json"
    summary.write_text(json.dumps({
        "pipeline_vs_naive_throughput_ratio": round(ratio, 3),
        "fused_text": runs, "naive_pipeline": naive, "race_b_served": race_b,
        "fusemoe": version,
        "machine": {"arch": platform.machine(), "cores": 2, "python": platform.python_version()},
    }, indent=2) + "\n")
    return report, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval-ms", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch-concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--naive-rounds", type=int, default=8)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print(f"perf tools: {tools.version()}", flush=True)
    texts = sentences(512)
    data = input_data(texts, RUN / "fused_text-input.json")
    print("Race B, naive side (no server running):", flush=True)
    naive = naive_pipeline(texts, 32, args.naive_rounds)
    runs = []
    from ensemble.server import Ports, TritonServer
    from fusedembed_client import FusedEmbedClient
    from perf.sts import _free_port

    server = TritonServer(ports=Ports(_free_port(), _free_port(), _free_port()),
                          log_path=RUN / "triton.log")
    print(f"starting tritonserver (log: {server.log_path.relative_to(ROOT)}) ...", flush=True)
    server.start()
    try:
        with FusedEmbedClient(server.grpc_url, "grpc") as client:
            version = client.embed("warm-up", T0).fusion_version
        for c in args.concurrency:
            runs.append(perf_analyzer(server.grpc_url, server.http_url, data, 1, c,
                                      args.interval_ms))
        for c in args.batch_concurrency:
            runs.append(perf_analyzer(server.grpc_url, server.http_url, data, 32, c,
                                      args.interval_ms))
        print("Race B, served side:", flush=True)
        race_b = [served_pipeline(server.grpc_url, texts, 32, args.naive_rounds, c)
                  for c in (1, 2)]
    finally:
        server.stop()
    report, summary = write(runs, naive, race_b, f"FuseMoE {version}", args,
                            time.perf_counter() - start)
    print(f"report: {report.relative_to(ROOT)}; summary: {summary.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
