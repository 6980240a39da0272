"""A circuit breaker per embedder, for the fail-safe entry point (spec §7.2).

closed     every request calls the embedder; ``failures`` failures or timeouts in a row, each
           within ``window_s`` of the one before, open the breaker.
open       requests skip the embedder at once (its block is filled and marked MISSING) for
           ``cooldown_s``.
half-open  one call at a time goes through as a probe; ``probes`` successes in a row close the
           breaker, one failure opens it again for another cool-down.

Pure logic on an injected clock: the fail-safe decides what a failure is and waits only as
long as it must (a probe that is still out when the other blocks are done is not waited for;
its outcome still moves the breaker). Written here rather than taken from a library because
the ones on PyPI call the guarded function themselves (pybreaker: threads and Tornado only)
and let every half-open call through, which with a hung embedder makes each of them wait
the whole deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum


class State(IntEnum):
    """The value of the state gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True)
class BreakerSettings:
    failures: int = 3  # in a row, each within window_s of the last, open the breaker
    window_s: float = 30.0
    cooldown_s: float = 10.0  # open this long before a probe is let through
    probes: int = 2  # successful probes in a row that close it again

    def __post_init__(self) -> None:
        if self.failures < 1 or self.probes < 1:
            raise ValueError("failures and probes must be at least 1")
        if self.window_s <= 0 or self.cooldown_s <= 0:
            raise ValueError("window_s and cooldown_s must be positive")


class Call(IntEnum):
    """What ``CircuitBreaker.admit`` allows."""

    SKIP = 0  # open, or a probe is already out
    NORMAL = 1  # closed
    PROBE = 2  # half-open: this call decides


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings,
                 on_change: Callable[[State, State], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.on_change = on_change
        self.clock = clock
        self.state = State.CLOSED
        self.failed_in_row = 0
        self.last_failure = 0.0
        self.opened_at = 0.0
        self.probe_out = False
        self.probes_passed = 0

    def _move(self, to: State) -> None:
        before, self.state = self.state, to
        if to is State.OPEN:
            self.opened_at = self.clock()
        self.failed_in_row = 0
        self.probes_passed = 0
        self.probe_out = False
        if self.on_change is not None and before is not to:
            self.on_change(before, to)

    def admit(self) -> Call:
        """Whether this request calls the embedder, and how."""
        if self.state is State.OPEN:
            if self.clock() - self.opened_at < self.settings.cooldown_s:
                return Call.SKIP
            self._move(State.HALF_OPEN)
        if self.state is State.HALF_OPEN:
            if self.probe_out:
                return Call.SKIP
            self.probe_out = True
            return Call.PROBE
        return Call.NORMAL

    def succeeded(self, call: Call) -> None:
        if call is Call.PROBE and self.state is State.HALF_OPEN:
            self.probe_out = False
            self.probes_passed += 1
            if self.probes_passed >= self.settings.probes:
                self._move(State.CLOSED)
        elif call is Call.NORMAL and self.state is State.CLOSED:
            self.failed_in_row = 0

    def failed(self, call: Call) -> None:
        now = self.clock()
        if call is Call.PROBE and self.state is State.HALF_OPEN:
            self._move(State.OPEN)
        elif call is Call.NORMAL and self.state is State.CLOSED:
            if self.failed_in_row and now - self.last_failure > self.settings.window_s:
                self.failed_in_row = 0  # the last failure is too old to count with this one
            self.failed_in_row += 1
            self.last_failure = now
            if self.failed_in_row >= self.settings.failures:
                self._move(State.OPEN)
