"""What FusedEmbedClient sends and how it reads the answers, against a stand-in for
tritonclient (tests/unit/fake_tritonclient.py): tensors and dtypes, chunks of 32, outputs per
entry point and encoding, retries with back-off, the tokenizer and config lookups. The same
client against Triton itself: tests/server."""

from __future__ import annotations

import numpy as np
import pytest

from fusedembed_client import client as c
from fusedembed_client.client import (
    Embedding,
    FusedEmbedClient,
    FusedEmbedError,
    GateControls,
    Retry,
    SparseTerms,
)
from tests.unit import fake_tritonclient as fake

T0 = 1_700_000_000


def answers(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict:
    """Outputs that say which text they belong to: FUSION_VERSION is the text, TOKENS its
    length; row i selects experts (i, -1) and truncates block E(i+1)."""
    texts = [t[0].decode() for t in inputs["TEXT"]] if "TEXT" in inputs else []
    n = len(texts) or len(inputs.get("IMAGE", []))
    out = {}
    for name in outputs:
        if name == "FUSED":
            out[name] = np.tile(np.arange(1536, dtype=np.float32), (n, 1))
        elif name == "EXPERT_WEIGHTS":
            out[name] = np.full((n, 8), 0.125, dtype=np.float32)
        elif name == "SELECTED_EXPERTS":
            out[name] = np.array([[i % 8, -1] for i in range(n)], dtype=np.int32)
        elif name == "TRUNCATED":
            out[name] = np.eye(n, 12, dtype=bool)
        elif name == "REDACTIONS":
            out[name] = np.array([[0, i, 0, 0, 0, 0, 2] for i in range(n)], dtype=np.int32)
        elif name == "FUSION_VERSION":
            out[name] = np.array([[(t or "image").encode()] for t in texts or [""] * n],
                                 dtype=np.object_)
        elif name == "TOKENS":
            out[name] = np.array([[len(t)] for t in texts], dtype=np.int32)
        elif name == "MISSING":
            out[name] = np.array([[j == 6 for j in range(12)]] * n)
        elif name == "E10" and "IMAGE" in inputs:
            out[name] = np.full((n, 768), 10.0, dtype=np.float32)
        elif name in c.BLOCKS:
            out[name] = np.full((n, 4), float(name[1:]), dtype=np.float32)
        elif name == "E6_SPARSE_INDICES":
            out[name] = np.array([[7, 3, -1], [5, -1, -1]][:n] * (n // 2 + 1), np.int32)[:n]
        elif name == "E6_SPARSE_WEIGHTS":
            out[name] = np.array([[0.5, 0.25, 0.0], [2.0, 0.0, 0.0]] * (n // 2 + 1),
                                 np.float32)[:n]
        elif name == "E12_TOKENS":
            out[name] = np.ones((n, 3, 128), dtype=np.float32)
        elif name == "E12_TOKEN_COUNT":
            out[name] = np.array([[i % 3 + 1] for i in range(n)], dtype=np.int32)
        elif name == "FUSED_INT8":
            out[name] = np.tile(np.array([[3, -4]], dtype=np.int8), (n, 1))
        elif name == "FUSED_SCALE":
            out[name] = np.tile(np.array([[1.0, 1.0]], dtype=np.float32), (n, 1))
        elif name == "FUSED_BINARY":
            out[name] = np.tile(np.array([[0b10100000]], dtype=np.uint8), (n, 1))
        elif name == c.TERMS:
            # One row per request row, as Triton answers an output of dims [-1].
            out[name] = np.array([[f"t{i}".encode() if i >= 0 else b"" for i in row]
                                  for row in inputs[c.IDS]], dtype=np.object_)
    return out


def make(protocol: str = "http", model: str = c.MODEL, handler=answers, **kwargs):
    client = FusedEmbedClient("127.0.0.1:1", protocol, model=model, **kwargs)
    client._client = fake.Client(handler, CONFIGS, protocol)
    client._tc = fake.Module
    return client


CONFIGS = {
    c.MODEL: {"ensemble_scheduling": {"step": [
        {"model_name": "preprocess", "output_map": {"text": "clean"}},
        {"model_name": "tok_bert_uncased", "input_map": {"TEXT": "clean"},
         "output_map": {"input_ids": "ids_b"}},
        {"model_name": "e06_sparse", "input_map": {"input_ids": "tok_bert_uncased.ids"},
         "output_map": {"sparse_indices": "E6_SPARSE_INDICES"}},
    ]}},
    "preprocess": {"parameters": {"weights": {"string_value": "custom"}}},
    "tok_bert_uncased": {},
    "e06_sparse": {"parameters": {"weights": {"string_value": "tiny"},
                                  "source": {"string_value": "tiny splade"},
                                  "block_id": {"string_value": "E6"},
                                  "precision": {"string_value": "fp32"}}},
}


# --- request tensors ------------------------------------------------------------------------

def test_a_plain_request_sends_only_text_and_timestamp():
    tensors = c.request_tensors(["a", "bé"], [1, 2])
    assert [(n, d) for n, d, _ in tensors] == [("TEXT", "BYTES"), ("TIMESTAMP", "INT64")]
    assert tensors[0][2].tolist() == [[b"a"], ["bé".encode()]]
    assert tensors[1][2].dtype == np.int64 and tensors[1][2].tolist() == [[1], [2]]


def test_every_option_becomes_its_input_one_row_per_text():
    gate = GateControls(top_k=3, temperature=0.5, focus={"E11": 2.0}, missing=("E7",))
    tensors = {n: (d, v) for n, d, v in c.request_tensors(
        ["a", "b"], [1, 2], kind="query", truncate=False, gate=gate, sparse_top_k=4,
        sessions=["s1", "s2"], sequences=[5, 6], dimensions=256, encoding="int8")}
    assert tensors["KIND"][0] == "BYTES" and tensors["KIND"][1].tolist() == [[b"query"]] * 2
    assert tensors["TRUNCATE"][0] == "BOOL" and tensors["TRUNCATE"][1].tolist() == [[False]] * 2
    assert tensors["TOP_K"][0] == "INT32" and tensors["TOP_K"][1].tolist() == [[3], [3]]
    assert tensors["TEMPERATURE"][0] == "FP32"
    assert tensors["TEMPERATURE"][1].tolist() == [[0.5], [0.5]]
    focus = [2.0 if b == "E11" else 1.0 for b in c.BLOCKS]
    assert tensors["FOCUS"][0] == "FP32" and tensors["FOCUS"][1].tolist() == [focus] * 2
    presence = [b != "E7" for b in c.BLOCKS]
    assert tensors["PRESENCE"][0] == "BOOL" and tensors["PRESENCE"][1].tolist() == [presence] * 2
    assert tensors["SPARSE_TOP_K"][0] == "INT32"
    assert tensors["SPARSE_TOP_K"][1].tolist() == [[4], [4]]
    assert tensors["DIMENSIONS"][0] == "INT32"
    assert tensors["DIMENSIONS"][1].tolist() == [[256], [256]]
    assert tensors["ENCODING"][0] == "BYTES"
    assert tensors["ENCODING"][1].tolist() == [[b"int8"], [b"int8"]]
    assert tensors["SESSION"][0] == "BYTES"
    assert tensors["SESSION"][1].tolist() == [[b"s1"], [b"s2"]]
    assert tensors["SEQUENCE"][0] == "INT64" and tensors["SEQUENCE"][1].tolist() == [[5], [6]]


def test_server_defaults_are_not_sent():
    names = [n for n, _, _ in c.request_tensors(["a"], [1], kind="passage", truncate=True,
                                                 gate=GateControls(), encoding="float")]
    assert names == ["TEXT", "TIMESTAMP"]


def test_gate_controls_refuse_unknown_blocks():
    with pytest.raises(ValueError, match="unknown block 'E13'; blocks are E1 ... E12"):
        GateControls(focus={"E13": 1.0}).tensors()
    with pytest.raises(ValueError, match="unknown block 'X'"):
        GateControls(missing=("X",)).tensors()


def test_per_item_values_are_one_each_or_one_string_for_all(monkeypatch):
    monkeypatch.setattr(c.time, "time", lambda: 1234.9)
    given = c._per_item(2, "texts", timestamps=None, sessions="s", sequences=None)
    assert given == {"timestamps": [1234, 1234], "sessions": ["s", "s"], "sequences": None}
    with pytest.raises(ValueError, match="^2 texts but 3 timestamps$"):
        c._per_item(2, "texts", timestamps=[1, 2, 3])


def test_image_tensors_carry_the_bytes_and_the_time():
    tensors = c.image_tensors([b"png1", b"png2"], [1, 2], ["s", "t"], [3, 4])
    assert [(n, d) for n, d, _ in tensors] == [("IMAGE", "BYTES"), ("TIMESTAMP", "INT64"),
                                               ("SESSION", "BYTES"), ("SEQUENCE", "INT64")]
    assert tensors[0][2].shape == (2, 1) and tensors[0][2][1, 0] == b"png2"


# --- embed: chunks and answers --------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_long_list_is_sent_in_chunks_of_32_and_answered_in_order(protocol):
    client = make(protocol, timeout_s=7.0)
    texts = [f"text number {i}" for i in range(70)]
    out = client.embed_batch(texts, list(range(70)))
    calls = client._client.calls
    assert [len(call.inputs["TEXT"]) for call in calls] == [32, 32, 6]
    assert calls[2].inputs["TIMESTAMP"].tolist() == [[t] for t in range(64, 70)]
    assert [e.fusion_version for e in out] == texts
    assert [e.tokens for e in out] == [len(t) for t in texts]
    assert all(call.model == c.MODEL for call in calls)
    if protocol == "grpc":
        assert calls[0].kwargs == {"client_timeout": 7.0}
    else:
        assert calls[0].kwargs == {}


def test_the_answer_is_read_into_embeddings():
    client = make()
    e0, e1 = client.embed_batch(["first", "second"], [T0, T0], blocks=("E11",))
    assert client._client.calls[0].outputs == ["FUSED", *c.OUTPUTS[1:], "E11"]
    assert e0.vector.shape == (1536,) and e0.vector[5] == 5.0
    assert e0.expert_weights.tolist() == [0.125] * 8
    assert e0.selected_experts.tolist() == [0] and e1.selected_experts.tolist() == [1]
    assert e0.truncated == ("E1",) and e1.truncated == ("E2",)
    assert e0.redactions == {"IP": 2} and e1.redactions == {"PHONE": 1, "IP": 2}
    assert e0.blocks["E11"].tolist() == [11.0] * 4
    assert e0.sparse is None and e0.token_vectors is None and e0.codes is None
    assert (e0.encoding, e0.missing) == ("float", ())


def test_sparse_terms_and_token_vectors_come_without_padding():
    client = make()
    out = client.embed_batch(["a", "b", "c"], [T0] * 3, sparse=True, sparse_top_k=2,
                             token_vectors=True)
    call = client._client.calls[0]
    assert call.outputs[-4:] == [*c.SPARSE_OUTPUTS, *c.TOKEN_OUTPUTS]
    assert call.inputs["SPARSE_TOP_K"].tolist() == [[2]] * 3
    assert out[0].sparse.indices.tolist() == [7, 3]
    assert out[0].sparse.weights.tolist() == [0.5, 0.25]
    assert out[1].sparse.indices.tolist() == [5]
    assert [e.token_vectors.shape for e in out] == [(1, 128), (2, 128), (3, 128)]


def test_int8_codes_are_decoded_and_normalised_and_kept():
    (e,) = make().embed_batch(["a"], [T0], encoding="int8", dimensions=2)
    np.testing.assert_allclose(e.vector, [0.6, -0.8], rtol=1e-6)
    assert e.codes.tolist() == [3, -4] and e.scale.tolist() == [1.0, 1.0]
    assert e.encoding == "int8"


def test_binary_codes_are_decoded_to_signs_and_normalised():
    (e,) = make().embed_batch(["a"], [T0], encoding="binary")
    expected = np.array([1, -1, 1, -1, -1, -1, -1, -1], dtype=np.float32) / np.sqrt(8)
    np.testing.assert_allclose(e.vector, expected, rtol=1e-6)
    assert e.codes.tolist() == [0b10100000] and e.scale is None


def answering(**given: np.ndarray):
    """``answers`` with the outputs in ``given`` answered as given."""
    def handler(model, inputs, outputs):
        out = answers(model, inputs, outputs)
        out.update({k: v for k, v in given.items() if k in outputs})
        return out
    return handler


def test_encoded_vectors_are_normalised_row_by_row_whatever_their_norm():
    # Decoded norms 0.5 and 0.1: each row is scaled to 1 on its own.
    client = make(handler=answering(FUSED_INT8=np.array([[3, -4], [1, 0]], np.int8),
                                    FUSED_SCALE=np.full((2, 2), 0.1, np.float32)))
    e0, e1 = client.embed_batch(["a", "b"], [T0] * 2, encoding="int8", dimensions=2)
    np.testing.assert_allclose(e0.vector, [0.6, -0.8], rtol=1e-6)
    np.testing.assert_allclose(e1.vector, [1.0, 0.0], rtol=1e-6)
    b0, b1 = make(handler=answering(FUSED_BINARY=np.array([[0xFF], [0x80]], np.uint8))
                  ).embed_batch(["a", "b"], [T0] * 2, encoding="binary")
    np.testing.assert_allclose(b0.vector, np.full(8, 1 / np.sqrt(8)), rtol=1e-6)
    np.testing.assert_allclose(b1.vector, [1, -1, -1, -1, -1, -1, -1, -1] / np.sqrt(8),
                               rtol=1e-6)


def test_term_zero_is_a_term_and_only_minus_one_is_padding():
    client = make(handler=answering(
        E6_SPARSE_INDICES=np.array([[0, 4, -1], [9, 0, -1]], np.int32),
        E6_SPARSE_WEIGHTS=np.array([[1.5, 0.5, 0.0], [2.0, 0.25, 0.0]], np.float32)))
    e0, e1 = client.embed_batch(["a", "b"], [T0] * 2, sparse=True)
    assert e0.sparse.indices.tolist() == [0, 4] and e0.sparse.weights.tolist() == [1.5, 0.5]
    assert e1.sparse.indices.tolist() == [9, 0] and e1.sparse.weights.tolist() == [2.0, 0.25]


def test_the_cached_entry_point_asks_for_fused_only():
    client = make(model=c.CACHED_MODEL)
    (e,) = client.embed_batch(["a"], [T0])
    assert client._client.calls[0].outputs == ["FUSED"]
    assert e.vector.shape == (1536,) and e.expert_weights.size == 0
    assert e.expert_weights.dtype == np.float32
    assert e.selected_experts.dtype == np.int32 and e.selected_experts.size == 0


def test_the_failsafe_entry_point_says_which_blocks_it_went_without():
    client = make(model=c.FAILSAFE_MODEL)
    (e,) = client.embed_batch(["a"], [T0])
    assert client._client.calls[0].outputs == list(c.FAILSAFE_OUTPUTS)
    assert e.missing == ("E7",) and e.truncated == ("E1",) and e.fusion_version == "a"
    # Expert 0 is an expert like any other; only -1 pads the row.
    assert e.selected_experts.tolist() == [0]


@pytest.mark.parametrize(("model", "kwargs", "message"), [
    (c.MODEL, {"kind": "question"}, "kind must be 'query' or 'passage', not 'question'"),
    (c.MODEL, {"blocks": ("E13",)}, "unknown block 'E13'; blocks are E1 ... E12"),
    (c.MODEL, {"sparse_top_k": 3}, "sparse_top_k needs sparse=True"),
    (c.MODEL, {"encoding": "fp16"}, "encoding must be one of float, int8, binary, not 'fp16'"),
    (c.CACHED_MODEL, {"blocks": ("E1",)}, ("fused_text_cached answers FUSED only; ask "
                                           "fused_text for blocks, sparse terms and token "
                                           "vectors")),
    (c.CACHED_MODEL, {"token_vectors": True}, "fused_text_cached answers FUSED only"),
    (c.CACHED_MODEL, {"dimensions": 256}, ("fused_text_cached answers the full float vector "
                                           "only; ask fused_text for dimensions and "
                                           "encodings")),
    (c.CACHED_MODEL, {"encoding": "binary"}, "fused_text_cached answers the full float"),
    (c.FAILSAFE_MODEL, {"sparse": True}, "fused_text_failsafe answers the full float vector"),
    (c.FAILSAFE_MODEL, {"dimensions": 128}, "fused_text_failsafe answers the full float"),
    (c.FAILSAFE_MODEL, {"encoding": "int8"}, "fused_text_failsafe answers the full float"),
    (c.FAILSAFE_MODEL, {"blocks": ("E2",)}, "fused_text_failsafe answers the full float"),
])
def test_requests_an_entry_point_cannot_answer_are_refused_before_sending(model, kwargs,
                                                                         message):
    client = make(model=model)
    with pytest.raises(ValueError) as err:
        client.embed_batch(["a"], [T0], **kwargs)
    assert str(err.value).startswith(message)
    assert client._client.calls == []


def test_one_text_is_a_batch_of_one_with_its_settings():
    client = make()
    e = client.embed("only", T0, kind="query", session="s", sequence=9, truncate=False)
    inputs = client._client.calls[0].inputs
    assert inputs["TIMESTAMP"].tolist() == [[T0]] and inputs["KIND"].tolist() == [[b"query"]]
    assert inputs["SESSION"].tolist() == [[b"s"]] and inputs["SEQUENCE"].tolist() == [[9]]
    assert inputs["TRUNCATE"].tolist() == [[False]]
    assert e.fusion_version == "only"


def test_images_are_read_from_paths_and_sent_in_chunks(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"png bytes")
    client = make()
    out = client.embed_images([path, b"raw", *[b"x"] * 33], [T0] * 35)
    calls = client._client.calls
    assert [call.model for call in calls] == [c.IMAGE_MODEL] * 2
    assert [len(call.inputs["IMAGE"]) for call in calls] == [32, 3]
    assert calls[0].inputs["IMAGE"][0, 0] == b"png bytes"
    assert calls[0].outputs == list(c.IMAGE_OUTPUTS)
    assert len(out) == 35 and out[0].blocks["E10"].shape == (768,)
    assert out[1].selected_experts.tolist() == [1]
    one = client.embed_image(b"raw", T0, session="s", sequence=1)
    assert one.fusion_version == "image"
    assert calls[-1].inputs["SESSION"].tolist() == [[b"s"]]


# --- retries --------------------------------------------------------------------------------

def busy_then(answer_after: int, status: str = "StatusCode.UNAVAILABLE"):
    tries = []

    def handler(model, inputs, outputs):
        tries.append(1)
        if len(tries) <= answer_after:
            raise fake.InferenceServerException("queue full", status)
        return answers(model, inputs, outputs)
    return handler, tries


def test_back_pressure_is_retried_with_jittered_doubling_delays(monkeypatch):
    slept, jitter = [], []
    monkeypatch.setattr(c.time, "sleep", slept.append)

    def uniform(lo, hi):
        jitter.append((lo, hi))
        return 0.75
    monkeypatch.setattr(c.random, "uniform", uniform)
    handler, tries = busy_then(3)
    client = make(handler=handler, retry=Retry(attempts=5, first_s=0.1, max_s=0.3))
    assert client.embed("a", T0).fusion_version == "a"
    assert len(tries) == 4 and client.retries == 3
    assert slept == pytest.approx([0.075, 0.15, 0.225])
    assert jitter == [(0.5, 1.0)] * 3


def test_retries_stop_after_the_last_attempt_with_the_server_s_status(monkeypatch):
    monkeypatch.setattr(c.time, "sleep", lambda s: None)
    handler, tries = busy_then(99, "503")
    client = make(handler=handler, retry=Retry(attempts=3))
    with pytest.raises(FusedEmbedError) as err:
        client.embed("a", T0)
    assert len(tries) == 3 and client.retries == 2
    assert err.value.status == "503" and err.value.retryable
    assert str(err.value) == "fused_text at 127.0.0.1:1 (http): queue full"


def test_retries_stop_before_the_deadline(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(c.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(c.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(c.random, "uniform", lambda lo, hi: hi)
    handler, tries = busy_then(99)
    client = make(handler=handler, retry=Retry(attempts=10, first_s=1.0, max_s=8.0,
                                               deadline_s=6.5))
    with pytest.raises(FusedEmbedError):
        client.embed("a", T0)
    assert len(tries) == 3  # slept 1 and 2 (3 s); 4 more would pass 6.5 s


@pytest.mark.parametrize("status", ["400", "StatusCode.INVALID_ARGUMENT", "500", None])
def test_client_errors_and_faults_are_raised_at_once(monkeypatch, status):
    monkeypatch.setattr(c.time, "sleep", lambda s: pytest.fail("slept"))
    handler, tries = busy_then(99, status)
    with pytest.raises(FusedEmbedError) as err:
        make(handler=handler).embed("a", T0)
    assert len(tries) == 1 and err.value.status == (status or "")
    assert not err.value.retryable


def test_retry_delays_double_up_to_the_cap():
    assert Retry().delays() == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert Retry(attempts=4, first_s=1.0, max_s=2.5).delays() == [1.0, 2.0, 2.5]
    assert Retry(attempts=1).delays() == []


@pytest.mark.parametrize(("status", "retryable"), [
    ("503", True), ("429", True), ("StatusCode.UNAVAILABLE", True),
    ("StatusCode.RESOURCE_EXHAUSTED", True), ("504", False), ("", False),
    ("StatusCode.DEADLINE_EXCEEDED", False)])
def test_which_statuses_are_back_pressure(status, retryable):
    assert FusedEmbedError("x", status).retryable is retryable


# --- lookups --------------------------------------------------------------------------------

def test_terms_are_read_from_e6_s_tokenizer():
    client = make()
    assert client.terms([7, -1, 3]) == ["t7", "", "t3"]
    call = client._client.calls[0]
    assert call.model == "tok_bert_uncased"
    assert call.dtypes[c.IDS] == "INT32" and call.inputs[c.IDS].tolist() == [[7, -1, 3]]
    assert call.outputs == [c.TERMS]
    assert client.terms([]) == [] and len(client._client.calls) == 1


def test_terms_without_sparse_outputs_or_an_answer_are_client_errors():
    client = make()
    client._client.configs = {c.MODEL: {"ensemble_scheduling": {"step": [
        {"model_name": "preprocess", "output_map": {"text": "clean"}}]}}}
    with pytest.raises(FusedEmbedError, match="fused_text at 127.0.0.1:1 has no "
                                              "E6_SPARSE_INDICES output"):
        client.terms([1])

    def down(model, inputs, outputs):
        raise fake.InferenceServerException("gone", "StatusCode.UNAVAILABLE")
    client = make(handler=down)
    with pytest.raises(FusedEmbedError) as err:
        client.terms([1])
    assert err.value.status == "StatusCode.UNAVAILABLE" and "127.0.0.1:1: gone" in str(err.value)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_models_reads_each_step_s_parameters(protocol):
    infos = make(protocol).models()
    assert [i.name for i in infos] == ["preprocess", "tok_bert_uncased", "e06_sparse"]
    assert infos[0] == c.ModelInfo("preprocess", "custom", "", "", "")
    assert infos[1] == c.ModelInfo("tok_bert_uncased", "unknown", "", "", "")
    assert infos[2] == c.ModelInfo("e06_sparse", "tiny", "tiny splade", "E6", "fp32")


def test_models_of_an_unknown_entry_point_is_a_client_error():
    with pytest.raises(FusedEmbedError, match="^fused_image at 127.0.0.1:1: ") as err:
        make(model=c.IMAGE_MODEL).models()
    # No transport status came back: the error says none, and it is not back-pressure.
    assert err.value.status == "" and not err.value.retryable


def test_ready_is_false_when_the_server_cannot_say():
    client = make()
    assert client.ready() is True
    client._client.ready = False
    assert client.ready() is False
    client._client.ready = ConnectionError("refused")
    assert client.ready() is False


# --- helpers --------------------------------------------------------------------------------

def test_sparse_terms_dense_and_dot():
    a = SparseTerms(np.array([1, 4], np.int32), np.array([0.5, 2.0], np.float32))
    b = SparseTerms(np.array([0, 4], np.int32), np.array([3.0, 1.5], np.float32))
    assert a.dense(6).tolist() == [0.0, 0.5, 0.0, 0.0, 2.0, 0.0]
    assert a.dot(b) == 3.0 and b.dot(a) == 3.0
    assert a.dot(SparseTerms(np.array([2], np.int32), np.array([1.0], np.float32))) == 0.0


def test_int8_similarity_with_and_without_the_scale():
    a = np.array([[100, -100]], np.int8)
    b = np.array([[100, 100]], np.int8)
    assert c.int8_similarity(a, b).tolist() == [0]  # in int32: no int8 overflow
    assert c.int8_similarity(a, a).tolist() == [20000]
    scale = np.array([0.5, 2.0])
    assert c.int8_similarity(a, b, scale).tolist() == pytest.approx([100 * 100 * (0.25 - 4)])


def test_maxsim_sums_each_query_token_s_best_match_and_an_empty_document_scores_zero():
    query = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    docs = [np.array([[0.5, 0.2], [0.1, 0.9]], np.float32), np.zeros((0, 2), np.float32)]
    np.testing.assert_allclose(c.maxsim(query, docs), [0.5 + 0.9, 0.0])


def test_decode_int8_and_binary():
    np.testing.assert_allclose(c.decode_int8(np.array([[2, -3]], np.int8),
                                             np.array([[0.5, 0.25]])), [[1.0, -0.75]])
    assert c.decode_binary(np.array([[0b11000000, 0b00000001]], np.uint8), 9).tolist() == [
        [1, 1, -1, -1, -1, -1, -1, -1, -1]]
    assert c.hamming(np.array([[0b1111]], np.uint8), np.array([[0b0101]], np.uint8)).tolist() \
        == [2]


def test_an_embedding_as_a_dict_has_only_what_it_carries():
    e = Embedding(np.array([0.6, 0.8], np.float32), np.array([1.0]), np.array([3]),
                  ("E1",), {"EMAIL": 1}, fusion_version="v", tokens=4)
    assert e.to_dict() == {"dim": 2, "vector": pytest.approx([0.6, 0.8]), "fusion_version": "v",
                           "tokens": 4, "expert_weights": [1.0], "selected_experts": [3],
                           "truncated": ["E1"], "redactions": {"EMAIL": 1}}
    full = Embedding(np.ones(2, np.float32), np.ones(1), np.ones(1, np.int32),
                     blocks={"E2": np.ones(1)},
                     sparse=SparseTerms(np.array([1], np.int32), np.array([2.0], np.float32)),
                     token_vectors=np.ones((1, 2)), encoding="int8",
                     codes=np.array([1, 2], np.int8), scale=np.ones(2), missing=("E3",)).to_dict()
    assert full["blocks"] == {"E2": [1.0]}
    assert full["sparse"] == {"indices": [1], "weights": [2.0]}
    assert full["token_vectors"] == [[1.0, 1.0]]
    assert (full["encoding"], full["codes"], full["scale"]) == ("int8", [1, 2], [1.0, 1.0])
    assert full["missing"] == ["E3"]


# --- what each call sends, exactly ----------------------------------------------------------

def test_a_default_embed_sends_no_optional_input_and_typed_arrays():
    client = make()
    client.embed_batch(["a"], [T0])
    call = client._client.calls[0]
    assert list(call.inputs) == ["TEXT", "TIMESTAMP"]
    assert call.inputs["TEXT"].dtype == object and call.inputs["TIMESTAMP"].dtype == np.int64
    client.embed_batch(["a"], [T0], dimensions=256, kind="query")
    call = client._client.calls[1]
    assert call.inputs["DIMENSIONS"].tolist() == [[256]]
    assert call.inputs["KIND"].dtype == object


def test_image_inputs_are_bytes_objects_and_the_time_inputs_as_given():
    client = make()
    client.embed_images([b"a", b"b"], [5, 6], sessions="s", sequences=[7, 8])
    call = client._client.calls[0]
    assert call.inputs["IMAGE"].dtype == object and call.inputs["IMAGE"].shape == (2, 1)
    assert call.inputs["TIMESTAMP"].tolist() == [[5], [6]]
    assert call.inputs["TIMESTAMP"].dtype == np.int64
    assert call.inputs["SESSION"].tolist() == [[b"s"], [b"s"]]
    assert call.inputs["SEQUENCE"].tolist() == [[7], [8]]
    client.embed_image(b"c", T0, sequence=3)
    call = client._client.calls[1]
    assert call.inputs["TIMESTAMP"].tolist() == [[T0]]
    assert call.inputs["SEQUENCE"].tolist() == [[3]]
    with pytest.raises(ValueError, match="^2 images but 1 timestamps$"):
        client.embed_images([b"a", b"b"], [5])


def test_an_image_s_embedding_holds_the_answer_s_vector_weights_and_experts():
    (e,) = make().embed_images([b"a"], [T0])
    assert e.vector.shape == (1536,) and e.vector[3] == 3.0
    assert e.expert_weights.tolist() == [0.125] * 8
    assert e.selected_experts.tolist() == [0]  # expert 0 kept, the -1 padding dropped


def test_the_client_is_made_for_its_protocol():
    http = FusedEmbedClient("127.0.0.1:1", "http")
    grpc = FusedEmbedClient("127.0.0.1:1", "grpc")
    assert type(http._client).__module__.startswith("tritonclient.http")
    assert type(grpc._client).__module__.startswith("tritonclient.grpc")
    assert (http.url, grpc.url) == ("127.0.0.1:1", "127.0.0.1:1")
    assert FusedEmbedClient(protocol="grpc").url == "127.0.0.1:8001"
    with pytest.raises(ValueError, match="protocol must be 'http' or 'grpc', not 'HTTP'"):
        FusedEmbedClient(protocol="HTTP")


def test_ready_asks_about_its_own_model():
    client = make(model=c.CACHED_MODEL)
    assert client.ready() and client._client.asked_ready == c.CACHED_MODEL


def test_the_failsafe_entry_point_says_everything_it_cannot_answer():
    with pytest.raises(ValueError) as err:
        make(model=c.FAILSAFE_MODEL).embed_batch(["a"], [T0], encoding="int8")
    assert str(err.value) == ("fused_text_failsafe answers the full float vector only; ask "
                              "fused_text for blocks, sparse terms, token vectors, dimensions "
                              "and encodings")


def test_terms_send_int32_ids_in_one_row():
    client = make()
    client.terms(np.array([[7], [3]], dtype=np.int64))
    call = client._client.calls[0]
    assert call.inputs[c.IDS].dtype == np.int32 and call.inputs[c.IDS].tolist() == [[7, 3]]


def test_a_failed_terms_call_without_a_status_has_an_empty_one():
    def down(model, inputs, outputs):
        raise RuntimeError("no status here")
    with pytest.raises(FusedEmbedError) as err:
        make(handler=down).terms([1])
    assert err.value.status == ""


def test_the_sparse_tokenizer_is_the_source_of_e6_s_input_ids():
    client = make()
    client._client.configs = {c.MODEL: {"ensemble_scheduling": {"step": [
        {"model_name": "preprocess"},  # a step without maps
        {"model_name": "e06_sparse", "input_map": {"input_ids": "tok.a.ids"},
         "output_map": {"sparse_indices": "E6_SPARSE_INDICES"}}]}},
        "tok": {}}
    assert client._sparse_tokenizer() == "tok"
    client._client.configs[c.MODEL]["ensemble_scheduling"]["step"][1].pop("input_map")
    assert client._sparse_tokenizer() == ""


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_config_is_read_as_each_protocol_returns_it(protocol):
    client = make(protocol)
    assert client._config("tok_bert_uncased") == {}
    assert client._config(c.MODEL)["ensemble_scheduling"]["step"][0]["model_name"] == (
        "preprocess")


def test_helpers_take_plain_lists_and_answer_their_dtypes():
    assert c.decode_int8([[2, -3]], [[0.5, 0.25]]).dtype == np.float32
    bits = c.decode_binary([[0b11000000, 0b10000000]], 9)
    assert bits.dtype == np.float32 and bits.tolist() == [[1, 1, -1, -1, -1, -1, -1, -1, 1]]
    assert c.hamming([[0b1111]], [[0b0101]]).tolist() == [2]
    terms = SparseTerms(np.array([1], np.int32), np.array([2.0], np.float32))
    assert terms.dense(3).dtype == np.float32
    scale = np.array([0.1, 0.3], dtype=np.float32)
    got = c.int8_similarity(np.array([[1, 2]], np.int8), np.array([[3, 4]], np.int8), scale)
    assert got.tolist() == [3 * np.float64(scale[0]) ** 2 + 8 * np.float64(scale[1]) ** 2]


def test_gate_controls_given_to_embed_go_into_the_request():
    client = make()
    client.embed_batch(["a", "b"], [T0, T0], gate=GateControls(top_k=3, missing=("E7",)))
    call = client._client.calls[0]
    assert call.inputs["TOP_K"].tolist() == [[3], [3]]
    assert call.inputs["PRESENCE"].tolist() == [[b != "E7" for b in c.BLOCKS]] * 2


def test_an_image_without_a_timestamp_or_sequence_is_sent_now_without_a_sequence(monkeypatch):
    monkeypatch.setattr(c.time, "time", lambda: 1_800_000_000.7)
    client = make()
    client.embed_image(b"c")
    call = client._client.calls[0]
    assert call.inputs["TIMESTAMP"].tolist() == [[1_800_000_000]]
    assert "SEQUENCE" not in call.inputs and "SESSION" not in call.inputs


def test_maxsim_scores_in_float32_whatever_it_is_given():
    rng = np.random.default_rng(11)
    query = rng.normal(size=(5, 128))
    docs = [rng.normal(size=(n, 128)) for n in (3, 7, 1)]
    got = c.maxsim(query, docs)
    assert got.dtype == np.float32
    want = c.maxsim(query.astype(np.float32), [d.astype(np.float32) for d in docs])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_option_is_sent_in_its_declared_datatype(protocol):
    """Through the client as tritonclient checks it: each array's type is its datatype."""
    client = make(protocol)
    client.embed_batch(["a", "b"], [T0, T0], kind="query", truncate=False,
                       gate=GateControls(top_k=3, temperature=0.5, focus={"E11": 2.0},
                                         missing=("E7",)),
                       sparse=True, sparse_top_k=4, sessions=["s1", "s2"], sequences=[5, 6])
    dtypes = {name: value.dtype for name, value in client._client.calls[0].inputs.items()}
    assert dtypes == {"TEXT": np.object_, "TIMESTAMP": np.int64, "KIND": np.object_,
                      "TRUNCATE": np.bool_, "TOP_K": np.int32, "TEMPERATURE": np.float32,
                      "FOCUS": np.float32, "PRESENCE": np.bool_, "SPARSE_TOP_K": np.int32,
                      "SESSION": np.object_, "SEQUENCE": np.int64}


def test_the_http_client_waits_as_long_as_it_was_told(monkeypatch):
    import tritonclient.http

    made = []
    monkeypatch.setattr(tritonclient.http, "InferenceServerClient",
                        lambda url, **kwargs: made.append((url, kwargs)))
    FusedEmbedClient("127.0.0.1:1", "http", timeout_s=7.5)
    FusedEmbedClient("127.0.0.1:1", "http")
    assert made == [("127.0.0.1:1", {"network_timeout": 7.5, "connection_timeout": 7.5}),
                    ("127.0.0.1:1", {"network_timeout": 120.0, "connection_timeout": 120.0})]


def test_one_text_takes_every_option_embed_batch_takes(monkeypatch):
    """embed() is embed_batch() of one: each option reaches the request, and its defaults
    are embed_batch's (no TRUNCATE, no sparse or token outputs, the float vector, now)."""
    monkeypatch.setattr(c.time, "time", lambda: 1_800_000_000.2)
    client = make()
    client.embed("plain")
    call = client._client.calls[-1]
    assert set(call.inputs) == {"TEXT", "TIMESTAMP"}
    assert call.inputs["TIMESTAMP"].tolist() == [[1_800_000_000]]
    plain_outputs = call.outputs
    assert not any(o.startswith(("E6_SPARSE", "E12_TOKEN")) for o in plain_outputs)
    full = client.embed("every option", T0, truncate=False, gate=GateControls(top_k=3),
                        sparse=True, sparse_top_k=4, token_vectors=True)
    call = client._client.calls[-1]
    assert call.inputs["TRUNCATE"].tolist() == [[False]]
    assert call.inputs["TOP_K"].tolist() == [[3]]
    assert call.inputs["SPARSE_TOP_K"].tolist() == [[4]]
    assert set(c.SPARSE_OUTPUTS) <= set(call.outputs)
    assert any(o.startswith("E12_TOKEN") for o in call.outputs)
    assert full.sparse is not None and full.token_vectors is not None
    client.embed("a size", T0, dimensions=256, encoding="int8")
    call = client._client.calls[-1]
    assert call.inputs["DIMENSIONS"].tolist() == [[256]]
    assert call.inputs["ENCODING"].tolist() == [[b"int8"]]
