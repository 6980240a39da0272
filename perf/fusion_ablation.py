"""What each change to FuseMoE's training bought, measured side by side in one run.

    python -m perf.fusion_ablation

Trains FuseMoE once per row of ``CHANGES`` (each adds one change to the row above; the
last is ``TrainConfig()``, what `make train` runs) on the same cached blocks, then scores
every model the same way: STS-B dev and test Spearman of FUSED (cosine, in process, one
timestamp for every sentence as perf.sts sends) at 1536 and 256 dimensions, the held-out
training figures, and the smallest expert's share of the routing mass. Writes
perf/reports/fusion-ablation.md and .json. The test split is only scored, never trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ensemble import encodings, train
from export.build import embedder_fingerprints
from perf import image_views, provenance
from perf.fusion_quality import blocks_of, fused, pretrained_blocks
from perf.sts import DATA, REPORTS, ROOT, load_split

CACHE = ROOT / ".run" / "fusion-ablation"
BEFORE = replace(train.TrainConfig(), dimensions=(1536,), teacher_power=2.0,
                 principal_start=False, balanced_start=False, rebalance=False,
                 contrastive_weight=0.1, mean_fill=False, partial_teacher=False,
                 weight_floor=0.0, image_map=False,
                 freeze_below=0.0, image_start=0.0,
                 image_rows=0, teacher_spread="random")
# Each change is added to every change above it.
CHANGES = [
    ("before: issue 15's training", {}),
    ("+ Matryoshka prefixes", {"dimensions": train.TrainConfig().dimensions}),
    ("+ balanced gate start", {"balanced_start": True}),
    ("+ gate re-balanced during training", {"rebalance": True}),
    ("+ principal-component start", {"principal_start": True}),
    ("+ teacher d'^4", {"teacher_power": train.TrainConfig().teacher_power}),
    ("+ contrastive weight 0.01", {"contrastive_weight": train.TrainConfig().contrastive_weight}),
    ("+ missing blocks filled with their mean", {"mean_fill": True}),
    ("+ masked views taught by their own blocks", {"partial_teacher": True}),
    (f"+ block weight floor {train.TrainConfig().weight_floor:g}",
     {"weight_floor": train.TrainConfig().weight_floor}),
    ("+ E10 of images mapped onto the texts'", {"image_map": True}),
    ("+ unweighted blocks frozen out", {"freeze_below": train.TrainConfig().freeze_below}),
    ("+ principal start spans image views", {"image_start": train.TrainConfig().image_start}),
    ("+ image views' own similarity loss", {"image_rows": train.TrainConfig().image_rows}),
    ("+ teacher d' over the spread of both pair kinds (all: make train)",
     {"teacher_spread": train.TrainConfig().teacher_spread}),
]


def variants() -> list[tuple[str, train.TrainConfig]]:
    """Each row of CHANGES applied to BEFORE with every row above it; the last is what
    `make train` runs."""
    cfg, rows = BEFORE, []
    for name, change in CHANGES:
        cfg = replace(cfg, **change)
        rows.append((name, cfg))
    assert cfg == train.TrainConfig(), "the last variant must be make train's settings"
    return rows


def split_blocks(repository: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                        np.ndarray]:
    """Blocks of a split's sentences (cached by the build) and its pairs' rows and gold."""
    pairs = load_split(DATA, split)
    unique = sorted(set(pairs.first + pairs.second))
    key = hashlib.sha256(json.dumps([unique, embedder_fingerprints(repository)]).encode())
    path = CACHE / f"blocks-{split}-{key.hexdigest()[:16]}.npy"
    if path.is_file():
        x = np.load(path)
    else:
        x = blocks_of(repository, unique)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, x)
    index = {t: i for i, t in enumerate(unique)}
    return (x, np.array([index[t] for t in pairs.first]),
            np.array([index[t] for t in pairs.second]), np.asarray(pairs.gold))


def sts(model, blocks, d: int) -> float:
    from scipy.stats import spearmanr

    x, first, second, gold = blocks
    v = encodings.prefix(fused(model, x), d)
    return float(spearmanr((v[first] * v[second]).sum(-1), gold).statistic)


def block_scores(splits: dict, blocks: dict[str, str]) -> dict[str, dict[str, float]]:
    """STS-B Spearman of each of ``blocks`` alone (its cosines) on every split."""
    from scipy.stats import spearmanr

    offsets = np.cumsum([0] + [e.dim for e in train.EMBEDDERS])
    ids = [e.id for e in train.EMBEDDERS]
    out = {}
    for block in blocks:
        j = ids.index(block)
        out[block] = {}
        for split, (x, first, second, gold) in splits.items():
            b = encodings.prefix(x[:, offsets[j]:offsets[j + 1]], int(offsets[j + 1] - offsets[j]))
            out[block][split] = float(spearmanr((b[first] * b[second]).sum(-1), gold).statistic)
    return out


def blocks_alone(scores: dict[str, dict[str, float]]) -> str:
    return "; ".join(f"{b} dev {s['dev']:.4f}, test {s['test']:.4f}" for b, s in scores.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=train.REPOSITORY)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    splits = {s: split_blocks(args.repository, s) for s in ("dev", "test")}
    images, _, _ = image_views.image_blocks(args.repository)
    data = train.training_data(train.TrainConfig())
    x, _, _ = train.features(data, args.repository)
    calibration = train.image_blocks(args.repository)
    rows = []
    for name, cfg in variants():
        print(f"== {name}", flush=True)
        model, _, metrics, _ = train.train(cfg, x, data, log=lambda *_: None,
                                           image_e10=calibration)
        row = {"variant": name, "config": asdict(cfg),
               "teacher_correlation": metrics["held_out_teacher_correlation"],
               "positive_over_random": metrics["held_out_positive_over_random"],
               "min_expert_mass": min(metrics["expert_mass"]),
               "expert_mass": metrics["expert_mass"],
               "train_seconds": metrics["train_seconds"]}
        for split, blocks in splits.items():
            for d in (1536, 256):
                row[f"{split}_{d}"] = sts(model, blocks, d)
        scored = image_views.score_images(model, images)
        row["image_spearman"] = scored["spearman_filled_vs_fused"]
        row["image_auc"] = scored["FUSED"]["auc"]
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
        rows.append(row)
        del model
    alone = block_scores(splits, pretrained_blocks(args.repository))
    lines = ["# What each change to FuseMoE's training bought", "",
             (f"Command: `python -m perf.fusion_ablation` ({(time.perf_counter() - start) / 60:.0f} "
              "min). Each row adds one change to the row above and trains from the same cached "
              "blocks with the same seed; every model is scored the same way. STS-B: Spearman "
              "of FUSED cosines (in process, one timestamp for every sentence) at 1536 and at "
              "256 dimensions (the prefix, normalised). Held-out: the training's held-out "
              "pairs (teacher correlation; positive closer than a random partner). Smallest "
              "expert: the least-used expert's share of the routing mass on held-out texts "
              f"(goal >= 0.05). Each pretrained block alone: {blocks_alone(alone)}. "
              "Images (perf.image_views' set, as fused_image fuses them): Spearman between "
              "the pairwise cosines of their filled blocks and of FUSED, and the AUC of an "
              "image's variants against other images (perf/reports/image-views.md)."), "",
             ("| variant | STS-B test 1536 | test 256 | dev 1536 | dev 256 | held-out teacher "
              "corr | held-out pos>random | smallest expert | images: Spearman | images: AUC |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['test_1536']:.4f} | {r['test_256']:.4f} | "
                     f"{r['dev_1536']:.4f} | {r['dev_256']:.4f} | {r['teacher_correlation']:.3f} | "
                     f"{r['positive_over_random']:.3f} | {r['min_expert_mass']:.3f} | "
                     f"{r['image_spearman']:.3f} | {r['image_auc']:.3f} |")
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / "fusion-ablation.md"
    provenance.write(path, "\n".join(lines) + "\n")
    (REPORTS / "fusion-ablation.json").write_text(json.dumps(
        {"rows": rows, "blocks_alone": alone}, indent=1) + "\n")
    print("\n".join(lines))
    print(f"report: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
