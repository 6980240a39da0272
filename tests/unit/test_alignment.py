"""The alignment suite passes with the trained FuseMoE and fails with the seeded init."""

from __future__ import annotations

import pytest

from ensemble import alignment, fusemoe

pytestmark = pytest.mark.trained


@pytest.fixture(scope="module")
def suite(repository):
    from ensemble.pipeline import Pipeline

    pairs = alignment.load_pairs()
    texts, x = alignment.suite_blocks(Pipeline(repository), pairs)
    return pairs, texts, x


def test_the_suite_has_enough_pairs_of_each_kind():
    pairs = alignment.load_pairs()
    positives = [p for p in pairs if p.positive]
    assert len(positives) >= 20 and len(pairs) - len(positives) >= 20
    assert {p.kind for p in positives} == {"paraphrase", "code"}


def test_the_served_checkpoint_separates_the_pairs(served_fusemoe, suite):
    model, manifest = fusemoe.load(served_fusemoe)
    for d in fusemoe.Outputs.of(manifest).dimensions:  # every Matryoshka size it offers
        result = alignment.score(model, *suite[1:], suite[0], d)
        bad = [(p.kind, p.first, round(float(c), 3))
               for p, c, ok in zip(result.pairs, result.cosines, result.correct) if not ok]
        assert result.passed, (f"{manifest.version} at {d} dimensions: {result.share:.0%} "
                               f"separated; wrong: {bad}")


def test_the_seeded_initialisation_fails_the_suite(suite):
    result = alignment.score(fusemoe.seeded(), *suite[1:], suite[0])
    assert not result.passed, f"seeded init separated {result.share:.0%} of the pairs"
