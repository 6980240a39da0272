"""Checks on the public inputs: every refusal names the field, the item and the limit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from export.custom_encoders import DEFAULT_SESSION
from export.registry import (
    DIMENSIONS,
    EMBEDDERS,
    ENCODING,
    ENCODINGS,
    FOCUS,
    FROM_IMAGE,
    FUSEMOE,
    LIMITS,
    PRESENCE,
    SEQUENCE,
    SESSION,
    SPARSE_TOP_K,
    TEMPERATURE,
    TEXT,
    TIMESTAMP,
    TOP_K,
    Limits,
)


class InvalidInput(ValueError):
    """A request the service refuses; the message names the field and the limit."""


def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class GateControls:
    """Per-item gate settings, validated: what FuseMoE's forward takes."""

    top_k: np.ndarray  # [B] int64, 1..num_experts
    temperature: np.ndarray  # [B] float32
    focus: np.ndarray  # [B, 12] float32, >= 0
    presence: np.ndarray  # [B, 12] bool
    from_image: np.ndarray  # [B] bool: E10 came from the image tower (fused_image)

    @classmethod
    def concat(cls, parts: list[GateControls]) -> GateControls:
        """The controls of many requests, row after row (one batched forward)."""
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("top_k", "temperature", "focus", "presence", "from_image")))


