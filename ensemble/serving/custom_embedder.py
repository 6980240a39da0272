"""E2, E3, E4 (TIMESTAMP; E4 also an optional SESSION) and E9 (TEXT): deterministic encoders,
batched across requests."""

from __future__ import annotations

import numpy as np

from ensemble.serving.base import (
    Adapter,
    decode_texts,
    input_array,
    optional_texts,
    split_rows,
)
from ensemble.stages import CustomEmbedder
from export.custom_encoders import DEFAULT_SESSION
from export.registry import EMBEDDING, SESSION, TEXT, TIMESTAMP, Input, embedder


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        self.embedder = CustomEmbedder(embedder(self.params["block_id"]), self.directory)

    def execute(self, requests):
        if self.embedder.spec.input is Input.TEXT:
            return self.run_batched(
                requests, lambda r: decode_texts(TEXT, input_array(r, TEXT)), self._texts)
        return self.run_batched(requests, self._read_times, self._times)

    def _read_times(self, request) -> tuple[np.ndarray, list[str]]:
        """Positions (E2, E3: the timestamps) and, for E4, each row's session."""
        positions = input_array(request, TIMESTAMP).reshape(-1)
        sessions = optional_texts(request, SESSION) or [DEFAULT_SESSION] * len(positions)
        return positions, sessions

    def _texts(self, per_request: list[list[str]]) -> list[dict[str, np.ndarray]]:
        vectors = self.embedder.embed_texts([t for texts in per_request for t in texts])
        counts = [len(t) for t in per_request]
        return [{EMBEDDING: v} for v in split_rows(vectors, counts)]

    def _times(self, per_request: list[tuple[np.ndarray, list[str]]],
               ) -> list[dict[str, np.ndarray]]:
        vectors = self.embedder.embed_times(np.concatenate([p for p, _ in per_request]),
                                            [s for _, sessions in per_request for s in sessions])
        counts = [len(p) for p, _ in per_request]
        return [{EMBEDDING: v} for v in split_rows(vectors, counts)]
