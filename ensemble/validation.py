"""Checks on the public inputs: every refusal names the field, the item and the limit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from export.registry import LIMITS, TEXT, TIMESTAMP, Limits


class InvalidInput(ValueError):
    """A request the service refuses; the message names the field and the limit."""


def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Validator:
    limits: Limits = LIMITS

    def texts(self, raw: np.ndarray) -> list[str]:
        out = []
        for i, item in enumerate(raw.reshape(-1)):
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            if len(data) > self.limits.max_text_bytes:
                raise InvalidInput(f"{TEXT}[{i}]: {len(data)} bytes exceed the limit of "
                                   f"{self.limits.max_text_bytes} bytes")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InvalidInput(f"{TEXT}[{i}]: not valid UTF-8 (byte {err.start})") from err
            if not text.strip():
                raise InvalidInput(f"{TEXT}[{i}]: empty or whitespace-only text")
            out.append(text)
        return out

    def timestamps(self, raw: np.ndarray) -> np.ndarray:
        stamps = np.asarray(raw, dtype=np.int64).reshape(-1)
        lo, hi = self.limits.min_timestamp, self.limits.max_timestamp
        bad = np.nonzero((stamps < lo) | (stamps > hi))[0]
        if bad.size:
            i = int(bad[0])
            raise InvalidInput(f"{TIMESTAMP}[{i}]: {int(stamps[i])} is outside the accepted range "
                               f"[{lo}, {hi}] Unix seconds ({_date(lo)} to {_date(hi)} UTC)")
        return stamps
