"""Back-pressure: a burst of 200 concurrent requests of 32 texts against each queue size,
side by side in one run.

    python -m perf.backpressure [--variants entry:32,entry:8,all:32,all:8,none]

For each variant (``entry:N``: ``max_queue_size`` N on the entry points, preprocess and the
fail-safe, the committed way with N = 32; ``all:N``: on every Python model; ``none``: no
bound) a server is started over a linked copy of the repository; the burst is fired from
one thread per request, each with a 120 s deadline; each answer is a vector, a refusal
(UNAVAILABLE) or, for a request the server never answers, DEADLINE_EXCEEDED; the server's
memory (PSS) is sampled throughout. Writes perf/reports/backpressure.md (+ .json).
tests/server/test_backpressure.py fires the same burst (``flood``) at the test server.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from export.build import linked_repository
from export.registry import FAILSAFE_MODEL, PREPROCESS_MODEL
from perf import provenance
from perf.burst import MemoryWatch, footprint, grpc_inputs, total
from perf.workload import REPORTS, ROOT, started_server

FLOOD_REQUESTS = 200
REFUSED = "StatusCode.UNAVAILABLE"
# A refusal is UNAVAILABLE that says a queue is full: Triton's queue policy, or the front's
# bound on held bytes or on abandoned work. Any other UNAVAILABLE (a server that is down
# answers "failed to connect") is counted under its message, not as a refusal.
QUEUE_FULL = ("Exceeds maximum queue size", "retry later")
DEADLINE_S = 120.0  # a request unanswered by then is counted as never answered


def flood_texts(i: int) -> list[str]:
    return [f"burst request {i} text {j}: a few ordinary words to embed" for j in range(32)]


def flood_inputs(i: int) -> list:
    return grpc_inputs(flood_texts(i))


def outcome(err) -> str:
    """What an error answer counts as: REFUSED, or its status and message."""
    status = str(err.status())
    if status == REFUSED and any(sign in err.message() for sign in QUEUE_FULL):
        return REFUSED
    return f"{status}: {err.message()[:160]}"


def flood(grpc_url: str, requests: int = FLOOD_REQUESTS, timeout_s: float = 600.0,
          expected: dict[int, np.ndarray] | None = None) -> list[tuple[str, float]]:
    """``requests`` concurrent requests of 32 short texts: per request ("vector" | REFUSED |
    another error's status and message | "bad vector", seconds). With ``expected`` (the
    FUSED rows of ``flood_texts(k)`` by k), request i sends ``flood_texts(i % len(expected))``
    and a vector counts only when every row is the expected one (cosine >= 0.9999);
    without it, one of the right shape and unit norm."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def right(i: int, fused: np.ndarray) -> bool:
        if fused.shape != (32, 1536):
            return False
        if expected is not None:
            return bool(np.all(np.sum(fused * expected[i], axis=1) >= 0.9999))
        return bool(np.allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-4))

    def send(i: int) -> tuple[str, float]:
        if expected is not None:
            i %= len(expected)
        client = grpcclient.InferenceServerClient(grpc_url)
        start = time.monotonic()
        try:
            fused = client.infer("fused_text", flood_inputs(i), client_timeout=timeout_s,
                                 outputs=[grpcclient.InferRequestedOutput("FUSED")]
                                 ).as_numpy("FUSED")
            return ("vector" if right(i, fused) else "bad vector"), time.monotonic() - start
        except InferenceServerException as err:
            return outcome(err), time.monotonic() - start
        finally:
            client.close()

    with ThreadPoolExecutor(requests) as pool:
        return list(pool.map(send, range(requests)))


def with_queues(variant: str):
    """``entry:N`` | ``all:N`` | ``none`` as a config edit."""
    where, _, size = variant.partition(":")
    entry = {PREPROCESS_MODEL, FAILSAFE_MODEL}

    def edit(cfg: mc.ModelConfig) -> None:
        if cfg.HasField("dynamic_batching"):
            bounded = where == "all" or (where == "entry" and cfg.name in entry)
            cfg.dynamic_batching.default_queue_policy.max_queue_size = (
                int(size) if bounded else 0)
    return edit


