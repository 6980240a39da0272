"""What every benchmark shares: the texts, the load loops, the server's statistics and the
machine's description. The races, ``make tune`` and ``make bench`` import this module;
it imports none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ensemble.server import free_ports
from export.stsb import sentences as split_sentences

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "perf" / "reports"
RESULTS = ROOT / "perf" / "results"
RUN = ROOT / ".run"
T0 = 1_700_000_000  # the timestamp every benchmark request carries

Send = Callable[[list[str]], np.ndarray]

FULL_RUN = RUN / "bench-full"  # the full profile's builds, one folder per precision
# Each precision's build plan: FuseMoE stays FP32 in the INT8 build (its INT8 experts moved
# FUSED to cosine 0.987 against FP32, perf/reports/precision.md).
FULL_PLANS = {"fp32": "fp32", "int8": "int8,fusemoe=fp32"}


def full_build(precision: str, repository: Path | None = None) -> Path:
    """The full profile built in ``precision`` into ``repository`` (FULL_RUN/<precision>)
    unless a build is already there; its path."""
    repository = repository or FULL_RUN / precision
    if not (repository / "fused_text" / "config.pbtxt").is_file():
        from export.build import build

        print(f"[build] full profile, {FULL_PLANS[precision]}, into {repository} ...",
              flush=True)
        build(repository, "full", force=True, precision=FULL_PLANS[precision],
              fusemoe_checkpoint="seeded")
    return repository


def sentences(n: int) -> list[str]:
    """The first ``n`` distinct STS-B dev sentences (sorted): every benchmark's texts."""
    return split_sentences("dev")[:n]


def batches(texts: list[str], size: int, count: int) -> list[list[str]]:
    """Race B's batches: the first ``count`` runs of ``size`` distinct sentences."""
    return [texts[r * size:(r + 1) * size] for r in range(count)]


def input_data(texts: list[str], path: Path) -> Path:
    """perf_analyzer's --input-data JSON: one step per text, TEXT and TIMESTAMP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": [{"TEXT": [t], "TIMESTAMP": [T0]} for t in texts]}))
    return path


@contextlib.contextmanager
def started_server(repository: Path, log: Path, timeout: float = 900.0, **settings) -> Iterator:
    """A tritonserver on free loopback ports over ``repository`` (``settings``: more fields
    of TritonServer), stopped on exit; the seconds it took to become ready are its ``load_s``
    attribute."""
    from ensemble.server import Ports, TritonServer

    log.parent.mkdir(parents=True, exist_ok=True)
    server = TritonServer(repository, Ports(*free_ports(3)), log, **settings)
    print(f"starting tritonserver on {repository.name} (log: {log}) ...", flush=True)
    start = time.perf_counter()
    server.start(timeout=timeout)
    server.load_s = time.perf_counter() - start  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


def held_repository(work: Path, model: str) -> tuple[Path, Path]:
    """The built repository linked again under ``work``, with ``model`` given the fault
    parameter ``inject_hold_path``: every batch of it waits while the returned file exists
    (a hung embedder that stays alive). The repository and the file of a run before are
    removed."""
    import shutil

    from export.build import linked_repository
    from export.repository import REPOSITORY

    work.mkdir(parents=True, exist_ok=True)
    hold = work / "hold"
    hold.unlink(missing_ok=True)

    def settings(cfg) -> None:
        if cfg.name == model:
            cfg.parameters["inject_hold_path"].string_value = str(hold)

    shutil.rmtree(work / "repo", ignore_errors=True)
    repo = linked_repository(REPOSITORY, work / "repo", settings, f"a hold on {model}")
    return repo, hold


def triton_send(protocol: str, url: str, model: str, outputs: tuple[str, ...] = ("FUSED",)
                ) -> Send:
    """tritonclient over ``protocol`` ("grpc" | "http"): texts at T0 -> FUSED (and
    ``outputs`` asked for)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(url)
    requested = [module.InferRequestedOutput(n) for n in outputs]

    def send(texts: list[str]) -> np.ndarray:
        text = module.InferInput("TEXT", [len(texts), 1], "BYTES")
        text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
        stamp = module.InferInput("TIMESTAMP", [len(texts), 1], "INT64")
        stamp.set_data_from_numpy(np.full((len(texts), 1), T0, dtype=np.int64))
        return client.infer(model, [text, stamp], outputs=requested).as_numpy("FUSED")

    return send


