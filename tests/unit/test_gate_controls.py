"""Validation of the optional gate inputs: defaults, and errors naming field, item, limit."""

import numpy as np
import pytest

from ensemble.validation import InvalidInput, Validator
from export.registry import FUSEMOE, LIMITS

V = Validator()


def test_defaults_fill_every_item():
    c = V.controls(3)
    assert c.top_k.tolist() == [FUSEMOE.top_k] * 3
    assert c.temperature.tolist() == [FUSEMOE.temperature] * 3
    assert c.focus.shape == (3, 12) and (c.focus == 1).all()
    assert c.presence.shape == (3, 12) and c.presence.all()


def test_valid_values_pass_through():
    focus = np.zeros((2, 12), dtype=np.float32)
    focus[:, 10] = 2.5
    c = V.controls(2, top_k=np.array([[1], [8]], dtype=np.int32),
                   temperature=np.array([[0.05], [20.0]], dtype=np.float32), focus=focus,
                   presence=np.ones((2, 12), dtype=bool))
    assert c.top_k.tolist() == [1, 8]
    assert c.focus[:, 10].tolist() == [2.5, 2.5]


@pytest.mark.parametrize("field,value,message", [
    ("top_k", np.array([[2], [0]]), r"TOP_K\[1\]: 0 is outside 1\.\.8"),
    ("top_k", np.array([[9], [2]]), r"TOP_K\[0\]: 9 is outside 1\.\.8"),
    ("temperature", np.array([[1.0], [0.0]], dtype=np.float32),
     rf"TEMPERATURE\[1\]: 0.0 is outside \[{LIMITS.min_temperature}, {LIMITS.max_temperature}\]"),
    ("temperature", np.array([[np.nan], [1.0]], dtype=np.float32), r"TEMPERATURE\[0\]: nan"),
    ("temperature", np.array([[1.0], [np.inf]], dtype=np.float32), r"TEMPERATURE\[1\]: inf"),
    ("focus", np.full((2, 12), -1.0, dtype=np.float32), r"FOCUS\[0\]\[0\] \(E1\): -1.0 is outside"),
    ("focus", np.full((2, 12), 1e9, dtype=np.float32), rf"outside \[0, {LIMITS.max_focus}\]"),
    ("focus", np.zeros((2, 12), dtype=np.float32), r"FOCUS\[0\] / PRESENCE\[0\]: no block left"),
    ("presence", np.zeros((2, 12), dtype=bool), r"no block left"),
    ("top_k", np.array([[2]]), r"TOP_K: 1 rows for 2 texts"),
])
def test_bad_values_name_the_field_the_item_and_the_limit(field, value, message):
    with pytest.raises(InvalidInput, match=message):
        V.controls(2, **{field: value})


def test_focus_zero_on_every_present_block_is_refused():
    focus = np.ones((1, 12), dtype=np.float32)
    focus[0, 3:] = 0
    presence = np.ones((1, 12), dtype=bool)
    presence[0, :3] = False
    with pytest.raises(InvalidInput, match="no block left"):
        V.controls(1, focus=focus, presence=presence)
