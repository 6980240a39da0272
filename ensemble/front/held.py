"""The request bytes a front holds at once, bounded (each front has its own)."""

from __future__ import annotations

from dataclasses import dataclass


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
