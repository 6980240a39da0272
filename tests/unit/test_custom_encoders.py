import numpy as np
import pytest

from export import custom_encoders as c
from export.artifacts import ArtifactError

T0 = 1_700_000_000


@pytest.mark.parametrize("fn", [c.temporal_recent, c.temporal_periodic, c.temporal_positional])
def test_time_codes_are_unit_512_and_deterministic(fn):
    ts = np.array([0, T0, T0 + 1, -86_400, 4_102_444_800])
    a, b = fn(ts), fn(ts.copy())
    assert a.shape == (5, 512) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(a, b)


def test_recent_resolves_one_second_at_present_day_times():
    # float32 time would map these to the same value (about 128 s resolution near 1.7e9).
    a, b = c.temporal_recent(np.array([T0, T0 + 1]))
    assert np.float32(T0) == np.float32(T0 + 1)
    assert 1.0 - float(a @ b) > 1e-4
    near, far = c.temporal_recent(np.array([T0 + 60, T0 + 86_400 * 365]))
    assert a @ near > a @ far


def test_periodic_has_510_codes_and_two_zero_pads():
    v = c.temporal_periodic(np.array([T0]))[0]
    assert np.all(v[510:] == 0) and np.count_nonzero(v[:510]) > 400


def test_periodic_blocks_repeat_with_their_cycle():
    # Values 0..101 code the hour (51 sin/cos pairs), 102..203 the day.
    a, hour_later, day_later = c.temporal_periodic(np.array([T0, T0 + 3600, T0 + 86400]))
    np.testing.assert_allclose(a[:102], hour_later[:102], atol=1e-6)
    assert np.abs(a[102:204] - hour_later[102:204]).max() > 1e-2
    np.testing.assert_allclose(a[:204], day_later[:204], atol=1e-6)


def test_positional_separates_sessions():
    same = c.temporal_positional(np.array([5, 5]), ["s1", "s1"])
    other = c.temporal_positional(np.array([5]), ["s2"])
    assert float(same[0] @ same[1]) == pytest.approx(1.0, abs=1e-6)
    assert float(same[0] @ other[0]) < 0.9


@pytest.fixture(scope="module")
def hdc(tmp_path_factory):
    d = tmp_path_factory.mktemp("hdc")
    c.save_hdc_base(d)
    return d


def test_hdc_is_unit_norm_and_similarity_tracks_shared_trigrams(hdc):
    enc = c.HdcEncoder.load(hdc)
    v = enc.encode(["the server answers requests", "the server answers a request",
                    "completely unrelated words here", "ab", "日本語のテキスト"])
    assert v.shape == (5, 1024)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]


def test_hdc_base_vectors_are_verified_at_load(hdc):
    data = hdc / "hdc_base.safetensors"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="sha256"):
        c.HdcEncoder.load(hdc)
