"""``make bench``: fusedembed measured on this machine, every part one after the other.

    python -m perf.bench [--interval-ms 8000] [--concurrency 1 2 4 8] [--race-a-seconds 10]

1. Race A (perf/race_a.py): all-MiniLM-L6-v2 alone, Triton against infinity-emb and the
   in-process libraries at their best documented CPU settings, each side alone.
2. Race B's hand-written side is loaded (perf/race_b.py): the same pipeline as a user
   writes it with transformers / sentence-transformers, FP32, library defaults.
3. The server is started; perf_analyzer (gRPC) measures fused_text at batch 1 over the
   concurrency range and at batch 32; Triton's statistics API, read before and after each
   measurement, gives every model's queue and compute time per request and batch size.
4. Race B: the hand-written side and fused_text on exactly the same texts, taking turns;
   the response cache (fused_text_cached) under a workload with repeats: hit ratio,
   server-side time per hit.
5. The OpenAI-compatible gateway against direct gRPC (perf/gateway.py), taking turns, then
   request by request.
6. The public front against Triton's own ports (perf/front.py).
7. Locust (perf/locustfile.py): HTTP, gRPC and OpenAI-route users, valid and bad requests.
8. Tracing off and on (perf/tracing.py): two servers side by side, one tracing every request
   into an OTLP receiver; what it adds per request and to throughput.

This runs on the project's repository (``make bench`` builds the default profile first);
``make bench PROFILE=full`` runs perf/bench_full.py instead. Writes perf/reports/bench.md
(with the tables of ``make tune`` when it has run), PNG plots beside it, and the key figures
to perf/results/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ensemble.server import free_port
from perf import front, gateway, provenance, race_a, race_b, tools, tracing
from perf.workload import (
    REPORTS,
    RESULTS,
    RUN,
    T0,
    input_data,
    machine,
    model_stats,
    perf_analyzer,
    sentences,
    server_version,
    started_server,
    update_summary,
    versions,
)

RUN_BENCH = RUN / "bench"
MODEL = "fused_text"


def cached_loops(grpc_url: str, texts: list[str], seconds: float) -> list[dict]:
    """Closed loops of 1 and 8 gRPC clients on fused_text_cached over texts already cached:
    every request a hit. (perf_analyzer 2.44 stops with "failed to find the requested model
    version" once the composing models of a cached ensemble go quiet: top-level ensemble
    caching reached perf_analyzer after 2.44, triton-inference-server/client#560.)"""
    from fusedembed_client import CACHED_MODEL, FusedEmbedClient
    from perf.workload import closed_loop

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
    ax.set_yscale("log")
    ax.legend(fontsize=6)
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


def write(results: dict, args: argparse.Namespace, seconds: float) -> Path:
    from export.registry import RUNTIME, Batching
    from perf.workload import MAX_TRIALS, STABILITY

    REPORTS.mkdir(parents=True, exist_ok=True)
    runs, rb = results["fused_text"], results["race_b"]
    ra, locust = results["race_a"], results["locust"]
    cache = {k: v for k, v in results["cache"].items() if k != "texts"}
    plot([r for r in runs if r["model"] == MODEL])
    plot_races(ra, cache)
    best = max((r for r in runs if r["model"] == MODEL), key=lambda r: r["items_per_s"])
    v = results["versions"]
    b = Batching()
    lines = [
        "# Benchmark: fusedembed on this machine", "",
        (f"Command: `make bench` (`python -m perf.bench`), {seconds / 60:.1f} min in all, "
         "every part one after the other on the same machine. The profile served: "
         f"{results['profile']}."), "",
        "## Machine, versions, settings", "",
        f"- Machine: {machine()}. The load generators share these cores with the servers.",
        (f"- Versions: tritonserver {results['tritonserver']} (from nvidia-pytriton "
         f"{v['nvidia-pytriton']}), {results['perf_analyzer']}, "
         + ", ".join(f"{k} {x}" for k, x in v.items() if k != "nvidia-pytriton")
         + f"; FuseMoE {results['fusion_version']}."),
        (f"- Serving settings (the committed defaults, export/registry.py): neural models "
         f"threads {RUNTIME.threads}, {RUNTIME.instances} instance, graph optimisation "
         f"{RUNTIME.graph_optimization}, length buckets "
         f"{','.join(map(str, RUNTIME.length_buckets))}; dynamic batching with preferred sizes "
         f"{'/'.join(map(str, b.preferred_batch_sizes))} and {b.max_queue_delay_us} µs queue "
         "delay; local response cache on fused_text_cached only."),
        (f"- perf_analyzer: gRPC, STS-B dev sentences as input data, measurement window "
         f"{args.interval_ms} ms ({2 * args.interval_ms} ms at batch 32), stability "
         f"{STABILITY} %, at most {MAX_TRIALS} windows per point."), "",
        "## Race A: all-MiniLM-L6-v2 (E11) alone", "", *race_a.section(ra), "",
        "![race A](bench-race-a.png)", "",
        "## Race B: the pipeline served vs written by hand in one process", "",
        (f"Same {rb['texts']} STS-B dev sentences on both sides. Hand-written: the pipeline a "
         "user writes with transformers / sentence-transformers (perf/race_b.py), FP32, "
         "library defaults (torch on every core), the whole list per library call, sorted "
         "by length as sentence-transformers does. Served: fused_text over gRPC, the same "
         "texts as requests of 32 from 2 or 4 clients. The two sides take turns (the server "
         f"idles while the other runs), {len(rb['turns'])} times. Lowest cosine between the "
         "two sides' vectors on 32 of the texts: "
         + ", ".join(f"{k} {x:.4f}" for k, x in rb["agreement"].items()) + "."), "",
        *race_b.table(rb), "", "Where each side spends its time, per model:", "",
        *race_b.time_table(rb), "",
        (f"pipeline_vs_naive_throughput_ratio = **{rb['ratio']:.2f}** (median over the turns "
         "of the best served throughput over the hand-written one measured just before it)."),
        "", "## fused_text: throughput and latency (perf_analyzer)", "",
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
               f"({ra['seconds']:.0f} s each; perf_analyzer 2.44 cannot measure a cached "
               "ensemble: it stops with \"failed to find the requested model version\" once "
               "the composing models go quiet, fixed after 2.44 in "
               "triton-inference-server/client#560):"), "",
              "| clients | texts/s | p50 ms | p95 ms |", "|---|---|---|---|",
              *[f"| {x['concurrency']} | {x['items_per_s']:.0f} | {x['p50_ms']:.2f} | "
                f"{x['p95_ms']:.2f} |" for x in cache["loops"]], "",
              "![cache](bench-cache.png)", "",
              "## The OpenAI-compatible gateway against direct gRPC (perf/reports/gateway.md)",
              "", *gateway.report_lines(results["gateway"]), "",
              (f"## Locust: HTTP, gRPC and OpenAI-route users, valid and bad requests "
               f"({locust['users']} "
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
    provenance.write(report, "\n".join(lines) + "\n")
    (RESULTS / "bench.json").write_text(json.dumps(
        {"race_a": ra, "race_b": rb, "fused_text": runs, "cache": cache,
         "locust": {"users": locust["users"], "seconds": locust["seconds"],
                    "aggregated": next((r for r in locust["rows"] if r["Name"] == "Aggregated"),
                                       None)},
         "versions": v, "fusemoe": results["fusion_version"], "machine": machine()},
        indent=2) + "\n")
    update_summary({
        "pipeline_vs_naive_throughput_ratio": round(rb["ratio"], 3),
        **race_a.summary_keys(ra),
        "cache_hit_server_us": round(cache["hit_us"], 2),
        "cache_hit_ratio": round(cache["hit_ratio"], 4)})
    return report


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
    from export.registry import FUSEMOE_MODEL
    from export.repository import REPOSITORY

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval-ms", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch-concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--race-b-texts", type=int, default=256)
    parser.add_argument("--race-b-turns", type=int, default=3)
    parser.add_argument("--race-a-seconds", type=float, default=10.0)
    parser.add_argument("--gateway-seconds", type=float, default=12.0)
    parser.add_argument("--gateway-rounds", type=int, default=5)
    parser.add_argument("--locust-users", type=int, default=8)
    parser.add_argument("--locust-seconds", type=int, default=60)
    parser.add_argument("--tracing-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    info = json.loads((REPOSITORY / "e01_semantic" / "1" / "build.json").read_text())
    results: dict = {"perf_analyzer": tools.version(), "versions": versions(),
                     "profile": "full" if info.get("size") == "full" else "pretrained mix"}
    print(f"perf tools: {results['perf_analyzer']}", flush=True)
    texts = sentences(512)
    data = input_data(texts, RUN_BENCH / "fused_text-input.json")
    print("[1/8] Race A (each side alone):", flush=True)
    results["race_a"] = race_a.race(texts, args.race_a_seconds)
    print("[2/8] Race B, hand-written side: loading ...", flush=True)
    hand = race_b.HandWritten(REPOSITORY)
    runs = []
    with started_server(REPOSITORY, RUN_BENCH / "triton.log") as server:
        from fusedembed_client import FusedEmbedClient

        with FusedEmbedClient(server.grpc_url, "grpc") as client:
            results["fusion_version"] = client.embed("warm-up", T0).fusion_version
        results["tritonserver"] = server_version(server.http_url)
        print("[3/8] perf_analyzer on fused_text:", flush=True)
        for c in args.concurrency:
            runs.append(perf_analyzer(server.grpc_url, server.http_url, data, 1, c,
                                      args.interval_ms))
        for c in args.batch_concurrency:
            runs.append(perf_analyzer(server.grpc_url, server.http_url, data, 32, c,
                                      args.interval_ms))
        print("[4/8] Race B (taking turns), response cache:", flush=True)
        race_texts = texts[:args.race_b_texts]
        results["race_b"] = race_b.race(hand, server.grpc_url, server.http_url,
                                                   race_texts, args.race_b_turns)
        results["race_b"]["agreement"] = race_b.agreement(hand, server.grpc_url, race_texts[:32])
        del hand
        results["cache"] = cache_pass(server.grpc_url, server.http_url, texts, 512, 64)
        results["cache"]["loops"] = cached_loops(server.grpc_url, results["cache"]["texts"],
                                                 args.race_a_seconds)
        print("[5/8] the gateway against direct gRPC:", flush=True)
        # As `make serve` runs it: the gateway on Triton's own loopback gRPC.
        results["gateway"] = gateway.run(server.triton_grpc_url, args.gateway_seconds,
                                         args.gateway_rounds, RUN_BENCH)
        gateway.write(results["gateway"])
        print("[6/8] the public front against Triton's own ports:", flush=True)
        measured = front.measure(server, args.gateway_seconds, args.gateway_rounds)
        front.write(measured)
        results["front"] = front.stored(measured)
        print("[7/8] Locust:", flush=True)
        from ensemble.server import Gateway

        openai_route = Gateway(server.triton_grpc_url, free_port(), "127.0.0.1",
                               RUN_BENCH / "gateway-locust.log")
        openai_route.start()
        try:
            rows = tools.locust(server.http_url, server.grpc_url, args.locust_users,
                                args.locust_seconds, RUN_BENCH / "locust", openai_route.url)
        finally:
            openai_route.stop()
        results["locust"] = {"users": args.locust_users, "seconds": args.locust_seconds,
                             "rows": rows}
    results["fused_text"] = runs
    print("[8/8] tracing off and on (two servers side by side):", flush=True)
    traced = tracing.measure(REPOSITORY, args.tracing_seconds, args.gateway_rounds)
    tracing.write(traced)
    results["tracing"] = traced
    report = write(results, args, time.perf_counter() - start)
    print(f"report: {report}; summary: {RESULTS / 'summary.json'}; ({FUSEMOE_MODEL} "
          f"{results['fusion_version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
