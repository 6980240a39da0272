"""The configs of the loaded models, as Triton reports them, kept for a few seconds."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp

from ensemble.front.checks import ModelSpec

# A model loaded or replaced through the repository API is seen within this time (a load
# through the front forgets every entry at once).
TTL_S = 10.0


class TritonUnavailable(RuntimeError):
    """Triton did not answer the front (starting, restarting or gone)."""


@dataclass
class ModelSpecs:
    triton_http: str  # host:port of Triton's loopback HTTP
    ttl_s: float = TTL_S
    _known: dict[str, tuple[float, ModelSpec | None]] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None
    _pending: dict[str, asyncio.Future] = field(default_factory=dict)
    # Models seen loaded: one missing later is being loaded again (the watchdog reloads a
    # model whose stub died; an ensemble is unavailable while a step is), not unknown.
    _seen: set[str] = field(default_factory=set)

    def forget(self) -> None:
        self._known.clear()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, model: str) -> ModelSpec | None:
        """The model's spec; None when Triton has no such model loaded."""
        now = time.monotonic()
        known = self._known.get(model)
        if known is not None and now - known[0] < self.ttl_s:
            return known[1]
        pending = self._pending.get(model)
        if pending is None:  # one question to Triton however many requests wait for it
            pending = asyncio.ensure_future(self._ask(model))
            self._pending[model] = pending
            pending.add_done_callback(lambda _: self._pending.pop(model, None))
        return await asyncio.shield(pending)

    async def _ask(self, model: str) -> ModelSpec | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        url = f"http://{self.triton_http}/v2/models/{quote(model, safe='')}"
        try:
            async with self._session.get(f"{url}/config") as response:
                config = await response.json(content_type=None) if response.ok else None
            metadata = None
            if config:  # the versions loaded
                async with self._session.get(url) as response:
                    metadata = await response.json(content_type=None) if response.ok else None
        except (TimeoutError, aiohttp.ClientError, ValueError) as err:
            raise TritonUnavailable(f"Triton did not answer: {err}") from err
        if not (config and metadata) and model in self._seen:
            raise TritonUnavailable(f"model '{model}' is not available right now (being "
                                    "loaded again); retry later")
        spec = (ModelSpec.from_config(config, metadata.get("versions", ()))
                if config and metadata else None)
        if spec is not None:
            self._seen.add(model)
        self._known[model] = (time.monotonic(), spec)
        return spec