def _utf8(field: str, item: bytes | str, max_bytes: int) -> str:
    """A BYTES item as text: at most ``max_bytes`` bytes of valid UTF-8."""
    data = item if isinstance(item, bytes) else str(item).encode("utf-8")
    if len(data) > max_bytes:
        raise InvalidInput(f"{field}: {len(data)} bytes exceed the limit of {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidInput(f"{field}: not valid UTF-8 (byte {err.start})") from err


def _rows(name: str, value: np.ndarray, rows: int, width: int) -> np.ndarray:
    if value.shape[0] != rows:
        raise InvalidInput(f"{name}: {value.shape[0]} rows for {rows} texts")
    return value.reshape(rows, width)


@dataclass(frozen=True)
class Validator:
    limits: Limits = LIMITS

    def texts(self, raw: np.ndarray) -> list[str]:
        out = []
        for i, item in enumerate(raw.reshape(-1)):
            text = _utf8(f"{TEXT}[{i}]", item, self.limits.max_text_bytes)
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

    def sessions(self, rows: int, raw: np.ndarray | None) -> list[str]:
        """SESSION per row: UTF-8 of at most max_session_bytes; "" (the default session)
        when absent."""
        if raw is None:
            return [DEFAULT_SESSION] * rows
        return [_utf8(f"{SESSION}[{i}]", item, self.limits.max_session_bytes)
                for i, item in enumerate(_rows(SESSION, np.asarray(raw), rows, 1).reshape(-1))]

    def positions(self, timestamps: np.ndarray, raw: np.ndarray | None) -> np.ndarray:
        """E4's position per row: SEQUENCE (0..max_sequence) where given, else the row's
        (validated) timestamp."""
        if raw is None:
            return np.asarray(timestamps, dtype=np.int64).reshape(-1)
        seq = _rows(SEQUENCE, np.asarray(raw), len(timestamps), 1).reshape(-1).astype(np.int64)
        for i in np.nonzero((seq < 0) | (seq > self.limits.max_sequence))[0][:1]:
            raise InvalidInput(f"{SEQUENCE}[{i}]: {int(seq[i])} is outside "
                               f"0..{self.limits.max_sequence}")
        return seq

    def times(self, rows: int, timestamps: np.ndarray, sessions: np.ndarray | None,
              sequences: np.ndarray | None, items: str = "texts",
              ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """The time inputs of ``rows`` items: TIMESTAMP (one per item), E4's SESSION and its
        position (SEQUENCE, else the timestamp)."""
        stamps = self.timestamps(timestamps)
        if len(stamps) != rows:
            raise InvalidInput(f"{TIMESTAMP}: {len(stamps)} values for {rows} {items}")
        return stamps, self.sessions(rows, sessions), self.positions(stamps, sequences)

    def sparse_top_k(self, rows: int, top_k: np.ndarray | None, vocabulary: int) -> np.ndarray:
        """SPARSE_TOP_K per row: 0 (every term) by default, else 1..vocabulary."""
        if top_k is None:
            return np.zeros(rows, dtype=np.int64)
        k = _rows(SPARSE_TOP_K, np.asarray(top_k), rows, 1).reshape(-1).astype(np.int64)
        for i in np.nonzero((k < 0) | (k > vocabulary))[0][:1]:
            raise InvalidInput(f"{SPARSE_TOP_K}[{i}]: {int(k[i])} is outside 0..{vocabulary} "
                               "(0 keeps every term)")
        return k

    def controls(self, rows: int, top_k: np.ndarray | None = None,
                 temperature: np.ndarray | None = None, focus: np.ndarray | None = None,
                 presence: np.ndarray | None = None,
                 from_image: np.ndarray | None = None) -> GateControls:
        """The optional gate inputs of ``rows`` items, defaults filled in."""
        lim, blocks, experts = self.limits, len(EMBEDDERS), FUSEMOE.num_experts
        k = (np.full(rows, FUSEMOE.top_k, dtype=np.int64) if top_k is None
             else _rows(TOP_K, np.asarray(top_k), rows, 1).reshape(-1).astype(np.int64))
        for i in np.nonzero((k < 1) | (k > experts))[0][:1]:
            raise InvalidInput(f"{TOP_K}[{i}]: {int(k[i])} is outside 1..{experts}")
        t = (np.full(rows, FUSEMOE.temperature, dtype=np.float32) if temperature is None
             else _rows(TEMPERATURE, np.asarray(temperature), rows, 1).reshape(-1))
        bad = ~np.isfinite(t) | (t < lim.min_temperature) | (t > lim.max_temperature)
        for i in np.nonzero(bad)[0][:1]:
            raise InvalidInput(f"{TEMPERATURE}[{i}]: {float(t[i])} is outside "
                               f"[{lim.min_temperature}, {lim.max_temperature}]")
        f = (np.ones((rows, blocks), dtype=np.float32) if focus is None
             else _rows(FOCUS, np.asarray(focus), rows, blocks).astype(np.float32))
        bad_f = ~np.isfinite(f) | (f < 0) | (f > lim.max_focus)
        for i, j in np.argwhere(bad_f)[:1]:
            raise InvalidInput(f"{FOCUS}[{i}][{j}] ({EMBEDDERS[j].id}): {float(f[i, j])} is "
                               f"outside [0, {lim.max_focus}]")
        p = (np.ones((rows, blocks), dtype=bool) if presence is None
             else _rows(PRESENCE, np.asarray(presence), rows, blocks).astype(bool))
        for i in np.nonzero(~((f > 0) & p).any(axis=1))[0][:1]:
            raise InvalidInput(f"{FOCUS}[{i}] / {PRESENCE}[{i}]: no block left to fuse; at "
                               f"least one present block needs a focus above 0")
        image = (np.zeros(rows, dtype=bool) if from_image is None
                 else _rows(FROM_IMAGE, np.asarray(from_image), rows, 1).reshape(-1).astype(bool))
        return GateControls(k, t.astype(np.float32), f, p, image)

    def output_settings(self, rows: int, dimensions: np.ndarray | None,
                        encoding: np.ndarray | None, offered: tuple[int, ...],
                        int8_dimensions: tuple[int, ...]) -> tuple[int, str]:
        """A request's DIMENSIONS (one of ``offered``; default the largest) and ENCODING
        (default "float"; "int8" where ``int8_dimensions`` holds its size): one value for
        every row of the request, whose answer is one tensor."""
        d = max(offered)
        if dimensions is not None:
            v = _rows(DIMENSIONS, np.asarray(dimensions), rows, 1).reshape(-1)
            if (v != v[0]).any():
                i = int(np.nonzero(v != v[0])[0][0])
                raise InvalidInput(f"{DIMENSIONS}[{i}]: {int(v[i])} differs from "
                                   f"{DIMENSIONS}[0] ({int(v[0])}); one size per request")
            if int(v[0]) not in offered:
                raise InvalidInput(f"{DIMENSIONS}[0]: {int(v[0])} is not one of this "
                                   f"checkpoint's sizes: {', '.join(map(str, offered))}")
            d = int(v[0])
        name = ENCODINGS[0]
        if encoding is not None:
            e = _rows(ENCODING, np.asarray(encoding, dtype=np.object_), rows, 1).reshape(-1)
            values = [_utf8(f"{ENCODING}[{i}]", x, 16) for i, x in enumerate(e)]
            for i, value in enumerate(values):
                if value not in ENCODINGS:
                    raise InvalidInput(f"{ENCODING}[{i}]: {value!r} is not one of "
                                       f"{', '.join(ENCODINGS)}")
                if value != values[0]:
                    raise InvalidInput(f"{ENCODING}[{i}]: {value!r} differs from "
                                       f"{ENCODING}[0] ({values[0]!r}); one encoding per "
                                       "request")
            name = values[0] if values else name
        if name == "int8" and d not in int8_dimensions:
            raise InvalidInput(f"{ENCODING}[0]: int8 needs a calibrated scale, and this "
                               f"checkpoint has none for {d} dimensions")
        return d, name
