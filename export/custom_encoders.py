"""Deterministic encoders without learned weights: E2, E3, E4 (time) and E9 (HDC).

Time is Unix seconds (int64). float32 resolves such values only to about 128 s, so every
phase is computed in float64 and only the final unit vector is cast to float32.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from export.artifacts import load_numpy, save_numpy

SECOND = 1.0
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
MONTH = 30 * DAY
YEAR = 365 * DAY
CENTURY = 100 * YEAR


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _as_seconds(timestamps: np.ndarray) -> np.ndarray:
    return np.asarray(timestamps, dtype=np.int64).reshape(-1).astype(np.float64)


def _sin_cos(angles: np.ndarray) -> np.ndarray:
    """[B, n] angles -> [B, 2n] interleaved (sin, cos) pairs."""
    out = np.empty((angles.shape[0], angles.shape[1] * 2), dtype=np.float64)
    out[:, 0::2] = np.sin(angles)
    out[:, 1::2] = np.cos(angles)
    return out


# E2 -------------------------------------------------------------------------------------
RECENT_PAIRS = 256
# Geometric periods from one second to a century: every scale from "which second" to
# "which decade" has a few sinusoids that resolve it.
RECENT_PERIODS = np.geomspace(SECOND, CENTURY, RECENT_PAIRS)


def temporal_recent(timestamps: np.ndarray) -> np.ndarray:
    """E2: sinusoids of absolute time at geometric scales, [B] -> [B, 512]."""
    t = _as_seconds(timestamps)[:, None]
    angles = 2.0 * np.pi * np.mod(t, RECENT_PERIODS) / RECENT_PERIODS
    return l2_normalize(_sin_cos(angles))


# E3 -------------------------------------------------------------------------------------
PERIODIC_PERIODS = np.array([HOUR, DAY, WEEK, MONTH, YEAR])
PERIODIC_HARMONICS = 51
PERIODIC_DIM = 512


def temporal_periodic(timestamps: np.ndarray) -> np.ndarray:
    """E3: 51 harmonics of 5 cycles as sin/cos (510 values) plus 2 zero pads, [B] -> [B, 512]."""
    t = _as_seconds(timestamps)[:, None]
    phase = np.mod(t, PERIODIC_PERIODS) / PERIODIC_PERIODS  # [B, 5] in [0, 1)
    harmonics = np.arange(1, PERIODIC_HARMONICS + 1, dtype=np.float64)
    angles = 2.0 * np.pi * (phase[:, :, None] * harmonics).reshape(len(t), -1)
    codes = _sin_cos(angles)
    out = np.zeros((len(t), PERIODIC_DIM), dtype=np.float64)
    out[:, : codes.shape[1]] = codes
    return l2_normalize(out)


# E4 -------------------------------------------------------------------------------------
SESSION_DIM = 256
POSITION_DIM = 256
SESSION_KEY = b"fusedembed/e04/session/v1"
DEFAULT_SESSION = ""


def session_signature(session_id: str) -> np.ndarray:
    """A stable keyed hash of a session id, expanded to 256 values in [-1, 1]."""
    out = bytearray()
    counter = 0
    while len(out) < SESSION_DIM:
        h = hashlib.blake2b(session_id.encode("utf-8"), key=SESSION_KEY, digest_size=64,
                            person=counter.to_bytes(16, "little"))
        out.extend(h.digest())
        counter += 1
    raw = np.frombuffer(bytes(out[:SESSION_DIM]), dtype=np.uint8).astype(np.float64)
    return raw / 127.5 - 1.0


def temporal_positional(positions: np.ndarray,
                        session_ids: list[str] | None = None) -> np.ndarray:
    """E4: [session signature (256) || transformer-style encoding of a position (256)].

    ``positions`` is a sequence number or, when a request has none, its timestamp.
    """
    p = _as_seconds(positions)[:, None]
    if session_ids is None:
        session_ids = [DEFAULT_SESSION] * len(p)
    session = np.stack([session_signature(s) for s in session_ids])
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, POSITION_DIM, 2, dtype=np.float64) / POSITION_DIM))
    position = _sin_cos(p * inv_freq)
    return l2_normalize(np.concatenate([session, position], axis=1))


# E9 -------------------------------------------------------------------------------------
HDC_BITS = 10_000
HDC_BUCKETS = 1024
HDC_DIRECT_CODEPOINTS = 1024  # code points below this have their own base vector
HDC_TABLE = 2 * HDC_DIRECT_CODEPOINTS  # the rest share 1024 hashed slots
HDC_SEED = 90_001
HDC_VERSION = "hdc-v1"
HDC_STEM = "hdc_base"
HDC_CHUNK = 4096  # trigrams bundled per step, bounds memory on long texts


def make_hdc_base(seed: int = HDC_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded base hypervectors [2048, 10000] (bool) and a tie-break vector [10000]."""
    rng = np.random.Generator(np.random.PCG64(seed))
    base = rng.integers(0, 2, size=(HDC_TABLE, HDC_BITS), dtype=np.uint8).astype(bool)
    tie = rng.integers(0, 2, size=HDC_BITS, dtype=np.uint8).astype(bool)
    return base, tie


