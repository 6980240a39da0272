"""Head-of-line: the latency of single short requests while the server is busy with batches
of 32 long texts, for each way of running the token embedders, side by side in one run.

    python -m perf.headofline [--seconds 90] [--instances 1,2]

For each instance count (the token embedders' ``instance_group.count``; 1 is the committed
default) a server is started over a linked copy of the repository, short single-text
requests are timed on an idle server, then again while one client keeps sending batches of
32 texts of about 512 tokens (the limit of most embedders). Writes
perf/reports/headofline.md (+ .json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from export.build import linked_repository
from export.registry import EMBEDDERS, Input
from perf.burst import send
from perf.workload import REPORTS, ROOT, sentences, server_memory, started_server

TOKEN_MODELS = {e.triton_model for e in EMBEDDERS if e.input is Input.TOKENS}
LONG_BYTES = 2400  # about 512 tokens of STS-B English in the BERT and RoBERTa tokenizers


def long_texts(n: int) -> list[str]:
    pool = sentences(1500)
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < LONG_BYTES:
            words.append(pool[int(rng.integers(len(pool)))])
        out.append(" ".join(words))
    return out


def with_instances(count: int):
    def edit(cfg: mc.ModelConfig) -> None:
        if cfg.name in TOKEN_MODELS:
            cfg.instance_group[0].count = count
    return edit


def short_latencies(grpc_url: str, seconds: float, gap_s: float = 0.5) -> list[float]:
    """Single short requests one after another (``gap_s`` apart) for ``seconds``."""
    out, i, end = [], 0, time.monotonic() + seconds
    while time.monotonic() < end:
        outcome, s = send(grpc_url, [f"a short request number {i}"], 600.0)
        if outcome != "vector":
            raise RuntimeError(outcome)
        out.append(s)
        i += 1
        time.sleep(gap_s)
    return out


def measure(repository: Path, count: int, seconds: float, work: Path) -> dict:
    repo = linked_repository(repository, work / f"instances-{count}", with_instances(count),
                             f"token embedders with {count} instances (perf/headofline.py)")
    texts = long_texts(64)
    with started_server(repo, work / f"triton-{count}.log") as server:
        idle = short_latencies(server.grpc_url, 15.0)
        stop = threading.Event()
        batches: list[float] = []

        def load() -> None:
            i = 0
            while not stop.is_set():
                chunk = texts[(i % 2) * 32:][:32]
                outcome, s = send(server.grpc_url, chunk, 1200.0)
                if outcome == "vector":
                    batches.append(s)
                i += 1

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(2.0)
        busy = short_latencies(server.grpc_url, seconds)
        memory = sum(server_memory(server).values())
        stop.set()
        loader.join()
    return {"instances": count, "idle_s": idle, "busy_s": busy, "long_batch_s": batches,
            "memory_mib": memory}


def write_report(rows: list[dict], args) -> Path:
    def q(xs, p):
        return float(np.percentile(xs, p)) * 1000

    lines = ["# Head-of-line: short requests behind batches of 32 long texts", "",
             (f"Command: `python -m perf.headofline --seconds {args.seconds:g} --instances "
              f"{args.instances}`. One client sends batches of 32 texts of about 512 tokens "
              f"(~{LONG_BYTES} bytes of STS-B sentences) back to back; single short requests "
              "(one text, a few words) are timed one after another, 0.5 s apart, on the idle "
              "server and under that load. Instances: the token embedders' "
              "`instance_group.count`. Same machine, same run, one server after the other."),
             "",
             ("| instances | idle p50 ms | busy p50 ms | busy p95 ms | busy max ms | "
              "long batch p50 s | server MiB |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['instances']} | {q(r['idle_s'], 50):.0f} | {q(r['busy_s'], 50):.0f} | "
            f"{q(r['busy_s'], 95):.0f} | {max(r['busy_s']) * 1000:.0f} | "
            f"{np.median(r['long_batch_s']) if r['long_batch_s'] else float('nan'):.1f} | "
            f"{r['memory_mib']:.0f} |")
    path = REPORTS / "headofline.md"
    path.write_text("\n".join(lines) + "\n")
    (REPORTS / "headofline.json").write_text(json.dumps(rows, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--instances", default="1,2")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / ".run") as tmp:
        for count in (int(c) for c in args.instances.split(",")):
            rows.append(measure(args.repository.resolve(), count, args.seconds, Path(tmp)))
            print(f"instances {count}: busy p50 {np.median(rows[-1]['busy_s']):.2f} s",
                  flush=True)
    print(f"report: {write_report(rows, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
