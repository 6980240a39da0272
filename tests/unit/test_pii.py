import json
from pathlib import Path

import pytest

from ensemble.pii import TYPES, luhn_valid, scrub, scrub_texts

CORPUS = json.loads((Path(__file__).parent / "data" / "pii_corpus.json").read_text())


@pytest.mark.parametrize("case", CORPUS, ids=[c["input"][:30] for c in CORPUS])
def test_corpus(case):
    result = scrub(case["input"])
    assert result.text == case["output"]
    assert {k: v for k, v in result.counts.items() if v} == case["counts"]
    assert result.vector() == [case["counts"].get(t, 0) for t in TYPES]


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


def test_scrubbing_is_idempotent():
    once = scrub(" ".join(c["input"] for c in CORPUS)).text
    assert scrub(once).text == once


def test_scrub_texts_counts_per_text_and_can_be_switched_off():
    texts = [c["input"] for c in CORPUS]
    clean, counts = scrub_texts(texts)
    assert clean == [c["output"] for c in CORPUS]
    assert counts.shape == (len(CORPUS), len(TYPES)) and counts.dtype.name == "int32"
    assert counts.tolist() == [[c["counts"].get(t, 0) for t in TYPES] for c in CORPUS]
    untouched, zeros = scrub_texts(texts, enabled=False)
    assert untouched == texts and not zeros.any()
