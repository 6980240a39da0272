"""A floor under the served FUSED's quality: a regression in training fails CI."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble import fusemoe
from export.registry import EMBEDDERS
from perf.fusion_quality import blocks_of, fused
from perf.sts import DATA, load_split, spearman_of_cosines

pytestmark = pytest.mark.trained

FLOOR = 0.005  # FUSED may trail E11 (the real all-MiniLM-L6-v2) by at most this much


def test_served_fused_is_no_worse_than_e11_on_sts_b_dev(repository, served_fusemoe):
    """STS-B dev (the split for choices; test is only for reports): the cosine Spearman of
    the FUSED the repository serves against E11's, from the same blocks."""
    pairs = load_split(DATA, "dev")
    unique = sorted(set(pairs.first + pairs.second))
    index = {t: i for i, t in enumerate(unique)}
    first = np.array([index[t] for t in pairs.first])
    second = np.array([index[t] for t in pairs.second])
    x = blocks_of(repository, unique)
    model, manifest = fusemoe.load(served_fusemoe)
    full = fused(model, x)
    offsets = np.cumsum([0] + [e.dim for e in EMBEDDERS])
    j = [e.id for e in EMBEDDERS].index("E11")
    e11 = x[:, offsets[j]:offsets[j + 1]]
    fused_score = spearman_of_cosines(full[first], full[second], pairs.gold)
    e11_score = spearman_of_cosines(e11[first], e11[second], pairs.gold)
    assert fused_score >= e11_score - FLOOR, (
        f"{manifest.version}: FUSED {fused_score:.4f} against E11 {e11_score:.4f} on STS-B dev")
