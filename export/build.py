"""Build the model repository's artifacts for a profile (``tiny``: offline, seeded).

    python -m export.build [--profile tiny] [--force] [--repository DIR]

Each model's version folder gets its artifacts and a ``build.json`` recording the profile,
the source, whether the weights are pretrained, and the recipe hash (a digest of the code
that produced them). A model whose recipe is unchanged is not rebuilt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from export import repository
from export.layout import BUILD_INFO, ONNX_FILE, SPLADE_STEM, SPLADE_VERSION, TORCH_DIR
from export.registry import (
    EMBEDDERS,
    FUSEMOE_MODEL,
    TOKENIZER_FAMILIES,
    Embedder,
    Input,
    TokenizerFamily,
    tokenizer_family,
)

PROFILES = ("tiny",)
_HERE = Path(__file__).resolve().parent
RECIPE_SOURCES = [_HERE / n for n in ("registry.py", "architectures.py", "onnx_export.py",
                                      "tokenizer_build.py", "custom_encoders.py", "artifacts.py", "layout.py",
                                      "build.py", "data/tiny_corpus.txt")]
RECIPE_SOURCES.append(_HERE.parent / "ensemble" / "fusemoe.py")
SPLADE_SEED = 30_522


def recipe_hash() -> str:
    digest = hashlib.sha256()
    for path in RECIPE_SOURCES:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _vdir(repo: Path, triton_model: str) -> Path:
    return repo / triton_model / "1"


def _current(directory: Path, profile: str, recipe: str) -> bool:
    info = directory / BUILD_INFO
    if not info.is_file():
        return False
    data = json.loads(info.read_text())
    return data.get("profile") == profile and data.get("recipe") == recipe


def _clear(directory: Path) -> None:
    """Remove built artifacts, keeping the generated model.py."""
    for child in directory.iterdir() if directory.is_dir() else []:
        if child.name in ("model.py", ".keep"):
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _write_info(directory: Path, **info) -> None:
    (directory / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def build_tokenizer(family: TokenizerFamily, directory: Path, profile: str, recipe: str) -> None:
    from export.tokenizer_build import build_tiny

    tok = build_tiny(family, directory / "tokenizer.json")
    _write_info(directory, profile=profile, recipe=recipe, pretrained=False,
                source=f"tiny {family.name} (offline, fixed corpus)",
                vocab_size=tok.get_vocab_size())


def tokenizer_ids(family: TokenizerFamily, repo: Path):
    from tokenizers import Tokenizer

    from export.architectures import TokenizerIds

    tok = Tokenizer.from_file(str(_vdir(repo, family.triton_model) / "tokenizer.json"))
    specials = {"roberta-bpe": ("<s>", "</s>"), "clip-bpe": ("<|startoftext|>", "<|endoftext|>")}
    bos, eos = specials.get(family.name, (None, None))
    return TokenizerIds(tok.get_vocab_size(), tok.token_to_id(family.pad_token),
                        tok.token_to_id(bos) if bos else None,
                        tok.token_to_id(eos) if eos else None)


def build_neural(spec: Embedder, directory: Path, repo: Path, profile: str, recipe: str) -> None:
    import numpy as np

    from export.architectures import architecture
    from export.artifacts import save_numpy
    from export.onnx_export import example_inputs, export

    family = tokenizer_family(spec.tokenizer or "")
    ids = tokenizer_ids(family, repo)
    arch = architecture(spec)
    module = arch.tiny_module(spec, ids)
    if arch.runtime == "onnx":
        example = example_inputs(2, 16, ids.pad, ids.vocab_size)
        export(module, directory / ONNX_FILE, arch.output_name, example)
    else:
        module.model.save_pretrained(directory / TORCH_DIR, safe_serialization=True)
    if spec.id == "E6":
        # Johnson-Lindenstrauss: a seeded Gaussian map keeps pairwise distances of the
        # vocabulary-sized SPLADE vectors within a small distortion.
        rng = np.random.Generator(np.random.PCG64(SPLADE_SEED))
        projection = rng.standard_normal((ids.vocab_size, spec.dim)) / np.sqrt(spec.dim)
        save_numpy(directory, SPLADE_STEM, SPLADE_VERSION,
                   {"projection": projection.astype(np.float32)},
                   extra={"seed": SPLADE_SEED, "vocab_size": ids.vocab_size, "dim": spec.dim})
    _write_info(directory, profile=profile, recipe=recipe, pretrained=False,
                source=f"tiny {arch.model_class} (seeded random weights)",
                runtime=arch.runtime, pad_token_id=ids.pad, max_length=spec.max_length)


def build_custom(spec: Embedder, directory: Path, profile: str, recipe: str) -> None:
    from export.custom_encoders import save_hdc_base

    if spec.input is Input.TEXT:
        save_hdc_base(directory)
    _write_info(directory, profile=profile, recipe=recipe, pretrained=False,
                source="custom deterministic encoder (no weights)")


def build_fusemoe(directory: Path, profile: str, recipe: str) -> None:
    from ensemble import fusemoe

    fusemoe.save(fusemoe.seeded(), directory, fusemoe.SEEDED_VERSION,
                 extra={"init": "seeded", "trained": False})
    _write_info(directory, profile=profile, recipe=recipe, pretrained=False,
                source="FuseMoE seeded initialisation (untrained)")


def build(repo: Path, profile: str = "tiny", force: bool = False) -> list[str]:
    """Build every missing or outdated model; returns the names of the models built."""
    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    repository.write(repo)
    recipe = recipe_hash()
    built: list[str] = []

    def step(name: str, fn) -> None:
        directory = _vdir(repo, name)
        if not force and _current(directory, profile, recipe):
            return
        start = time.perf_counter()
        _clear(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fn(directory)
        built.append(name)
        print(f"built {name:<24} {time.perf_counter() - start:6.1f} s", flush=True)

    for family in TOKENIZER_FAMILIES:
        step(family.triton_model, lambda d, f=family: build_tokenizer(f, d, profile, recipe))
    for spec in EMBEDDERS:
        if spec.input is Input.TOKENS:
            step(spec.triton_model, lambda d, s=spec: build_neural(s, d, repo, profile, recipe))
        else:
            step(spec.triton_model, lambda d, s=spec: build_custom(s, d, profile, recipe))
    step(FUSEMOE_MODEL, lambda d: build_fusemoe(d, profile, recipe))
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny", choices=PROFILES)
    parser.add_argument("--force", action="store_true", help="rebuild every model")
    parser.add_argument("--repository", type=Path, default=repository.REPOSITORY)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    built = build(args.repository, args.profile, args.force)
    elapsed = time.perf_counter() - start
    print(f"model repository {args.repository}: {len(built)} models built in {elapsed:.1f} s"
          if built else f"model repository {args.repository}: up to date ({args.profile})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
