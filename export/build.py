"""Build the model repository's artifacts for a profile.

    python -m export.build [--profile pretrained|tiny|full] [--precision int8,E6=fp32]
                           [--checkpoints DIR] [--force]

``tiny``: every neural embedder is its real architecture at toy depth with seeded random
weights. ``pretrained``: every source checkpoint found offline (export/checkpoints.py) is
exported with its reference conventions; the rest fall back to tiny, and the mix is recorded.
``full``: as ``pretrained``, but the fallback is the real architecture at its published size
(registry ``PublishedConfig``) with seeded random weights, and the BPE tokenizer families
without a checkpoint use their published vocabularies (export/vocabularies.py): the
pipeline a user serves, for performance measurements. ``--precision`` picks fp32, fp16, int8
or fp8 per model (export/precision.py).

Each model's version folder gets its artifacts and a ``build.json`` (profile, source,
pretrained or not, checkpoint sha256, build key); ``configs/built.pbtxt`` repeats the
committed config with that provenance as parameters, which the server reports (it runs with
``--model-config-name=built``). A model whose build key is unchanged is not rebuilt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export import checkpoints as checkpoints_mod
from export import repository
from export.artifacts import Manifest, manifest_path, sha256_file
from export.checkpoints import Checkpoint
from export.layout import (
    BUILD_INFO,
    FUSEMOE_STEM,
    ONNX_FILE,
    SPLADE_STEM,
    SPLADE_VERSION,
    TOKENIZER_FILE,
    TORCH_DIR,
)
from export.precision import PRECISIONS, PrecisionPlan

if TYPE_CHECKING:
    import numpy as np
from export.registry import (
    ATTENTION_MASK,
    CACHED_MODEL,
    DEVICES,
    EMBEDDERS,
    ENSEMBLE_MODEL,
    FUSEMOE_MODEL,
    IMAGE_EMBEDDER_MODEL,
    INPUT_IDS,
    PREPROCESS_MODEL,
    TOKENIZER_FAMILIES,
    Embedder,
    Input,
    Pooling,
    TokenizerFamily,
    embedder,
    tokenizer_family,
)

PROFILES = ("pretrained", "tiny", "full")
# Profiles that serve every source checkpoint found offline.
WITH_CHECKPOINTS = ("pretrained", "full")
BUILT_CONFIG = "built"  # configs/built.pbtxt, selected with --model-config-name
_HERE = Path(__file__).resolve().parent
RECIPE_SOURCES = [_HERE / n for n in (
    "registry.py", "architectures.py", "onnx_export.py", "tokenizer_build.py",
    "vocabularies.py", "precision.py", "fp8_quantize.py", "custom_encoders.py", "artifacts.py",
    "layout.py", "build.py", "data/tiny_corpus.txt")]
CALIBRATION_TEXTS = 128  # STS-B dev sentences that calibrate an FP8 build
# FuseMoE's own recipe: a change there rebuilds only the fusemoe model.
FUSEMOE_SOURCES = [_HERE.parent / "ensemble" / "fusemoe.py", _HERE / "artifacts.py",
                   _HERE / "registry.py"]
TRAINED_CHECKPOINTS = _HERE.parent / "checkpoints" / "fusemoe"
SPLADE_SEED = 30_522


def recipe_hash(sources: list[Path] = RECIPE_SOURCES) -> str:
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def embedder_fingerprints(repo: Path) -> dict[str, str]:
    """Per block, a digest of the artifacts it depends on (its model and its tokenizer): a
    FuseMoE checkpoint is only valid for the blocks it was trained on."""
    def digest(directory: Path) -> str:
        h = hashlib.sha256()
        for f in sorted(directory.rglob("*")):
            if (f.is_file() and f.name not in (BUILD_INFO, "model.py")
                    and "__pycache__" not in f.parts):
                h.update(f.relative_to(directory).as_posix().encode())
                h.update(sha256_file(f).encode())
        return h.hexdigest()[:16]

    out = {}
    for spec in EMBEDDERS:
        out[spec.id] = digest(_vdir(repo, spec.triton_model))
        if spec.tokenizer:
            out[spec.id] += ":" + digest(_vdir(repo, tokenizer_family(spec.tokenizer).triton_model))
    return out


def trained_checkpoint(repo: Path, root: Path = TRAINED_CHECKPOINTS) -> Path | None:
    """The newest trained FuseMoE checkpoint under ``root`` made for this build's blocks."""
    fingerprints = embedder_fingerprints(repo)
    found = []
    for directory in root.iterdir() if root.is_dir() else []:
        path = manifest_path(directory, FUSEMOE_STEM)
        if path.is_file():
            manifest = Manifest.read(path)
            if manifest.extra.get("embedder_fingerprints") == fingerprints:
                found.append((manifest.extra.get("created", ""), directory))
            else:
                print(f"note: {directory} was trained on other blocks than this build's; "
                      "not used")
    return max(found)[1] if found else None


