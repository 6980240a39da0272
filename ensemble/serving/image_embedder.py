"""E10's vision tower: prepared images from many requests -> one batch -> E10 blocks."""

from __future__ import annotations

import numpy as np

from ensemble.serving.base import Adapter, input_array, split_rows
from ensemble.stages import ImageEmbedder
from export.registry import EMBEDDING, PIXELS, Runtime


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        self.embedder = ImageEmbedder(self.directory, Runtime.from_parameters(self.params),
                                      self.placement)
        self.log_placement(self.embedder.where, self.embedder.placement_notes)

    def execute(self, requests):
        return self.run_batched(requests, lambda r: input_array(r, PIXELS), self._embed)

    def _embed(self, per_request: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        vectors = self.embedder.embed(np.concatenate(per_request).astype(np.float32, copy=False))
        return [{EMBEDDING: v} for v in split_rows(vectors, [len(p) for p in per_request])]
