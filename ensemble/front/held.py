"""What a front lets pile up, bounded (each front has its own): the request bytes it holds
at once, and the requests whose clients gave up while Triton still runs them."""

from __future__ import annotations

import asyncio
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
    an ensemble request is cancelled), so a client that sends again and again with short
    deadlines would fill Triton with work nobody waits for; past ``limit`` such requests,
    new inference requests are refused at once (503 / UNAVAILABLE, retried by clients)
    until some end. The abandoned work is then at most ``limit`` requests."""

    limit: int
    running: set[asyncio.Future] = field(default_factory=set)

    def track(self, call: asyncio.Future) -> None:
        if not call.done():
            self.running.add(call)
            call.add_done_callback(self.running.discard)

    def admit(self) -> None:
        if len(self.running) >= self.limit:
            raise ServerFull(f"{len(self.running)} requests whose clients gave up are still "
                             f"running in Triton (limit {self.limit}); retry later")