def save_hdc_base(directory: Path, seed: int = HDC_SEED) -> None:
    base, tie = make_hdc_base(seed)
    save_numpy(directory, HDC_STEM, HDC_VERSION,
               {"base": np.packbits(base, axis=1), "tie": np.packbits(tie)},
               extra={"seed": seed, "bits": HDC_BITS, "table": HDC_TABLE})


class HdcEncoder:
    """E9: character-trigram hyperdimensional code, text -> [1024] in unit norm."""

    def __init__(self, base: np.ndarray, tie: np.ndarray) -> None:
        self.base = base
        self.rot1 = np.roll(base, 1, axis=1)  # permutation rho
        self.rot2 = np.roll(base, 2, axis=1)  # rho twice
        self.tie = tie
        edges = np.linspace(0, HDC_BITS, HDC_BUCKETS + 1).astype(np.int64)
        self.bucket_starts = edges[:-1]
        self.bucket_sizes = np.diff(edges).astype(np.float64)

    @classmethod
    def load(cls, directory: Path) -> HdcEncoder:
        tensors = load_numpy(directory, HDC_STEM, HDC_VERSION)
        base = np.unpackbits(tensors["base"], axis=1)[:, :HDC_BITS].astype(bool)
        tie = np.unpackbits(tensors["tie"])[:HDC_BITS].astype(bool)
        return cls(base, tie)

    @staticmethod
    def char_index(text: str) -> np.ndarray:
        cp = np.fromiter((ord(c) for c in text), dtype=np.int64, count=len(text))
        hashed = HDC_DIRECT_CODEPOINTS + cp % HDC_DIRECT_CODEPOINTS
        return np.where(cp < HDC_DIRECT_CODEPOINTS, cp, hashed)

    def encode_one(self, text: str) -> np.ndarray:
        if len(text) < 3:
            text = text.ljust(3)
        idx = self.char_index(text)
        a, b, c = idx[:-2], idx[1:-1], idx[2:]
        counts = np.zeros(HDC_BITS, dtype=np.int64)
        for start in range(0, len(a), HDC_CHUNK):
            s = slice(start, start + HDC_CHUNK)
            bound = self.rot2[a[s]] ^ self.rot1[b[s]] ^ self.base[c[s]]
            counts += bound.sum(axis=0)
        n = len(a)
        bits = np.where(2 * counts == n, self.tie, 2 * counts > n)
        bipolar = bits.astype(np.float64) * 2.0 - 1.0
        buckets = np.add.reduceat(bipolar, self.bucket_starts) / self.bucket_sizes
        return l2_normalize(buckets)

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.encode_one(t) for t in texts]) if texts else np.zeros(
            (0, HDC_BUCKETS), dtype=np.float32)
