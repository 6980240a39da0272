"""The worst valid load: concurrent requests of 32 texts at every model's token limit, with
the resident memory of every server process sampled through the burst and after it.

    python -m perf.burst [--repository model_repository] [--requests 8] [--name burst]

Starts tritonserver on free loopback ports over the repository, warms it, fires the burst,
waits for memory to settle and writes perf/reports/<name>.md (+ .json, + <name>-memory.png).
The server-tier test (tests/server/test_burst.py) runs the same burst against the test
server and checks the budget of export/registry.py's MEMORY_BUDGET.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np

from export.registry import (
    EMBEDDERS,
    FULL_MEMORY_BUDGET,
    LIMITS,
    MEMORY_BUDGET,
    Input,
    MemoryBudget,
    tokenizer_family,
)
from perf import provenance
from perf.workload import (
    REPORTS,
    ROOT,
    T0,
    pss_mib,
    sentences,
    server_memory,
    started_server,
)

BURST_REQUESTS = 8
TEXTS_PER_REQUEST = 32


def limit_texts(n: int, repository: Path) -> list[str]:
    """``n`` distinct texts, each long enough that every neural model truncates it (checked
    with the served tokenizers) and within the byte limit."""
    from ensemble.stages import FamilyTokenizer, read_build_info, version_dir

    pool = sentences(1500)
    rng = np.random.default_rng(20261122)
    texts = []
    for _ in range(n):
        words: list[str] = []
        size = 0
        while True:  # fill to 95 % of the byte limit: far past 4096 tokens in every family
            s = pool[int(rng.integers(len(pool)))]
            if size + len(s.encode()) + 1 > 0.95 * LIMITS.max_text_bytes:
                break
            words.append(s)
            size += len(s.encode()) + 1
        texts.append(" ".join(words))
    for spec in EMBEDDERS:
        if spec.input is not Input.TOKENS:
            continue
        family = tokenizer_family(spec.tokenizer or "")
        tokenizer = FamilyTokenizer(version_dir(repository, family.triton_model), family)
        limit = int(read_build_info(version_dir(repository, spec.triton_model))["max_length"])
        shortest = int(tokenizer.encode(texts[:1]).attention_mask.sum())
        if shortest <= limit:
            raise AssertionError(f"{spec.id}: a burst text has {shortest} tokens, not past "
                                 f"the {limit}-token limit")
    return texts


@dataclass
class MemoryWatch:
    """MiB (PSS) of every server process, sampled every ``interval_s`` in a thread."""

    server: object
    interval_s: float = 0.2
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self._start, footprint(self.server)))
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_total(self) -> float:
        return max(sum(m.values()) for _, m in self.samples)

    def peaks(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for _, m in self.samples:
            for name, mib in m.items():
                out[name] = max(out.get(name, 0.0), mib)
        return out


def footprint(server) -> dict[str, float]:
    """MiB per server process, shared pages split among their processes (PSS): the sum is
    what the server takes from the machine (RSS would count the stubs' shared memory regions
    with tritonserver twice)."""
    return server_memory(server, pss_mib)


def total(memory: dict[str, float]) -> float:
    return sum(memory.values())


def grpc_inputs(texts: list[str]) -> list:
    """TEXT and TIMESTAMP (T0) of a gRPC request of ``texts``."""
    import tritonclient.grpc as grpcclient

    text = np.array([[t.encode()] for t in texts], dtype=np.object_)
    stamp = np.full((len(texts), 1), T0, dtype=np.int64)
    inputs = [grpcclient.InferInput("TEXT", list(text.shape), "BYTES"),
              grpcclient.InferInput("TIMESTAMP", list(stamp.shape), "INT64")]
    inputs[0].set_data_from_numpy(text)
    inputs[1].set_data_from_numpy(stamp)
    return inputs


def send(grpc_url: str, texts: list[str], timeout_s: float) -> tuple[str, float]:
    """One request of ``texts``: ("vector", s) for unit FUSED rows, else ("error: ...", s)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    inputs = grpc_inputs(texts)
    start = time.monotonic()
    try:
        fused = client.infer("fused_text", inputs, client_timeout=timeout_s,
                             outputs=[grpcclient.InferRequestedOutput("FUSED")]).as_numpy("FUSED")
        ok = fused.shape == (len(texts), 1536) and np.allclose(
            np.linalg.norm(fused, axis=1), 1.0, atol=1e-4)
        return ("vector" if ok else "bad vector"), time.monotonic() - start
    except Exception as err:  # noqa: BLE001 - reported, and the caller asserts on it
        return f"error: {err}", time.monotonic() - start
    finally:
        client.close()


def settle(server, baseline: float, within_mib: float, timeout_s: float) -> dict[str, float]:
    """Memory after the burst: sampled until it is within ``within_mib`` of ``baseline`` or
    ``timeout_s`` passed (the stubs free their buffers when their last request is answered)."""
    deadline = time.monotonic() + timeout_s
    while True:
        memory = footprint(server)
        if total(memory) - baseline <= within_mib or time.monotonic() > deadline:
            return memory
        time.sleep(1.0)


@dataclass
class BurstResult:
    baseline: dict[str, float]
    peaks: dict[str, float]
    peak_total: float
    after: dict[str, float]
    outcomes: list[tuple[str, float]]
    seconds: float
    samples: list[tuple[float, dict[str, float]]]


