"""Pipeline.block_matrix: many texts in batches of like length, answered in their order."""

from __future__ import annotations

import numpy as np

from ensemble.pipeline import Pipeline
from export.registry import EMBEDDERS


def test_batches_hold_texts_of_like_length_and_rows_come_back_in_order():
    texts = [("x" * n) for n in (9, 1, 30, 4, 4, 17, 2, 25, 11)]
    stamps = np.arange(len(texts), dtype=np.int64) * 10
    seen: list[list[str]] = []

    def encode(batch, batch_stamps):
        seen.append(list(batch))
        # A block whose every value says which text (by length) and when it was made.
        return ({e.id: np.array([[len(t) * 1000 + s] * e.dim for t, s in
                                 zip(batch, batch_stamps, strict=True)], dtype=np.float32)
                 for e in EMBEDDERS}, None, None)

    pipeline = Pipeline.__new__(Pipeline)
    pipeline.encode = encode
    out = pipeline.block_matrix(texts, stamps, batch=4)
    assert out.shape == (len(texts), sum(e.dim for e in EMBEDDERS))
    np.testing.assert_array_equal(out[:, 0], [len(t) * 1000 + s for t, s in zip(texts, stamps)])
    assert (out == out[:, :1]).all()
    assert [[len(t) for t in b] for b in seen] == [[1, 2, 4, 4], [9, 11, 17, 25], [30]]