def _vdir(repo: Path, triton_model: str) -> Path:
    return repo / triton_model / "1"


def _current(directory: Path, key: str) -> bool:
    info = directory / BUILD_INFO
    return info.is_file() and json.loads(info.read_text()).get("key") == key


def _clear(directory: Path) -> None:
    """Remove built artifacts, keeping the generated model.py."""
    for child in directory.iterdir() if directory.is_dir() else []:
        if child.name in ("model.py", ".keep"):
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _write_info(directory: Path, **info) -> None:
    (directory / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def build_tokenizer(family: TokenizerFamily, directory: Path, key: str,
                    checkpoint: Checkpoint | None, profile: str = "pretrained") -> None:
    from export.tokenizer_build import build_tiny
    from export.vocabularies import VOCABULARIES, build_published

    if checkpoint is None and profile == "full" and family.name in VOCABULARIES:
        tok = build_published(family.name, directory / TOKENIZER_FILE, family.max_length)
        vocabulary = VOCABULARIES[family.name]
        source = f"published vocabulary: {vocabulary.what} ({vocabulary.requirement})"
        size = "full"
    elif checkpoint is None:
        tok = build_tiny(family, directory / TOKENIZER_FILE)
        source = f"tiny {family.name} (offline, fixed corpus)"
        size = "tiny"
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(checkpoint.path).backend_tokenizer
        tok.no_padding()
        tok.enable_truncation(max_length=family.max_length)
        tok.save(str(directory / TOKENIZER_FILE))
        source = f"tokenizer of {checkpoint.path.name} ({checkpoint.origin})"
        size = "full"
    # size: what `fusedembed info` shows for a tokenizer that is not pretrained
    _write_info(directory, key=key, pretrained=checkpoint is not None, source=source,
                size=size, vocab_size=tok.get_vocab_size())


def built_tokenizer(family: TokenizerFamily, repo: Path):
    """The family's tokenizer as this build saved it."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(_vdir(repo, family.triton_model) / TOKENIZER_FILE))


def tokenizer_ids(family: TokenizerFamily, repo: Path):
    from export.architectures import TokenizerIds

    tok = built_tokenizer(family, repo)
    specials = {"roberta-bpe": ("<s>", "</s>"), "clip-bpe": ("<|startoftext|>", "<|endoftext|>")}
    bos, eos = specials.get(family.name, (None, None))
    return TokenizerIds(tok.get_vocab_size(), tok.token_to_id(family.pad_token),
                        tok.token_to_id(bos) if bos else None,
                        tok.token_to_id(eos) if eos else None)


def convention_ids(spec: Embedder, repo: Path) -> dict:
    """The embedder's text convention as token ids of its family's tokenizer."""
    import string

    c = spec.convention
    tok = built_tokenizer(tokenizer_family(spec.tokenizer or ""), repo)

    def ids(prefix: str, marker: str | None) -> list[int]:
        out = tok.encode(prefix, add_special_tokens=False).ids if prefix else []
        if marker is not None:
            marker_id = tok.token_to_id(marker)
            if marker_id is None:
                raise ValueError(f"{spec.id}: marker {marker!r} is not in the vocabulary")
            out.append(marker_id)
        return out

    info: dict = {"insert": {"query": ids(c.query_prefix, c.query_marker),
                             "passage": ids(c.passage_prefix, c.passage_marker)}}
    if c.query_length:
        info |= {"query_length": c.query_length, "mask_token_id": tok.token_to_id("[MASK]")}
    if c.skip_punctuation_in_passages:
        info["skip_ids"] = sorted({tok.encode(p, add_special_tokens=False).ids[0]
                                   for p in string.punctuation})
    return info


def splade_projection(vocab_size: int, dim: int, seed: int = SPLADE_SEED):
    """Seeded Gaussian map vocab -> dim (Johnson-Lindenstrauss): pairwise distances of the
    vocabulary-sized SPLADE vectors survive with small distortion."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    return (rng.standard_normal((vocab_size, dim)) / np.sqrt(dim)).astype(np.float32)


def calibration_batch(spec: Embedder, repo: Path, texts: int = CALIBRATION_TEXTS,
                      ) -> dict[str, np.ndarray]:
    """Tokens of STS-B dev sentences as a model's graph inputs (FP8 calibration)."""
    import numpy as np

    from export.stsb import sentences

    family = tokenizer_family(spec.tokenizer or "")
    tok = built_tokenizer(family, repo)
    tok.enable_padding(pad_id=tok.token_to_id(family.pad_token), pad_token=family.pad_token)
    tok.enable_truncation(max_length=spec.max_length or family.max_length)
    encodings = tok.encode_batch(sentences("dev")[:texts])
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return {INPUT_IDS: ids, ATTENTION_MASK: mask}


def build_neural(spec: Embedder, directory: Path, repo: Path, key: str,
                 checkpoint: Checkpoint | None, precision: str = "fp32",
                 profile: str = "pretrained") -> None:
    from export.architectures import architecture
    from export.artifacts import save_numpy
    from export.onnx_export import example_inputs, export, export_fp16
    from export.precision import quantize_fp8, quantize_int8

    family = tokenizer_family(spec.tokenizer or "")
    ids = tokenizer_ids(family, repo)
    arch = architecture(spec)
    if checkpoint is not None:
        module = arch.pretrained_module(spec, checkpoint.path)
    elif profile == "full":
        module = arch.full_module(spec, ids)
    else:
        module = arch.tiny_module(spec, ids)
    precision_info: dict = {}
    if "onnx" in arch.runtime:
        graph, target = arch.onnx_module(module), directory / ONNX_FILE
        example = example_inputs(2, 16, ids.pad, ids.vocab_size)
        if precision == "fp16":
            export_fp16(graph, target, arch.output_name, example)
        else:
            staged = target.with_name("fp32.onnx") if precision != "fp32" else target
            export(graph, staged, arch.output_name, example, arch.output_axes)
            if precision == "int8":
                kept = quantize_int8(staged, target, arch.int8_keep_fp32)
                precision_info["int8_kept_fp32"] = kept
            elif precision == "fp8":
                quantize_fp8(staged, target, calibration_batch(spec, repo))
                precision_info["fp8_calibration"] = f"{CALIBRATION_TEXTS} STS-B dev sentences"
            if staged != target:
                staged.unlink()
    if "torch" in arch.runtime:
        # The reference module for texts past the ONNX graph's exact range; int8 and fp8
        # apply to the graph only (long texts are rare and keep full precision).
        model = module.model.half() if precision == "fp16" else module.model
        model.save_pretrained(directory / TORCH_DIR, safe_serialization=True)
    limit = arch.exact_limit(module)
    if limit is not None:
        precision_info["exact_path_max_tokens"] = limit
    if spec.pooling is Pooling.SPLADE_MAX:
        save_numpy(directory, SPLADE_STEM, SPLADE_VERSION,
                   {"projection": splade_projection(ids.vocab_size, spec.dim)},
                   extra={"seed": SPLADE_SEED, "vocab_size": ids.vocab_size, "dim": spec.dim})
    if checkpoint is not None:
        provenance = {"pretrained": True, "source": checkpoint.model or spec.source,
                      "origin": checkpoint.origin, "checkpoint": str(checkpoint.path),
                      "sha256": checkpoint.sha256}
        if checkpoint.model:
            provenance["stands_in_for"] = spec.source
    elif profile == "full":
        provenance = {"pretrained": False, "size": "full",
                      "source": f"full-size {arch.model_class} (published config of "
                                f"{spec.source}, seeded random weights)"}
    else:
        provenance = {"pretrained": False, "size": "tiny",
                      "source": f"tiny {arch.model_class} (seeded random weights)"}
    parameters = sum(p.numel() for p in module.parameters())
    _write_info(directory, key=key, runtime=arch.runtime, precision=precision,
                pad_token_id=ids.pad, max_length=spec.max_length, parameters=parameters,
                convention=convention_ids(spec, repo), **precision_info, **provenance)


def build_image(directory: Path, key: str, checkpoint: Checkpoint | None,
                profile: str = "pretrained") -> None:
    """E10's vision tower (CLIP ViT-L/14's, from E10's checkpoint when there is one; else
    seeded at the profile's size) exported to ONNX with a dynamic batch axis."""
    import torch

    from export.architectures import VISION_FULL, VISION_TINY, ClipVision
    from export.onnx_export import export_images

    spec, arch = embedder("E10"), ClipVision()
    if checkpoint is not None:
        module = arch.pretrained_module(checkpoint.path)
        provenance = {"pretrained": True, "source": spec.source, "origin": checkpoint.origin,
                      "checkpoint": str(checkpoint.path), "sha256": checkpoint.sha256}
    else:
        size = VISION_FULL if profile == "full" else VISION_TINY
        module = arch.seeded_module(spec, size)
        provenance = {"pretrained": False, "size": "full" if profile == "full" else "tiny",
                      "source": f"{'' if profile == 'full' else 'tiny '}"
                                "CLIPVisionModelWithProjection (seeded random weights)"}
    image = module.model.config.image_size
    example = torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(0))
    export_images(module, directory / ONNX_FILE, arch.input_name, arch.output_name, example)
    parameters = sum(p.numel() for p in module.parameters())
    _write_info(directory, key=key, runtime="onnx", precision="fp32", parameters=parameters,
                image_size=image, **provenance)


