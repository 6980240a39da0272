"""Neural embedder: ragged input_ids/attention_mask from many requests -> one padded batch."""

from __future__ import annotations

import numpy as np

from ensemble.serving.base import Adapter, input_array, split_rows
from ensemble.stages import TokenBatch, TokenEmbedder, merge
from export.registry import ATTENTION_MASK, EMBEDDING, INPUT_IDS, embedder


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        threads = int(self.params.get("threads", "0"))
        self.embedder = TokenEmbedder(embedder(self.params["block_id"]), self.directory, threads)

    def execute(self, requests):
        return self.run_batched(requests, self._read, self._embed)

    @staticmethod
    def _read(request) -> TokenBatch:
        return TokenBatch(input_array(request, INPUT_IDS), input_array(request, ATTENTION_MASK))

    def _embed(self, batches: list[TokenBatch]) -> list[dict[str, np.ndarray]]:
        vectors = self.embedder.embed(merge(batches, self.embedder.pad_id))
        counts = [b.input_ids.shape[0] for b in batches]
        return [{EMBEDDING: v} for v in split_rows(vectors, counts)]
