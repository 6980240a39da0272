"""Persisted tensors with a manifest (version, sha256) that is verified at every load.

Used for the E9 base hypervectors, the E6 SPLADE projection and the FuseMoE weights.
Only safetensors are ever loaded: no pickle reaches the server.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np


class ArtifactError(RuntimeError):
    """A persisted artifact is missing, of another version, or does not match its checksum."""


@dataclass(frozen=True)
class Manifest:
    version: str
    sha256: str
    file: str
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        if not path.is_file():
            raise ArtifactError(f"{path}: manifest missing (run `make build`)")
        return cls(**json.loads(path.read_text()))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def installed_file(distribution: str, file: str) -> Path | None:
    """``file`` (relative to the install location) of an installed distribution; None when the
    distribution is not installed."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file(file)))


def check_pinned(path: Path, sha256: str, distribution: str) -> None:
    """A file a distribution ships must hash to its pin."""
    actual = sha256_file(path)
    if actual != sha256:
        raise ArtifactError(f"{path}: sha256 {actual} is not the pinned {sha256} of "
                            f"{distribution}")


def manifest_path(directory: Path, stem: str) -> Path:
    return directory / f"{stem}.manifest.json"


def save_numpy(directory: Path, stem: str, version: str, tensors: dict[str, np.ndarray],
               extra: dict[str, Any] | None = None) -> Manifest:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{stem}.safetensors"
    save_file(tensors, str(data), metadata={"version": version})
    manifest = Manifest(version, sha256_file(data), data.name, extra or {})
    manifest.write(manifest_path(directory, stem))
    return manifest


def verified(directory: Path, stem: str, version: str | None = None) -> tuple[Path, Manifest]:
    """The data file of ``stem`` after checking its manifest's version and sha256."""
    manifest = Manifest.read(manifest_path(directory, stem))
    data = directory / manifest.file
    if version is not None and manifest.version != version:
        raise ArtifactError(f"{data}: version {manifest.version!r}, expected {version!r}")
    if not data.is_file():
        raise ArtifactError(f"{data}: file missing (run `make build`)")
    actual = sha256_file(data)
    if actual != manifest.sha256:
        raise ArtifactError(
            f"{data}: sha256 {actual} does not match its manifest ({manifest.sha256})")
    return data, manifest


def load_numpy(directory: Path, stem: str, version: str | None = None) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    data, _ = verified(directory, stem, version)
    return load_file(str(data))


def tensor_shape(directory: Path, stem: str, name: str) -> tuple[int, ...]:
    """The shape of tensor ``name`` of ``stem``, read from its safetensors header alone."""
    from safetensors import safe_open

    data = directory / Manifest.read(manifest_path(directory, stem)).file
    with safe_open(str(data), framework="numpy") as f:
        return tuple(f.get_slice(name).get_shape())
