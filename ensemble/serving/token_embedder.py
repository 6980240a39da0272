"""Neural embedder: ragged input_ids/attention_mask from many requests -> one padded batch.

E6 (SPLADE) also sends its vocabulary-sized vector's terms, and E12 (ColBERT) its token
vectors, to the requests that ask for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble.native import sparse_rows, token_rows
from ensemble.serving.base import (
    Adapter,
    RequestError,
    input_array,
    optional_array,
    read_kinds,
    truncation_allowed,
)
from ensemble.stages import (
    FamilyTokenizer,
    TokenBatch,
    TokenEmbedder,
    merge,
    token_fault,
    version_dir,
)
from ensemble.validation import InvalidInput, Validator
from export.registry import (
    ATTENTION_MASK,
    EMBEDDING,
    FLAG,
    INPUT_IDS,
    SPARSE_INDICES,
    SPARSE_TOP_K,
    SPARSE_WEIGHTS,
    TOKEN_VECTOR_COUNT,
    TOKEN_VECTORS,
    Kind,
    Runtime,
    embedder,
    tokenizer_family,
)


@dataclass(frozen=True)
class Item:
    """One request: its tokens, kinds, and whether it asked for the model's own output:
    (E6) how many SPLADE terms per row, None when it did not ask for them; (E12) the token
    vectors."""

    batch: TokenBatch
    kinds: list[Kind]
    sparse_top_k: np.ndarray | None = None
    token_vectors: bool = False

    @property
    def wants_native(self) -> bool:
        return self.sparse_top_k is not None or self.token_vectors


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        self.embedder = TokenEmbedder(embedder(self.params["block_id"]), self.directory,
                                      Runtime.from_parameters(self.params), self.placement)
        self.validator = Validator()
        # Tokens may come from a client calling this model directly: ids past the tokenizer's
        # vocabulary are refused per request (the embedding table may be larger, never
        # smaller). The tokenizer is its family's model in the repository this version
        # folder belongs to (resolved: a variant repository links the project's folders).
        family = tokenizer_family(self.embedder.spec.tokenizer or "")
        self.vocabulary = FamilyTokenizer(
            version_dir(self.directory.resolve().parent.parent, family.triton_model),
            family).vocabulary_size
        self.log_placement(self.embedder.where, self.embedder.placement_notes)

    def execute(self, requests):
        return self.run_batched(requests, self._read, self._embed)

    def _read(self, request) -> Item:
        batch = TokenBatch(input_array(request, INPUT_IDS), input_array(request, ATTENTION_MASK))
        fault = token_fault(batch, self.vocabulary)
        if fault:
            raise RequestError(fault)
        rows = batch.input_ids.shape[0]
        kinds = read_kinds(request, rows)
        if not truncation_allowed(request):
            refusal = self.embedder.limits.refusal(batch, kinds)
            if refusal:
                raise RequestError(refusal)
        if not self.embedder.has_native:
            return Item(batch, kinds)
        wanted = set(request.requested_output_names())
        top_k = None
        if self.embedder.projection is not None and {SPARSE_INDICES, SPARSE_WEIGHTS} & wanted:
            try:
                top_k = self.validator.sparse_top_k(rows, optional_array(request, SPARSE_TOP_K),
                                                    self.embedder.projection.shape[0])
            except InvalidInput as err:
                raise RequestError(str(err)) from err
        return Item(batch, kinds, top_k, bool({TOKEN_VECTORS, TOKEN_VECTOR_COUNT} & wanted))

    def _embed(self, items: list[Item]) -> list[dict[str, np.ndarray]]:
        merged = merge([i.batch for i in items], self.embedder.pad_id)
        kinds = [k for i in items for k in i.kinds]
        native = None
        if any(i.wants_native for i in items):
            vectors, cut, native = self.embedder.embed_native(merged, kinds)
        else:
            vectors, cut = self.embedder.embed_with_flags(merged, kinds)
        counts = [i.batch.input_ids.shape[0] for i in items]
        starts = np.cumsum([0, *counts])
        outputs = []
        for start, end, item in zip(starts, starts[1:], items):
            out = {EMBEDDING: vectors[start:end], FLAG: cut[start:end].reshape(-1, 1)}
            if native is not None and item.sparse_top_k is not None:
                out[SPARSE_INDICES], out[SPARSE_WEIGHTS] = sparse_rows(
                    np.array(native[start:end]).reshape(end - start, -1), item.sparse_top_k)
            if native is not None and item.token_vectors:
                out[TOKEN_VECTORS], out[TOKEN_VECTOR_COUNT] = token_rows(
                    native[start:end], self.embedder.spec.dim)
            outputs.append(out)
        return outputs
