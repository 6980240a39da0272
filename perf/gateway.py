"""What the OpenAI-compatible gateway costs: POST /v1/embeddings against fused_text over
gRPC directly, on the same texts, in the same run, taking turns.

    python -m perf.gateway [--seconds 12] [--rounds 5]    # also a step of `make bench`

Both sides ask for the same outputs (FUSED and TOKENS) with the same timestamp; the gateway
side sends what the OpenAI SDK sends by default (encoding_format base64) over one keep-alive
HTTP connection per client and decodes the vectors, the direct side uses tritonclient's gRPC
client. Each (batch, concurrency) point runs direct, gateway, direct, gateway, ... and the
table gives the medians over the rounds; then, at batch 1, the same text goes both ways back
to back, request by request, for what the gateway adds to one request without the drift
between windows: perf/reports/gateway.md and gateway.png.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import sys
import time
from pathlib import Path

import numpy as np

from ensemble.server import free_port
from perf import provenance
from perf.workload import (
    REPORTS,
    RUN,
    T0,
    Send,
    back_to_back,
    closed_loop,
    machine,
    sentences,
    started_server,
    triton_send,
    update_summary,
)

# (entry point, batch, concurrency): fused_text at the points, and the cached
# entry point answering the same text again and again, where Triton's own time is ~0.1 ms
# and what the gateway adds stands out.
POINTS = (("fused_text", 1, 1), ("fused_text", 1, 8), ("fused_text", 32, 1),
          ("fused_text", 32, 8), ("fused_text_cached", 1, 1))
OPENAI_NAMES = {"fused_text": "fusedembed", "fused_text_cached": "fusedembed-cached"}
DIM = 1536


def direct_send(grpc_url: str, model: str) -> Send:
    outputs = ("FUSED", "TOKENS") if model == "fused_text" else ("FUSED",)
    return triton_send("grpc", grpc_url, model, outputs)


def gateway_send(url: str, model: str) -> Send:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def send(texts: list[str]) -> np.ndarray:
        body = json.dumps({"model": OPENAI_NAMES[model], "input": texts, "encoding_format": "base64",
                           "timestamp": T0})
        conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {payload[:200]!r}")
        data = json.loads(payload)["data"]
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                         for d in data])

    return send


def measure(grpc_url: str, gateway_url: str, texts: list[str], seconds: float,
            rounds: int) -> list[dict]:
    rows = []
    for model, batch, clients in POINTS:
        sent = texts if model == "fused_text" else texts[:1]  # the cached: one text, hits
        for r in range(rounds):
            for side, make in (("direct gRPC", lambda m=model: direct_send(grpc_url, m)),
                               ("gateway", lambda m=model: gateway_send(gateway_url, m))):
                row = closed_loop(make, sent, batch, clients, seconds, DIM)
                row |= {"side": side, "round": r, "model": model}
                rows.append(row)
                print(f"  {model} batch {batch:>2} x {clients}, {side:<11} round {r}: "
                      f"{row['items_per_s']:.1f} texts/s, p50 {row['p50_ms']:.2f} ms "
                      f"({row['errors']} errors)", flush=True)
    return rows


def alternating(grpc_url: str, gateway_url: str, model: str, texts: list[str],
                seconds: float) -> dict:
    """What the gateway adds to one request, request by request (``back_to_back``): at
    fused_text's ~70 ms, windows minutes apart carry drift several times what the gateway
    adds."""
    paired = back_to_back(direct_send(grpc_url, model), gateway_send(gateway_url, model),
                          texts, seconds)
    return {"model": model, "pairs": paired["pairs"], "direct_p50_ms": paired["base_p50_ms"],
            "gateway_p50_ms": paired["other_p50_ms"],
            "added_median_ms": paired["added_median_ms"],
            "added_q1_ms": paired["added_q1_ms"], "added_q3_ms": paired["added_q3_ms"]}


def summarise(rows: list[dict]) -> list[dict]:
    """Per point: each side's medians over the rounds, and what the gateway adds as the median
    over the rounds of the difference (p50) and the ratio (throughput) between a gateway
    window and the direct window just before it: pairs taken minutes apart would carry the
    machine's drift."""
    out = []
    for model, batch, clients in POINTS:
        def side(name: str, m: str = model, b: int = batch, c: int = clients) -> list[dict]:
            return sorted((r for r in rows if r["side"] == name and r["model"] == m
                           and r["batch"] == b and r["concurrency"] == c),
                          key=lambda r: r["round"])

        direct, gateway = side("direct gRPC"), side("gateway")
        pairs = list(zip(direct, gateway))

        def med(values: list[float]) -> float:
            return float(np.median(values))

        out.append({"model": model, "batch": batch, "concurrency": clients,
                    "direct_p50_ms": med([r["p50_ms"] for r in direct]),
                    "gateway_p50_ms": med([r["p50_ms"] for r in gateway]),
                    "added_p50_ms": med([g["p50_ms"] - d["p50_ms"] for d, g in pairs]),
                    "direct_items_per_s": med([r["items_per_s"] for r in direct]),
                    "gateway_items_per_s": med([r["items_per_s"] for r in gateway]),
                    "throughput_ratio": med([g["items_per_s"] / d["items_per_s"]
                                             for d, g in pairs]),
                    "errors": sum(r["errors"] for r in direct + gateway)})
    return out