def back_to_back(base: Send, other: Send, texts: list[str], seconds: float) -> dict:
    """What ``other`` adds to one request over ``base``: each text (batch 1, in turn) sent
    both ways back to back, which goes first alternating, for ``seconds``; both sides' p50
    and the pairwise differences (ms). Windows seconds apart would carry the machine's
    drift."""
    sides = {"base": base, "other": other}
    for send in sides.values():  # connections and any cache warm
        send(texts[:1])
    taken: dict[str, list[float]] = {"base": [], "other": []}
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        text = [texts[i % len(texts)]]
        for name in (("base", "other") if i % 2 == 0 else ("other", "base")):
            start = time.perf_counter()
            sides[name](text)
            taken[name].append((time.perf_counter() - start) * 1e3)
        i += 1
    added = np.subtract(taken["other"], taken["base"])
    q1, median, q3 = np.percentile(added, [25, 50, 75])
    return {"pairs": i, "base_p50_ms": float(np.median(taken["base"])),
            "other_p50_ms": float(np.median(taken["other"])),
            "added_median_ms": float(median), "added_q1_ms": float(q1),
            "added_q3_ms": float(q3), "added_ms": added.tolist()}


def taking_turns(first: tuple[str, Callable[[], Send]], second: tuple[str, Callable[[], Send]],
                 texts: list[str], seconds: float, rounds: int, dim: int, batch: int = 32,
                 clients: int = 8) -> dict:
    """Two sides' ``closed_loop`` windows taking turns, ``first`` then ``second``, each
    round; each side's median texts/s (``<name>_items_per_s``) and the median over the
    rounds of the second's window over the first's just before it (``ratio``): windows
    minutes apart would carry the machine's drift."""
    rows: dict[str, list[dict]] = {first[0]: [], second[0]: []}
    for r in range(rounds):
        for name, make in (first, second):
            row = closed_loop(make, texts, batch, clients, seconds, dim)
            rows[name].append(row)
            print(f"    round {r} {name:<6}: {row['items_per_s']:.1f} texts/s "
                  f"({row['errors']} errors)", flush=True)
    ratios = [b["items_per_s"] / a["items_per_s"]
              for a, b in zip(rows[first[0]], rows[second[0]])]
    return {f"{name}_items_per_s": float(np.median([r["items_per_s"] for r in side]))
            for name, side in rows.items()} | {
        "ratio": float(np.median(ratios)), "ratios": ratios,
        "errors": sum(r["errors"] for side in rows.values() for r in side)}


class WrongAnswer(ValueError):
    """An answer that is not ``batch`` finite vectors of ``dim``: counted as an error."""


def check_answer(vectors: np.ndarray, batch: int, dim: int) -> None:
    if vectors.shape != (batch, dim):
        raise WrongAnswer(f"answer of shape {vectors.shape}, expected {(batch, dim)}")
    if not np.all(np.isfinite(vectors)):
        raise WrongAnswer("answer with values that are not finite")


