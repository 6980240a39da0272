"""Each built model equals the PyTorch module it came from, on a padded ragged batch."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble.stages import (
    TokenBatch,
    TokenEmbedder,
    length_bucket,
    token_fault,
    truncate,
    version_dir,
)
from export.architectures import architecture
from export.build import tokenizer_ids
from export.onnx_export import example_inputs
from export.registry import EMBEDDERS, Input, Runtime, embedder, tokenizer_family

NEURAL = [e for e in EMBEDDERS if e.input is Input.TOKENS]


@pytest.mark.parametrize("spec", NEURAL, ids=[e.id for e in NEURAL])
def test_built_model_matches_pytorch_on_a_padded_batch(spec, repository):
    """The served ONNX (or saved PyTorch) module equals the module it was built from."""
    family = tokenizer_family(spec.tokenizer)
    ids = tokenizer_ids(family, repository)
    served = TokenEmbedder(spec, version_dir(repository, spec.triton_model))
    arch = architecture(spec)
    if served.info["pretrained"]:
        module = arch.pretrained_module(spec, Path(served.info["checkpoint"]))
    else:
        module = arch.tiny_module(spec, ids)
    input_ids, mask = example_inputs(5, 37, ids.pad, ids.vocab_size, seed=11)
    with torch.no_grad():
        expected = module(input_ids, mask).numpy()
    actual = served.forward(TokenBatch(input_ids.numpy(), mask.numpy()))
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-4


def test_truncation_keeps_the_closing_token_like_the_tokenizer(repository):
    from ensemble.stages import FamilyTokenizer

    family = tokenizer_family("bert-uncased")
    tok = FamilyTokenizer(version_dir(repository, family.triton_model), family)
    texts = ["word " * 300, "short text", "a b c d e f g h i j k l"]
    full = tok.encode(texts)
    cut = truncate(full, 8)
    tok.tokenizer.enable_truncation(max_length=8)
    ref = tok.encode(texts)
    np.testing.assert_array_equal(cut.input_ids, ref.input_ids)
    np.testing.assert_array_equal(cut.attention_mask, ref.attention_mask)


def test_length_buckets_group_rows_by_their_token_count():
    lengths = np.array([3, 16, 17, 40, 600])
    assert length_bucket(lengths, (16, 32, 64)) == [0, 0, 1, 2, 3]
    assert length_bucket(lengths, ()) == [0] * 5


@pytest.mark.parametrize("block", ["E1", "E5", "E11"])
def test_length_buckets_and_threads_leave_the_vectors_unchanged(block, repository):
    """Bucketing pads each group only to its own longest row: same vectors, less padding."""
    spec = embedder(block)
    ids = tokenizer_ids(tokenizer_family(spec.tokenizer), repository)
    directory = version_dir(repository, spec.triton_model)
    plain = TokenEmbedder(spec, directory)
    tuned = TokenEmbedder(spec, directory, Runtime(threads=1, length_buckets=(8, 16, 32)))
    lengths = np.array([3, 40, 7, 12, 30, 8, 17, 5, 25])
    mask = (np.arange(40)[None, :] < lengths[:, None]).astype(np.int64)
    tokens = np.random.default_rng(5).integers(5, ids.vocab_size, size=mask.shape)
    batch = TokenBatch(np.where(mask == 1, tokens, ids.pad).astype(np.int64), mask)
    assert len(set(length_bucket(lengths, tuned.length_buckets))) == 4
    np.testing.assert_allclose(tuned.embed(batch), plain.embed(batch), atol=1e-5)


@pytest.mark.parametrize("block", ["E6", "E5", "E1"])
def test_a_token_budget_bounds_every_run_and_leaves_the_vectors_unchanged(block, repository):
    """A batch runs in pieces of at most ``max_batch_tokens`` tokens (SPLADE: of at most
    ``max_logits_mib`` MiB of [rows, tokens, vocabulary] logits), with the same vectors; a
    run over a quarter of the budget shrinks the arena."""
    spec = embedder(block)
    ids = tokenizer_ids(tokenizer_family(spec.tokenizer), repository)
    directory = version_dir(repository, spec.triton_model)
    plain = TokenEmbedder(spec, directory)
    bounded = TokenEmbedder(spec, directory, Runtime(max_batch_tokens=200, max_logits_mib=2,
                                                     length_buckets=()))
    budget = 200
    if block == "E6":  # 2 MiB of float32 logits over the vocabulary
        budget = 2 * 2 ** 20 // (bounded.projection.shape[0] * 4)
        assert bounded.max_batch_tokens == budget < 200
    runs: list[tuple[tuple[int, int], bool]] = []
    for model in (bounded, plain):
        if hasattr(model, "session"):
            real = model.session

            class Recording:
                def __init__(self, session, log):
                    self.session, self.log = session, log

                def run(self, names, feeds, options=None):
                    if self.log is not None:
                        self.log.append((feeds["input_ids"].shape, options is not None))
                    return self.session.run(names, feeds, options)

            model.session = Recording(real, runs if model is bounded else None)
    lengths = np.array([60, 9, 33, 60, 12, 48, 60, 5, 27, 41])
    mask = (np.arange(60)[None, :] < lengths[:, None]).astype(np.int64)
    tokens = np.random.default_rng(11).integers(5, ids.vocab_size, size=mask.shape)
    batch = TokenBatch(np.where(mask == 1, tokens, ids.pad).astype(np.int64), mask)
    np.testing.assert_allclose(bounded.embed(batch), plain.embed(batch), atol=1e-5)
    if "onnx" in bounded.runtime and bounded.runtime != "onnx+torch":
        assert len(runs) > 1
        assert all(rows * width <= max(budget, width) for (rows, width), _ in runs), runs
        assert all(shrunk == (rows * width > budget // 4) for (rows, width), shrunk in runs)


def test_tokens_sent_directly_are_checked_before_they_join_a_batch():
    ids = np.array([[101, 7592, 102]], dtype=np.int64)
    mask = np.ones_like(ids)
    assert token_fault(TokenBatch(ids, mask), 30522) is None
    assert token_fault(TokenBatch(np.zeros((1, 0), np.int64), np.zeros((1, 0), np.int64)),
                       30522) is None
    assert "30522 is outside" in token_fault(
        TokenBatch(np.array([[101, 30522, 102]]), mask), 30522)
    assert "-1 is outside" in token_fault(TokenBatch(ids - 102, mask), 30522)
    assert "attention_mask: shape [1, 2]" in token_fault(TokenBatch(ids, mask[:, :2]), 30522)
    assert "0 or 1" in token_fault(TokenBatch(ids, mask * 2), 30522)
