"""Score served blocks and FUSED on the STS Benchmark (cosine Spearman), write a report.

    python -m perf.sts --split test [--blocks E11 FUSED] [--url 127.0.0.1:8001]

Without ``--url`` it starts the server on free loopback ports for the run. The report goes
to ``perf/reports/sts-<split>.md`` (and ``.json``), stating which weights each block
serves. Use the dev split while developing; the test split is for reports.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ensemble.server import free_ports
from export.stsb import DATA, Pairs, load_split  # noqa: F401 - re-exported
from perf import provenance

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "perf" / "reports"
ALL = [f"E{i}" for i in range(1, 13)] + ["FUSED"]
PUBLISHED = {"sentence-transformers/all-MiniLM-L6-v2": 0.8203, "intfloat/e5-large-v2": 0.8455}


def spearman_of_cosines(a: np.ndarray, b: np.ndarray, gold: np.ndarray) -> float | None:
    """Spearman of pair cosines against the gold scores; None when every cosine is equal
    (the temporal blocks: every text is sent with the same timestamp)."""
    from scipy.stats import spearmanr

    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    if np.ptp(cos) < 1e-6:
        return None
    return float(spearmanr(cos, gold).statistic)


@contextmanager
def served(url: str | None):
    """A gRPC address: the given one, or a server started for this run."""
    if url:
        yield url
        return
    from ensemble.server import Ports, TritonServer

    log = ROOT / ".run" / "sts-server.log"
    log.parent.mkdir(exist_ok=True)
    server = TritonServer(ports=Ports(*free_ports(3)), log_path=log)
    print(f"starting tritonserver (log: {log.relative_to(ROOT)}) ...", flush=True)
    server.start()
    try:
        yield server.grpc_url
    finally:
        server.stop()


def embed_all(url: str, texts: list[str], blocks: list[str]) -> dict[str, np.ndarray]:
    from fusedembed_client import FusedEmbedClient

    unique = sorted(set(texts))
    index = {t: i for i, t in enumerate(unique)}
    wanted = [b for b in blocks if b != "FUSED"]
    vectors: dict[str, list[np.ndarray]] = {b: [] for b in blocks}
    with FusedEmbedClient(url, "grpc") as client:
        for start in range(0, len(unique), 32):
            chunk = unique[start:start + 32]
            # A fixed timestamp: the temporal blocks must not make equal texts differ.
            for e in client.embed_batch(chunk, [0] * len(chunk), "passage", wanted):
                for b in blocks:
                    vectors[b].append(e.vector if b == "FUSED" else e.blocks[b])
            print(f"\r  embedded {min(start + 32, len(unique))}/{len(unique)} sentences",
                  end="", flush=True)
    print()
    return {b: np.stack(v)[[index[t] for t in texts]] for b, v in vectors.items()}


def model_weights(url: str) -> dict[str, str]:
    from fusedembed_client import FusedEmbedClient

    with FusedEmbedClient(url, "grpc") as client:
        weights = {}
        for m in client.models():
            if m.block or m.name == "fusemoe":
                weights[m.block or "FUSED"] = f"{m.weights} ({m.source})"
        return weights


def write_report(split: str, scores: dict[str, float | None], weights: dict[str, str], n: int,
                 seconds: float) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    lines = [f"# STS Benchmark ({split}): cosine Spearman of served vectors", "",
             (f"Pairs: {n}. Command: `python -m perf.sts --split {split}`. "
             f"Machine: {platform.machine()}, {platform.system()}, Python "
             f"{platform.python_version()}. Run time: {seconds:.0f} s."), "",
             "| output | weights | Spearman | published |", "|---|---|---|---|"]
    for name, score in scores.items():
        source = weights.get(name, "FuseMoE over all twelve blocks")
        published = next((f"{v:.4f}" for k, v in PUBLISHED.items()
                          if k in source and "pretrained" in source), "")
        shown = "undefined (constant)" if score is None else f"{score:.4f}"
        lines.append(f"| {name} | {source} | {shown} | {published} |")
    lines += ["", ("Tiny blocks have random weights: their scores only show how much a random "
              "encoder keeps of word overlap. E2-E4 encode the timestamp alone; every text is "
              "sent with the same timestamp, so their cosines are constant. FUSED is the "
              "FuseMoE checkpoint named in its row (perf/reports/fusion-quality-test.md "
              "compares it with the seeded initialisation).")]
    path = REPORTS / f"sts-{split}.md"
    provenance.write(path, "\n".join(lines) + "\n")
    (REPORTS / f"sts-{split}.json").write_text(json.dumps(
        {"split": split, "pairs": n, "spearman": scores, "weights": weights}, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--blocks", nargs="+", default=ALL, choices=ALL)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--url", help="gRPC host:port of a running server")
    args = parser.parse_args(argv)
    pairs = load_split(args.data, args.split)
    start = time.perf_counter()
    with served(args.url) as url:
        vectors = embed_all(url, pairs.first + pairs.second, args.blocks)
        weights = model_weights(url)
    n = len(pairs.gold)
    scores = {b: spearman_of_cosines(v[:n], v[n:], pairs.gold) for b, v in vectors.items()}
    path = write_report(args.split, scores, weights, n, time.perf_counter() - start)
    for b, score in scores.items():
        print(f"{b:>6}  {'undefined (constant)' if score is None else f'{score:.4f}'}")
    print(f"report: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
