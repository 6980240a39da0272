"""E5's exact path: banded dense attention + the global first token equals LongformerModel.

The reference is transformers' ``LongformerModel`` with global attention on the first token
(what the source model's users run); the served E5 runs the exported banded path for texts
of up to one attention window and the reference module for longer ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensemble.stages import TokenBatch, TokenEmbedder, version_dir
from export.architectures import LongformerBanded, LongformerMeanPooled, architecture
from export.build import tokenizer_ids
from export.registry import embedder, tokenizer_family

SPEC = embedder("E5")


def _batch(lengths: list[int], pad: int, vocab: int, seed: int) -> tuple[torch.Tensor, ...]:
    width = max(lengths)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return torch.where(mask.bool(), ids, torch.full_like(ids, pad)), mask


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def e5(repository):
    ids = tokenizer_ids(tokenizer_family(SPEC.tokenizer), repository)
    module = architecture(SPEC).tiny_module(SPEC, ids)
    # Distinct global projections: a path that used the local ones would be caught.
    with torch.no_grad():
        for layer in module.model.encoder.layer:
            for name in ("query_global", "key_global", "value_global"):
                getattr(layer.attention.self, name).weight.mul_(-1.7)
    return module, ids


def test_banded_path_equals_the_reference_up_to_one_window(e5):
    """Lengths inside half a window (every pair in the band) and past it (the band masks
    pairs), padded batches of varied lengths."""
    module, ids = e5
    banded = LongformerBanded(module.model).eval()
    window = module.model.config.attention_window[0]
    assert banded.exact_limit == window
    half = window // 2
    for seed, lengths in enumerate(([half + 2, 2, 5, half, 3], [window] * 3,
                                    [1, half + 3, window - 1, window])):
        input_ids, mask = _batch(lengths, ids.pad, ids.vocab_size, seed)
        with torch.no_grad():
            expected = LongformerMeanPooled(module.model)(input_ids, mask).numpy()
            actual = banded(input_ids, mask).numpy()
        assert _cosines(expected, actual).min() >= 0.9999
        assert np.abs(expected - actual).max() <= 1e-5


def test_the_band_matters_past_half_a_window(e5):
    """Plain dense attention (no band) equals the reference only while every pair lies
    inside the band: one window long, it does not."""
    module, ids = e5
    dense = LongformerBanded(module.model).eval()
    dense.one_sided = [10**6] * len(dense.one_sided)
    window = module.model.config.attention_window[0]
    for n, same in ((window // 2 + 2, True), (window, False)):
        input_ids, mask = _batch([n], ids.pad, ids.vocab_size, seed=3)
        with torch.no_grad():
            expected = LongformerMeanPooled(module.model)(input_ids, mask).numpy()
            actual = dense(input_ids, mask).numpy()
        assert (np.abs(expected - actual).max() <= 1e-5) == same


def test_served_e5_equals_the_reference_on_short_and_long_texts(e5, repository):
    """The built E5 (ONNX banded path + PyTorch module) on a padded batch mixing texts inside
    and far past the window equals LongformerModel row by row, and batched == one by one."""
    _module, ids = e5
    served = TokenEmbedder(SPEC, version_dir(repository, SPEC.triton_model))
    reference = LongformerMeanPooled(architecture(SPEC).tiny_module(SPEC, ids).model).eval()
    limit = served.exact_limit
    assert served.runtime == "onnx+torch" and limit is not None
    lengths = [3, limit, 40, limit + 1, 7, 130, 2]
    input_ids, mask = _batch(lengths, ids.pad, ids.vocab_size, seed=7)
    with torch.no_grad():
        expected = reference(input_ids, mask).numpy()
    batch = TokenBatch(input_ids.numpy(), mask.numpy())
    actual = served.forward(batch)
    assert _cosines(expected, actual).min() >= 0.9999
    one_by_one = np.concatenate([
        served.forward(TokenBatch(input_ids[i:i + 1, :n].numpy(), mask[i:i + 1, :n].numpy()))
        for i, n in enumerate(lengths)])
    np.testing.assert_allclose(actual, one_by_one, atol=1e-5)
