"""E6's SPLADE terms: extraction from the vocabulary-sized vector, SPARSE_TOP_K, the
vocabulary read back, and equality with SPLADE computed by transformers on the built model."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble.native import sparse_rows
from ensemble.stages import FamilyTokenizer, TokenEmbedder, version_dir
from ensemble.validation import InvalidInput, Validator
from export.hf_folders import hf_folder
from export.registry import Kind, embedder, tokenizer_family
from fusedembed_client import SparseTerms
from tests.reference import splade_reference

TEXTS = ["The quick brown fox jumps over the lazy dog!",
         "what is the capital of australia",
         "A girl is styling her hair.",
         " ".join(f"sentence {i} of a long document about serving models." for i in range(90))]


def test_terms_are_the_non_zeros_by_ascending_index_padded_to_the_longest_row():
    vectors = np.array([[0.0, 2.0, 0.0, 0.5, 1.0],
                        [0.0, 0.0, 3.0, 0.0, 0.0],
                        [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    indices, weights = sparse_rows(vectors)
    assert indices.dtype == np.int32 and weights.dtype == np.float32
    assert indices.tolist() == [[1, 3, 4], [2, -1, -1], [-1, -1, -1]]
    assert weights.tolist() == [[2.0, 0.5, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_top_k_keeps_the_heaviest_terms_of_each_row_ties_to_the_lower_index():
    vectors = np.array([[0.0, 2.0, 0.7, 0.5, 2.0, 0.1],
                        [0.3, 0.0, 0.0, 0.0, 0.0, 0.9]], dtype=np.float32)
    indices, weights = sparse_rows(vectors, np.array([2, 0]))
    assert indices.tolist() == [[1, 4], [0, 5]]  # k=0 keeps every term
    indices, weights = sparse_rows(vectors, np.array([1, 1]))
    assert indices.tolist() == [[1], [5]]
    assert weights.tolist() == [[2.0], [pytest.approx(0.9)]]
    indices, _ = sparse_rows(vectors, np.array([10, 3]))  # more than there are: all of them
    assert indices.tolist() == [[1, 2, 3, 4, 5], [0, 5, -1, -1, -1]]


def test_empty_request_keeps_one_column():
    indices, weights = sparse_rows(np.zeros((0, 7), dtype=np.float32))
    assert indices.shape == (0, 1) and weights.shape == (0, 1)


@pytest.mark.parametrize("value,message", [
    (np.array([[3], [-1]]), r"SPARSE_TOP_K\[1\]: -1 is outside 0\.\.100 \(0 keeps every term\)"),
    (np.array([[101], [1]]), r"SPARSE_TOP_K\[0\]: 101 is outside 0\.\.100"),
    (np.array([[1], [2], [3]]), r"SPARSE_TOP_K: 3 rows for 2 texts"),
])
def test_sparse_top_k_outside_its_range_is_refused_naming_it(value, message):
    with pytest.raises(InvalidInput, match=message):
        Validator().sparse_top_k(2, value, 100)


def test_sparse_top_k_defaults_to_every_term():
    assert Validator().sparse_top_k(3, None, 100).tolist() == [0, 0, 0]
    assert Validator().sparse_top_k(2, np.array([[0], [100]]), 100).tolist() == [0, 100]


def test_sparse_terms_dot_is_the_dense_dot_product():
    rng = np.random.default_rng(0)
    a, b = (np.where(rng.random(50) < 0.3, rng.random(50), 0).astype(np.float32)
            for _ in range(2))
    (ia, wa), (ib, wb) = (sparse_rows(v[None]) for v in (a, b))
    x, y = SparseTerms(ia[0][ia[0] >= 0], wa[0][ia[0] >= 0]), SparseTerms(ib[0][ib[0] >= 0],
                                                                          wb[0][ib[0] >= 0])
    assert x.dot(y) == pytest.approx(float(a @ b), rel=1e-6)
    np.testing.assert_array_equal(x.dense(50), a)


def test_vocabulary_read_back_is_the_tokenizers(repository):
    family = tokenizer_family(embedder("E6").tokenizer or "")
    tok = FamilyTokenizer(version_dir(repository, family.triton_model), family)
    ids = tok.encode(["the quick brown fox"]).input_ids[0]
    terms = tok.terms(np.append(ids, -1))
    assert terms[:-1] == [tok.tokenizer.id_to_token(int(i)) for i in ids] and terms[-1] == ""
    words = [t.removeprefix("##") for t in terms[:-1] if not t.startswith("[")]
    assert "".join(words) == "thequickbrownfox"
    assert tok.vocabulary_size == tok.tokenizer.get_vocab_size(with_added_tokens=True) > 1000


def assert_same_splade(served: np.ndarray, expected: np.ndarray) -> None:
    """Max abs diff at most 1e-4 over the union of the supports, and the same support but
    for weights below that tolerance (a logit within float error of zero)."""
    assert served.shape == expected.shape
    assert np.abs(served - expected).max() <= 1e-4
    differ = (served > 0) != (expected > 0)
    assert np.all(np.maximum(served, expected)[differ] <= 1e-4), np.argwhere(differ)[:5]
    assert (expected > 0).sum() > 0


@pytest.mark.parametrize("kind", [Kind.PASSAGE, Kind.QUERY], ids=["passage", "query"])
def test_served_splade_vector_equals_transformers_on_the_built_checkpoint(repository, kind,
                                                                          tmp_path_factory):
    """The model E6 serves (the tiny seeded checkpoint here, a real SPLADE when one was
    found at build time) against BertForMaskedLM's logits pooled as SPLADE's model card."""
    spec = embedder("E6")
    family = tokenizer_family(spec.tokenizer or "")
    stage = TokenEmbedder(spec, version_dir(repository, spec.triton_model))
    tokens = FamilyTokenizer(version_dir(repository, family.triton_model), family).encode(TEXTS)
    vectors, _, rows = stage.embed_native(tokens, [kind] * len(TEXTS))
    splade = np.stack(rows)
    np.testing.assert_allclose(vectors, stage.embed(tokens, [kind] * len(TEXTS)), atol=1e-6)
    folder = hf_folder(spec, repository, tmp_path_factory.mktemp("hf"))
    assert_same_splade(splade, splade_reference(folder, TEXTS))
