"""Offline training data for FuseMoE: texts and positive pairs, never the STS-B test split.

- Sentences: the STS Benchmark train split (dev is kept for every choice of setting; the
  test split is refused here so it can only ever be used for reports).
- Paraphrases: train pairs whose gold score is at least ``PARAPHRASE_SCORE`` (the only use
  of a label; the scores themselves never enter a loss).
- Text <-> code: docstring summary <-> function source without its docstring, mined with
  ``ast`` from the Python standard library of the machine that trains.
- Augmented views: a sentence with words dropped and one neighbour pair swapped.
"""

from __future__ import annotations

import ast
import csv
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from export.stsb import DATA

STS_DATA = DATA
PARAPHRASE_SCORE = 4.0
MAX_CODE_CHARS = 600  # longer functions are skipped: they only cost block time
MIN_SUMMARY_WORDS = 4


@dataclass(frozen=True)
class Pair:
    first: str
    second: str
    source: str  # "paraphrase" | "code" | "augmented"


def sts_rows(split: str, data: Path = STS_DATA) -> list[tuple[float, str, str]]:
    if split == "test":
        raise ValueError("the STS-B test split is for reports only, never for training")
    with open(data / f"sts-{split}.csv", encoding="utf-8") as f:
        return [(float(row[4]), row[5], row[6])
                for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def sentences(split: str = "train", data: Path = STS_DATA) -> list[str]:
    return sorted({s for _, a, b in sts_rows(split, data) for s in (a, b)})


def paraphrases(split: str = "train", data: Path = STS_DATA) -> list[Pair]:
    return [Pair(a, b, "paraphrase") for score, a, b in sts_rows(split, data)
            if score >= PARAPHRASE_SCORE and a != b]


def _summary(doc: str) -> str | None:
    first = doc.strip().split("\n\n")[0]
    text = " ".join(first.split())
    if len(text.split()) < MIN_SUMMARY_WORDS or text.startswith((">>>", ":", "@")):
        return None
    return text


def _without_docstring(fn: ast.FunctionDef | ast.AsyncFunctionDef, source: str) -> str | None:
    body = fn.body[1:]
    if not body:
        return None
    lines = source.splitlines()
    header = lines[fn.lineno - 1:fn.body[0].lineno - 1]
    # A header whose signature continues on the docstring's line cannot be cut cleanly.
    if not header or not header[-1].rstrip().endswith(":"):
        return None
    rest = lines[body[0].lineno - 1:(fn.end_lineno or body[-1].lineno)]
    code = "\n".join(header + rest)
    indent = min(len(line) - len(line.lstrip()) for line in header if line.strip())
    return "\n".join(line[indent:] for line in code.splitlines()).strip()


def code_pairs(limit: int, seed: int, root: Path | None = None) -> list[Pair]:
    """Docstring summary <-> source pairs from the standard library, a seeded sample."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, Pair] = {}
    for path in sorted(root.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node)
            summary = _summary(doc) if doc else None
            code = _without_docstring(node, source) if summary else None
            if summary and code and len(code) <= MAX_CODE_CHARS and summary not in found:
                found[summary] = Pair(summary, code, "code")
    pairs = [found[k] for k in sorted(found)]
    random.Random(seed).shuffle(pairs)
    return pairs[:limit]


def augmented(text: str, rng: random.Random, drop: float = 0.15) -> str:
    """A view of ``text``: words dropped with probability ``drop``, one neighbour swap."""
    words = text.split()
    kept = [w for w in words if rng.random() >= drop] or words[:1]
    if len(kept) > 2:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return " ".join(kept)


def augmented_pairs(texts: list[str], count: int, seed: int) -> list[Pair]:
    rng = random.Random(seed)
    chosen = rng.sample(texts, min(count, len(texts)))
    return [Pair(t, augmented(t, rng), "augmented") for t in chosen]
