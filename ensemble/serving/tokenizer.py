"""Tokenizer model (one per family): TEXT -> input_ids, attention_mask (padded per request),
token_count."""

from __future__ import annotations

import numpy as np

from ensemble.serving.base import Adapter, decode_texts, input_array, split_rows
from ensemble.stages import FamilyTokenizer
from export.registry import ATTENTION_MASK, INPUT_IDS, TEXT, TOKEN_COUNT, tokenizer_family


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        family = tokenizer_family(self.params["tokenizer_family"])
        self.tokenizer = FamilyTokenizer(self.directory, family)

    def execute(self, requests):
        return self.run_batched(
            requests, lambda r: decode_texts(TEXT, input_array(r, TEXT)), self._tokenize)

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