def closed_loop(make_send: Callable[[], Send], texts: list[str], batch: int, clients: int,
                seconds: float, dim: int) -> dict:
    """``clients`` threads, each with its own connection, sending ``batch`` texts at a time
    until ``seconds`` have passed; texts/s over the whole window and latency percentiles."""
    latencies: list[float] = []
    done = [0]
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(i: int) -> None:
        try:
            send = make_send()
            send(texts[:batch])  # connection and warm-up, not measured
        except Exception as err:  # noqa: BLE001 - reported below; the others go on
            errors.append(repr(err))
            start_gate.wait()
            return
        start_gate.wait()
        n = i * 97
        while time.perf_counter() < deadline[0]:
            chunk = [texts[(n + j) % len(texts)] for j in range(batch)]
            n += batch
            t = time.perf_counter()
            try:
                vectors = send(chunk)
                check_answer(vectors, batch, dim)
            except Exception as err:  # noqa: BLE001 - counted, reported
                errors.append(repr(err))
                continue
            with lock:
                latencies.append(time.perf_counter() - t)
                done[0] += batch

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = float("inf")  # until every client is warm and past the barrier
    start_gate.wait()
    begin = time.perf_counter()
    deadline[0] = begin + seconds
    for t in threads:
        t.join()
    wall = time.perf_counter() - begin
    if not latencies:
        raise SystemExit(f"no answer in {seconds} s at batch {batch}, concurrency {clients}: "
                         f"{errors[:3]}")
    lat = np.array(latencies) * 1000
    return {"batch": batch, "concurrency": clients, "items_per_s": done[0] / wall,
            "requests": len(latencies), "errors": len(errors),
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95))}


def served_pipeline(grpc_url: str, chunks: list[list[str]], concurrency: int,
                    model: str = "fused_text") -> dict:
    """Items/s of ``model`` on exactly the given batches: ``concurrency`` gRPC clients each
    sending every batch of ``chunks``."""
    from fusedembed_client import FusedEmbedClient

    with FusedEmbedClient(grpc_url, "grpc", model=model) as client:
        client.embed_batch(chunks[0], [T0] * len(chunks[0]))  # warm-up
    latencies: list[float] = []

    def worker() -> None:
        with FusedEmbedClient(grpc_url, "grpc", model=model) as client:
            for chunk in chunks:
                t = time.perf_counter()
                client.embed_batch(chunk, [T0] * len(chunk))
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    items = concurrency * sum(len(c) for c in chunks)
    print(f"  {model}, {len(chunks)} batches of {len(chunks[0])}, concurrency {concurrency}: "
          f"{items / wall:.1f} texts/s", flush=True)
    return {"batch": len(chunks[0]), "rounds": len(chunks), "concurrency": concurrency,
            "items_per_s": items / wall, "median_ms": float(np.median(latencies)) * 1000,
            "p95_ms": float(np.percentile(latencies, 95)) * 1000}


def update_summary(keys: dict) -> None:
    """Set ``keys`` in perf/results/summary.json, keeping what other benchmarks wrote."""
    path = RESULTS / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(keys)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")


# --- Triton's statistics --------------------------------------------------------------------

def model_stats(url: str) -> dict[str, dict[str, int]]:
    """Per model, counters of Triton's statistics API (HTTP)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics()["model_stats"]
    finally:
        client.close()
    out = {}
    for m in stats:
        s = m["inference_stats"]
        out[m["name"]] = {"requests": int(s["success"]["count"]),
                          "inferences": int(m["inference_count"]),
                          "executions": int(m["execution_count"]),
                          "queue_ns": int(s["queue"]["ns"]),
                          "compute_ns": int(s["compute_infer"]["ns"])
                          + int(s["compute_input"]["ns"]) + int(s["compute_output"]["ns"]),
                          "cache_hits": int(s["cache_hit"]["count"]),
                          "cache_hit_ns": int(s["cache_hit"]["ns"]),
                          "cache_misses": int(s["cache_miss"]["count"])}
    return out


def stats_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Per model between two readings: requests, queue and compute ms per request, mean
    batch size per execution, compute seconds in all."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {k: 0 for k in a})
        requests = a["requests"] - b["requests"]
        executions = a["executions"] - b["executions"]
        if requests <= 0:
            continue
        out[name] = {"requests": requests,
                     "queue_ms": (a["queue_ns"] - b["queue_ns"]) / requests / 1e6,
                     "compute_ms": (a["compute_ns"] - b["compute_ns"]) / requests / 1e6,
                     "compute_s": (a["compute_ns"] - b["compute_ns"]) / 1e9,
                     "batch": (a["inferences"] - b["inferences"]) / max(executions, 1)}
    return out


def server_version(http_url: str) -> str:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    try:
        return client.get_server_metadata()["version"]
    finally:
        client.close()


# --- memory ---------------------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def pss_mib(pid: int) -> float:
    """Proportional set size: resident MiB with each shared page split among the processes
    that map it (the stubs share memory regions with tritonserver, which RSS counts twice)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def server_memory(server, measure: Callable[[int], float] = rss_mib) -> dict[str, float]:
    """Resident MiB (or ``measure``) of tritonserver, of each Python stub (named by its
    model) and of each public front (``front:http``, ``front:grpc``)."""
    from ensemble.server import stub_processes

    memory = {}
    stubs = stub_processes(server.pid, every_instance=True)
    fronts = {f"front:{p}": process.pid for p, process in server.fronts.items()}
    for name, pid in ({"tritonserver": server.pid} | stubs | fronts).items():
        try:
            memory[name] = measure(pid)
        except OSError:
            continue
    return memory


