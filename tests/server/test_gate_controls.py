"""The optional gate controls on the real server: equal to the reference, errors per item."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from fusedembed_client import FusedEmbedClient, FusedEmbedError, GateControls

pytestmark = pytest.mark.server

T0 = 1_700_000_000
TEXTS = ["steer the gate", "a second text", "def f(x):\n    return x * 2"]


def _inputs(mod, texts, **controls):
    arrays = {"TEXT": np.array([[t.encode()] for t in texts], dtype=np.object_),
              "TIMESTAMP": np.full((len(texts), 1), T0, dtype=np.int64)} | controls
    dtypes = {np.dtype(np.object_): "BYTES", np.dtype(np.int64): "INT64",
              np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32", np.dtype(bool): "BOOL"}
    out = []
    for name, value in arrays.items():
        out.append(mod.InferInput(name, list(value.shape), dtypes[value.dtype]))
        out[-1].set_data_from_numpy(value)
    return out


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_per_item_controls_equal_the_reference(server, reference, protocol):
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    top_k = np.array([[1], [8], [3]], dtype=np.int32)
    temperature = np.array([[0.2], [5.0], [1.0]], dtype=np.float32)
    focus = np.ones((3, 12), dtype=np.float32)
    focus[0, 10] = 4.0  # E11 x4
    focus[2, :5] = 0.0
    presence = np.ones((3, 12), dtype=bool)
    presence[1, [4, 6]] = False  # E5 and E7 left out
    controls = {"TOP_K": top_k, "TEMPERATURE": temperature, "FOCUS": focus,
                "PRESENCE": presence}
    result = client.infer("fused_text", _inputs(mod, TEXTS, **controls))
    expected = reference.embed(TEXTS, np.full(3, T0), top_k=top_k, temperature=temperature,
                               focus=focus, presence=presence)
    fused = result.as_numpy("FUSED")
    assert np.all(np.sum(fused * expected.fused, axis=1) >= 0.9999)
    np.testing.assert_allclose(result.as_numpy("EXPERT_WEIGHTS"), expected.expert_weights,
                               atol=1e-4)
    selected = result.as_numpy("SELECTED_EXPERTS")
    assert selected.shape == (3, 8)  # the request's largest TOP_K
    assert [int((row >= 0).sum()) for row in selected] == [1, 8, 3]
    assert np.array_equal(selected, expected.selected_experts)
    # The controls change the answer: the same texts without them differ.
    plain = client.infer("fused_text", _inputs(mod, TEXTS)).as_numpy("FUSED")
    assert np.all(np.sum(plain * fused, axis=1) < 0.9999)


def test_a_bad_control_fails_its_request_only(server):
    import concurrent.futures

    client_url = server.http_url
    bad = {"TOP_K": np.array([[9]], dtype=np.int32),
           "TEMPERATURE": np.array([[0.0]], dtype=np.float32),
           "FOCUS": np.full((1, 12), -1.0, dtype=np.float32),
           "PRESENCE": np.zeros((1, 12), dtype=bool)}
    messages = {"TOP_K": "TOP_K[0]: 9 is outside 1..8",
                "TEMPERATURE": "TEMPERATURE[0]: 0.0 is outside [0.05, 20.0]",
                "FOCUS": "FOCUS[0][0] (E1): -1.0 is outside [0, 100.0]",
                "PRESENCE": "no block left to fuse"}

    def send(name):
        client = httpclient.InferenceServerClient(client_url)
        if name is None:
            return client.infer("fused_text", _inputs(httpclient, TEXTS[:1])).as_numpy("FUSED")
        with pytest.raises(Exception) as err:
            client.infer("fused_text", _inputs(httpclient, TEXTS[:1], **{name: bad[name]}))
        return str(err.value)

    jobs = [None, *bad, None, None]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(send, jobs))
    for name, answer in zip(jobs, answers):
        if name is None:
            np.testing.assert_allclose(np.linalg.norm(answer), 1.0, atol=1e-5)
        else:
            assert messages[name] in answer, answer


def test_the_client_sends_controls_and_reports_the_version(server, reference):
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        out = client.embed_batch(TEXTS, [T0] * 3,
                                 gate=GateControls(top_k=4, temperature=2.0,
                                                   focus={"E11": 3.0}, missing=("E6",)))
        with pytest.raises(FusedEmbedError, match="TOP_K"):
            client.embed("x", T0, gate=GateControls(top_k=0))
    focus = np.ones((3, 12), dtype=np.float32)
    focus[:, 10] = 3.0
    presence = np.ones((3, 12), dtype=bool)
    presence[:, 5] = False
    expected = reference.embed(TEXTS, np.full(3, T0), top_k=np.full((3, 1), 4),
                               temperature=np.full((3, 1), 2.0, dtype=np.float32),
                               focus=focus, presence=presence)
    for e, f in zip(out, expected.fused):
        assert float(e.vector @ f) >= 0.9999
        assert len(e.selected_experts) == 4
        assert e.fusion_version == reference.manifest.version


def test_the_failsafe_passes_the_controls_through(server, reference):
    client = httpclient.InferenceServerClient(server.http_url)
    presence = np.ones((3, 12), dtype=bool)
    presence[:, 6] = False
    top_k = np.full((3, 1), 3, dtype=np.int32)
    result = client.infer("fused_text_failsafe",
                          _inputs(httpclient, TEXTS, PRESENCE=presence, TOP_K=top_k))
    expected = reference.embed(TEXTS, np.full(3, T0), presence=presence, top_k=top_k)
    assert np.all(np.sum(result.as_numpy("FUSED") * expected.fused, axis=1) >= 0.9999)
    assert not result.as_numpy("MISSING").any()  # the caller's choice is not a missing block
    assert result.as_numpy("FUSION_VERSION")[0, 0].decode() == reference.manifest.version