def build_custom(spec: Embedder, directory: Path, key: str) -> None:
    from export.custom_encoders import save_hdc_base

    if spec.input is Input.TEXT:
        save_hdc_base(directory)
    _write_info(directory, key=key, pretrained=False,
                source="custom deterministic encoder (no weights)")


def build_fusemoe(directory: Path, key: str, checkpoint: Path | None,
                  precision: str = "fp32") -> None:
    """Version 1 of fusemoe: a trained checkpoint (verified, copied) or the seeded init.
    The weights stay FP32 (their sha256 is what a checkpoint is checked by); ``int8`` makes
    the adapter quantize its Linear layers when it loads them."""
    from ensemble import fusemoe

    if precision not in ("fp32", "int8"):
        raise SystemExit(f"fusemoe runs in fp32 or int8 (PyTorch), not {precision}")
    if checkpoint is None:
        fusemoe.save(fusemoe.seeded(), directory, fusemoe.SEEDED_VERSION,
                     extra={"init": "seeded", "trained": False})
        _write_info(directory, key=key, pretrained=False, precision=precision,
                    source="FuseMoE seeded initialisation (untrained)")
        return
    _, manifest = fusemoe.install(checkpoint, directory)
    _write_info(directory, key=key, pretrained=True, sha256=manifest.sha256, precision=precision,
                source=f"FuseMoE {manifest.version} (trained)", checkpoint=str(checkpoint))


