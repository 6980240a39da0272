"""Does fused_image tell images apart? E10 (the image tower) against FUSED on real images.

    python -m perf.image_views [--repository model_repository]

Images: scikit-image's bundled sample photographs, each cut into 2 x 2 tiles, and its LFW
subset (100 faces and 100 non-faces, 25 x 25 greyscale): a few hundred different images
(their files' sha256 in the report). Each image has four variants of known relation: resized
to 60 %, its centre cropped to 80 % of its sides, re-encoded as JPEG at quality 50, and
recoloured (saturation 0.7, brightness 1.1).

Every image goes through what fused_image runs, in process (``Pipeline.embed_images``;
tests/server/test_images.py checks the server answers the same), all at one timestamp, so
the blocks an image fills (E2, E3, E4, E10) differ only by E10. Measured for E10 and FUSED:

- Spearman between the pairwise cosines of the originals' filled blocks and of FUSED (goal
  >= 0.9): the fused vectors differ as much as their filled blocks do;
- variant AUC: for each image and each of its variants, the share of other images that are
  farther from it than the variant (ties half; goal >= 0.95), over all and per variant;
- mean cosine of an image to its variants and to other images.

The fail-safe: STS-B dev sentences with two blocks missing (E8 and E11, the strongest),
FUSED against the filled blocks' weighted cosines, and its STS-B dev Spearman. Writes
perf/reports/image-views.md and .json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perf import provenance

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "perf" / "reports"
T0 = 1_700_000_000
GOAL_SPEARMAN = 0.9
GOAL_AUC = 0.95
# Near-duplicates of another sample, left out: the other half of a stereo pair, and the RGB
# copy of the grey chessboard.
DUPLICATES = ("motorcycle_right.png", "chessboard_RGB.png")
VARIANTS = ("resized", "cropped", "jpeg", "recoloured")


@dataclass(frozen=True)
class Sample:
    name: str
    image: object  # PIL.Image.Image


def sample_images() -> tuple[list[Sample], dict[str, str]]:
    """The originals and the sha256 of every file they come from."""
    import skimage
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"
    files = sorted(p for p in folder.iterdir()
                   if p.suffix in (".png", ".jpg") and p.name not in DUPLICATES)
    out, sums = [], {}
    for path in files:
        sums[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        with Image.open(path) as im:
            image = im.convert("RGB")
        w, h = image.size
        for r in range(2):
            for c in range(2):
                box = (c * w // 2, r * h // 2, (c + 1) * w // 2, (r + 1) * h // 2)
                out.append(Sample(f"{path.stem}[{r},{c}]", image.crop(box)))
    faces = folder / "lfw_subset.npy"
    sums[faces.name] = hashlib.sha256(faces.read_bytes()).hexdigest()
    for i, a in enumerate(np.load(faces)):
        out.append(Sample(f"lfw[{i}]", Image.fromarray((a * 255).round().astype(np.uint8))
                          .convert("RGB")))
    return out, sums


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def variants(image) -> dict[str, bytes]:
    """The four variants of one image, encoded."""
    from PIL import Image, ImageEnhance

    w, h = image.size
    small = image.resize((max(1, round(w * 0.6)), max(1, round(h * 0.6))), Image.LANCZOS)
    dw, dh = round(w * 0.1), round(h * 0.1)
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=50)
    recoloured = ImageEnhance.Brightness(ImageEnhance.Color(image).enhance(0.7)).enhance(1.1)
    return {"resized": png(small), "cropped": png(image.crop((dw, dh, w - dw, h - dh))),
            "jpeg": jpeg.getvalue(), "recoloured": png(recoloured)}


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def pairwise_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman between the pairwise cosines (upper triangle) of rows of ``a`` and ``b``."""
    from scipy.stats import spearmanr

    iu = np.triu_indices(len(a), k=1)
    ca, cb = unit(a) @ unit(a).T, unit(b) @ unit(b).T
    return float(spearmanr(ca[iu], cb[iu]).statistic)


