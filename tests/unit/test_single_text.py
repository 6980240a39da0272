"""perf.single_text's own logic: which texts are short, the order of the time table, the
report's verdict on the goal."""

from __future__ import annotations

import pytest

from perf import single_text


def test_short_texts_are_sts_dev_sentences_of_at_most_the_word_limit():
    texts = single_text.short_texts(64)
    assert len(texts) == 64
    assert all(len(t.split()) <= single_text.SHORT_WORDS for t in texts)
    assert len(set(texts)) == len(texts)


def test_the_ensemble_comes_first_then_steps_by_their_time_per_request():
    delta = {
        "e09_hdc": {"requests": 10, "queue_ms": 0.5, "compute_ms": 1.0, "batch": 1.0},
        "e01_semantic": {"requests": 10, "queue_ms": 30.0, "compute_ms": 50.0, "batch": 1.2},
        "fused_text": {"requests": 10, "queue_ms": 0.0, "compute_ms": 90.0, "batch": 1.0},
        "e06_sparse": {"requests": 10, "queue_ms": 1.0, "compute_ms": 60.0, "batch": 1.0},
    }
    rows = single_text.where_time_goes(delta)
    assert [r["model"] for r in rows] == ["fused_text", "e01_semantic", "e06_sparse", "e09_hdc"]
    assert rows[1]["queue_ms"] == 30.0 and rows[1]["batch"] == 1.2


def _result(p50_c1: float) -> dict:
    def point(concurrency: int, p50: float) -> dict:
        return {"concurrency": concurrency, "requests": 100, "items_per_s": 10.0,
                "p50_ms": p50, "p95_ms": p50 * 1.5, "errors": 0,
                "steps": [{"model": "fused_text", "requests": 100, "queue_ms": 0.0,
                           "compute_ms": p50 - 2, "batch": 1.0}]}
    return {"texts": 200, "short_words": single_text.SHORT_WORDS, "seconds": 60.0,
            "load_s": 20.0, "points": [point(1, p50_c1), point(8, 4 * p50_c1)],
            "full_single_text_p50_ms": p50_c1}


@pytest.mark.parametrize(("p50", "verdict"), [(120.0, "met"), (150.0, "met"),
                                              (151.0, "not met")])
def test_the_report_says_whether_the_p50_goal_is_met(p50, verdict):
    text = "\n".join(single_text.report_lines(_result(p50)))
    assert f"full_single_text_p50_ms = **{p50:.1f}** (concurrency 1; goal ≤ 150: {verdict})" \
        in text
    assert text.count("### Where the time goes, concurrency") == 2
    assert f"| 1 | 100 | 10.0 | {p50:.1f} | {p50 * 1.5:.1f} | 0 |" in text
