"""Head-of-line: the latency of single short requests while the server is busy with batches
of 32 long texts, for each way of running the token embedders, side by side in one run.

    python -m perf.headofline [--seconds 90] [--variants 1,2,e05_causal=2]

For each variant (``N``: every token embedder with N instances; ``model=N``: that model with
N, the others with 1; the committed default is listed in the report) a server is started
over a linked copy of the repository, short single-text requests are timed on an idle
server, then again while one client keeps sending batches of 32 texts of about 512 tokens
(the limit of most embedders); last, the throughput of batches of 32 STS-B sentences at
concurrency 8 (what more instances may cost). Writes perf/reports/headofline.md (+ .json).
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
from perf import provenance
from perf.burst import send
from perf.workload import (
    REPORTS,
    ROOT,
    pss_mib,
    sentences,
    served_pipeline,
    server_memory,
    started_server,
)
from perf.workload import batches as batches_of

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


def instances(variant: str) -> dict[str, int]:
    """Instance count per token embedder for a variant ("2", or "e05_causal=2,e01_semantic=2")."""
    if "=" not in variant:
        return dict.fromkeys(TOKEN_MODELS, int(variant))
    counts = dict.fromkeys(TOKEN_MODELS, 1)
    for item in variant.split("+"):
        model, _, n = item.partition("=")
        counts[model] = int(n)
    return counts


def with_instances(counts: dict[str, int]):
    def edit(cfg: mc.ModelConfig) -> None:
        if cfg.name in counts:
            cfg.instance_group[0].count = counts[cfg.name]
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


def measure(repository: Path, variant: str, seconds: float, work: Path) -> dict:
    tag = variant.replace("=", "-").replace("+", "_")
    repo = linked_repository(repository, work / tag, with_instances(instances(variant)),
                             f"instances {variant} (perf/headofline.py)")
    texts = long_texts(64)
    with started_server(repo, work / f"triton-{tag}.log") as server:
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
        stop.set()
        loader.join()
        chunks = batches_of(sentences(256), 32, 8)
        throughput = served_pipeline(server.grpc_url, chunks, 8)["items_per_s"]
        memory = sum(server_memory(server, pss_mib).values())
    return {"variant": variant, "idle_s": idle, "busy_s": busy, "long_batch_s": batches,
            "short_texts_per_s": throughput, "memory_mib": memory}


def write_report(rows: list[dict], args) -> Path:
    def q(xs, p):
        return float(np.percentile(xs, p)) * 1000

    lines = ["# Head-of-line: short requests behind batches of 32 long texts", "",
             (f"Command: `python -m perf.headofline --seconds {args.seconds:g} --variants "
              f"{args.variants}`. One client sends batches of 32 texts of about 512 tokens "
              f"(~{LONG_BYTES} bytes of STS-B sentences) back to back; single short requests "
              "(one text, a few words) are timed one after another, 0.5 s apart, on the idle "
              "server and under that load. Variant: the token embedders' "
              "`instance_group.count` (`2`: all of them; `model=2`: that one only, the others "
              "1). Short texts/s: batches of 32 STS-B dev sentences, 8 clients, after the "
              "load. Memory: PSS sum at the end. Same machine, same run, one server after "
              "the other."), "",
             ("| instances | idle p50 ms | busy p50 ms | busy p95 ms | busy max ms | "
              "long batch p50 s | short texts/s | server MiB |"),
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {q(r['idle_s'], 50):.0f} | {q(r['busy_s'], 50):.0f} | "
            f"{q(r['busy_s'], 95):.0f} | {max(r['busy_s']) * 1000:.0f} | "
            f"{np.median(r['long_batch_s']) if r['long_batch_s'] else float('nan'):.1f} | "
            f"{r['short_texts_per_s']:.0f} | {r['memory_mib']:.0f} |")
    path = REPORTS / "headofline.md"
    provenance.write(path, "\n".join(lines) + "\n")
    (REPORTS / "headofline.json").write_text(json.dumps(rows, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--variants", default="1,2,e05_causal=2")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / ".run") as tmp:
        for variant in args.variants.split(","):
            rows.append(measure(args.repository.resolve(), variant, args.seconds, Path(tmp)))
            print(f"{variant}: busy p50 {np.median(rows[-1]['busy_s']):.2f} s", flush=True)
    print(f"report: {write_report(rows, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
