"""Back-pressure: a burst of 200 concurrent requests of 32 texts against each queue size,
side by side in one run.

    python -m perf.backpressure [--sizes 8,32,128,0] [--requests 200]

For each ``max_queue_size`` (0 = unbounded; 32 is the committed default) a server is started
over a linked copy of the repository with that size on every Python model; the burst is
fired from one thread per request; each answer is a vector or a refusal (UNAVAILABLE), and
its time is kept, with the server's memory (PSS) sampled throughout. Writes
perf/reports/backpressure.md (+ .json). tests/server/test_backpressure.py fires the same
burst (``flood``) at the test server.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from export.build import linked_repository
from perf.burst import MemoryWatch, footprint, total
from perf.workload import REPORTS, ROOT, T0, started_server

FLOOD_REQUESTS = 200
REFUSED = "StatusCode.UNAVAILABLE"


def flood_inputs(i: int) -> list:
    import tritonclient.grpc as grpcclient

    texts = [f"burst request {i} text {j}: a few ordinary words to embed" for j in range(32)]
    text = np.array([[t.encode()] for t in texts], dtype=np.object_)
    stamp = np.full((len(texts), 1), T0, dtype=np.int64)
    inputs = [grpcclient.InferInput("TEXT", list(text.shape), "BYTES"),
              grpcclient.InferInput("TIMESTAMP", list(stamp.shape), "INT64")]
    inputs[0].set_data_from_numpy(text)
    inputs[1].set_data_from_numpy(stamp)
    return inputs


def flood(grpc_url: str, requests: int = FLOOD_REQUESTS,
          timeout_s: float = 600.0) -> list[tuple[str, float]]:
    """``requests`` concurrent requests of 32 short texts: per request ("vector" | the
    error's status | "bad vector", seconds)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def send(i: int) -> tuple[str, float]:
        client = grpcclient.InferenceServerClient(grpc_url)
        start = time.monotonic()
        try:
            fused = client.infer("fused_text", flood_inputs(i), client_timeout=timeout_s,
                                 outputs=[grpcclient.InferRequestedOutput("FUSED")]
                                 ).as_numpy("FUSED")
            ok = fused.shape == (32, 1536) and np.allclose(np.linalg.norm(fused, axis=1), 1.0,
                                                           atol=1e-4)
            return ("vector" if ok else "bad vector"), time.monotonic() - start
        except InferenceServerException as err:
            return str(err.status()), time.monotonic() - start
        finally:
            client.close()

    with ThreadPoolExecutor(requests) as pool:
        return list(pool.map(send, range(requests)))


def with_queue_size(size: int):
    def edit(cfg: mc.ModelConfig) -> None:
        if cfg.HasField("dynamic_batching"):
            cfg.dynamic_batching.default_queue_policy.max_queue_size = size
    return edit


def measure(repository: Path, size: int, requests: int, work: Path) -> dict:
    repo = linked_repository(repository, work / f"queue-{size}", with_queue_size(size),
                             f"max_queue_size {size} (perf/backpressure.py)")
    with started_server(repo, work / f"triton-{size}.log") as server:
        flood(server.grpc_url, 4)  # warm
        baseline = total(footprint(server))
        start = time.monotonic()
        with MemoryWatch(server) as watch:
            outcomes = flood(server.grpc_url, requests)
        seconds = time.monotonic() - start
    return {"max_queue_size": size, "outcomes": outcomes, "seconds": seconds,
            "baseline_mib": baseline, "peak_mib": watch.peak_total()}


def write_report(rows: list[dict], args) -> Path:
    lines = ["# Back-pressure: a burst of concurrent requests against each queue size", "",
             (f"Command: `python -m perf.backpressure --sizes {args.sizes} --requests "
              f"{args.requests}`. {args.requests} concurrent gRPC requests of 32 short texts "
              "(one thread each), fired at once at a fresh server per queue size "
              "(`max_queue_size` on every Python model; 0 = unbounded, 32 = the committed "
              "default). A refusal is Triton's queue policy answering UNAVAILABLE (HTTP 503). "
              "Memory: the server's PSS sum, sampled every 0.2 s."), "",
             ("| max_queue_size | served | refused | other | refusal p50 ms | refusal max ms | "
              "served p50 s | served max s | burst s | peak MiB (warm) |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        served = [s for o, s in r["outcomes"] if o == "vector"]
        refused = [s for o, s in r["outcomes"] if o == REFUSED]
        other = len(r["outcomes"]) - len(served) - len(refused)

        def ms(xs, f):
            return f"{f(xs) * 1000:.0f}" if xs else "-"

        def s(xs, f):
            return f"{f(xs):.1f}" if xs else "-"

        lines.append(
            f"| {r['max_queue_size'] or 'unbounded'} | {len(served)} | {len(refused)} | {other} | "
            f"{ms(refused, np.median)} | {ms(refused, max)} | {s(served, np.median)} | "
            f"{s(served, max)} | {r['seconds']:.1f} | {r['peak_mib']:.0f} "
            f"({r['baseline_mib']:.0f}) |")
    path = REPORTS / "backpressure.md"
    path.write_text("\n".join(lines) + "\n")
    (REPORTS / "backpressure.json").write_text(json.dumps(rows, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8,32,128,0")
    parser.add_argument("--requests", type=int, default=FLOOD_REQUESTS)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / ".run") as tmp:
        for size in (int(x) for x in args.sizes.split(",")):
            rows.append(measure(args.repository.resolve(), size, args.requests, Path(tmp)))
            print(f"max_queue_size {size}: done in {rows[-1]['seconds']:.1f} s", flush=True)
    print(f"report: {write_report(rows, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
