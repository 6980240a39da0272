"""The fail-safe's circuit breaker: closed, open, half-open, on a clock the test moves."""

import pytest

from ensemble.breaker import BreakerSettings, Call, CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def breaker(clock, changes=None, **settings):
    defaults = {"failures": 3, "window_s": 30.0, "cooldown_s": 10.0, "probes": 2}
    return CircuitBreaker(BreakerSettings(**(defaults | settings)),
                          None if changes is None else lambda a, b: changes.append((a, b)),
                          clock)


def fail(b, times=1):
    for _ in range(times):
        call = b.admit()
        assert call is Call.NORMAL
        b.failed(call)


def test_failures_in_a_row_open_it_and_open_it_skips_for_the_cool_down(clock):
    changes = []
    b = breaker(clock, changes)
    fail(b, 2)
    assert b.state is State.CLOSED
    fail(b)
    assert b.state is State.OPEN and changes == [(State.CLOSED, State.OPEN)]
    clock.now += 9.9
    assert b.admit() is Call.SKIP
    clock.now += 0.1
    assert b.admit() is Call.PROBE and b.state is State.HALF_OPEN


def test_a_success_or_a_gap_longer_than_the_window_starts_the_count_again(clock):
    b = breaker(clock)
    fail(b, 2)
    call = b.admit()
    b.succeeded(call)
    fail(b, 2)
    assert b.state is State.CLOSED
    clock.now += 30.1
    fail(b, 2)
    assert b.state is State.CLOSED
    clock.now += 29.9
    fail(b)
    assert b.state is State.OPEN


def test_half_open_lets_one_probe_out_at_a_time_and_closes_after_enough_successes(clock):
    changes = []
    b = breaker(clock, changes)
    fail(b, 3)
    clock.now += 10
    probe = b.admit()
    assert probe is Call.PROBE
    assert b.admit() is Call.SKIP  # the probe is still out
    b.succeeded(probe)
    assert b.state is State.HALF_OPEN
    probe = b.admit()
    assert probe is Call.PROBE
    b.succeeded(probe)
    assert b.state is State.CLOSED and b.admit() is Call.NORMAL
    assert changes == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN),
                       (State.HALF_OPEN, State.CLOSED)]


def test_a_failed_probe_opens_it_for_another_cool_down(clock):
    b = breaker(clock)
    fail(b, 3)
    clock.now += 10
    probe = b.admit()
    b.succeeded(probe)
    probe = b.admit()
    b.failed(probe)
    assert b.state is State.OPEN
    clock.now += 5
    assert b.admit() is Call.SKIP
    clock.now += 5
    assert b.admit() is Call.PROBE


def test_calls_admitted_before_a_change_do_not_move_the_new_state(clock):
    b = breaker(clock, failures=1)
    late = [b.admit() for _ in range(3)]  # three calls out when the embedder hangs
    b.failed(late[0])
    assert b.state is State.OPEN
    b.failed(late[1])
    b.succeeded(late[2])  # answers that arrive now say nothing of the open breaker
    assert b.state is State.OPEN
    clock.now += 10
    probe = b.admit()
    b.failed(Call.NORMAL)
    assert b.state is State.HALF_OPEN and b.admit() is Call.SKIP
    b.succeeded(probe)
    b.succeeded(b.admit())
    assert b.state is State.CLOSED


@pytest.mark.parametrize("settings", [{"failures": 0}, {"probes": 0}, {"window_s": 0},
                                      {"cooldown_s": -1}])
def test_settings_that_cannot_work_are_refused(settings):
    with pytest.raises(ValueError):
        BreakerSettings(**settings)
