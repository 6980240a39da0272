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
    assert zeros.shape == (len(CORPUS), len(TYPES)) and zeros.dtype.name == "int32"


@pytest.mark.parametrize(("number", "card"), [
    ("4222222222222", True),  # 13 digits, the shortest card (a Visa test number)
    ("6000000000000000004", True),  # 19 digits, the longest
    ("6000 0000 0000 0000 004", True),  # grouped
    ("6000000000000000009", False),  # 19 digits failing the Luhn check
    ("422222222222", False),  # 12 digits
])
def test_a_card_is_13_to_19_digits_passing_the_luhn_check(number, card):
    scrubbed = scrub(f"paid with {number} today")
    assert scrubbed.counts["CARD"] == int(card)
    assert (scrubbed.text == "paid with [CARD] today") is card


def test_a_scrubbed_vector_counts_every_type_in_order_zero_when_absent():
    from ensemble.pii import Scrubbed

    assert Scrubbed("x", {"SSN": 2, "IP": 1}).vector() == [0, 0, 2, 0, 0, 0, 1]
