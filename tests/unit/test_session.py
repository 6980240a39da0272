"""E4's session and position: the optional SESSION and SEQUENCE inputs, validated, and what
they do to E4's two halves."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble.validation import InvalidInput, Validator
from export.custom_encoders import DEFAULT_SESSION, SESSION_DIM, temporal_positional
from export.registry import LIMITS
from fusedembed_client.client import request_tensors

T0 = 1_700_000_000


def test_without_session_and_sequence_e4_is_the_default_session_at_the_timestamp():
    v = Validator()
    stamps = np.array([T0, T0 + 60])
    assert v.sessions(2, None) == [DEFAULT_SESSION] * 2
    np.testing.assert_array_equal(v.positions(stamps, None), stamps)
    np.testing.assert_array_equal(v.positions(stamps, np.array([[3], [4]])), [3, 4])


def test_one_session_shares_its_half_and_positions_differ_in_theirs():
    vectors = temporal_positional(np.array([1, 2, 1, 1]), ["chat-1", "chat-1", "chat-2", ""])
    session, position = vectors[:, :SESSION_DIM], vectors[:, SESSION_DIM:]
    np.testing.assert_allclose(session[0], session[1], atol=1e-6)  # float32 rounding
    assert not np.allclose(position[0], position[1])
    for other in (2, 3):  # another session, the same position
        assert np.abs(session[0] - session[other]).max() > 0.05
        np.testing.assert_allclose(position[0] / np.linalg.norm(position[0]),
                                   position[other] / np.linalg.norm(position[other]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("raw,message", [
    (np.array([["x" * 257]], dtype=np.object_),
     r"SESSION\[0\]: 257 bytes exceed the limit of 256 bytes"),
    (np.array([[b"ok"], [b"\xff\xfe"]], dtype=np.object_), r"SESSION\[1\]: not valid UTF-8"),
    (np.array([[b"a"], [b"b"], [b"c"]], dtype=np.object_), r"SESSION: 3 rows for 2 texts"),
])
def test_a_bad_session_is_refused_naming_the_field_and_the_limit(raw, message):
    rows = 1 if raw.shape[0] == 1 else 2
    with pytest.raises(InvalidInput, match=message):
        Validator().sessions(rows, raw)


def test_a_session_of_exactly_the_limit_is_accepted():
    session = "é" * (LIMITS.max_session_bytes // 2)
    assert Validator().sessions(1, np.array([[session.encode()]], dtype=np.object_)) == [session]


@pytest.mark.parametrize("raw,message", [
    (np.array([[5], [-1]]), r"SEQUENCE\[1\]: -1 is outside 0\.\.1000000000000"),
    (np.array([[10**12 + 1], [0]]), r"SEQUENCE\[0\]: 1000000000001 is outside"),
    (np.array([[1]]), r"SEQUENCE: 1 rows for 2 texts"),
])
def test_a_bad_sequence_is_refused_naming_the_field_and_the_range(raw, message):
    with pytest.raises(InvalidInput, match=message):
        Validator().positions(np.array([T0, T0]), raw)


def test_the_client_sends_session_and_sequence_only_when_given():
    plain = {n: v for n, _, v in request_tensors(["a", "b"], [T0, T0])}
    assert "SESSION" not in plain and "SEQUENCE" not in plain
    given = {n: (t, v) for n, t, v in request_tensors(["a", "b"], [T0, T0],
                                                       sessions=["s", "é"], sequences=[1, 2])}
    assert given["SESSION"][0] == "BYTES" and given["SESSION"][1].tolist() == [[b"s"],
                                                                               ["é".encode()]]
    assert given["SEQUENCE"][0] == "INT64" and given["SEQUENCE"][1].tolist() == [[1], [2]]
