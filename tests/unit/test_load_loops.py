"""The closed-loop load generator of Race A and the cache loops (our own logic, no server)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from perf.workload import closed_loop, taking_turns

TEXTS = [f"text {i}" for i in range(50)]


def fake_send(delay_s: float = 0.002, dim: int = 4):
    def make():
        def send(chunk):
            time.sleep(delay_s)
            return np.zeros((len(chunk), dim), dtype=np.float32)
        return send
    return make


def test_every_client_sends_whole_batches_until_the_deadline():
    row = closed_loop(fake_send(), TEXTS, 8, 3, 0.3, dim=4)
    assert row["errors"] == 0 and row["requests"] > 0
    assert row["items_per_s"] == pytest.approx(row["requests"] * 8 / 0.3, rel=0.3)
    assert 2.0 <= row["p50_ms"] <= row["p95_ms"] < 500


def wrong_every_other(wrong):
    """Answers that alternate between right vectors and ``wrong(chunk)``."""
    def make():
        sent = [0]

        def send(chunk):
            time.sleep(0.002)
            sent[0] += 1
            return wrong(chunk) if sent[0] % 2 == 0 else np.zeros((len(chunk), 4), np.float32)
        return send
    return make


@pytest.mark.parametrize("wrong", [
    lambda chunk: np.zeros((len(chunk), 3), np.float32),  # a vector too short
    lambda chunk: np.zeros((len(chunk) - 1, 4), np.float32),  # a row missing
    lambda chunk: np.full((len(chunk), 4), np.nan, np.float32),  # not a number
], ids=["width", "rows", "nan"])
def test_wrong_answers_are_errors_not_throughput(wrong):
    row = closed_loop(wrong_every_other(wrong), TEXTS, 2, 1, 0.1, dim=4)
    # The warm-up answer is right; after it, every other answer is wrong and only the right
    # ones count as requests and texts.
    assert row["errors"] >= 3 and abs(row["errors"] - row["requests"]) <= 2, row


def test_no_answer_at_all_stops():
    with pytest.raises(SystemExit, match="no answer"):
        closed_loop(fake_send(dim=3), TEXTS, 2, 2, 0.05, dim=4)


def test_the_answer_check_holds_under_python_o():
    """The check is no ``assert``: ``python -O`` keeps it."""
    import subprocess
    import sys

    code = ("import numpy as np\nfrom perf.workload import check_answer, WrongAnswer\n"
            "try:\n    check_answer(np.zeros((2, 3)), 2, 4)\nexcept WrongAnswer:\n"
            "    print('refused')\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "refused"


def test_a_client_that_cannot_warm_up_does_not_hang_the_others():
    calls = []

    def make():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("refused")
        return fake_send()()

    row = closed_loop(make, TEXTS, 1, 2, 0.1, dim=4)
    assert row["errors"] == 1 and row["requests"] > 0


def test_race_b_time_table_puts_both_sides_per_batch_of_32_slowest_first():
    from perf.race_b import time_table

    def turn(e1: float, e5: float) -> dict:
        return {"hand_written": {"model_seconds": {"E1": e1, "E5": e5, "fusemoe": 0.1}},
                "served": [{}]}

    result = {"texts": 128, "turns": [turn(4.0, 40.0), turn(8.0, 60.0), turn(6.0, 50.0)],
              "models": {"e01_semantic": {"compute_ms": 900.0},
                         "e05_causal": {"compute_ms": 300.0}}}
    rows = time_table(result)[2:]
    # median over the turns, scaled from 128 texts to 32: E5 50 s -> 12500 ms, E1 6 s -> 1500
    assert rows[0] == "| E5 (e05_causal) | 12500 | 300 |"
    assert rows[1] == "| E1 (e01_semantic) | 1500 | 900 |"
    assert rows[2] == "| fusemoe (fusemoe) | 25 |  |"  # no served statistics: left blank
    assert time_table({"texts": 128, "turns": [{"hand_written": {}, "served": []}]}) == []


def test_only_a_full_queue_counts_as_a_refusal():
    """perf.backpressure: UNAVAILABLE is a refusal only when it says a queue is full; a server
    that is down answers UNAVAILABLE too."""
    from tritonclient.utils import InferenceServerException

    from perf.backpressure import REFUSED, outcome

    def error(message: str, status: str) -> InferenceServerException:
        return InferenceServerException(message, status)

    assert outcome(error("Triton did not answer: Exceeds maximum queue size",
                         "StatusCode.UNAVAILABLE")) == REFUSED
    assert outcome(error("the server holds 99 bytes of requests (limit 9); retry later",
                         "StatusCode.UNAVAILABLE")) == REFUSED
    down = outcome(error("failed to connect to all addresses", "StatusCode.UNAVAILABLE"))
    assert down == "StatusCode.UNAVAILABLE: failed to connect to all addresses"
    assert outcome(error("Exceeds maximum queue size", "StatusCode.INTERNAL")).startswith(
        "StatusCode.INTERNAL: ")


def test_two_sides_take_turns_and_the_ratio_is_the_second_over_the_first():
    order = []

    def side(name, delay_s):
        def make():
            order.append(name)
            return fake_send(delay_s)()
        return make

    result = taking_turns(("fast", side("fast", 0.002)), ("slow", side("slow", 0.008)), TEXTS,
                          0.3, 2, dim=4, batch=4, clients=2)
    # One connection per client per window, first side then second, each round.
    assert order == ["fast"] * 2 + ["slow"] * 2 + ["fast"] * 2 + ["slow"] * 2
    assert len(result["ratios"]) == 2 and result["errors"] == 0
    assert result["ratio"] == pytest.approx(0.25, abs=0.15)
    assert result["slow_items_per_s"] < result["fast_items_per_s"]
