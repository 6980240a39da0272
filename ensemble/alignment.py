"""Semantic alignment check: equivalent texts close in FUSED, unrelated ones apart.

    python -m ensemble.alignment [--checkpoint DIR|seeded|served]

The suite (``ensemble/data/alignment_pairs.json``, hand-written) holds paraphrases and
text <-> code equivalents as positives, unrelated sentences and mismatched text/code as
negatives. A pair is correctly separated when its FUSED cosine is at least ``THRESHOLD``
(positive) or below it (negative). The threshold is fixed, not fitted to a checkpoint: the
training teacher scores unrelated texts near 0 (centred blocks) and equivalent ones well
above, so 0.5 sits between them. A checkpoint passes with at least ``PASS_SHARE`` of the
pairs separated. Every text is embedded with the same timestamp, as the STS report does.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ensemble import fusemoe

PAIRS_FILE = Path(__file__).resolve().parent / "data" / "alignment_pairs.json"
THRESHOLD = 0.5
PASS_SHARE = 0.9
TIMESTAMP = 1_700_000_000


@dataclass(frozen=True)
class AlignmentPair:
    kind: str  # paraphrase | code | unrelated | code-mismatch | text-code
    first: str
    second: str
    positive: bool


@dataclass(frozen=True)
class AlignmentResult:
    pairs: list[AlignmentPair]
    cosines: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        positive = np.array([p.positive for p in self.pairs])
        return np.where(positive, self.cosines >= THRESHOLD, self.cosines < THRESHOLD)

    @property
    def share(self) -> float:
        return float(self.correct.mean())

    @property
    def passed(self) -> bool:
        return self.share >= PASS_SHARE


def load_pairs(path: Path = PAIRS_FILE) -> list[AlignmentPair]:
    data = json.loads(path.read_text())
    return [AlignmentPair(kind, a, b, label == "positive")
            for label in ("positive", "negative") for kind, a, b in data[label]]


def suite_blocks(pipeline, pairs: list[AlignmentPair]) -> tuple[list[str], torch.Tensor]:
    """The unique texts of the suite and their [N, 8320] blocks."""
    texts = sorted({t for p in pairs for t in (p.first, p.second)})
    return texts, torch.from_numpy(pipeline.block_matrix(texts, np.full(len(texts), TIMESTAMP)))


def score(model: fusemoe.FuseMoE, texts: list[str], x: torch.Tensor,
          pairs: list[AlignmentPair], dimensions: int | None = None) -> AlignmentResult:
    """The suite on FUSED, or on its Matryoshka prefix of ``dimensions`` (normalised)."""
    from ensemble.encodings import prefix

    with torch.inference_mode():
        fused = model(x).fused.numpy()
    if dimensions is not None:
        fused = prefix(fused, dimensions)
    index = {t: i for i, t in enumerate(texts)}
    cos = np.array([float(fused[index[p.first]] @ fused[index[p.second]]) for p in pairs])
    return AlignmentResult(pairs, cos)


def main(argv: list[str] | None = None) -> int:
    from ensemble.pipeline import Pipeline
    from export.repository import REPOSITORY

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="served",
                        help="a checkpoint folder, 'seeded', or 'served' (the built version 1)")
    args = parser.parse_args(argv)
    pipeline = Pipeline(REPOSITORY)
    if args.checkpoint == "seeded":
        model, version = fusemoe.seeded(), fusemoe.SEEDED_VERSION
    elif args.checkpoint == "served":
        model, version = pipeline.fusemoe, pipeline.manifest.version
    else:
        model, manifest = fusemoe.load(Path(args.checkpoint))
        version = manifest.version
    pairs = load_pairs()
    texts, x = suite_blocks(pipeline, pairs)
    result = score(model, texts, x, pairs)
    for p, c, ok in zip(pairs, result.cosines, result.correct):
        print(f"{'ok ' if ok else 'BAD'} {c:+.3f} {'+' if p.positive else '-'} {p.kind:<13} "
              f"{p.first[:40]!r} | {p.second[:40]!r}")
    print(f"{version}: {result.correct.sum()}/{len(pairs)} pairs separated at {THRESHOLD} "
          f"({result.share:.0%}; pass needs {PASS_SHARE:.0%}): "
          f"{'PASS' if result.passed else 'FAIL'}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
