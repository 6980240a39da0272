"""E4's SESSION and SEQUENCE through the real server, over HTTP and gRPC, the fail-safe entry
point, the gateway and the CLI: one session shares E4's session half, positions differ in
theirs; defaults are today's behaviour; bad values are refused naming the field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export.custom_encoders import SESSION_DIM
from fusedembed_client import FusedEmbedClient, FusedEmbedError
from fusedembed_client.cli import main as cli
from tests.server.test_gateway import post, started

pytestmark = pytest.mark.server

T0 = 1_700_000_000
TEXTS = ["hello, I need help with my order", "it has not arrived yet",
         "can you check the tracking number?"]


def _halves(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return blocks[:, :SESSION_DIM], blocks[:, SESSION_DIM:]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_one_session_shares_e4s_session_half_and_positions_differ(server, reference, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with FusedEmbedClient(url, protocol) as client:
        chat = client.embed_batch(TEXTS, [T0] * 3, blocks=["E4"], sessions="chat-1",
                                  sequences=[0, 1, 2])
        other = client.embed_batch(TEXTS, [T0] * 3, blocks=["E4"],
                                   sessions=["chat-2", "chat-3", "chat-1"], sequences=[0, 1, 2])
        plain = client.embed_batch(TEXTS, [T0] * 3, blocks=["E4"])
        default = client.embed_batch(TEXTS, [T0] * 3, blocks=["E4"], sessions="",
                                     sequences=[T0] * 3)
    e4 = np.stack([e.blocks["E4"] for e in chat])
    session, position = _halves(e4)
    np.testing.assert_allclose(session[1:], session[:1].repeat(2, axis=0), atol=1e-6)
    assert min(np.abs(position[i] - position[j]).max() for i, j in ((0, 1), (1, 2))) > 0.01
    # Other sessions at the same positions: other session halves, the same positions.
    other_session, other_position = _halves(np.stack([e.blocks["E4"] for e in other]))
    assert np.abs(other_session[0] - session[0]).max() > 0.05
    assert np.abs(other_session[1] - session[1]).max() > 0.05
    np.testing.assert_allclose(other_session[2], session[2], atol=1e-6)
    cos = np.sum(other_position * position, axis=1) / (
        np.linalg.norm(other_position, axis=1) * np.linalg.norm(position, axis=1))
    assert np.all(cos >= 0.99999)
    # Without them: the default session "" at the timestamp, as before the inputs existed.
    for a, b in zip(plain, default):
        np.testing.assert_allclose(a.blocks["E4"], b.blocks["E4"], atol=1e-6)
        np.testing.assert_allclose(a.vector, b.vector, atol=1e-6)
    assert np.abs(plain[0].vector - chat[0].vector).max() > 0  # FUSED sees the session
    # The in-process pipeline agrees.
    blocks, _, _ = reference.encode(TEXTS, np.array([T0] * 3), None, ["chat-1"] * 3,
                                    np.array([0, 1, 2]))
    np.testing.assert_allclose(blocks["E4"], e4, atol=1e-6)


def _inputs(mod, session, sequence):
    arrays = {"TEXT": ("BYTES", np.array([[b"a text"]], dtype=np.object_)),
              "TIMESTAMP": ("INT64", np.array([[T0]], dtype=np.int64))}
    if session is not None:
        arrays["SESSION"] = ("BYTES", np.array([[session]], dtype=np.object_))
    if sequence is not None:
        arrays["SEQUENCE"] = ("INT64", np.array([[sequence]], dtype=np.int64))
    inputs = []
    for name, (dtype, value) in arrays.items():
        inputs.append(mod.InferInput(name, list(value.shape), dtype))
        inputs[-1].set_data_from_numpy(value)
    return inputs


@pytest.mark.parametrize("model", ["fused_text", "fused_text_cached", "fused_text_failsafe"])
@pytest.mark.parametrize("session,sequence,message", [
    (b"x" * 257, None, "SESSION[0]: 257 bytes exceed the limit of 256 bytes"),
    (b"\xff", None, "SESSION[0]: not valid UTF-8"),
    (None, -1, "SEQUENCE[0]: -1 is outside 0..1000000000000"),
    (None, 10**12 + 1, "SEQUENCE[0]: 1000000000001 is outside 0..1000000000000"),
])
def test_bad_session_or_sequence_is_a_client_error_naming_it(server, model, session, sequence,
                                                            message):
    http = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(Exception) as err:
        http.infer(model, _inputs(httpclient, session, sequence))
    assert err.value.status() == "400" and message in str(err.value)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(Exception) as err:
        grpc.infer(model, _inputs(grpcclient, session, sequence))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and message in str(err.value)
    ok = http.infer(model, _inputs(httpclient, b"s" * 256, 10**12))  # the limits
    assert ok.as_numpy("FUSED").shape == (1, 1536)


def test_the_failsafe_and_the_cached_entry_points_fuse_the_session_as_fused_text(server):
    with FusedEmbedClient(server.http_url) as plain:
        expected = plain.embed(TEXTS[0], T0, session="chat-9", sequence=4).vector
    with FusedEmbedClient(server.http_url, model="fused_text_cached") as cached:
        np.testing.assert_allclose(cached.embed(TEXTS[0], T0, session="chat-9",
                                                sequence=4).vector, expected, atol=1e-5)
        other = cached.embed(TEXTS[0], T0, session="chat-8", sequence=4).vector
        assert np.abs(other - expected).max() > 0  # the cache keys on the session too
    http = httpclient.InferenceServerClient(server.http_url)
    inputs = _inputs(httpclient, b"chat-9", 4)
    inputs[0].set_data_from_numpy(np.array([[TEXTS[0].encode()]], dtype=np.object_))
    safe = http.infer("fused_text_failsafe", inputs)
    assert not safe.as_numpy("MISSING").any()
    assert float(safe.as_numpy("FUSED")[0] @ expected) >= 0.9999


def test_gateway_and_cli_pass_session_and_sequence(server, tmp_path_factory, capsys):
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        expected = client.embed_batch(TEXTS[:2], [T0] * 2, blocks=["E4"], sessions="chat-5",
                                      sequences=[7, 8])
    gateway = started(server.grpc_url, tmp_path_factory)
    try:
        status, body = post(f"{gateway.url}/v1/embeddings", {
            "input": TEXTS[:2], "model": "fusedembed-e4", "timestamp": T0,
            "session": "chat-5", "sequence": [7, 8]})
        assert status == 200, body
        for item, e in zip(body["data"], expected):
            np.testing.assert_allclose(item["embedding"], e.blocks["E4"], atol=1e-6)
        status, body = post(f"{gateway.url}/v1/embeddings", {
            "input": TEXTS[:2], "timestamp": T0, "session": "chat-5", "sequence": [7, 8]})
        assert status == 200
        np.testing.assert_allclose(body["data"][1]["embedding"], expected[1].vector, atol=1e-5)
        status, body = post(f"{gateway.url}/v1/embeddings", {
            "input": "x", "session": "s" * 300})
        assert status == 422 and "session[0]: 300 bytes exceed the limit of 256" in \
            body["error"]["message"], body
        status, body = post(f"{gateway.url}/v1/embeddings", {
            "input": ["x", "y"], "sequence": [1, 2, 3]})
        assert status == 422 and "sequence: 3 values for 2 inputs" in body["error"]["message"]
    finally:
        gateway.stop()
    assert cli(["embed", TEXTS[1], "--url", server.http_url, "--timestamp", str(T0),
                "--session", "chat-5", "--sequence", "8", "--block", "E4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(out["blocks"]["E4"], expected[1].blocks["E4"], atol=1e-6)
    with pytest.raises(FusedEmbedError, match="SEQUENCE"), \
            FusedEmbedClient(server.http_url) as client:
        client.embed("x", T0, sequence=-5)
