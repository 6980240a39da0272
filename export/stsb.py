"""The STS Benchmark files (shared/data/stsbenchmark): one reader for every user.

The dev split is for development (training, calibration); the test split for reports only.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "stsbenchmark"


@dataclass(frozen=True)
class Pairs:
    first: list[str]
    second: list[str]
    gold: np.ndarray


def load_split(data: Path, split: str) -> Pairs:
    first, second, gold = [], [], []
    with open(data / f"sts-{split}.csv", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            gold.append(float(row[4]))
            first.append(row[5])
            second.append(row[6])
    return Pairs(first, second, np.array(gold))


def sentences(split: str = "dev", data: Path = DATA) -> list[str]:
    """The split's distinct sentences, sorted."""
    pairs = load_split(data, split)
    return sorted(set(pairs.first + pairs.second))