def burst(server, texts: list[str], requests: int = BURST_REQUESTS,
          timeout_s: float = 1200.0) -> BurstResult:
    """Warm baseline, then ``requests`` concurrent requests of 32 texts, memory sampled."""
    send(server.grpc_url, ["a warm-up text"], 60.0)
    baseline = footprint(server)
    chunks = [texts[(i * TEXTS_PER_REQUEST) % len(texts):][:TEXTS_PER_REQUEST]
              for i in range(requests)]
    start = time.monotonic()
    with MemoryWatch(server) as watch, ThreadPoolExecutor(requests) as pool:
        outcomes = list(pool.map(lambda c: send(server.grpc_url, c, timeout_s), chunks))
    seconds = time.monotonic() - start
    after = settle(server, total(baseline), 512.0, 30.0)
    return BurstResult(baseline, watch.peaks(), watch.peak_total(), after, outcomes, seconds,
                       watch.samples)


def write_report(result: BurstResult, name: str, title: str, command: str,
                 budget: MemoryBudget = MEMORY_BUDGET) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    b, p, a = result.baseline, result.peaks, result.after
    lines = [f"# {title}", "",
             (f"Command: `{command}`. {len(result.outcomes)} concurrent gRPC requests of "
              f"{TEXTS_PER_REQUEST} texts of about {0.95 * LIMITS.max_text_bytes / 1024:.0f} KiB "
              "(past every model's token limit: each one truncates). Memory of every server "
              "process sampled every 0.2 s as its proportional set size (PSS: resident "
              "pages, each shared page split among the processes that map it; the Python "
              "stubs share their tensor regions with tritonserver, which a sum of RSS would "
              "count twice)."), "",
             f"Answers: {sum(o == 'vector' for o, _ in result.outcomes)} of "
             f"{len(result.outcomes)} requests got unit vectors in "
             f"{result.seconds:.0f} s (slowest answer {max(s for _, s in result.outcomes):.0f} s)"
             + "".join(f"; {o}" for o, _ in result.outcomes if o != "vector") + ".", "",
             "| process | warm MiB | peak MiB | after MiB | budget MiB |",
             "|---|---|---|---|---|"]
    for proc in sorted(p, key=lambda k: -p[k]):
        lines.append(f"| {proc} | {b.get(proc, 0):.0f} | {p[proc]:.0f} | {a.get(proc, 0):.0f} | "
                     f"{budget.process_mib(proc)} |")
    lines.append(f"| **server (sum)** | {total(b):.0f} | {result.peak_total:.0f} | "
                 f"{total(a):.0f} | {budget.server_mib} |")
    lines += ["", ("The peak of the sum is the largest sum of one sample, not the sum of the "
                   "per-process peaks. Budgets: export/registry.py `MEMORY_BUDGET` (default profile), "
                   "`FULL_MEMORY_BUDGET` (full profile)."), "",
              f"![memory]({name}-memory.png)"]
    path = REPORTS / f"{name}.md"
    provenance.write(path, "\n".join(lines) + "\n")
    (REPORTS / f"{name}.json").write_text(json.dumps(
        {"command": command, "baseline_mib": b, "peak_mib": p,
         "peak_total_mib": result.peak_total,
         "after_mib": a, "outcomes": result.outcomes, "seconds": result.seconds,
         "samples": [{"t": t, "rss": m} for t, m in result.samples[::10]]}, indent=1) + "\n")
    plot(result, REPORTS / f"{name}-memory.png", budget)
    return path


def plot(result: BurstResult, path: Path, budget: MemoryBudget) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    t = [s for s, _ in result.samples]
    ax.plot(t, [total(m) / 1024 for _, m in result.samples], label="server (sum)")
    top = sorted(result.peaks, key=lambda k: -result.peaks[k])[:4]
    for name in top:
        ax.plot(t, [m.get(name, 0) / 1024 for _, m in result.samples], label=name)
    ax.axhline(budget.server_mib / 1024, color="red", linestyle="--", label="budget")
    ax.set_xlabel("seconds into the burst")
    ax.set_ylabel("resident memory (GiB)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report again from perf/reports/<name>.json (e.g. "
                             "after a budget changed), without a server")
    parser.add_argument("--full", action="store_true",
                        help="burst the full profile's INT8 repository (built or updated "
                             "first, in .run/bench-full/int8) against its budget")
    parser.add_argument("--requests", type=int, default=BURST_REQUESTS)
    parser.add_argument("--name", default="burst")
    parser.add_argument("--title", default="Burst: the worst valid load, default profile")
    args = parser.parse_args(argv)
    budget = FULL_MEMORY_BUDGET if args.full else MEMORY_BUDGET
    if args.report_only:
        saved = json.loads((REPORTS / f"{args.name}.json").read_text())
        result = BurstResult(saved["baseline_mib"], saved["peak_mib"], saved["peak_total_mib"],
                             saved["after_mib"], [tuple(o) for o in saved["outcomes"]],
                             saved["seconds"], [(x["t"], x["rss"]) for x in saved["samples"]])
        print(f"report: {write_report(result, args.name, args.title, saved['command'], budget)}")
        return 0
    repository = args.repository.resolve()
    if args.full:
        from export.build import build
        from perf.bench_full import PLANS, RUN_FULL, SERVED

        repository = RUN_FULL / SERVED
        build(repository, "full", precision=PLANS[SERVED], fusemoe_checkpoint="seeded")
    texts = limit_texts(TEXTS_PER_REQUEST * 2, repository)
    with started_server(repository, ROOT / ".run" / args.name / "tritonserver.log") as server:
        result = burst(server, texts, args.requests)
    command = " ".join(["python -m perf.burst", *(argv if argv is not None else sys.argv[1:])])
    path = write_report(result, args.name, args.title, command, budget)
    print(f"report: {path}")
    return 0 if all(o == "vector" for o, _ in result.outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
