"""First step of fused_text: validate TEXT, TIMESTAMP and E4's optional SESSION and SEQUENCE,
scrub PII, count redactions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble.pii import TYPES, scrub_texts
from ensemble.serving.base import Adapter, RequestError, input_array, optional_array
from ensemble.serving.metrics import PII_REDACTIONS, LabelledCounter
from ensemble.validation import InvalidInput, Validator
from export.registry import (
    CLEAN_POSITION,
    CLEAN_SESSION,
    CLEAN_TEXT,
    CLEAN_TIMESTAMP,
    REDACTIONS,
    SEQUENCE,
    SESSION,
    TEXT,
    TIMESTAMP,
    Limits,
)


@dataclass(frozen=True)
class Item:
    """One request's validated inputs."""

    texts: list[str]
    timestamps: np.ndarray
    sessions: list[str]
    positions: np.ndarray


class TritonPythonModel(Adapter):
    def setup(self) -> None:
        p = self.params
        self.validator = Validator(Limits.from_parameters(p))
        self.redactions = LabelledCounter(
            PII_REDACTIONS, "PII spans replaced by a typed placeholder before embedding",
            "type", TYPES)

    def execute(self, requests):
        return self.run_batched(requests, self._read, self._clean)

    def _read(self, request) -> Item:
        try:
            texts = self.validator.texts(input_array(request, TEXT))
            stamps, sessions, positions = self.validator.times(
                len(texts), input_array(request, TIMESTAMP), optional_array(request, SESSION),
                optional_array(request, SEQUENCE))
        except InvalidInput as err:
            raise RequestError(str(err)) from err
        return Item(texts, stamps, sessions, positions)

    def _clean(self, items: list[Item]) -> list[dict[str, np.ndarray]]:
        outputs = []
        for item in items:
            clean, counts = scrub_texts(item.texts, self.validator.limits.pii_scrubbing)
            for kind, count in zip(TYPES, counts.sum(axis=0)):
                self.redactions.add(kind, count)
            outputs.append({
                CLEAN_TEXT: np.array([[t.encode("utf-8")] for t in clean], dtype=np.object_),
                CLEAN_TIMESTAMP: item.timestamps.reshape(-1, 1),
                CLEAN_SESSION: np.array([[x.encode("utf-8")] for x in item.sessions],
                                        dtype=np.object_).reshape(-1, 1),
                CLEAN_POSITION: item.positions.reshape(-1, 1),
                REDACTIONS: counts})
        return outputs
