"""E2, E3, E4 (TIMESTAMP) and E9 (TEXT): deterministic encoders, batched across requests."""

from __future__ import annotations

import numpy as np

from ensemble.serving.base import Adapter, decode_texts, input_array, split_rows
from ensemble.stages import CustomEmbedder
from export.registry import EMBEDDING, TEXT, TIMESTAMP, Input, embedder


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        self.embedder = CustomEmbedder(embedder(self.params["block_id"]), self.directory)

    def execute(self, requests):
        if self.embedder.spec.input is Input.TEXT:
            return self.run_batched(
                requests, lambda r: decode_texts(TEXT, input_array(r, TEXT)), self._texts)
        return self.run_batched(
            requests, lambda r: input_array(r, TIMESTAMP).reshape(-1), self._times)

    def _texts(self, per_request: list[list[str]]) -> list[dict[str, np.ndarray]]:
        vectors = self.embedder.embed_texts([t for texts in per_request for t in texts])
        counts = [len(t) for t in per_request]
        return [{EMBEDDING: v} for v in split_rows(vectors, counts)]

    def _times(self, per_request: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        vectors = self.embedder.embed_times(np.concatenate(per_request))
        counts = [len(t) for t in per_request]
        return [{EMBEDDING: v} for v in split_rows(vectors, counts)]
