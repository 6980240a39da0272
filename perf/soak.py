"""Soak: a bounded Locust run against the real server on loopback, with a memory watch.

    python -m perf.soak [--users 16] [--minutes 10]

Starts tritonserver on free loopback ports, runs perf/locustfile.py headless (HTTP and gRPC
users, valid and bad requests), samples the resident memory of the server and of every
Python stub, and writes perf/reports/soak.md (+ .json, + soak-memory.png).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

from ensemble.server import Ports, TritonServer, free_ports
from perf import provenance, tools
from perf.workload import REPORTS, ROOT, server_memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args(argv)
    work = ROOT / ".run" / "soak"
    work.mkdir(parents=True, exist_ok=True)
    server = TritonServer(ports=Ports(*free_ports(3)),
                          log_path=work / "tritonserver.log")
    print("starting tritonserver ...", flush=True)
    server.start()
    samples: list[tuple[float, dict[str, float]]] = []
    stop = threading.Event()
    start = time.monotonic()

    def watch() -> None:
        while not stop.is_set():
            samples.append((time.monotonic() - start, server_memory(server)))
            stop.wait(15.0)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        watcher.start()
        seconds = int(args.minutes * 60)
        stats = tools.locust(server.http_url, server.grpc_url, args.users, seconds,
                             work / "locust")
        stop.set()
        watcher.join()
        samples.append((time.monotonic() - start, server_memory(server)))
        restarts = list(server.watchdog.restarts) if server.watchdog else []
    finally:
        server.stop()
    path = write_report(args, stats, samples, restarts)
    valid_failures = sum(int(r["Failure Count"]) for r in stats if "valid" in r["Name"])
    print(f"report: {path}")
    return 0 if valid_failures == 0 else 1


def write_report(args, stats: list[dict], samples, restarts: list[str]) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    first, last = samples[0][1], samples[-1][1]
    # ONNX Runtime's arenas grow until they have met the largest shapes; the second half of
    # the run shows whether memory keeps growing after that.
    half = next((m for t, m in samples if t >= samples[-1][0] / 2), last)
    lines = ["# Soak: bounded Locust run on loopback", "",
             (f"Command: `python -m perf.soak --users {args.users} --minutes {args.minutes:g}`. "
             f"Machine: {platform.machine()}, 2 cores (shared by server and load generator), "
             f"Python {platform.python_version()}. HTTP and gRPC users: 70% valid short requests "
             "(3-40 words), 10% valid long ones (520 words, about 512 tokens: the limit of "
             "most embedders), 20% bad ones (empty text, invalid UTF-8, timestamp out of "
             "range, oversized text) that must be refused with a client error (HTTP 400, "
             "gRPC INVALID_ARGUMENT) naming the field. A valid request refused by a full "
             "queue (HTTP 503, gRPC UNAVAILABLE) is retried with back-off and counted under "
             "`refused (retried)`; the queue limits are the committed ones "
             "(`Batching.max_queue_size`)."), "",
             "| request | count | failures | median ms | p95 ms | p99 ms | req/s |",
             "|---|---|---|---|---|---|---|"]
    for r in stats:
        lines.append(f"| {r['Type']} {r['Name']} | {r['Request Count']} | {r['Failure Count']} "
                     f"| {r['50%']} | {r['95%']} | {r['99%']} | {float(r['Requests/s']):.1f} |")
    lines += ["", ("A failure is a valid request without a vector, or a bad request without the "
              f"expected error. Stub restarts by the watchdog: {restarts or 'none'}."), "",
              "## Memory (resident, MiB)", "",
              ("| process | at start | at half time | at end | change, whole run | change, "
               "second half |"), "|---|---|---|---|---|---|"]
    for name in sorted(first):
        if name in last and name in half:
            lines.append(f"| {name} | {first[name]:.0f} | {half[name]:.0f} | {last[name]:.0f} | "
                         f"{last[name] - first[name]:+.0f} | {last[name] - half[name]:+.0f} |")
    t0, t1, t2 = (sum(m.values()) for m in (first, half, last))
    lines.append(f"| **all** | {t0:.0f} | {t1:.0f} | {t2:.0f} | {t2 - t0:+.0f} | {t2 - t1:+.0f} |")
    lines += ["", "![memory](soak-memory.png)"]
    path = REPORTS / "soak.md"
    provenance.write(path, "\n".join(lines) + "\n")
    (REPORTS / "soak.json").write_text(json.dumps(
        {"stats": stats, "memory_mib": [{"t": t, "rss": m} for t, m in samples],
         "restarts": restarts}, indent=1) + "\n")
    plot(samples, REPORTS / "soak-memory.png")
    return path


def plot(samples, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = sorted(samples[0][1])
    ax.plot([t / 60 for t, _ in samples], [sum(m.values()) for _, m in samples], label="all")
    for name in ("tritonserver", "fusemoe"):
        if name in names:
            ax.plot([t / 60 for t, _ in samples], [m.get(name, 0) for _, m in samples],
                    label=name)
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory (MiB)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