def measure(repository: Path, variant: str, requests: int, work: Path) -> dict:
    tag = variant.replace(":", "-")
    repo = linked_repository(repository, work / tag, with_queues(variant),
                             f"queues {variant} (perf/backpressure.py)")
    with started_server(repo, work / f"triton-{tag}.log") as server:
        flood(server.grpc_url, 4)  # warm
        baseline = total(footprint(server))
        start = time.monotonic()
        with MemoryWatch(server) as watch:
            outcomes = flood(server.grpc_url, requests, DEADLINE_S)
        seconds = time.monotonic() - start
        pending = pending_requests(server)
    return {"variant": variant, "outcomes": outcomes, "seconds": seconds,
            "baseline_mib": baseline, "peak_mib": watch.peak_total(),
            "pending_after": pending}


def pending_requests(server) -> int:
    """Requests the server still holds (queued or executing), from its metrics."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.ports.metrics}/metrics",
                                      timeout=10).read().decode()
    except OSError:
        return -1  # the server no longer answers
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("nv_inference_pending_request_count")))


def write_report(rows: list[dict], args) -> Path:
    lines = ["# Back-pressure: a burst of concurrent requests against each queue size", "",
             (f"Command: `python -m perf.backpressure --variants {args.variants} --requests "
              f"{args.requests}`. {args.requests} concurrent gRPC requests of 32 short texts "
              f"(one thread each, a {DEADLINE_S:.0f} s deadline each), fired at once at a "
              "fresh server per variant: `entry:N` = `max_queue_size` N on the entry points "
              "(preprocess, the first step of both ensembles, and the fail-safe; the committed "
              "way, N = 32), `all:N` = on every Python model, `none` = unbounded. A refusal "
              "is Triton's queue policy answering UNAVAILABLE (HTTP 503). `no answer` counts "
              "requests without an answer by the deadline; `pending after` is what the server "
              "still held then (Triton's `nv_inference_pending_request_count`): requests "
              "without an answer that the server no longer holds were dropped, stuck for "
              "good; -1: the server's metrics no longer answered. Servers' logs: .run/backpressure/. "
              "Memory: the server's PSS sum, sampled every 0.2 s."), "",
             ("| queues | served | refused | no answer | pending after | other | "
              "refusal p50 ms | refusal max ms | served p50 s | served max s | burst s | "
              "peak MiB (warm) |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        served = [s for o, s in r["outcomes"] if o == "vector"]
        refused = [s for o, s in r["outcomes"] if o == REFUSED]
        lost = [s for o, s in r["outcomes"] if o == "StatusCode.DEADLINE_EXCEEDED"]
        other = len(r["outcomes"]) - len(served) - len(refused) - len(lost)

        def ms(xs, f):
            return f"{f(xs) * 1000:.0f}" if xs else "-"

        def s(xs, f):
            return f"{f(xs):.1f}" if xs else "-"

        lines.append(
            f"| {r['variant']} | {len(served)} | {len(refused)} | {len(lost)} | "
            f"{r['pending_after']} | {other} | "
            f"{ms(refused, np.median)} | {ms(refused, max)} | {s(served, np.median)} | "
            f"{s(served, max)} | {r['seconds']:.1f} | {r['peak_mib']:.0f} "
            f"({r['baseline_mib']:.0f}) |")
    path = REPORTS / "backpressure.md"
    provenance.write(path, "\n".join(lines) + "\n")
    (REPORTS / "backpressure.json").write_text(json.dumps(rows, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="entry:32,entry:8,all:32,all:8,none")
    parser.add_argument("--requests", type=int, default=FLOOD_REQUESTS)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args(argv)
    rows = []
    work = ROOT / ".run" / "backpressure"  # the servers' logs stay here
    shutil.rmtree(work, ignore_errors=True)
    for variant in args.variants.split(","):
        rows.append(measure(args.repository.resolve(), variant, args.requests, work))
        print(f"{variant}: done in {rows[-1]['seconds']:.1f} s", flush=True)
    print(f"report: {write_report(rows, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
