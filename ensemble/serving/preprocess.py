"""First step of fused_text: validate TEXT and TIMESTAMP, scrub PII, count redactions."""

from __future__ import annotations

import numpy as np

from ensemble.pii import TYPES, scrub_texts
from ensemble.serving.base import Adapter, RequestError, input_array
from ensemble.serving.metrics import PII_REDACTIONS, LabelledCounter
from ensemble.validation import InvalidInput, Validator
from export.registry import CLEAN_TEXT, CLEAN_TIMESTAMP, REDACTIONS, TEXT, TIMESTAMP, Limits


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        p = self.params
        self.validator = Validator(Limits(int(p["max_text_bytes"]), int(p["min_timestamp"]),
                                          int(p["max_timestamp"]),
                                          p.get("pii_scrubbing", "on") != "off"))
        self.redactions = LabelledCounter(
            PII_REDACTIONS, "PII spans replaced by a typed placeholder before embedding",
            "type", TYPES)

    def execute(self, requests):
        return self.run_batched(requests, self._read, self._clean)

    def _read(self, request) -> tuple[list[str], np.ndarray]:
        try:
            texts = self.validator.texts(input_array(request, TEXT))
            stamps = self.validator.timestamps(input_array(request, TIMESTAMP))
        except InvalidInput as err:
            raise RequestError(str(err)) from err
        if len(stamps) != len(texts):
            raise RequestError(f"{TIMESTAMP}: {len(stamps)} values for {len(texts)} texts")
        return texts, stamps

    def _clean(self, items: list[tuple[list[str], np.ndarray]]) -> list[dict[str, np.ndarray]]:
        outputs = []
        for texts, stamps in items:
            clean, counts = scrub_texts(texts, self.validator.limits.pii_scrubbing)
            for kind, count in zip(TYPES, counts.sum(axis=0)):
                self.redactions.add(kind, count)
            outputs.append({
                CLEAN_TEXT: np.array([[t.encode("utf-8")] for t in clean], dtype=np.object_),
                CLEAN_TIMESTAMP: stamps.reshape(-1, 1),
                REDACTIONS: counts})
        return outputs
