"""preprocess, the first step of fused_text and fused_text_cached, with its repository stood
in for: it refuses every mistake of the caller that a later step would refuse, before any
other step runs (ensemble/serving/preprocess.py says why), and passes valid requests on
scrubbed. The served entry points: tests/server/test_status_codes.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from google.protobuf import json_format

from export import registry as r
from export.artifacts import save_numpy
from export.layout import SPLADE_STEM, SPLADE_VERSION, TOKENIZER_FILE
from export.registry import EMBEDDERS, TOKENIZER_FAMILIES, Input
from export.repository import preprocess_config
from tests.unit import fake_pb_utils as pb

pb.install()
from ensemble.serving import preprocess

T0 = 1_700_000_000
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "short", "a", "b"]
SPARSE_TERMS = 50
NO = np.array([[False], [False]])


def word_tokenizer(pad: str):
    """A tokenizer of one token per known word, [UNK] for the rest, ``pad`` for padding."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {w: i for i, w in enumerate(["[UNK]", pad, *WORDS])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    return tokenizer


@pytest.fixture
def repository(tmp_path):
    """A repository whose token embedders take 4 tokens (E5: 20; E1: 6, putting a prefix of 2
    tokens before a passage and of 3 before a query), E6 scoring 50 terms."""
    for family in TOKENIZER_FAMILIES:
        folder = tmp_path / family.triton_model / "1"
        folder.mkdir(parents=True)
        word_tokenizer(family.pad_token).save(str(folder / TOKENIZER_FILE))
    for spec in EMBEDDERS:
        if spec.input is Input.TOKENS:
            folder = tmp_path / spec.triton_model / "1"
            folder.mkdir(parents=True)
            info = {"max_length": {"E1": 6, "E5": 20}.get(spec.id, 4)}
            if spec.id == "E1":
                info["convention"] = {"insert": {"query": [5, 6, 4], "passage": [7, 8]}}
            (folder / "build.json").write_text(json.dumps(info))
            if spec.pooling is r.Pooling.SPLADE_MAX:
                save_numpy(folder, SPLADE_STEM, SPLADE_VERSION,
                           {"projection": np.zeros((SPARSE_TERMS, 2), dtype=np.float32)})
    return tmp_path


def adapter(repository):
    m = preprocess.TritonPythonModel()
    m.initialize({"model_config": json.dumps(json_format.MessageToDict(
                      preprocess_config(), preserving_proto_field_name=True)),
                  "model_name": r.PREPROCESS_MODEL,
                  "model_repository": str(repository / r.PREPROCESS_MODEL),
                  "model_version": "1"})
    return m


@pytest.fixture
def model(repository):
    return adapter(repository)


OUTPUTS = [r.CLEAN_TEXT, r.CLEAN_TIMESTAMP, r.CLEAN_SESSION, r.CLEAN_POSITION, r.REDACTIONS]


def request(texts=("first text", "second text"), **extra: np.ndarray):
    rows = len(texts)
    inputs = {"TEXT": np.array([[t.encode()] for t in texts], dtype=np.object_),
              "TIMESTAMP": np.full((rows, 1), T0, dtype=np.int64), **extra}
    return pb.InferenceRequest(requested_output_names=OUTPUTS,
                               inputs=[pb.Tensor(k, v) for k, v in inputs.items()])


def refused(m, req) -> str:
    (response,) = m.execute([req])
    assert response.has_error(), "answered"
    assert response.error().code() == pb.TritonError.INVALID_ARG
    return response.error().message()


