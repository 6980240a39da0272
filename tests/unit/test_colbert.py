"""E12's ColBERT token vectors: equal to ColBERT's reference per token, for queries and
passages; the block is their mean; MaxSim ranks as the reference ranks; padding of a request."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble.native import token_rows
from export.registry import Kind
from fusedembed_client import maxsim
from tests.reference import colbert_reference, colbert_token_reference

TEXTS = ["The quick brown fox jumps over the lazy dog!",
         "what is the capital of australia?",
         "Canberra is the capital city of Australia; Sydney is its largest city.",
         "A girl is styling her hair.",
         " ".join(f"sentence {i}, of a long document about serving models." for i in range(40))]


def assert_same_tokens(served: list[np.ndarray], expected: list[np.ndarray]) -> None:
    """The same number of vectors per text, each at cosine >= 0.9999 to the reference's."""
    assert [len(v) for v in served] == [len(v) for v in expected]
    for mine, theirs in zip(served, expected):
        assert mine.shape[1] == 128
        np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-5)
        assert np.min(np.sum(mine * theirs, axis=1)) >= 0.9999


@pytest.mark.parametrize("kind", [Kind.PASSAGE, Kind.QUERY], ids=["passage", "query"])
def test_token_vectors_equal_colberts_reference_code(colbert, kind):
    """A query keeps its 32 vectors ([MASK] augmentation included); a passage its tokens but
    its punctuation (the long one cut to 180 tokens first)."""
    stage, tokenizer, folder = colbert
    vectors, cut, tokens = stage.embed_native(tokenizer.encode(TEXTS), [kind] * len(TEXTS))
    expected = colbert_token_reference(folder, TEXTS, kind)
    assert_same_tokens(tokens, expected)
    if kind is Kind.QUERY:
        assert {len(t) for t in tokens} == {32}
    else:
        assert len(tokens[0]) < len(tokenizer.encode(TEXTS[:1]).input_ids[0]) + 1  # "!" left out
        assert cut.tolist() == [False] * 4 + [True] and len(tokens[-1]) < 180
    # The block is the mean of the kept vectors, L2, as before the vectors were an output.
    mean = np.stack([t.mean(axis=0) for t in tokens])
    np.testing.assert_allclose(vectors, mean / np.linalg.norm(mean, axis=1, keepdims=True),
                               atol=1e-6)
    assert np.min(np.sum(vectors * colbert_reference(folder, TEXTS, kind), axis=1)) >= 0.9999
    np.testing.assert_allclose(vectors, stage.embed(tokenizer.encode(TEXTS),
                                                    [kind] * len(TEXTS)), atol=1e-6)


def test_maxsim_ranks_documents_as_the_reference_does(colbert):
    stage, tokenizer, folder = colbert
    query, documents = TEXTS[1], TEXTS[:1] + TEXTS[2:]
    _, _, (q,) = stage.embed_native(tokenizer.encode([query]), [Kind.QUERY])
    _, _, docs = stage.embed_native(tokenizer.encode(documents))
    scores = maxsim(q, docs)
    expected = maxsim(colbert_token_reference(folder, [query], Kind.QUERY)[0],
                      colbert_token_reference(folder, documents, Kind.PASSAGE))
    np.testing.assert_allclose(scores, expected, atol=1e-3)
    assert np.argsort(-scores).tolist() == np.argsort(-expected).tolist()


def test_maxsim_is_the_sum_of_each_query_tokens_best_match():
    query = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    documents = [np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32),
                 np.array([[0.0, 1.0]], dtype=np.float32),
                 np.zeros((0, 2), dtype=np.float32)]
    np.testing.assert_allclose(maxsim(query, documents), [1.0 + 0.8, 0.0 + 1.0, 0.0])


def test_token_rows_pad_with_zero_vectors_and_count_each_row():
    rows = [np.ones((3, 4), np.float32), np.full((1, 4), 2, np.float32), np.zeros((0, 4))]
    vectors, counts = token_rows(rows, 4)
    assert vectors.shape == (3, 3, 4) and vectors.dtype == np.float32
    assert counts.dtype == np.int32 and counts.reshape(-1).tolist() == [3, 1, 0]
    assert vectors[1, 0].tolist() == [2] * 4 and not vectors[1, 1:].any() and not vectors[2].any()
    assert token_rows([], 4)[0].shape == (0, 1, 4)
