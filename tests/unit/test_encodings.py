"""FUSED's Matryoshka prefixes and compact encodings (ensemble/encodings.py), and the
request settings that choose them."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble import encodings
from ensemble.validation import InvalidInput, Validator

DIMS = (1536, 1024, 768, 512, 256, 128)


def _unit(n: int, d: int = 1536, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_prefix_is_the_head_of_the_vector_normalised_again():
    v = _unit(5)
    for d in DIMS:
        p = encodings.prefix(v, d)
        assert p.shape == (5, d)
        np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-6)
        cos = (p * v[:, :d]).sum(1) / np.linalg.norm(v[:, :d], axis=1)
        np.testing.assert_allclose(cos, 1.0, atol=1e-6)


def test_int8_codes_decode_to_the_vector_within_half_a_step():
    v = _unit(400)
    scales = encodings.calibrate(v, DIMS)
    for d in DIMS:
        p = encodings.prefix(v, d)
        codes = encodings.int8(p, scales[d])
        assert codes.dtype == np.int8 and codes.shape == (400, d)
        assert np.abs(codes.astype(int)).max() <= 127
        inside = np.abs(p) <= 127 * scales[d]  # the 0.1 % beyond the calibration clip
        assert inside.mean() > 0.99
        err = np.abs(codes * scales[d] - p)[inside]
        assert err.max() <= 0.5 * scales[d].max() + 1e-7
        # int8 dot products rank pairs as the cosines do
        sim = encodings.int8_similarity(codes[:200], codes[200:], scales[d])
        cos = (p[:200] * p[200:]).sum(1)
        assert np.corrcoef(sim, cos)[0, 1] > 0.99


def test_the_scaled_int8_similarity_follows_cosines_where_the_spreads_differ():
    # Matryoshka-ordered vectors: later dimensions spread far less than the first ones.
    rng = np.random.default_rng(5)
    v = rng.normal(size=(400, 256)) * np.geomspace(1.0, 0.01, 256)
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    scale = encodings.calibrate(v, (256,))[256]
    codes = encodings.int8(v, scale)
    cos = (v[:200] * v[200:]).sum(1)
    scaled = encodings.int8_similarity(codes[:200], codes[200:], scale)
    plain = encodings.int8_similarity(codes[:200], codes[200:])
    assert np.corrcoef(scaled, cos)[0, 1] > 0.99
    assert np.corrcoef(plain, cos)[0, 1] < np.corrcoef(scaled, cos)[0, 1] - 0.1


def test_binary_packs_signs_high_bit_first_and_its_similarity_is_the_sign_dot_product():
    v = np.zeros((1, 16), np.float32)
    v[0, 0] = 1.0  # first dimension -> the high bit of byte 0
    v[0, 15] = 2.0
    assert encodings.binary(v).tolist() == [[0b10000000, 0b00000001]]
    w = _unit(50, 256, seed=3)
    bits = encodings.binary(w)
    assert bits.shape == (50, 32) and bits.dtype == np.uint8
    signs = np.where(w > 0, 1, -1)
    expected = (signs[:25] * signs[25:]).sum(1)
    assert encodings.binary_similarity(bits[:25], bits[25:], 256).tolist() == expected.tolist()


def test_output_settings_default_to_the_full_float_vector():
    assert Validator().output_settings(3, None, None, DIMS, DIMS) == (1536, "float")
    d, e = Validator().output_settings(
        2, np.array([[256], [256]], np.int32), np.array([[b"binary"], [b"binary"]], object),
        DIMS, ())
    assert (d, e) == (256, "binary")


@pytest.mark.parametrize(("dims", "encoding", "message"), [
    ([[100]], None, r"DIMENSIONS\[0\]: 100 is not one of this checkpoint's sizes: 1536, 1024"),
    ([[256], [128]], None, r"DIMENSIONS\[1\]: 128 differs from DIMENSIONS\[0\] \(256\)"),
    (None, [[b"fp16"]], r"ENCODING\[0\]: 'fp16' is not one of float, int8, binary"),
    (None, [[b"int8"], [b"float"]], r"ENCODING\[1\]: 'float' differs"),
    (None, [[b"\xff"]], r"ENCODING\[0\]: not valid UTF-8"),
    ([[512]], [[b"int8"]], r"ENCODING\[0\]: int8 needs a calibrated scale.*512 dimensions"),
])
def test_bad_output_settings_name_the_field_and_the_limit(dims, encoding, message):
    rows = len(dims if dims is not None else encoding)
    with pytest.raises(InvalidInput, match=message):
        Validator().output_settings(
            rows, None if dims is None else np.array(dims, np.int32),
            None if encoding is None else np.array(encoding, object), DIMS, (1536, 256))


def test_a_checkpoint_without_matryoshka_offers_only_its_full_size():
    with pytest.raises(InvalidInput, match="sizes: 1536$"):
        Validator().output_settings(1, np.array([[256]], np.int32), None, (1536,), ())


def test_a_checkpoints_sizes_and_scales_round_trip_through_its_manifest(tmp_path):
    import torch

    from ensemble import fusemoe
    from export.registry import FuseMoEConfig

    small = FuseMoEConfig(gate_hidden=16, expert_hidden=64, output_dim=256)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = fusemoe.FuseMoE(small)
    scales = encodings.calibrate(_unit(100, 256), (256, 128))
    offered = fusemoe.Outputs((256, 128), scales)
    manifest = fusemoe.save(model, tmp_path / "ck", "v1", extra=offered.manifest_fields())
    back = fusemoe.Outputs.of(manifest, small)
    assert back.dimensions == (256, 128)
    for d in (256, 128):
        np.testing.assert_array_equal(back.int8_scale[d], scales[d])
    plain = fusemoe.save(model, tmp_path / "plain", "v0")
    assert fusemoe.Outputs.of(plain, small) == fusemoe.Outputs((256,), {})


def test_encoded_gives_each_encoding_with_its_own_similarity():
    rng = np.random.default_rng(5)
    v = rng.normal(size=(6, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    scale = np.full(16, 0.01, dtype=np.float32)
    out = encodings.encoded(v, 16, scale)
    assert list(out) == ["float", "int8", "binary"]
    head = encodings.prefix(v, 16)
    codes, similarity = out["float"]
    np.testing.assert_array_equal(codes, head)
    np.testing.assert_allclose(similarity(codes[:3], codes[3:]), (head[:3] * head[3:]).sum(-1),
                               rtol=1e-6)
    codes, similarity = out["int8"]
    np.testing.assert_array_equal(codes, encodings.int8(head, scale))
    np.testing.assert_allclose(similarity(codes[:3], codes[3:]),
                               encodings.int8_similarity(codes[:3], codes[3:], scale))
    codes, similarity = out["binary"]
    np.testing.assert_array_equal(codes, encodings.binary(head))
    signs = np.where(head > 0, 1, -1)
    assert similarity(codes[:3], codes[3:]).tolist() == (signs[:3] * signs[3:]).sum(-1).tolist()
    assert list(encodings.encoded(v, 16)) == ["float", "binary"]  # int8 needs a scale


def test_int8_similarity_multiplies_in_int32_and_weights_by_the_squared_scale():
    a = np.array([[127, -127, 3]], dtype=np.int8)
    b = np.array([[127, 127, 2]], dtype=np.int8)
    plain = encodings.int8_similarity(a, b)
    assert plain.tolist() == [127 * 127 - 127 * 127 + 6]
    scale = np.array([0.5, 0.25, 2.0], dtype=np.float32)
    weighted = encodings.int8_similarity(a, b, scale)
    assert weighted.dtype == np.float64
    np.testing.assert_allclose(weighted, [127 * 127 * 0.25 - 127 * 127 * 0.0625 + 6 * 4])


def test_binary_similarity_counts_only_the_first_d_bits():
    a = np.packbits(np.array([[1, 1, 1, 0, 0, 0, 0, 0, 1, 1]], dtype=bool), axis=-1)
    b = np.packbits(np.array([[1, 0, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=bool), axis=-1)
    assert encodings.binary_similarity(a, b, 8).tolist() == [8 - 2]
    assert encodings.binary_similarity(a, b, 10).tolist() == [10 - 2 * 3]
    assert encodings.binary_similarity(a, b, 10).dtype == np.int64


def test_a_prefix_of_a_zero_vector_stays_zero_and_is_float32():
    out = encodings.prefix(np.zeros((1, 8), dtype=np.float64), 4)
    assert out.dtype == np.float32 and out.shape == (1, 4) and not out.any()


def test_one_vector_is_encoded_and_scored_as_a_row_of_a_batch_is():
    """A 1-D vector and a stack of batches (3-D) work along their last axis, as a batch does:
    a client scoring a single pair or a [queries, candidates, d] block gets the same numbers."""
    rng = np.random.default_rng(7)
    batch = rng.normal(size=(2, 3, 24)).astype(np.float32)
    flat = batch.reshape(6, 24)
    np.testing.assert_allclose(encodings.prefix(batch, 16).reshape(6, 16),
                               encodings.prefix(flat, 16), rtol=1e-6)
    np.testing.assert_allclose(encodings.prefix(flat[0], 16), encodings.prefix(flat, 16)[0],
                               rtol=1e-6)
    for d in (16, 24):
        head = encodings.prefix(flat, d)
        assert encodings.binary(head[0]).tolist() == encodings.binary(head)[0].tolist()
        packed = encodings.binary(encodings.prefix(batch, d))
        assert packed.shape == (2, 3, d // 8)
        signs = np.where(encodings.prefix(batch, d) > 0, 1, -1)
        scores = encodings.binary_similarity(packed[0], packed[1], d)
        assert scores.tolist() == (signs[0] * signs[1]).sum(-1).tolist()
        one = encodings.binary_similarity(packed[0, 0], packed[1, 0], d)
        assert int(one) == int(scores[0])
        codes = np.rint(encodings.prefix(batch, d) * 100).astype(np.int8)
        assert encodings.int8_similarity(codes[0], codes[1]).tolist() == (
            codes[0].astype(np.int64) * codes[1]).sum(-1).tolist()
        assert int(encodings.int8_similarity(codes[0, 0], codes[1, 0])) == int(
            (codes[0, 0].astype(np.int64) * codes[1, 0]).sum())
        pair = encodings.encoded(batch, d)
        v, similarity = pair["float"]
        np.testing.assert_allclose(similarity(v[0], v[1]), (v[0] * v[1]).sum(-1), rtol=1e-6)
        assert similarity(v[0], v[1]).shape == (3,)
        np.testing.assert_allclose(similarity(v[0, 0], v[1, 0]), v[0, 0] @ v[1, 0], rtol=1e-6)


def test_int8_similarity_without_a_scale_is_the_exact_integer_dot_product():
    a = np.full((1, 1536), 127, dtype=np.int8)
    b = np.full((1, 1536), -127, dtype=np.int8)
    plain = encodings.int8_similarity(a, b)
    assert plain.dtype.kind == "i" and plain.tolist() == [-127 * 127 * 1536]


def test_int8_similarity_weights_in_float64_whatever_the_scale_came_as():
    rng = np.random.default_rng(3)
    a = rng.integers(-127, 128, size=(4, 64)).astype(np.int8)
    b = rng.integers(-127, 128, size=(4, 64)).astype(np.int8)
    scale = (rng.uniform(0.001, 0.02, size=64)).astype(np.float32)  # not exact in binary
    want = (a.astype(np.float64) * b) @ np.square(scale.astype(np.float64))
    np.testing.assert_allclose(encodings.int8_similarity(a, b, scale), want, rtol=1e-13)
