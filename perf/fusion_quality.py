"""Fusion quality: STS-B Spearman of FUSED, trained vs seeded init vs the best pretrained block.

    python -m perf.fusion_quality --split test [--checkpoint DIR]

Blocks come from the built repository through the in-process pipeline (the stages the
server runs; tests/server checks they agree), every sentence with the same timestamp as
``perf.sts`` sends. FUSED is computed from the same blocks with each FuseMoE checkpoint.
Writes perf/reports/fusion-quality-<split>.md and .json. The test split is for reports.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ensemble import alignment, encodings, fusemoe
from export.registry import EMBEDDERS
from perf import provenance
from perf.sts import DATA, REPORTS, ROOT, load_split, spearman_of_cosines

GOAL = 0.0  # the trained FUSED must be at least as good as the best pretrained block


def blocks_of(repository: Path, texts: list[str], batch: int = 32) -> np.ndarray:
    from ensemble.pipeline import Pipeline

    return Pipeline(repository).block_matrix(texts, np.zeros(len(texts), dtype=np.int64), batch)


def fused(model: fusemoe.FuseMoE, x: np.ndarray, batch: int = 256) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).fused.numpy()
                               for i in range(0, len(x), batch)])


def size_scores(full: np.ndarray, first: np.ndarray, second: np.ndarray, gold: np.ndarray,
                offered: fusemoe.Outputs) -> dict[tuple[int, str], tuple[int, float]]:
    """(dimensions, encoding) -> (bytes per vector, Spearman of the encoding's own
    similarity against ``gold``) at every size ``offered``."""
    from scipy.stats import spearmanr

    out = {}
    for d in offered.dimensions:
        for name, (c, similarity) in encodings.encoded(
                full, d, offered.int8_scale.get(d)).items():
            score = spearmanr(similarity(c[first], c[second]), gold).statistic
            out[(d, name)] = (int(c.shape[1] * c.dtype.itemsize), float(score))
    return out


def alignment_by_size(repository: Path, model: fusemoe.FuseMoE,
                      offered: fusemoe.Outputs) -> dict[int, float]:
    """The alignment suite's share of separated pairs at every size ``offered``."""
    from ensemble.pipeline import Pipeline

    pairs = alignment.load_pairs()
    texts, x = alignment.suite_blocks(Pipeline(repository), pairs)
    return {d: alignment.score(model, texts, x, pairs, d).share for d in offered.dimensions}


def pretrained_blocks(repository: Path) -> dict[str, str]:
    out = {}
    for e in EMBEDDERS:
        info = json.loads((repository / e.triton_model / "1" / "build.json").read_text())
        if info.get("pretrained"):
            out[e.id] = info["source"]
    return out


def served_checkpoint(repository: Path, given: Path | None) -> Path:
    """``given``, else the FuseMoE folder the repository serves (a trained one)."""
    from export.registry import FUSEMOE_MODEL

    checkpoint = given or repository / FUSEMOE_MODEL / "1"
    _, manifest = fusemoe.load(checkpoint)
    if not manifest.extra.get("trained"):
        raise SystemExit(f"{checkpoint} holds no trained FuseMoE: run `make train`")
    return checkpoint


