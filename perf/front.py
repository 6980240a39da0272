"""What the public front costs: the same requests to Triton's own loopback ports and to the
front's public ones, on one server, in one run, taking turns.

    python -m perf.front [--seconds 20] [--rounds 3]

Two measurements, each over HTTP and gRPC with tritonclient:
- per request, batch 1 on fused_text_cached answering one text from Triton's response cache
  (Triton's own time ~0.1 ms, so the front's share stands out): each request sent direct and
  through the front back to back, which goes first alternating; the median and quartiles of
  the pairwise differences;
- throughput, batch 32 at concurrency 8 on fused_text: direct and front windows taking turns,
  the median over the rounds of each front window's texts/s over the direct window's just
  before it.

Writes perf/reports/front.md, front.json and front.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from perf.workload import REPORTS, RUN, T0, Send, closed_loop, machine, sentences, started_server

DIM = 1536
PROTOCOLS = ("grpc", "http")


def sender(protocol: str, url: str, model: str) -> Send:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(url)
    outputs = [module.InferRequestedOutput("FUSED")]

    def send(texts: list[str]) -> np.ndarray:
        text = module.InferInput("TEXT", [len(texts), 1], "BYTES")
        text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
        stamp = module.InferInput("TIMESTAMP", [len(texts), 1], "INT64")
        stamp.set_data_from_numpy(np.full((len(texts), 1), T0, dtype=np.int64))
        return client.infer(model, [text, stamp], outputs=outputs).as_numpy("FUSED")

    return send


def paired(direct: Send, front: Send, text: str, seconds: float) -> dict:
    """What the front adds to one request: both ways back to back, request by request."""
    sides = {"direct": direct, "front": front}
    for send in sides.values():
        send([text])  # connections and the cache warm
    taken: dict[str, list[float]] = {"direct": [], "front": []}
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        for name in (("direct", "front") if i % 2 == 0 else ("front", "direct")):
            start = time.perf_counter()
            sides[name]([text])
            taken[name].append((time.perf_counter() - start) * 1e3)
        i += 1
    added = np.subtract(taken["front"], taken["direct"])
    q1, median, q3 = np.percentile(added, [25, 50, 75])
    return {"pairs": i, "direct_p50_ms": float(np.median(taken["direct"])),
            "front_p50_ms": float(np.median(taken["front"])), "added_median_ms": float(median),
            "added_q1_ms": float(q1), "added_q3_ms": float(q3),
            "added_ms": added.tolist()}


def windows(direct: Callable[[], Send], front: Callable[[], Send], texts: list[str],
            seconds: float, rounds: int) -> dict:
    """Batch 32 at concurrency 8, direct and front windows taking turns."""
    rows: dict[str, list[dict]] = {"direct": [], "front": []}
    for r in range(rounds):
        for name, make in (("direct", direct), ("front", front)):
            row = closed_loop(make, texts, 32, 8, seconds, DIM)
            rows[name].append(row)
            print(f"    round {r} {name:<6}: {row['items_per_s']:.1f} texts/s "
                  f"({row['errors']} errors)", flush=True)
    ratios = [f["items_per_s"] / d["items_per_s"] for d, f in zip(rows["direct"], rows["front"])]
    return {"direct_items_per_s": float(np.median([r["items_per_s"] for r in rows["direct"]])),
            "front_items_per_s": float(np.median([r["items_per_s"] for r in rows["front"]])),
            "ratio": float(np.median(ratios)), "ratios": ratios,
            "errors": sum(r["errors"] for side in rows.values() for r in side)}


def measure(server, seconds: float, rounds: int) -> dict:
    texts = sentences(512)
    urls = {"grpc": (server.triton_grpc_url, server.grpc_url),
            "http": (server.triton_http_url, server.http_url)}
    result: dict = {"machine": machine(), "seconds": seconds, "rounds": rounds,
                    "paired": {}, "throughput": {}}
    for protocol in PROTOCOLS:
        direct, front = urls[protocol]
        print(f"  {protocol}: cache hits, request by request ...", flush=True)
        result["paired"][protocol] = paired(sender(protocol, direct, "fused_text_cached"),
                                            sender(protocol, front, "fused_text_cached"),
                                            texts[0], seconds)
        print(f"  {protocol}: batch 32 x 8 on fused_text ...", flush=True)
        result["throughput"][protocol] = windows(
            lambda u=direct, p=protocol: sender(p, u, "fused_text"),
            lambda u=front, p=protocol: sender(p, u, "fused_text"), texts, seconds, rounds)
    return result


def plot(result: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    data = [result["paired"][p]["added_ms"] for p in PROTOCOLS]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(PROTOCOLS) + 1), [p.upper() for p in PROTOCOLS])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("front - direct, ms per request")
    ax.set_title("What the front adds to a cache hit (batch 1), request by request")
    fig.tight_layout()
    path = REPORTS / "front.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: dict) -> Path:
    plot(result)
    lines = [
        "# The public front against Triton's own ports", "",
        "Generated by `python -m perf.front`; do not edit.", "",
        f"Machine: {result['machine']}. One server; the load generator shares its cores.", "",
        "## One request (batch 1, fused_text_cached, cache hits)", "",
        (f"Each request sent direct and through the front back to back for "
         f"{result['seconds']:.0f} s, which goes first alternating."), "",
        ("| protocol | pairs | direct p50 ms | front p50 ms | added ms, median of pairs | "
        "added ms, quartiles |"), "|---|---:|---:|---:|---:|---:|"]
    for protocol in PROTOCOLS:
        p = result["paired"][protocol]
        lines.append(f"| {protocol} | {p['pairs']} | {p['direct_p50_ms']:.3f} | "
                     f"{p['front_p50_ms']:.3f} | {p['added_median_ms']:+.3f} | "
                     f"{p['added_q1_ms']:+.3f} .. {p['added_q3_ms']:+.3f} |")
    lines += ["", "## Throughput (batch 32, concurrency 8, fused_text)", "",
              (f"{result['rounds']} rounds of {result['seconds']:.0f} s per side, direct then "
               "front; the ratio is the median over the rounds of front / the direct window "
               "just before it."), "",
              "| protocol | direct texts/s | front texts/s | front / direct | per round | errors |",
              "|---|---:|---:|---:|---|---:|"]
    for protocol in PROTOCOLS:
        t = result["throughput"][protocol]
        lines.append(f"| {protocol} | {t['direct_items_per_s']:.1f} | "
                     f"{t['front_items_per_s']:.1f} | {t['ratio']:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in t['ratios'])} | {t['errors']} |")
    lines += ["", "![front minus direct per request](front.png)", ""]
    path = REPORTS / "front.md"
    path.write_text("\n".join(lines))
    stored = {**result, "paired": {p: {k: v for k, v in d.items() if k != "added_ms"}
                                   for p, d in result["paired"].items()}}
    (REPORTS / "front.json").write_text(json.dumps(stored, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    from export.repository import REPOSITORY

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with started_server(REPOSITORY, RUN / "front" / "triton.log") as server:
        result = measure(server, args.seconds, args.rounds)
    print(f"wrote {write(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