def table(summary: list[dict]) -> list[str]:
    lines = [("| entry point | batch | concurrency | direct p50 ms | gateway p50 ms | added p50 ms | "
             "direct texts/s | gateway texts/s | gateway / direct | errors |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['model']} | {s['batch']} | {s['concurrency']} | {s['direct_p50_ms']:.2f} | "
                     f"{s['gateway_p50_ms']:.2f} | {s['added_p50_ms']:+.2f} | "
                     f"{s['direct_items_per_s']:.1f} | {s['gateway_items_per_s']:.1f} | "
                     f"{s['throughput_ratio']:.3f} | {s['errors']} |")
    return lines


def paired_table(paired: list[dict]) -> list[str]:
    lines = [("| entry point | pairs | direct p50 ms | gateway p50 ms | "
              "added ms, median of pairs | added ms, quartiles |"),
             "|---|---:|---:|---:|---:|---:|"]
    for p in paired:
        lines.append(f"| {p['model']} | {p['pairs']} | {p['direct_p50_ms']:.2f} | "
                     f"{p['gateway_p50_ms']:.2f} | {p['added_median_ms']:+.2f} | "
                     f"{p['added_q1_ms']:+.2f} .. {p['added_q3_ms']:+.2f} |")
    return lines


def plot(summary: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{s['batch']} x {s['concurrency']}" + ("\ncached" if "cached" in s["model"]
                                                       else "") for s in summary]
    x = np.arange(len(summary))
    for ax, key, title in ((left, "p50_ms", "p50 latency (ms)"),
                           (right, "items_per_s", "throughput (texts/s)")):
        ax.bar(x - 0.2, [s[f"direct_{key}"] for s in summary], 0.4, label="direct gRPC")
        ax.bar(x + 0.2, [s[f"gateway_{key}"] for s in summary], 0.4, label="gateway")
        ax.set_xticks(x, labels)
        ax.set_xlabel("batch x concurrency")
        ax.set_title(title)
        ax.set_yscale("log")
    left.legend()
    fig.tight_layout()
    path = REPORTS / "gateway.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_lines(result: dict) -> list[str]:
    """The report's body: also a section of bench.md."""
    s = result["summary"]
    added = {p["model"]: p["added_median_ms"] for p in result["paired"]}
    big = [r for r in s if r["batch"] == 32]
    return [
        (f"Machine: {result['machine']}. {result['rounds']} rounds of {result['seconds']:.0f} s "
        "per side and point, sides taking turns; medians over the rounds. Gateway and Triton "
        "share the machine's cores with the load generator."), "",
        *table(s), "",
        ("What the gateway adds to one request (batch 1, concurrency 1), request by request: "
         "each text sent direct and through the gateway back to back, which side goes first "
         "alternating; the pairwise differences' median and quartiles. The windows above are "
         "seconds apart and carry the machine's drift."), "",
        *paired_table(result["paired"]), "",
        (f"- p50 the gateway adds at batch 1: {added['fused_text']:+.2f} ms on fused_text, "
         f"{added['fused_text_cached']:+.2f} ms on cache hits (goal: at most 1 ms)."),
        "- throughput at batch 32, gateway / direct: "
        + ", ".join(f"{r['throughput_ratio']:.3f} at concurrency {r['concurrency']}"
                    for r in big) + " (goal: at least 0.95).", "",
        "![gateway vs direct gRPC](gateway.png)"]


def write(result: dict) -> Path:
    plot(result["summary"])
    path = REPORTS / "gateway.md"
    provenance.write(path, "\n".join([
        "# The gateway against direct gRPC", "",
        "Generated by `python -m perf.gateway` (a step of `make bench`); do not edit.", "",
        *report_lines(result), ""]))
    update_summary({"gateway": result["summary"], "gateway_paired": result["paired"]})
    return path


def run(grpc_url: str, seconds: float, rounds: int, work: Path) -> dict:
    """Start a gateway on ``grpc_url`` and measure it against direct gRPC."""
    from ensemble.server import Gateway

    gateway = Gateway(grpc_url, free_port(), "127.0.0.1", work / "gateway.log")
    gateway.start()
    try:
        texts = sentences(512)
        rows = measure(grpc_url, gateway.url, texts, seconds, rounds)
        paired = [alternating(grpc_url, gateway.url, model, sent, seconds * rounds / 2)
                  for model, sent in (("fused_text", texts), ("fused_text_cached", texts[:1]))]
        for p in paired:
            print(f"  {p['model']} request by request: {p['added_median_ms']:+.2f} ms added "
                  f"(median of {p['pairs']} pairs)", flush=True)
    finally:
        gateway.stop()
    return {"machine": machine(), "seconds": seconds, "rounds": rounds, "rows": rows,
            "summary": summarise(rows), "paired": paired}


def main(argv: list[str] | None = None) -> int:
    from export.repository import REPOSITORY

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grpc-url", help="measure a running server instead of starting one")
    args = parser.parse_args(argv)
    work = RUN / "bench-gateway"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.grpc_url:
        result = run(args.grpc_url, args.seconds, args.rounds, work)
    else:
        with started_server(REPOSITORY, work / "triton.log") as server:
            result = run(server.grpc_url, args.seconds, args.rounds, work)
    print(f"report: {write(result)} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
