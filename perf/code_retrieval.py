"""A second task beside STS-B: find a function's source from its docstring's summary.

    python -m perf.code_retrieval [--checkpoint DIR]

The pairs are the text <-> code pairs FuseMoE's corpus mines from the Python standard
library (ensemble/corpus.py) that training did *not* use: ``code_pairs`` shuffles every
pair with the training seed and training takes the first ``TrainConfig.code_pairs``; the
rest, less any whose summary or source a training pair holds and any whose source an
earlier one has, are held out here. Each summary is a query, every held-out source a document, one
relevant document per query. Scored with nDCG@10, MRR@10 and recall@10 for FUSED (each
Matryoshka size the checkpoint offers), every block alone, and reciprocal-rank fusion
(k = 60) of the blocks' rankings: of the pretrained blocks, and of every block. A tie with
the relevant document counts against it (a constant block scores 0). Blocks come from the
built repository through the in-process pipeline, as perf.fusion_quality computes them.
Writes perf/reports/code-retrieval.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ensemble import corpus, fusemoe, train
from export.registry import EMBEDDERS
from perf import provenance
from perf.fusion_quality import blocks_of, fused, pretrained_blocks, served_checkpoint
from perf.sts import REPORTS

RRF_K = 60
CUTOFF = 10


def held_out_pairs(cfg: train.TrainConfig) -> list[corpus.Pair]:
    """The code pairs training never saw (it takes the first ``cfg.code_pairs``): neither
    their summary nor their source is in a training pair, and no two share a source (some
    one-line functions are written alike), so each query has one relevant document."""
    trained = corpus.code_pairs(cfg.code_pairs, cfg.seed)
    seen = {p.first for p in trained} | {p.second for p in trained}
    held = []
    for p in corpus.code_pairs(10**9, cfg.seed):
        if p.first not in seen and p.second not in seen:
            held.append(p)
            seen.add(p.second)
    return held


def ranks(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """[Q, D] rank (1 = best) of every document for every query by cosine; a tie takes the
    worse rank (the rank of a score is how many scores of its row are at least as high)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    d = documents / np.maximum(np.linalg.norm(documents, axis=1, keepdims=True), 1e-12)
    sims = q @ d.T
    ascending = np.sort(sims, axis=1)
    return np.stack([len(row) - np.searchsorted(sorted_row, row, side="left")
                     for row, sorted_row in zip(sims, ascending, strict=True)])


def relevant_ranks(rank_matrix: np.ndarray) -> np.ndarray:
    """The entry of each query's relevant document: query i's is document i."""
    return rank_matrix[np.arange(len(rank_matrix)), np.arange(len(rank_matrix))]


def rrf_relevant_ranks(rank_matrices: list[np.ndarray]) -> np.ndarray:
    """Rank of each query's relevant document under reciprocal-rank fusion of rankings
    (ties against it)."""
    scores = sum(1.0 / (RRF_K + r) for r in rank_matrices)
    target = relevant_ranks(scores)
    return (scores >= target[:, None]).sum(axis=1)


def metrics(relevant: np.ndarray) -> dict[str, float]:
    hit = relevant <= CUTOFF
    return {"ndcg@10": float(np.mean(np.where(hit, 1.0 / np.log2(relevant + 1), 0.0))),
            "mrr@10": float(np.mean(np.where(hit, 1.0 / relevant, 0.0))),
            "recall@10": float(np.mean(hit))}


def main(argv: list[str] | None = None) -> int:
    from export.repository import REPOSITORY

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    args = parser.parse_args(argv)
    checkpoint = served_checkpoint(args.repository, args.checkpoint)
    start = time.perf_counter()
    pairs = held_out_pairs(train.TrainConfig())
    x = blocks_of(args.repository, [p.first for p in pairs] + [p.second for p in pairs])
    n = len(pairs)
    model, manifest = fusemoe.load(checkpoint)
    full = fused(model, x)

    rows: dict[str, dict[str, float]] = {}
    for d in fusemoe.Outputs.of(manifest).dimensions:
        rows[f"FUSED {d}"] = metrics(relevant_ranks(ranks(full[:n, :d], full[n:, :d])))
    block_ranks: dict[str, np.ndarray] = {}
    offset = 0
    for e in EMBEDDERS:
        block = x[:, offset:offset + e.dim]
        offset += e.dim
        block_ranks[e.id] = ranks(block[:n], block[n:])
        rows[e.id] = metrics(relevant_ranks(block_ranks[e.id]))
    pretrained = pretrained_blocks(args.repository)
    rows[f"RRF of the pretrained blocks ({', '.join(pretrained)})"] = metrics(
        rrf_relevant_ranks([block_ranks[b] for b in pretrained]))
    rows["RRF of every block"] = metrics(rrf_relevant_ranks(list(block_ranks.values())))
    seconds = time.perf_counter() - start

    best_block = max(pretrained, key=lambda b: rows[b]["ndcg@10"])
    fused_full = rows[f"FUSED {fusemoe.Outputs.of(manifest).dimensions[0]}"]["ndcg@10"]
    lines = [
        "# Second task: code search from a docstring's summary", "",
        (f"Command: `python -m perf.code_retrieval`. {n} queries (held-out docstring "
         "summaries from the Python standard library) against their "
         f"{n} function sources, one relevant each; FuseMoE {manifest.version}; "
         f"{seconds:.0f} s. Pairs and scoring: [perf/code_retrieval.py](../code_retrieval.py)."),
        "",
        "| ranking | weights | nDCG@10 | MRR@10 | recall@10 |", "|---|---|---:|---:|---:|"]
    for name, m in rows.items():
        weights = ("pretrained: " + pretrained[name] if name in pretrained
                   else "FuseMoE" if name.startswith("FUSED") else
                   "fusion of rankings" if name.startswith("RRF") else "tiny or custom")
        lines.append(f"| {name} | {weights} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | "
                     f"{m['recall@10']:.4f} |")
    lines += ["", (f"Best pretrained block: {best_block} {rows[best_block]['ndcg@10']:.4f}; "
                   f"FUSED {fused_full:.4f} "
                   f"({fused_full - rows[best_block]['ndcg@10']:+.4f}).")]
    REPORTS.mkdir(parents=True, exist_ok=True)
    provenance.write(REPORTS / "code-retrieval.md", "\n".join(lines) + "\n", args.repository,
                     checkpoint)
    (REPORTS / "code-retrieval.json").write_text(json.dumps(
        {"queries": n, "checkpoint": manifest.version, "rows": rows,
         "pretrained": pretrained, "seconds": round(seconds, 1)}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