def write_built_config(repo: Path, name: str, overrides: dict[str, str] | None = None,
                       device: str = "cpu") -> None:
    """configs/built.pbtxt: the committed config placed on ``device`` plus the build's
    provenance as parameters (and any parameter ``overrides``)."""
    cfg = repository.placed(text_format.Parse((repo / name / "config.pbtxt").read_text(),
                                              mc.ModelConfig()), device)
    info = json.loads((_vdir(repo, name) / BUILD_INFO).read_text())
    weights = "pretrained" if info.get("pretrained") else info.get("size", "tiny")
    if name == FUSEMOE_MODEL:
        weights = "trained" if info.get("pretrained") else "seeded"
    elif name == PREPROCESS_MODEL:
        weights = "none"
    elif "custom" in info.get("source", ""):
        weights = "custom"
    source = info.get("source", "")
    if info.get("stands_in_for"):
        source += f" (stands in for {info['stands_in_for']})"
    params = {"weights": weights, "source": source,
              "checkpoint_sha256": info.get("sha256", "")}
    if "precision" in info:
        params["precision"] = info["precision"]
    params |= overrides or {}
    for k, v in params.items():
        cfg.parameters[k].string_value = v
    path = repo / name / "configs" / f"{BUILT_CONFIG}.pbtxt"
    path.parent.mkdir(exist_ok=True)
    path.write_text("# Written by export/build.py for this build: do not edit.\n"
                    + text_format.MessageToString(cfg))


