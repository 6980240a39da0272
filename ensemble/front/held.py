"""What a front lets pile up, bounded (each front has its own): the request bytes it holds
at once, and the requests whose clients gave up while Triton still runs them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field


class ServerFull(Exception):
    """Past the bound: the request is refused at once (503 / UNAVAILABLE, retry later)."""


@dataclass
class HeldBytes:
    """Bytes of requests read and not yet taken by Triton. Past ``limit`` a request is
    refused, so that many large requests together cannot exhaust the front's memory."""

    limit: int
    held: int = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise ServerFull(f"the server holds {self.held} bytes of requests (limit "
                             f"{self.limit}); retry later")
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


@dataclass
class Abandoned:
    """Requests whose client gave up (its deadline passed, it cancelled, it went away) while
    Triton still runs them. The front never cancels them (Triton 2.51 can die or stall when
    an ensemble request is cancelled), so clients that send again and again with short
    deadlines would fill Triton with work nobody waits for. While ``limit`` such requests
    run, a new inference request waits in the front (``admitted``) instead of going on: one
    whose client gives up meanwhile never reaches Triton, one that waits for its answer goes
    on as soon as one ends. The abandoned work is at most ``limit`` requests; at most
    ``max_waiting`` requests wait, past which they are refused (503 / UNAVAILABLE)."""

    limit: int
    max_waiting: int = 1024
    running: set[asyncio.Future] = field(default_factory=set)
    waiting: int = 0
    _ended: asyncio.Event | None = None

    def track(self, call: asyncio.Future) -> None:
        if not call.done():
            self.running.add(call)
            call.add_done_callback(self._end)

    def _end(self, call: asyncio.Future) -> None:
        self.running.discard(call)
        if self._ended is not None:
            self._ended.set()

    async def admitted(self, gone: Callable[[], bool] = lambda: False) -> bool:
        """Wait until fewer than ``limit`` abandoned requests run; False if the client went
        away meanwhile (``gone``). ServerFull when too many wait already."""
        if len(self.running) < self.limit:
            return True
        if self.waiting >= self.max_waiting:
            raise ServerFull(f"{self.waiting} requests wait while {len(self.running)} whose "
                             "clients gave up still run in Triton; retry later")
        if self._ended is None:
            self._ended = asyncio.Event()
        self.waiting += 1
        try:
            while len(self.running) >= self.limit:
                if gone():
                    return False
                self._ended.clear()
                try:
                    await asyncio.wait_for(self._ended.wait(), 0.05)
                except TimeoutError:
                    pass
            return True
        finally:
            self.waiting -= 1