@pytest.mark.parametrize(("extra", "message"), [
    ({"KIND": np.array([[b"query"], [b"other"]], dtype=np.object_)},
     "KIND: must be 'query' or 'passage', got 'other'"),
    ({"TOP_K": np.array([[2], [0]], dtype=np.int32)}, "TOP_K[1]: 0 is outside 1..8"),
    ({"TEMPERATURE": np.array([[1.0], [0.01]], dtype=np.float32)}, "TEMPERATURE[1]: "),
    ({"FOCUS": np.full((2, 12), -1.0, dtype=np.float32)}, "FOCUS[0][0] (E1): -1.0 is outside"),
    ({"PRESENCE": np.zeros((2, 12), dtype=bool)}, "FOCUS[0] / PRESENCE[0]: no block left"),
    ({"SPARSE_TOP_K": np.array([[3], [SPARSE_TERMS + 1]], dtype=np.int32)},
     f"SPARSE_TOP_K[1]: {SPARSE_TERMS + 1} is outside 0..{SPARSE_TERMS} (0 keeps every"),
    ({"SPARSE_TOP_K": np.array([[-1], [0]], dtype=np.int32)}, "SPARSE_TOP_K[0]: -1 is outside"),
])
def test_what_a_later_step_would_refuse_is_refused_here(model, extra, message):
    assert refused(model, request(**extra)).startswith(message)


def test_the_limits_of_the_controls_are_those_of_the_steps(model):
    (response,) = model.execute([request(
        KIND=np.array([[b"query"], [b"passage"]], dtype=np.object_),
        TOP_K=np.array([[1], [8]], dtype=np.int32),
        SPARSE_TOP_K=np.array([[0], [SPARSE_TERMS]], dtype=np.int32),
        PRESENCE=np.eye(2, 12, dtype=bool))])
    assert not response.has_error()


def test_without_truncation_a_text_over_any_token_limit_is_refused(model):
    # "one two three four": 4 tokens, at the limit of 4; E1 adds 2 to a passage (6, at its
    # limit) and 3 to a query (7, over it).
    four, five = "one two three four", "one two three four five"
    (response,) = model.execute([request(("short", four), TRUNCATE=NO)])
    assert not response.has_error()
    assert refused(model, request(("short", four), TRUNCATE=NO, KIND=np.array(
        [[b"passage"], [b"query"]], dtype=np.object_))) == (
        "TEXT[1]: 7 tokens exceed the 6-token limit of E1 (e01_semantic); send TRUNCATE=true "
        "to truncate")
    assert refused(model, request((five, "short"), TRUNCATE=NO)).startswith(
        "TEXT[0]: 7 tokens exceed the 6-token limit of E1")
    # Allowed to truncate (the default, or TRUNCATE=true): passed on.
    for truncate in ({}, {"TRUNCATE": np.array([[True], [True]])}):
        (response,) = model.execute([request((five, "short"), **truncate)])
        assert not response.has_error()


def test_each_token_embedder_s_own_limit_is_checked(repository):
    """Not only the first: a later embedder's limit (E7, after E1, E5 and E6) refuses too."""
    (repository / "e07_code" / "1" / "build.json").write_text(json.dumps({"max_length": 2}))
    assert refused(adapter(repository), request(("a", "one two three"), TRUNCATE=NO)) == (
        "TEXT[1]: 3 tokens exceed the 2-token limit of E7 (e07_code); send TRUNCATE=true to "
        "truncate")


def test_a_valid_request_is_passed_on_and_a_bad_one_beside_it_refused_alone(model):
    good = request(("one two", "three"), SESSION=np.array([[b"s"], [b"t"]], dtype=np.object_))
    bad = request(KIND=np.array([[b"x"], [b"query"]], dtype=np.object_))
    answered, refusal = model.execute([good, bad])
    assert refusal.error().message().startswith("KIND: must be")
    out = answered.outputs()
    assert out[r.CLEAN_TEXT].reshape(-1).tolist() == [b"one two", b"three"]
    assert out[r.CLEAN_TIMESTAMP].reshape(-1).tolist() == [T0, T0]
    assert out[r.CLEAN_SESSION].reshape(-1).tolist() == [b"s", b"t"]
    assert out[r.CLEAN_POSITION].reshape(-1).tolist() == [T0, T0]
    assert out[r.REDACTIONS].shape[0] == 2 and not out[r.REDACTIONS].any()
