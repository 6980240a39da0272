"""Tokenizer model (one per family): TEXT -> input_ids, attention_mask (padded per request),
token_count; or IDS -> TERMS, the vocabulary's entries (how a client reads SPLADE's terms)."""

from __future__ import annotations

import numpy as np

from ensemble.serving.base import (
    Adapter,
    RequestError,
    decode_texts,
    optional_array,
    split_rows,
)
from ensemble.stages import FamilyTokenizer
from export.registry import (
    ATTENTION_MASK,
    IDS,
    INPUT_IDS,
    TERMS,
    TEXT,
    TOKEN_COUNT,
    tokenizer_family,
)


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        family = tokenizer_family(self.params["tokenizer_family"])
        self.tokenizer = FamilyTokenizer(self.directory, family)

    def execute(self, requests):
        return self.run_batched(requests, self._read, self._run)

    def _read(self, request) -> list[str] | np.ndarray:
        """The texts to tokenize, or (IDS) the ids to read back."""
        text, ids = optional_array(request, TEXT), optional_array(request, IDS)
        if (text is None) == (ids is None):
            raise RequestError(f"send {TEXT} (texts to tokenize) or {IDS} (ids to read back), "
                               "one of the two")
        if text is not None:
            return decode_texts(TEXT, text)
        size = self.tokenizer.vocabulary_size
        flat = ids.reshape(-1)
        for j in np.nonzero((flat < -1) | (flat >= size))[0][:1]:
            raise RequestError(f"{IDS}[{j}]: {int(flat[j])} is outside 0..{size - 1} "
                               "(-1: padding)")
        return ids

    def _run(self, items: list[list[str] | np.ndarray]) -> list[dict[str, np.ndarray]]:
        texts = [i for i in items if isinstance(i, list)]
        encoded = iter(self._tokenize(texts) if texts else [])
        return [next(encoded) if isinstance(i, list) else
                {TERMS: np.array([t.encode("utf-8") for t in self.tokenizer.terms(i)],
                                 dtype=np.object_).reshape(i.shape)}
                for i in items]

    def _tokenize(self, per_request: list[list[str]]) -> list[dict[str, np.ndarray]]:
        batch = self.tokenizer.encode([t for texts in per_request for t in texts])
        counts = [len(texts) for texts in per_request]
        outputs = []
        for ids, mask in zip(split_rows(batch.input_ids, counts),
                             split_rows(batch.attention_mask, counts)):
            lengths = mask.sum(axis=1)
            width = int(lengths.max(initial=0))  # each request padded to its own max
            outputs.append({INPUT_IDS: ids[:, :width], ATTENTION_MASK: mask[:, :width],
                            TOKEN_COUNT: lengths.reshape(-1, 1)})
        return outputs