def linked_repository(source: Path, target: Path, edit: Callable[[mc.ModelConfig], None],
                      note: str, models: set[str] | None = None) -> Path:
    """``source`` (only ``models`` of it when given) as links in a new folder ``target``; a
    model whose config ``edit`` changes gets a folder of its own whose
    ``configs/built.pbtxt`` is the edited one (headed by ``# note``), its other entries
    (weights, version folders) still links. For test and benchmark servers."""
    from google.protobuf import text_format

    target.mkdir(parents=True)
    for model in sorted(p for p in source.iterdir() if p.is_dir()):
        if models is not None and model.name not in models:
            continue
        built = model / "configs" / f"{BUILT_CONFIG}.pbtxt"
        cfg = text_format.Parse((built if built.is_file() else model / "config.pbtxt")
                                .read_text(), mc.ModelConfig())
        original = mc.ModelConfig()
        original.CopyFrom(cfg)
        edit(cfg)
        if cfg == original:
            (target / model.name).symlink_to(model)
            continue
        (target / model.name / "configs").mkdir(parents=True)
        for child in model.iterdir():
            if child.name != "configs":
                (target / model.name / child.name).symlink_to(child)
        (target / model.name / "configs" / built.name).write_text(
            f"# {note}\n" + text_format.MessageToString(cfg))
    return target