def variant_auc(originals: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """Per image: the share of other originals farther from it than its variant (ties
    half). ``variant[i]`` is a variant of ``originals[i]``."""
    o, v = unit(originals), unit(variant)
    own = (o * v).sum(-1)
    others = o @ o.T
    n = len(o)
    mask = ~np.eye(n, dtype=bool)
    above = (own[:, None] > others).astype(float) + 0.5 * (own[:, None] == others)
    return (above * mask).sum(1) / (n - 1)


def measure(vectors: dict[str, np.ndarray]) -> dict:
    """``vectors``: 'original' and each variant -> [N, d]. AUC over all and per variant,
    mean cosine to variants and to other images."""
    o = unit(vectors["original"])
    n = len(o)
    per = {name: variant_auc(vectors["original"], vectors[name]) for name in VARIANTS}
    off = (o @ o.T)[~np.eye(n, dtype=bool)]
    return {"auc": float(np.mean(np.concatenate(list(per.values())))),
            "auc_by_variant": {k: float(v.mean()) for k, v in per.items()},
            "cosine_to_variants": float(np.mean([(o * unit(vectors[k])).sum(-1).mean()
                                                 for k in VARIANTS])),
            "cosine_to_others": float(off.mean()),
            "cosine_to_others_max": float(off.max())}


def image_blocks(repository: Path) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    """FuseMoE's input [N, 8320] for the originals and each variant as fused_image builds it
    (the text blocks zero), the image files' sha256, and the served checkpoint's version."""
    from ensemble.pipeline import Pipeline, concat_blocks

    samples, sums = sample_images()
    pipe = Pipeline(repository)
    encoded = {"original": [png(s.image) for s in samples]}
    made = [variants(s.image) for s in samples]
    for name in VARIANTS:
        encoded[name] = [m[name] for m in made]
    out = {}
    for name, images in encoded.items():
        out[name] = np.concatenate([
            concat_blocks(pipe.embed_images(images[i:i + 32],
                                            np.full(len(images[i:i + 32]), T0)).blocks)
            for i in range(0, len(images), 32)])
    return out, sums, pipe.manifest.version


def fuse_images(model, x: np.ndarray) -> np.ndarray:
    """FUSED of image inputs: only IMAGE_BLOCKS present and E10 the image tower's, as
    fused_image fuses."""
    import torch

    from ensemble import fusemoe
    from ensemble.validation import Validator
    from export.registry import EMBEDDERS, IMAGE_BLOCKS

    presence = np.tile([e.id in IMAGE_BLOCKS for e in EMBEDDERS], (len(x), 1))
    gate = Validator().controls(len(x), presence=presence, from_image=np.ones(len(x), dtype=bool))
    return fusemoe.fuse(model, torch.from_numpy(x), gate).fused.numpy()


def score_images(model, blocks: dict[str, np.ndarray]) -> dict:
    """E10 and FUSED of ``model`` on the image set: the Spearman of pairwise cosines and the
    variant measures."""
    from export.registry import EMBEDDERS

    offsets = np.cumsum([0] + [e.dim for e in EMBEDDERS])
    j = [e.id for e in EMBEDDERS].index("E10")
    e10 = {k: v[:, offsets[j]:offsets[j + 1]] for k, v in blocks.items()}
    fused = {k: fuse_images(model, v) for k, v in blocks.items()}
    return {"spearman_filled_vs_fused": pairwise_spearman(e10["original"], fused["original"]),
            "E10": measure(e10), "FUSED": measure(fused)}


def image_views(repository: Path) -> dict:
    from ensemble.pipeline import Pipeline

    blocks, sums, version = image_blocks(repository)
    result = score_images(Pipeline(repository).fusemoe, blocks)
    return {"images": len(blocks["original"]), "files": sums, "checkpoint": version} | result


def failsafe(model, weights: dict[str, float], dev, missing: tuple[str, ...] = ("E8", "E11"),
             ) -> dict:
    """STS-B dev sentences with ``missing`` blocks absent: Spearman between the pairwise
    cosines of the filled blocks (each centred by the checkpoint's fill, normalised,
    weighted by ``weights``, the checkpoint's teacher weights) and of FUSED, and STS-B dev
    Spearman of FUSED with and without the blocks. ``dev``: perf.fusion_ablation's
    split_blocks of dev."""
    import torch

    from ensemble import fusemoe
    from ensemble.train import teacher_vectors
    from ensemble.validation import Validator
    from export.registry import EMBEDDERS
    from perf.sts import spearman_of_cosines

    x, a, b, gold = dev
    present = np.array([e.id not in missing for e in EMBEDDERS])
    gate = Validator().controls(len(x), presence=np.tile(present, (len(x), 1)))
    with torch.inference_mode():
        full = model(torch.from_numpy(x)).fused.numpy()
        part = fusemoe.fuse(model, torch.from_numpy(x), gate).fused.numpy()
    w = torch.tensor([weights[e.id] if e.id not in missing else 0.0 for e in EMBEDDERS])
    # Centred where the checkpoint centres them: its fill, the blocks' mean over the
    # training texts (these sentences' own mean moves the reference: 0.585 against 0.986
    # on 40 of them).
    means = list(torch.split(model.fill.float(), [e.dim for e in EMBEDDERS]))
    filled = teacher_vectors(torch.from_numpy(x), means, w).numpy()
    sample = np.random.default_rng(0).choice(len(x), min(600, len(x)), replace=False)
    return {"missing": list(missing), "sentences": len(x),
            "spearman_filled_vs_fused": pairwise_spearman(filled[sample], part[sample]),
            "sts_dev_full": spearman_of_cosines(full[a], full[b], gold),
            "sts_dev_missing": spearman_of_cosines(part[a], part[b], gold),
            "cosine_to_full": float((part * full).sum(-1).mean()),
            "cosine_between_sentences": float(np.mean(
                (part[sample] @ part[sample].T)[np.triu_indices(len(sample), k=1)]))}


def write_report(result: dict, seconds: float) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "image-views.json").write_text(json.dumps(result, indent=2) + "\n")
    img, fs = result["images"], result["failsafe"]
    rows = []
    for name in ("E10", "FUSED"):
        m = img[name]
        rows.append(f"| {name} | {m['auc']:.3f} | "
                    + " | ".join(f"{m['auc_by_variant'][v]:.3f}" for v in VARIANTS)
                    + f" | {m['cosine_to_variants']:.3f} | {m['cosine_to_others']:.3f} | "
                    f"{m['cosine_to_others_max']:.3f} |")
    lines = [
        "# Image views: does fused_image tell images apart?", "",
        (f"`python -m perf.image_views` ({seconds:.0f} s), FuseMoE checkpoint "
        f"`{img['checkpoint']}`, E10's towers as built (`make serve`'s). {img['images']} "
        "images: scikit-image's sample photographs, each cut into 2 x 2 tiles, and its LFW "
        "subset; every one at the same timestamp, so the blocks an image fills differ only by "
        "E10. Variants: resized to 60 %, centre cropped to 80 %, JPEG quality 50, recoloured "
        "(saturation 0.7, brightness 1.1)."), "",
        (f"**Spearman between pairwise cosines of the filled blocks and of FUSED: "
        f"{img['spearman_filled_vs_fused']:.3f}** (goal >= {GOAL_SPEARMAN})."), "",
        ("Variant AUC: per image and variant, the share of other images farther from the "
        f"image than its variant (goal >= {GOAL_AUC})."), "",
        "| vector | AUC | " + " | ".join(VARIANTS)
        + " | cosine to variants | cosine to others (mean) | (max) |",
        "|---|---:|" + "---:|" * len(VARIANTS) + "---:|---:|---:|", *rows, "",
        f"## Fail-safe: text with {' and '.join(fs['missing'])} missing", "",
        (f"{fs['sentences']} STS-B dev sentences. Spearman between pairwise cosines of the filled "
        "blocks (centred by the checkpoint's fill, the training texts' mean; normalised; "
        "weighted by the checkpoint's teacher weights) and of "
        f"FUSED with the blocks missing: **{fs['spearman_filled_vs_fused']:.3f}**; STS-B dev "
        f"Spearman {fs['sts_dev_missing']:.4f} with them missing against {fs['sts_dev_full']:.4f} "
        f"with every block; mean cosine to the full vector {fs['cosine_to_full']:.3f}, between two "
         f"sentences {fs['cosine_between_sentences']:.3f}."), "",
        "## Image files (sha256)", "",
        *[f"- `{k}` {v}" for k, v in img["files"].items()], ""]
    path = REPORTS / "image-views.md"
    provenance.write(path, "\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args(argv)
    from ensemble.pipeline import Pipeline
    from perf.fusion_ablation import split_blocks

    start = time.perf_counter()
    pipe = Pipeline(args.repository)
    weights = pipe.manifest.extra["metrics"]["teacher_block_weights"]
    result = {"images": image_views(args.repository),
              "failsafe": failsafe(pipe.fusemoe, weights, split_blocks(args.repository, "dev"))}
    path = write_report(result, time.perf_counter() - start)
    img = result["images"]
    print(f"{path}: Spearman {img['spearman_filled_vs_fused']:.3f}, AUC E10 "
          f"{img['E10']['auc']:.3f} FUSED {img['FUSED']['auc']:.3f}; fail-safe Spearman "
          f"{result['failsafe']['spearman_filled_vs_fused']:.3f}")
    ok = (img["spearman_filled_vs_fused"] >= GOAL_SPEARMAN and img["FUSED"]["auc"] >= GOAL_AUC)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
