"""First step of fused_text: validate every input, scrub PII, count redactions.

Every mistake of the caller that a later step would refuse is refused here, before the
embedders run: TEXT, TIMESTAMP, E4's SESSION and SEQUENCE, KIND, the gate controls,
SPARSE_TOP_K, and (TRUNCATE=false) a text over any token embedder's limit. On Triton 2.51 a
step that refuses its request while other steps of the same ensemble request are still
running can leave one of those steps' instances waiting for good: its next requests stall
(seen here with KIND and TRUNCATE refused by the token embedders; the watchdog restarted
tritonserver). Only FuseMoE, the last step, still refuses DIMENSIONS and ENCODING, which
depend on its checkpoint; nothing else runs beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble.pii import TYPES, scrub_texts
from ensemble.serving.base import (
    Adapter,
    RequestError,
    input_array,
    optional_array,
    read_kinds,
    truncation_allowed,
)
from ensemble.serving.metrics import PII_REDACTIONS, LabelledCounter
from ensemble.stages import FamilyTokenizer, TokenLimits, splade_vocabulary, version_dir
from ensemble.validation import InvalidInput, Validator
from export.registry import (
    CLEAN_POSITION,
    CLEAN_SESSION,
    CLEAN_TEXT,
    CLEAN_TIMESTAMP,
    EMBEDDERS,
    FOCUS,
    PRESENCE,
    REDACTIONS,
    SEQUENCE,
    SESSION,
    SPARSE_TOP_K,
    TEMPERATURE,
    TEXT,
    TIMESTAMP,
    TOP_K,
    Limits,
    Pooling,
)


@dataclass(frozen=True)
class Item:
    """One request's validated inputs, its texts scrubbed."""

    texts: list[str]
    redactions: np.ndarray  # [rows, PII types]
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
        # The repository Triton loaded (not resolved: a variant links the project's folders
        # and serves its own embedders beside them).
        repository = self.directory.parent.parent
        self.token_limits = TokenLimits.read(repository)
        self.tokenizers = {f.name: FamilyTokenizer(version_dir(repository, f.triton_model), f)
                           for f in self.token_limits.families}
        splade = next(e for e in EMBEDDERS if e.pooling is Pooling.SPLADE_MAX)
        self.sparse_terms = splade_vocabulary(version_dir(repository, splade.triton_model))

    def execute(self, requests):
        return self.run_batched(requests, self._read, self._clean)

    def _read(self, request) -> Item:
        try:
            texts = self.validator.texts(input_array(request, TEXT))
            rows = len(texts)
            stamps, sessions, positions = self.validator.times(
                rows, input_array(request, TIMESTAMP), optional_array(request, SESSION),
                optional_array(request, SEQUENCE))
            self.validator.controls(rows, optional_array(request, TOP_K),
                                    optional_array(request, TEMPERATURE),
                                    optional_array(request, FOCUS),
                                    optional_array(request, PRESENCE))
            sparse_top_k = optional_array(request, SPARSE_TOP_K)
            if sparse_top_k is not None:
                self.validator.sparse_top_k(rows, sparse_top_k, self.sparse_terms)
        except InvalidInput as err:
            raise RequestError(str(err)) from err
        kinds = read_kinds(request, rows)
        clean, counts = scrub_texts(texts, self.validator.limits.pii_scrubbing)
        if not truncation_allowed(request):
            refusal = self.token_limits.refusal(
                {name: t.encode(clean) for name, t in self.tokenizers.items()}, kinds)
            if refusal:
                raise RequestError(refusal)
        return Item(clean, counts, stamps, sessions, positions)

    def _clean(self, items: list[Item]) -> list[dict[str, np.ndarray]]:
        outputs = []
        for item in items:
            for kind, count in zip(TYPES, item.redactions.sum(axis=0)):
                self.redactions.add(kind, count)
            outputs.append({
                CLEAN_TEXT: np.array([[t.encode("utf-8")] for t in item.texts],
                                     dtype=np.object_),
                CLEAN_TIMESTAMP: item.timestamps.reshape(-1, 1),
                CLEAN_SESSION: np.array([[x.encode("utf-8")] for x in item.sessions],
                                        dtype=np.object_).reshape(-1, 1),
                CLEAN_POSITION: item.positions.reshape(-1, 1),
                REDACTIONS: item.redactions})
        return outputs