def build(repo: Path, profile: str = "pretrained", force: bool = False,
          checkpoint_dirs: list[Path] | None = None,
          only: set[str] | None = None, precision: str | PrecisionPlan = "fp32",
          pii_scrubbing: bool = True, fusemoe_checkpoint: str = "latest",
          device: str = "cpu") -> list[str]:
    """Build every missing or outdated model; returns the names of the models built.

    ``only`` limits the build to these embedders (ids) and their tokenizers; ``precision``
    is one of PRECISIONS for every model or a plan with per-block exceptions
    (``"int8,E6=fp32,fusemoe=fp32"``). ``fusemoe_checkpoint``: ``latest`` (the newest
    trained checkpoint made for these blocks, else the seeded init), ``seeded``, or a
    checkpoint folder. ``device``: where the served configs place the neural models (the
    artifacts are the same for both).
    """
    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    try:
        plan = precision if isinstance(precision, PrecisionPlan) else PrecisionPlan.parse(precision)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    repository.write(repo)
    recipe = recipe_hash()
    wanted = [e for e in EMBEDDERS if only is None or e.id in only]
    checkpoints: dict[str, Checkpoint | None] = {
        e.id: (checkpoints_mod.find(e, checkpoint_dirs) if profile in WITH_CHECKPOINTS else None)
        for e in wanted if e.input is Input.TOKENS}
    # Without a checkpoint a model is built at the profile's size.
    size = "full" if profile == "full" else "tiny"
    families = {e.tokenizer for e in wanted}
    built: list[str] = []

    def step(name: str, key: str, fn, overrides: dict[str, str] | None = None) -> None:
        directory = _vdir(repo, name)
        if force or not _current(directory, key):
            start = time.perf_counter()
            _clear(directory)
            directory.mkdir(parents=True, exist_ok=True)
            fn(directory)
            built.append(name)
            print(f"built {name:<24} {time.perf_counter() - start:6.1f} s", flush=True)
        write_built_config(repo, name, overrides, device)

    step(PREPROCESS_MODEL, recipe, lambda d: _write_info(
        d, key=recipe, pretrained=False, source="validation and PII scrubbing (no weights)"),
        {"pii_scrubbing": "on" if pii_scrubbing else "off"})
    family_keys: dict[str, str] = {}
    for family in TOKENIZER_FAMILIES:
        if family.name not in families:
            continue
        members = [e for e in wanted if e.tokenizer == family.name]
        found = [checkpoints[e.id] for e in members if checkpoints[e.id] is not None]
        source = found[0] if found else None
        key = f"{recipe}:{source.sha256 if source else size}"
        family_keys[family.name] = key
        step(family.triton_model, key,
             lambda d, f=family, c=source, k=key: build_tokenizer(f, d, k, c, profile))
        if len(found) > 1:
            _check_same_vocabulary(family, [c for c in found if c is not None])
    for spec in wanted:
        if spec.input is Input.TOKENS:
            ckpt, chosen = checkpoints[spec.id], plan.of(spec.id)
            key = (f"{family_keys[spec.tokenizer or '']}:"
                   f"{ckpt.sha256 if ckpt else size}:{chosen}")
            step(spec.triton_model, key,
                 lambda d, s=spec, c=ckpt, k=key, p=chosen: build_neural(
                     s, d, repo, k, c, p, profile))
        else:
            step(spec.triton_model, recipe, lambda d, s=spec: build_custom(s, d, recipe))
        if spec.id == "E10":  # its vision tower, for fused_image
            ckpt = checkpoints[spec.id]
            key = f"{recipe}:{ckpt.sha256 if ckpt else size}"
            step(IMAGE_EMBEDDER_MODEL, key, lambda d, c=ckpt, k=key: build_image(d, k, c, profile))
    if only is None:
        trained = trained_checkpoint(repo) if fusemoe_checkpoint == "latest" else (
            None if fusemoe_checkpoint == "seeded" else Path(fusemoe_checkpoint))
        # The manifest's sha256 names the weights; the install verifies the file against it.
        weights = (Manifest.read(manifest_path(trained, FUSEMOE_STEM)).sha256 if trained
                   else "seeded")
        chosen = plan.of(FUSEMOE_MODEL)
        if chosen not in ("fp32", "int8") and FUSEMOE_MODEL not in dict(plan.overrides):
            chosen = "fp32"  # FuseMoE runs in PyTorch: fp16 and fp8 plans leave it in fp32
        key = f"{recipe_hash(FUSEMOE_SOURCES)}:{weights}:{chosen}"
        remove_rollouts(repo)
        step(FUSEMOE_MODEL, key, lambda d: build_fusemoe(d, key, trained, chosen))
        write_offered_dimensions(repo)
    return built


