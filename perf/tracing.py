"""What OpenTelemetry tracing costs: the same requests to a server without it (the default)
and to one tracing every request (a share of 1) into an OTLP receiver, in one run, taking
turns.

    python -m perf.tracing [--seconds 10] [--rounds 3]    # also a step of `make bench`

Two servers over the same repository run side by side, each with its own gateway: "off"
started as `make serve` starts it by default, "on" with OTEL_EXPORTER_OTLP_ENDPOINT set
(Triton's OpenTelemetry mode and the gateway's instrumentation), exporting to a receiver in
this process that decodes every export. Measured:
- per request, batch 1 on fused_text over gRPC (Triton's spans only) and through the
  gateway (its spans too): each text sent to both servers back to back, which goes first
  alternating; the median and quartiles of the pairwise differences;
- throughput, batch 32 at concurrency 8 on fused_text over gRPC: off and on windows taking
  turns, the median over the rounds of each "on" window's texts/s over the "off" window's
  just before it.

Writes perf/reports/tracing.md and tracing.json; summary keys
``tracing_added_ms_per_request`` and ``tracing_throughput_ratio``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from ensemble.server import Gateway, free_port
from fusedembed_client.gateway.tracing import TraceSettings
from perf import provenance
from perf.gateway import gateway_send
from perf.otlp import Receiver
from perf.workload import (
    REPORTS,
    RUN,
    back_to_back,
    closed_loop,
    machine,
    sentences,
    started_server,
    triton_send,
    update_summary,
)

DIM = 1536
OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                  "OTEL_TRACES_SAMPLER_ARG", "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED")


def environment(endpoint: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OTEL_VARIABLES}
    return env | ({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint} if endpoint else {})


def paired(off_send, on_send, texts: list[str], seconds: float) -> dict:
    result = back_to_back(off_send, on_send, texts, seconds)
    return {"pairs": result["pairs"], "off_p50_ms": result["base_p50_ms"],
            "on_p50_ms": result["other_p50_ms"]} | {
        k: v for k, v in result.items() if k.startswith("added") and k != "added_ms"}


def windows(off_url: str, on_url: str, texts: list[str], seconds: float, rounds: int) -> dict:
    rows: dict[str, list[dict]] = {"off": [], "on": []}
    for r in range(rounds):
        for name, url in (("off", off_url), ("on", on_url)):
            row = closed_loop(lambda u=url: triton_send("grpc", u, "fused_text"), texts, 32, 8,
                              seconds, DIM)
            rows[name].append(row)
            print(f"    round {r} {name:<3}: {row['items_per_s']:.1f} texts/s "
                  f"({row['errors']} errors)", flush=True)
    ratios = [n["items_per_s"] / f["items_per_s"] for f, n in zip(rows["off"], rows["on"])]
    return {"off_items_per_s": float(np.median([r["items_per_s"] for r in rows["off"]])),
            "on_items_per_s": float(np.median([r["items_per_s"] for r in rows["on"]])),
            "ratio": float(np.median(ratios)), "ratios": ratios,
            "errors": sum(r["errors"] for side in rows.values() for r in side)}


def measure(repository: Path, seconds: float, rounds: int) -> dict:
    texts = sentences(512)
    work = RUN / "tracing"
    result: dict = {"machine": machine(), "seconds": seconds, "rounds": rounds}
    with Receiver(keep=False) as receiver, \
            started_server(repository, work / "off.log", tracing=TraceSettings()) as off, \
            started_server(repository, work / "on.log", tracing=TraceSettings(
                receiver.endpoint + "/v1/traces")) as on:
        gateways = {name: Gateway(server.triton_grpc_url, free_port(), "127.0.0.1",
                                  work / f"gateway-{name}.log", env=environment(endpoint))
                    for name, server, endpoint in (("off", off, None),
                                                   ("on", on, receiver.endpoint))}
        for g in gateways.values():
            g.start()
        try:
            print("  fused_text over gRPC, request by request ...", flush=True)
            result["grpc"] = paired(triton_send("grpc", off.grpc_url, "fused_text"),
                                    triton_send("grpc", on.grpc_url, "fused_text"), texts,
                                    seconds * rounds)
            print("  the gateway, request by request ...", flush=True)
            result["gateway"] = paired(gateway_send(gateways["off"].url, "fused_text"),
                                       gateway_send(gateways["on"].url, "fused_text"), texts,
                                       seconds * rounds)
            print("  batch 32 x 8 on fused_text over gRPC ...", flush=True)
            result["throughput"] = windows(off.grpc_url, on.grpc_url, texts, seconds, rounds)
        finally:
            for g in gateways.values():
                g.stop()
        result["spans"] = dict(receiver.counts)
        result["exports"] = receiver.exports
        result["rejected"] = receiver.rejected[:5]
    return result


def write(result: dict) -> Path:
    lines = [
        "# What tracing costs", "",
        "Generated by `python -m perf.tracing` (a step of `make bench`); do not edit.", "",
        (f"Machine: {result['machine']}. Two servers over the same repository side by side, "
         "one without tracing (the default) and one tracing every request (OpenTelemetry, a "
         "share of 1) into an OTLP receiver in the benchmark's process, which decodes every "
         "export; the load generator shares the cores."), "",
        "## One request (batch 1, fused_text)", "",
        (f"Each text sent to both servers back to back for "
         f"{result['seconds'] * result['rounds']:.0f} s per row, which goes first alternating."),
        "",
        ("| path | pairs | off p50 ms | on p50 ms | added ms, median of pairs | "
         "added ms, quartiles |"),
        "|---|---:|---:|---:|---:|---:|"]
    for key, name in (("grpc", "gRPC to Triton (its spans)"),
                      ("gateway", "the gateway (its spans and Triton's)")):
        p = result[key]
        lines.append(f"| {name} | {p['pairs']} | {p['off_p50_ms']:.2f} | {p['on_p50_ms']:.2f} | "
                     f"{p['added_median_ms']:+.2f} | {p['added_q1_ms']:+.2f} .. "
                     f"{p['added_q3_ms']:+.2f} |")
    t = result["throughput"]
    lines += ["", "## Throughput (batch 32, concurrency 8, fused_text over gRPC)", "",
              (f"{result['rounds']} rounds of {result['seconds']:.0f} s per side, off then on; "
               "the ratio is the median over the rounds of on / the off window just before "
               "it."), "",
              "| off texts/s | on texts/s | on / off | per round | errors |",
              "|---:|---:|---:|---|---:|",
              (f"| {t['off_items_per_s']:.1f} | {t['on_items_per_s']:.1f} | {t['ratio']:.3f} | "
               f"{', '.join(f'{x:.3f}' for x in t['ratios'])} | {t['errors']} |"), "",
              (f"Spans received: "
               f"{', '.join(f'{k} {v}' for k, v in sorted(result['spans'].items()))} in "
               f"{result['exports']} exports; rejected: {len(result['rejected'])}."), ""]
    path = REPORTS / "tracing.md"
    provenance.write(path, "\n".join(lines))
    (REPORTS / "tracing.json").write_text(json.dumps(result, indent=2) + "\n")
    update_summary({"tracing_added_ms_per_request": result["gateway"]["added_median_ms"],
                    "tracing_throughput_ratio": t["ratio"]})
    return path


def main(argv: list[str] | None = None) -> int:
    from export.repository import REPOSITORY

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    result = measure(REPOSITORY, args.seconds, args.rounds)
    print(f"wrote {write(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
