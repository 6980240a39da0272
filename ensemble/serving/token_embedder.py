"""Neural embedder: ragged input_ids/attention_mask from many requests -> one padded batch."""

from __future__ import annotations

import numpy as np

from ensemble.serving.base import (
    Adapter,
    RequestError,
    input_array,
    optional_array,
    optional_texts,
    split_rows,
)
from ensemble.stages import TokenBatch, TokenEmbedder, merge
from export.registry import (
    ATTENTION_MASK,
    EMBEDDING,
    FLAG,
    INPUT_IDS,
    KIND,
    TRUNCATE,
    Kind,
    Runtime,
    embedder,
)

KINDS = {k.value: k for k in Kind}


def read_kinds(request, rows: int) -> list[Kind]:
    """The optional KIND input: one of "query" | "passage" per row; passages by default."""
    texts = optional_texts(request, KIND)
    if texts is None:
        return [Kind.PASSAGE] * rows
    if len(texts) != rows:
        raise RequestError(f"{KIND}: {len(texts)} values for {rows} texts")
    bad = [t for t in texts if t not in KINDS]
    if bad:
        raise RequestError(f"{KIND}: must be 'query' or 'passage', got {bad[0]!r}")
    return [KINDS[t] for t in texts]


def truncation_allowed(request) -> bool:
    flags = optional_array(request, TRUNCATE)
    return True if flags is None else bool(np.all(flags))


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        self.embedder = TokenEmbedder(embedder(self.params["block_id"]), self.directory,
                                      Runtime.from_parameters(self.params), self.placement)
        self.log_placement(self.embedder.where, self.embedder.placement_notes)

    def execute(self, requests):
        return self.run_batched(requests, self._read, self._embed)

    def _read(self, request) -> tuple[TokenBatch, list[Kind]]:
        batch = TokenBatch(input_array(request, INPUT_IDS), input_array(request, ATTENTION_MASK))
        kinds = read_kinds(request, batch.input_ids.shape[0])
        if not truncation_allowed(request):
            refusal = self.embedder.limits.refusal(batch, kinds)
            if refusal:
                raise RequestError(refusal)
        return batch, kinds

    def _embed(self, items: list[tuple[TokenBatch, list[Kind]]]) -> list[dict[str, np.ndarray]]:
        batches = [b for b, _ in items]
        kinds = [k for _, ks in items for k in ks]
        vectors, cut = self.embedder.embed_with_flags(merge(batches, self.embedder.pad_id), kinds)
        counts = [b.input_ids.shape[0] for b in batches]
        return [{EMBEDDING: v, FLAG: f.reshape(-1, 1)}
                for v, f in zip(split_rows(vectors, counts), split_rows(cut, counts))]
