"""Fixtures shared by every tier: the built tiny model repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.build import build
from export.repository import REPOSITORY


@pytest.fixture(scope="session")
def repository() -> Path:
    """The project's model repository with every tiny artifact built (no-op when current)."""
    build(REPOSITORY, "tiny")
    return REPOSITORY