def main(argv: list[str] | None = None) -> int:
    from export.repository import REPOSITORY

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--checkpoint", type=Path,
                        help="trained checkpoint (default: the newest made for these blocks)")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    args = parser.parse_args(argv)
    checkpoint = served_checkpoint(args.repository, args.checkpoint)
    start = time.perf_counter()
    pairs = load_split(DATA, args.split)
    unique = sorted(set(pairs.first + pairs.second))
    index = {t: i for i, t in enumerate(unique)}
    x = blocks_of(args.repository, unique)
    first = np.array([index[t] for t in pairs.first])
    second = np.array([index[t] for t in pairs.second])

    trained, manifest = fusemoe.load(checkpoint)
    full = fused(trained, x)
    scores: dict[str, float | None] = {
        f"FUSED trained ({manifest.version})": spearman_of_cosines(
            full[first], full[second], pairs.gold)}
    sizes = size_scores(full, first, second, pairs.gold, fusemoe.Outputs.of(manifest))
    aligned = alignment_by_size(args.repository, trained, fusemoe.Outputs.of(manifest))
    del trained
    seeded = fused(fusemoe.seeded(), x)
    scores[f"FUSED seeded init ({fusemoe.SEEDED_VERSION})"] = spearman_of_cosines(
        seeded[first], seeded[second], pairs.gold)
    offsets = np.cumsum([0] + [e.dim for e in EMBEDDERS])
    pretrained = pretrained_blocks(args.repository)
    block_scores = {}
    for j, e in enumerate(EMBEDDERS):
        b = x[:, offsets[j]:offsets[j + 1]]
        block_scores[e.id] = spearman_of_cosines(b[first], b[second], pairs.gold)
    best_id = max(pretrained, key=lambda b: block_scores[b] or -1.0) if pretrained else None
    trained_score = next(iter(scores.values()))
    best = block_scores[best_id] if best_id else None
    verdict = (None if best is None or trained_score is None
               else trained_score >= best - GOAL)

    REPORTS.mkdir(parents=True, exist_ok=True)
    lines = [f"# Fusion quality on STS-B {args.split}: cosine Spearman", "",
             (f"Command: `python -m perf.fusion_quality --split {args.split}`. {len(pairs.gold)} "
              f"pairs, {len(unique)} sentences, {time.perf_counter() - start:.0f} s. Blocks from "
              "the built repository (in-process pipeline, the stages the server runs), one "
              "timestamp for every sentence."), "",
             "| output | Spearman |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in scores.items()]
    for e in EMBEDDERS:
        s = block_scores[e.id]
        kind = f"pretrained: {pretrained[e.id]}" if e.id in pretrained else "tiny or custom"
        lines.append(f"| {e.id} ({kind}) | {'constant' if s is None else f'{s:.4f}'} |")
    lines += ["", "## FUSED at every size and encoding", "",
              ("Each Matryoshka prefix the checkpoint offers (DIMENSIONS), normalised, in each "
               "encoding (ENCODING), scored with the encoding's own similarity: cosine "
               "(float), dot products of the int8 codes weighted by the scale squared (int8), "
               "d - 2 x Hamming distance of the sign bits (binary)."), "",
              "| dimensions | encoding | bytes per vector | Spearman |", "|---|---|---|---|"]
    lines += [f"| {d} | {e} | {b} | {v:.4f} |" for (d, e), (b, v) in sizes.items()]
    lines += ["", (f"Alignment suite (`python -m ensemble.alignment`: pairs separated at cosine "
                   f"{alignment.THRESHOLD}; a pass needs {alignment.PASS_SHARE:.0%}) at every size: "
                   + ", ".join(f"{d}: {share:.0%}" for d, share in aligned.items()) + ".")]
    if best_id:
        lines += ["", (f"Best pretrained block: {best_id} {best:.4f}. Goal: trained FUSED at "
                       f"least as good: {'met' if verdict else 'NOT met'} "
                       f"({trained_score - best:+.4f}).")]
    path = REPORTS / f"fusion-quality-{args.split}.md"
    provenance.write(path, "\n".join(lines) + "\n", args.repository, checkpoint)
    (REPORTS / f"fusion-quality-{args.split}.json").write_text(json.dumps(
        {"split": args.split, "pairs": len(pairs.gold), "fused": scores, "blocks": block_scores,
         "best_pretrained_block": best_id, "goal_met": verdict,
         "sizes": [{"dimensions": d, "encoding": e, "bytes": b, "spearman": v}
                   for (d, e), (b, v) in sizes.items()],
         "alignment_by_size": {str(d): v for d, v in aligned.items()},
         "checkpoint": manifest.version}, indent=2) + "\n")
    print("\n".join(lines))
    print(f"report: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
