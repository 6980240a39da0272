"""The gateway's settings: typed, frozen, each overridable from the environment or the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    # Triton's gRPC endpoint (one channel, reused by every request).
    triton_url: str = "127.0.0.1:8001"
    host: str = "127.0.0.1"  # bound like Triton: loopback unless told otherwise
    port: int = 8080
    # Items of one request's `input` (OpenAI's own limit).
    max_inputs: int = 2048
    # A request body over this is refused (413) before it is parsed: 2048 texts of 4 KiB.
    max_body_bytes: int = 8 * 1024 * 1024
    # Texts being embedded at once, all requests together; a request that would go past it
    # is refused at once (429) instead of queueing without bound. A request alone is always
    # admitted (so the limit never refuses a valid request forever).
    max_inflight_texts: int = 2048
    # The same for the bytes of the request bodies being served: with the texts' limit, what
    # bounds the gateway's memory.
    max_inflight_bytes: int = 64 * 1024 * 1024
    # Requests of at most the ensemble's max_batch_size texts sent to Triton at once; the
    # entry points queue at most 32 each, so this leaves room for other clients.
    triton_concurrency: int = 16
    # No request waits longer than this for its vectors: 504 (Triton cancels the rest).
    timeout_s: float = 60.0
    # When set, every route but /health needs `Authorization: Bearer <api_key>` (else 401).
    # api_key_file names a file holding it (a mounted secret); empty: no key, as on loopback.
    api_key: str = ""
    api_key_file: str = ""
    # One log line per answer (request id, trace id, route, model, status, seconds); answers
    # of 5xx are logged either way.
    access_log: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """FUSEDEMBED_GATEWAY_<FIELD> (upper case) for every field; GATEWAY_PORT and
        FUSEDEMBED_HOST as the server uses them."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        aliases = {"port": "GATEWAY_PORT", "host": "FUSEDEMBED_HOST"}
        for f in fields(cls):
            raw = env.get(f"FUSEDEMBED_GATEWAY_{f.name.upper()}", env.get(aliases.get(f.name, "")))
            if raw is None or raw == "":
                continue
            kind = type(getattr(cls, f.name))
            try:
                values[f.name] = _boolean(raw) if kind is bool else kind(raw)
            except ValueError as err:
                raise ValueError(f"{f.name}: {raw!r} is not a valid {kind.__name__}") from err
        return cls(**values).checked()

    def checked(self) -> Settings:
        for name in ("max_inputs", "max_body_bytes", "max_inflight_texts", "max_inflight_bytes",
                     "triton_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 < self.timeout_s <= 3600:
            raise ValueError(f"timeout_s must be in (0, 3600], not {self.timeout_s}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, not {self.port}")
        if self.api_key_file and not self.api_key:
            try:
                key = Path(self.api_key_file).read_text().strip()
            except OSError as err:
                raise ValueError(f"api_key_file: cannot read {self.api_key_file}: "
                                 f"{err.strerror}") from err
            if not key:
                raise ValueError(f"api_key_file: {self.api_key_file} is empty")
            return replace(self, api_key=key)
        return self


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
