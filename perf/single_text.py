"""Single-text latency at full size: one short text per request, and where its time goes.

    python -m perf.single_text [--repository .run/bench-full/int8] [--seconds 60]

The full profile in INT8 (what ``make serve PROFILE=full`` serves; built into the
repository when it holds no build), one server. Clients each send one short STS-B dev
sentence per request over gRPC, closed loop, at concurrency 1 and then 8; latency p50 and p95
at the client, and from Triton's statistics over the same window, per step of ``fused_text``,
the queue and compute milliseconds per request. Triton counts an ensemble's steps in its own
statistics, so ``fused_text``'s row is the sum of its steps' times; the steps run side by
side where the graph allows (each on one thread, the two cores shared), so a request's
latency is less than that sum, and a step's compute time includes its wait for a core.
Writes perf/reports/single-text-full.md (+ perf/results/
single-text-full.json) and ``full_single_text_p50_ms`` (concurrency 1) into
perf/results/summary.json. ``make bench PROFILE=full`` runs it as one of its parts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from perf import provenance
from perf.workload import (
    FULL_RUN,
    REPORTS,
    RESULTS,
    RUN,
    closed_loop,
    full_build,
    machine,
    model_stats,
    sentences,
    started_server,
    stats_delta,
    triton_send,
    update_summary,
)

REPOSITORY = FULL_RUN / "int8"
MODEL = "fused_text"
DIM = 1536
CONCURRENCY = (1, 8)
SHORT_WORDS = 12  # a short text: at most this many words
GOAL_P50_MS = 150.0


def short_texts(n: int = 256) -> list[str]:
    """STS-B dev sentences of at most SHORT_WORDS words, in their sorted order."""
    texts = [t for t in sentences(3000) if len(t.split()) <= SHORT_WORDS]
    if not texts:
        raise ValueError(f"no STS-B dev sentence has at most {SHORT_WORDS} words")
    return texts[:n]


def where_time_goes(delta: dict[str, dict[str, float]]) -> list[dict]:
    """Per model that answered, queue and compute ms per request, the ensemble first, then
    the steps by their time per request (queue + compute), largest first."""
    rows = [{"model": name, "requests": d["requests"], "queue_ms": d["queue_ms"],
             "compute_ms": d["compute_ms"], "batch": d["batch"]}
            for name, d in delta.items()]
    return sorted(rows, key=lambda r: (r["model"] != MODEL, -(r["queue_ms"] + r["compute_ms"])))


def measure(repository: Path, seconds: float) -> dict:
    texts = short_texts()
    out: dict = {"texts": len(texts), "short_words": SHORT_WORDS, "seconds": seconds,
                 "points": []}
    with started_server(repository, RUN / "single-text" / "triton.log") as server:
        out["load_s"] = server.load_s

        def make_send():
            return triton_send("grpc", server.grpc_url, MODEL)

        closed_loop(make_send, texts, 1, 1, 5.0, DIM)  # every instance warm
        for clients in CONCURRENCY:
            before = model_stats(server.http_url)
            row = closed_loop(make_send, texts, 1, clients, seconds, DIM)
            time.sleep(0.5)  # the last answers' counters
            steps = where_time_goes(stats_delta(before, model_stats(server.http_url)))
            print(f"  concurrency {clients}: p50 {row['p50_ms']:.1f} ms, p95 "
                  f"{row['p95_ms']:.1f} ms, {row['items_per_s']:.1f} texts/s "
                  f"({row['errors']} errors)", flush=True)
            out["points"].append(row | {"steps": steps})
    out["full_single_text_p50_ms"] = next(p["p50_ms"] for p in out["points"]
                                          if p["concurrency"] == 1)
    return out


def report_lines(result: dict) -> list[str]:
    """The report's body: latency per concurrency, then where the time goes."""
    lines = [
        (f"One short text per request (STS-B dev sentences of at most "
         f"{result['short_words']} words, {result['texts']} of them in turn), gRPC, closed "
         f"loop, {result['seconds']:.0f} s per concurrency; `{MODEL}` in the full profile, "
         f"INT8 (FuseMoE FP32). Server ready in {result['load_s']:.0f} s."), "",
        "| concurrency | requests | texts/s | p50 ms | p95 ms | errors |",
        "|---|---|---|---|---|---|"]
    for p in result["points"]:
        lines.append(f"| {p['concurrency']} | {p['requests']} | {p['items_per_s']:.1f} | "
                     f"{p['p50_ms']:.1f} | {p['p95_ms']:.1f} | {p['errors']} |")
    p50 = result["full_single_text_p50_ms"]
    lines += ["", (f"full_single_text_p50_ms = **{p50:.1f}** (concurrency 1; goal ≤ "
                   f"{GOAL_P50_MS:.0f}: {'met' if p50 <= GOAL_P50_MS else 'not met'}).")]
    for p in result["points"]:
        lines += ["", f"### Where the time goes, concurrency {p['concurrency']}", "",
                  (f"Triton's statistics over the window, per request. `{MODEL}`'s row is "
                   "the sum of its steps' (Triton counts an ensemble's steps in it); the "
                   "steps run side by side on the two cores, so a request takes less than "
                   "that sum, and a step's compute time includes its wait for a core."), "",
                  "| model | requests | queue ms | compute ms | mean batch |",
                  "|---|---|---|---|---|"]
        for s in p["steps"]:
            lines.append(f"| {s['model']} | {s['requests']} | {s['queue_ms']:.1f} | "
                         f"{s['compute_ms']:.1f} | {s['batch']:.2f} |")
    return lines


def write(result: dict, repository: Path) -> Path:
    text = "\n".join([
        "# Single-text latency at full size", "",
        (f"Command: `python -m perf.single_text` ({result['elapsed_s'] / 60:.0f} min). "
         f"Machine: {machine()}."), "", *report_lines(result), ""])
    REPORTS.mkdir(parents=True, exist_ok=True)
    return provenance.write(REPORTS / "single-text-full.md", text, repository)


def run(repository: Path, seconds: float) -> dict:
    start = time.perf_counter()
    full_build("int8", repository)
    result = measure(repository, seconds)
    result["elapsed_s"] = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "single-text-full.json").write_text(json.dumps(result, indent=2) + "\n")
    update_summary({"full_single_text_p50_ms": round(result["full_single_text_p50_ms"], 1)})
    print(f"report: {write(result, repository)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--report-only", action="store_true",
                        help="write the report again from perf/results/single-text-full.json")
    args = parser.parse_args(argv)
    if args.report_only:
        saved = json.loads((RESULTS / "single-text-full.json").read_text())
        print(f"report: {write(saved, args.repository)}")
        return 0
    run(args.repository, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
