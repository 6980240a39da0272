"""The source models' own outputs, beside the blocks fused into FUSED.

SPLADE (E6) is used through an inverted index: its vocabulary-sized vector, sent as the
indices and weights of its non-zero terms. ColBERT (E12) scores by MaxSim over its token
vectors, sent padded to the request's longest row with each row's count.
"""

from __future__ import annotations

import numpy as np


def sparse_rows(vectors: np.ndarray, top_k: np.ndarray | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Vocabulary-sized vectors [rows, vocabulary] -> (indices INT32, weights FP32), each
    [rows, width]: a row's non-zero terms by ascending index, only its ``top_k[row]``
    heaviest where that is above 0 (ties go to the lower index). Rows are padded to the
    longest with index -1 and weight 0; the width is at least 1, so a row without a term
    is all padding."""
    rows = vectors.shape[0]
    kept: list[np.ndarray] = []
    for i in range(rows):
        terms = np.flatnonzero(vectors[i] > 0)
        k = 0 if top_k is None else int(top_k[i])
        if 0 < k < terms.size:
            heaviest = np.argsort(-vectors[i, terms], kind="stable")[:k]
            terms = np.sort(terms[heaviest])
        kept.append(terms)
    width = max([1, *(t.size for t in kept)])
    indices = np.full((rows, width), -1, dtype=np.int32)
    weights = np.zeros((rows, width), dtype=np.float32)
    for i, terms in enumerate(kept):
        indices[i, :terms.size] = terms
        weights[i, :terms.size] = vectors[i, terms]
    return indices, weights


def token_rows(rows: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row token vectors [n_i, dim] -> (FP32 [rows, width, dim] padded with zero vectors,
    INT32 [rows, 1] counts n_i); the width is at least 1."""
    width = max([1, *(r.shape[0] for r in rows)])
    vectors = np.zeros((len(rows), width, dim), dtype=np.float32)
    for i, r in enumerate(rows):
        vectors[i, :r.shape[0]] = r
    return vectors, np.array([[r.shape[0]] for r in rows], dtype=np.int32).reshape(-1, 1)