def write_offered_dimensions(repo: Path) -> None:
    """fused_text's configs/built.pbtxt: its committed config with the served checkpoint's
    Matryoshka sizes as the parameter "dimensions" (what the gateway offers for
    `dimensions`; a hot-swapped checkpoint is checked by fusemoe itself)."""
    from ensemble import fusemoe

    manifest = Manifest.read(manifest_path(_vdir(repo, FUSEMOE_MODEL), FUSEMOE_STEM))
    cfg = text_format.Parse((repo / ENSEMBLE_MODEL / "config.pbtxt").read_text(),
                            mc.ModelConfig())
    dims = fusemoe.Outputs.of(manifest).dimensions
    cfg.parameters["dimensions"].string_value = ",".join(map(str, dims))
    path = repo / ENSEMBLE_MODEL / "configs" / f"{BUILT_CONFIG}.pbtxt"
    path.parent.mkdir(exist_ok=True)
    path.write_text("# Written by export/build.py for this build: do not edit.\n"
                    + text_format.MessageToString(cfg))


def remove_rollouts(repo: Path) -> None:
    """Versions above 1 come from hot swaps of a running server; a build starts over."""
    for model in (FUSEMOE_MODEL, CACHED_MODEL):
        for child in (repo / model).iterdir():
            if child.is_dir() and child.name.isdigit() and child.name != "1":
                shutil.rmtree(child)


def _check_same_vocabulary(family: TokenizerFamily, found: list[Checkpoint]) -> None:
    from transformers import AutoTokenizer

    vocabs = [AutoTokenizer.from_pretrained(c.path).get_vocab() for c in found]
    if any(v != vocabs[0] for v in vocabs[1:]):
        raise SystemExit(f"checkpoints of the {family.name} family have different vocabularies: "
                         + ", ".join(str(c.path) for c in found))


def summary(repo: Path) -> list[tuple[str, str, str]]:
    """(model, weights, source) of every built model, for the build's closing table."""
    rows = []
    for spec in EMBEDDERS:
        info = json.loads((_vdir(repo, spec.triton_model) / BUILD_INFO).read_text())
        kind = ("pretrained" if info.get("pretrained")
                else "custom" if spec.input is not Input.TOKENS else info.get("size", "tiny"))
        rows.append((f"{spec.id} {spec.triton_model}", kind, info["source"]))
        image = _vdir(repo, IMAGE_EMBEDDER_MODEL) / BUILD_INFO
        if spec.id == "E10" and image.is_file():
            info = json.loads(image.read_text())
            kind = "pretrained" if info.get("pretrained") else info.get("size", "tiny")
            rows.append((f"{spec.id} {IMAGE_EMBEDDER_MODEL}", kind, info["source"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="pretrained", choices=PROFILES)
    parser.add_argument("--checkpoints", type=Path, action="append", default=[],
                        help="folder holding Hugging Face checkpoints (repeatable)")
    parser.add_argument("--precision", default="fp32", metavar="PLAN",
                        help=f"{' | '.join(PRECISIONS)} for every neural model and fusemoe, "
                             "with per-model exceptions: e.g. int8,E6=fp32,fusemoe=fp32 "
                             "(fusemoe: fp32 or int8)")
    parser.add_argument("--pii-scrubbing", choices=("on", "off"), default="on",
                        help="replace PII with typed placeholders before embedding (default on)")
    parser.add_argument("--fusemoe", default="latest", metavar="latest|seeded|DIR",
                        help="FuseMoE weights: the newest trained checkpoint under "
                             "checkpoints/fusemoe made for these blocks (default), the seeded "
                             "init, or a checkpoint folder")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="place the token embedders and FuseMoE on the GPU (KIND_GPU, "
                             "TensorRT/CUDA providers) or the CPU (default)")
    parser.add_argument("--force", action="store_true", help="rebuild every model")
    parser.add_argument("--repository", type=Path, default=repository.REPOSITORY)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    built = build(args.repository, args.profile, args.force, args.checkpoints,
                  precision=args.precision, pii_scrubbing=args.pii_scrubbing == "on",
                  fusemoe_checkpoint=args.fusemoe, device=args.device)
    elapsed = time.perf_counter() - start
    print(f"model repository {args.repository}: {len(built)} models built in {elapsed:.1f} s"
          if built else f"model repository {args.repository}: up to date ({args.profile})")
    for model, kind, source in summary(args.repository):
        print(f"  {model:<26} {kind:<10} {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
