"""The public inputs' checks (ensemble/validation.py): each limit is accepted at its edge and
refused one past it, with a message that names the field, the item and the limit."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble.validation import GateControls, InvalidInput, Validator
from export.registry import EMBEDDERS, FUSEMOE, Limits

LIM = Limits()
V = Validator()
BLOCKS = len(EMBEDDERS)


def refused(call, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        call()
    assert str(err.value) == message


def column(values, dtype=None) -> np.ndarray:
    return np.array([[v] for v in values], dtype=dtype)


# --- TEXT -----------------------------------------------------------------------------------

def test_texts_are_decoded_in_order_from_bytes_or_str():
    raw = np.array([[b"caf\xc3\xa9"], ["plain str"], [b" padded "]], dtype=np.object_)
    assert V.texts(raw) == ["café", "plain str", " padded "]


def test_a_text_of_exactly_the_byte_limit_is_accepted_and_one_more_byte_is_not():
    edge = b"a" * LIM.max_text_bytes
    assert V.texts(np.array([[edge]], dtype=np.object_)) == ["a" * LIM.max_text_bytes]
    raw = np.array([[b"ok"], [edge + b"a"]], dtype=np.object_)
    refused(lambda: V.texts(raw),
            f"TEXT[1]: {LIM.max_text_bytes + 1} bytes exceed the limit of "
            f"{LIM.max_text_bytes} bytes")


def test_a_text_is_measured_in_utf8_bytes_not_characters():
    small = Validator(Limits(max_text_bytes=4))
    assert small.texts(np.array([["éé"]], dtype=np.object_)) == ["éé"]  # 4 bytes
    refused(lambda: small.texts(np.array([["ééé"]], dtype=np.object_)),
            "TEXT[0]: 6 bytes exceed the limit of 4 bytes")


def test_invalid_utf8_names_the_item_and_the_byte():
    raw = np.array([[b"fine"], [b"ab\xffcd"]], dtype=np.object_)
    refused(lambda: V.texts(raw), "TEXT[1]: not valid UTF-8 (byte 2)")


@pytest.mark.parametrize("blank", [b"", b" ", b"\t\n \r"])
def test_an_empty_or_blank_text_is_refused(blank):
    raw = np.array([[b"x"], [b"y"], [blank]], dtype=np.object_)
    refused(lambda: V.texts(raw), "TEXT[2]: empty or whitespace-only text")


# --- TIMESTAMP ------------------------------------------------------------------------------

def test_timestamps_at_both_edges_are_accepted_as_int64():
    stamps = V.timestamps(column([LIM.min_timestamp, 0, LIM.max_timestamp]))
    assert stamps.dtype == np.int64 and stamps.tolist() == [LIM.min_timestamp, 0,
                                                            LIM.max_timestamp]


@pytest.mark.parametrize(("value", "row"), [(LIM.min_timestamp - 1, 1), (LIM.max_timestamp + 1, 2)])
def test_a_timestamp_one_past_an_edge_is_refused_with_the_range_in_dates(value, row):
    stamps = [0, 0, 0]
    stamps[row] = value
    refused(lambda: V.timestamps(column(stamps, np.int64)),
            f"TIMESTAMP[{row}]: {value} is outside the accepted range "
            f"[{LIM.min_timestamp}, {LIM.max_timestamp}] Unix seconds "
            "(1900-01-01 to 2100-01-01 UTC)")


def test_the_first_bad_timestamp_is_the_one_named():
    refused(lambda: V.timestamps(column([0, -(2 ** 62), 2 ** 62], np.int64)),
            f"TIMESTAMP[1]: {-(2 ** 62)} is outside the accepted range "
            f"[{LIM.min_timestamp}, {LIM.max_timestamp}] Unix seconds "
            "(1900-01-01 to 2100-01-01 UTC)")


def test_times_need_one_timestamp_per_item():
    refused(lambda: V.times(3, column([1, 2]), None, None),
            "TIMESTAMP: 2 values for 3 texts")
    refused(lambda: V.times(1, column([1, 2]), None, None, items="images"),
            "TIMESTAMP: 2 values for 1 images")


def test_times_default_to_the_shared_session_and_the_timestamp_as_position():
    stamps, sessions, positions = V.times(2, column([5, 7]), None, None)
    assert stamps.tolist() == [5, 7] and sessions == ["", ""]
    assert positions.dtype == np.int64 and positions.tolist() == [5, 7]


# --- SESSION and SEQUENCE -------------------------------------------------------------------

def test_sessions_are_decoded_per_row_and_limited_in_bytes():
    raw = np.array([[b"alpha"], ["beta"]], dtype=np.object_)
    assert V.sessions(2, raw) == ["alpha", "beta"]
    assert V.sessions(1, np.array([[b"s" * LIM.max_session_bytes]], dtype=np.object_)) == [
        "s" * LIM.max_session_bytes]
    refused(lambda: V.sessions(2, np.array([[b"ok"], [b"s" * (LIM.max_session_bytes + 1)]],
                                           dtype=np.object_)),
            f"SESSION[1]: {LIM.max_session_bytes + 1} bytes exceed the limit of "
            f"{LIM.max_session_bytes} bytes")
    refused(lambda: V.sessions(2, np.array([[b"\xc3"], [b"x"]], dtype=np.object_)),
            "SESSION[0]: not valid UTF-8 (byte 0)")


def test_a_session_needs_one_row_per_item():
    refused(lambda: V.sessions(3, np.array([[b"a"], [b"b"]], dtype=np.object_)),
            "SESSION: 2 rows for 3 texts")


def test_sequences_are_positions_from_zero_to_the_limit():
    positions = V.positions(np.array([9, 9, 9]), column([0, 7, LIM.max_sequence], np.int64))
    assert positions.dtype == np.int64 and positions.tolist() == [0, 7, LIM.max_sequence]
    refused(lambda: V.positions(np.array([9, 9]), column([0, -1], np.int64)),
            f"SEQUENCE[1]: -1 is outside 0..{LIM.max_sequence}")
    refused(lambda: V.positions(np.array([9]), column([LIM.max_sequence + 1], np.int64)),
            f"SEQUENCE[0]: {LIM.max_sequence + 1} is outside 0..{LIM.max_sequence}")
    refused(lambda: V.positions(np.array([9, 9]), column([1], np.int64)),
            "SEQUENCE: 1 rows for 2 texts")


# --- SPARSE_TOP_K ---------------------------------------------------------------------------

def test_sparse_top_k_defaults_to_every_term_and_is_bounded_by_the_vocabulary():
    k = V.sparse_top_k(3, None, 100)
    assert k.dtype == np.int64 and k.tolist() == [0, 0, 0]
    assert V.sparse_top_k(3, column([0, 1, 100]), 100).tolist() == [0, 1, 100]
    refused(lambda: V.sparse_top_k(2, column([5, 101]), 100),
            "SPARSE_TOP_K[1]: 101 is outside 0..100 (0 keeps every term)")
    refused(lambda: V.sparse_top_k(1, column([-1]), 100),
            "SPARSE_TOP_K[0]: -1 is outside 0..100 (0 keeps every term)")
    refused(lambda: V.sparse_top_k(2, column([1]), 100), "SPARSE_TOP_K: 1 rows for 2 texts")


# --- gate controls --------------------------------------------------------------------------

def test_controls_default_to_the_checkpoint_s_settings():
    c = V.controls(2)
    assert c.top_k.dtype == np.int64 and c.top_k.tolist() == [FUSEMOE.top_k] * 2
    assert c.temperature.dtype == np.float32
    assert c.temperature.tolist() == [FUSEMOE.temperature] * 2
    assert c.focus.dtype == np.float32 and c.focus.shape == (2, BLOCKS)
    assert np.all(c.focus == 1)
    assert c.presence.dtype == bool and c.presence.shape == (2, BLOCKS) and c.presence.all()
    assert c.from_image.dtype == bool and c.from_image.tolist() == [False, False]


def test_top_k_is_one_to_the_number_of_experts():
    experts = FUSEMOE.num_experts
    assert V.controls(2, top_k=column([1, experts])).top_k.tolist() == [1, experts]
    refused(lambda: V.controls(2, top_k=column([1, 0])), f"TOP_K[1]: 0 is outside 1..{experts}")
    refused(lambda: V.controls(1, top_k=column([experts + 1])),
            f"TOP_K[0]: {experts + 1} is outside 1..{experts}")
    refused(lambda: V.controls(2, top_k=column([2])), "TOP_K: 1 rows for 2 texts")


def test_temperature_is_finite_and_inside_its_range():
    t = V.controls(2, temperature=column([LIM.min_temperature, LIM.max_temperature],
                                         np.float64)).temperature
    assert t.dtype == np.float32
    np.testing.assert_allclose(t, [LIM.min_temperature, LIM.max_temperature])
    for value in (0.04, 20.5, np.nan, np.inf):
        refused(lambda v=value: V.controls(2, temperature=column([1.0, v], np.float32)),
                f"TEMPERATURE[1]: {float(np.float32(value))} is outside "
                f"[{LIM.min_temperature}, {LIM.max_temperature}]")


def test_focus_is_per_block_finite_and_between_zero_and_its_maximum():
    focus = np.ones((2, BLOCKS))
    focus[1, 0] = 0.0
    focus[0, 11] = LIM.max_focus
    got = V.controls(2, focus=focus).focus
    assert got.dtype == np.float32 and got[1, 0] == 0 and got[0, 11] == LIM.max_focus
    for value in (-0.5, LIM.max_focus + 1, np.nan):
        bad = np.ones((2, BLOCKS))
        bad[1, 4] = value
        refused(lambda b=bad: V.controls(2, focus=b),
                f"FOCUS[1][4] (E5): {float(np.float32(value))} is outside "
                f"[0, {LIM.max_focus}]")
    refused(lambda: V.controls(2, focus=np.ones((1, BLOCKS))), "FOCUS: 1 rows for 2 texts")


def test_some_present_block_must_keep_a_focus_above_zero():
    presence = np.ones((3, BLOCKS), dtype=bool)
    presence[2] = False
    presence[2, 3] = True
    focus = np.ones((3, BLOCKS))
    assert V.controls(3, focus=focus, presence=presence).presence[2].sum() == 1
    focus[2, 3] = 0.0  # the one present block has no focus left
    refused(lambda: V.controls(3, focus=focus, presence=presence),
            "FOCUS[2] / PRESENCE[2]: no block left to fuse; at least one present block needs "
            "a focus above 0")
    refused(lambda: V.controls(2, presence=np.zeros((2, BLOCKS), dtype=bool)),
            "FOCUS[0] / PRESENCE[0]: no block left to fuse; at least one present block needs "
            "a focus above 0")


def test_presence_and_from_image_are_read_as_booleans():
    presence = np.ones((1, BLOCKS), dtype=np.int8)
    presence[0, 2] = 0
    c = V.controls(1, presence=presence, from_image=np.array([[1]]))
    assert c.presence.dtype == bool and c.presence[0].tolist() == [i != 2 for i in range(BLOCKS)]
    assert c.from_image.dtype == bool and c.from_image.tolist() == [True]
    refused(lambda: V.controls(2, from_image=np.array([[True]])),
            "FROM_IMAGE: 1 rows for 2 texts")
    refused(lambda: V.controls(2, presence=np.ones((3, BLOCKS), dtype=bool)),
            "PRESENCE: 3 rows for 2 texts")


def test_controls_of_many_requests_concatenate_row_after_row():
    a = V.controls(1, top_k=column([1]))
    b = V.controls(2, top_k=column([3, 4]), from_image=column([True, False]))
    both = GateControls.concat([a, b])
    assert both.top_k.tolist() == [1, 3, 4]
    assert both.from_image.tolist() == [False, True, False]
    assert both.focus.shape == (3, BLOCKS) and both.presence.shape == (3, BLOCKS)
    assert both.temperature.shape == (3,)


# --- DIMENSIONS and ENCODING ----------------------------------------------------------------

OFFERED = (1536, 256, 128)


def test_output_settings_default_to_the_largest_size_and_float():
    assert V.output_settings(2, None, None, OFFERED, ()) == (1536, "float")


def test_one_offered_size_per_request():
    assert V.output_settings(2, column([256, 256]), None, OFFERED, ()) == (256, "float")
    refused(lambda: V.output_settings(3, column([256, 256, 128]), None, OFFERED, ()),
            "DIMENSIONS[2]: 128 differs from DIMENSIONS[0] (256); one size per request")
    refused(lambda: V.output_settings(1, column([100]), None, OFFERED, ()),
            "DIMENSIONS[0]: 100 is not one of this checkpoint's sizes: 1536, 256, 128")
    refused(lambda: V.output_settings(2, column([256]), None, OFFERED, ()),
            "DIMENSIONS: 1 rows for 2 texts")


def test_one_known_encoding_per_request():
    enc = np.array([[b"binary"], ["binary"]], dtype=np.object_)
    assert V.output_settings(2, None, enc, OFFERED, ()) == (1536, "binary")
    refused(lambda: V.output_settings(2, None, np.array([[b"float"], [b"fp16"]],
                                                        dtype=np.object_), OFFERED, ()),
            "ENCODING[1]: 'fp16' is not one of float, int8, binary")
    refused(lambda: V.output_settings(2, None, np.array([[b"float"], [b"binary"]],
                                                        dtype=np.object_), OFFERED, ()),
            "ENCODING[1]: 'binary' differs from ENCODING[0] ('float'); one encoding per "
            "request")
    refused(lambda: V.output_settings(1, None, np.array([[b"x" * 17]], dtype=np.object_),
                                      OFFERED, ()),
            "ENCODING[0]: 17 bytes exceed the limit of 16 bytes")


def test_int8_needs_a_calibrated_scale_for_the_size():
    enc = np.array([[b"int8"]], dtype=np.object_)
    assert V.output_settings(1, column([256]), enc, OFFERED, (256,)) == (256, "int8")
    refused(lambda: V.output_settings(1, None, enc, OFFERED, (256,)),
            "ENCODING[0]: int8 needs a calibrated scale, and this checkpoint has none for "
            "1536 dimensions")


def test_the_range_s_dates_are_utc_whatever_the_local_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "LOCAL+12")  # POSIX: 12 h behind UTC, where 2100 starts a day later
    time.tzset()
    try:
        refused(lambda: V.timestamps(column([LIM.max_timestamp + 1], np.int64)),
                f"TIMESTAMP[0]: {LIM.max_timestamp + 1} is outside the accepted range "
                f"[{LIM.min_timestamp}, {LIM.max_timestamp}] Unix seconds "
                "(1900-01-01 to 2100-01-01 UTC)")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_times_return_the_given_sessions_and_sequences():
    _, sessions, positions = V.times(2, column([5, 7]),
                                     np.array([[b"a"], [b"b"]], dtype=np.object_),
                                     column([1, 2], np.int64))
    assert sessions == ["a", "b"] and positions.tolist() == [1, 2]


def test_given_top_k_and_sparse_top_k_are_int64():
    assert V.controls(2, top_k=column([2.0, 3.0])).top_k.dtype == np.int64
    assert V.sparse_top_k(2, column([1.0, 2.0]), 10).dtype == np.int64


def test_a_row_count_mismatch_names_temperature_and_encoding():
    refused(lambda: V.controls(2, temperature=column([1.0])), "TEMPERATURE: 1 rows for 2 texts")
    refused(lambda: V.output_settings(2, None, np.array([[b"float"]], dtype=np.object_),
                                      OFFERED, ()), "ENCODING: 1 rows for 2 texts")


def test_an_empty_request_s_encoding_is_the_default():
    assert V.output_settings(0, None, np.zeros((0, 1), dtype=np.object_), OFFERED, ()) == (
        1536, "float")


def test_timestamps_are_made_int64_whatever_they_came_as():
    assert V.timestamps(np.array([[1.0], [2.0]])).dtype == np.int64