# --- the machine ----------------------------------------------------------------------------

def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for dist in ("torch", "onnxruntime", "tokenizers", "transformers", "sentence-transformers",
                 "tritonclient", "nvidia-pytriton", "locust", *extra):
        out[dist] = version(dist)
    return out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_flags() -> list[str]:
    """The vector extensions of this CPU that the INT8 and FP32 kernels use."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
    return []


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} cores ({', '.join(cpu_flags())}), "
            f"{platform.system()} {platform.release()} ({platform.machine()}); no GPU")


# --- perf_analyzer ------------------------------------------------------------------------

# This 2-core machine also runs perf_analyzer and the OS: windows vary by 10-40 %.
STABILITY = 50  # max/min of the last 3 windows, per cent
MAX_TRIALS = 6


def perf_analyzer(grpc_url: str, http_url: str, data: Path, batch: int, concurrency: int,
                  interval_ms: int, model: str = "fused_text", run: Path = RUN / "bench") -> dict:
    """The real perf_analyzer (gRPC) at one point, with every model's queue and compute time
    from Triton's statistics read before and after."""
    import csv
    import subprocess

    from perf import tools

    run.mkdir(parents=True, exist_ok=True)
    csv_path = run / f"pa-{model}-b{batch}-c{concurrency}.csv"
    before = model_stats(http_url)
    cmd = [str(tools.perf_analyzer()), "-m", model, "-u", grpc_url, "-i", "grpc",
           "-b", str(batch), "--concurrency-range", f"{concurrency}:{concurrency}",
           "--input-data", str(data),
           # A batch of 32 takes about a second here: longer windows, so each holds enough.
           "--measurement-interval", str(interval_ms * (2 if batch > 1 else 1)),
           "--stability-percentage", str(STABILITY), "--max-trials", str(MAX_TRIALS),
           "-f", str(csv_path)]
    print(f"  perf_analyzer {model} batch {batch} concurrency {concurrency} ...", flush=True)
    done = subprocess.run(cmd, env=tools.environment(), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"perf_analyzer failed ({done.returncode}):\n{done.stdout[-2000:]}"
                         f"\n{done.stderr[-2000:]}")
    after = model_stats(http_url)
    with open(csv_path) as f:
        row = next(csv.DictReader(f))
    result = {"model": model, "batch": batch, "concurrency": concurrency,
              "items_per_s": float(row["Inferences/Second"]),
              "p50_ms": float(row["p50 latency"]) / 1000, "p90_ms": float(row["p90 latency"]) / 1000,
              "p95_ms": float(row["p95 latency"]) / 1000, "p99_ms": float(row["p99 latency"]) / 1000,
              "models": stats_delta(before, after), "command": " ".join(cmd[1:])}
    print(f"    {result['items_per_s']:.1f} items/s, p50 {result['p50_ms']:.0f} ms, "
          f"p99 {result['p99_ms']:.0f} ms", flush=True)
    return result
