"""Bad input gets an error naming the field and the limit; nothing else is disturbed."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export.registry import LIMITS
from fusedembed_client import FusedEmbedClient

pytestmark = pytest.mark.server

T0 = 1_700_000_000


def _inputs(mod, texts, stamps, text_dtype=np.object_, stamp_type="INT64", extra=()):
    text = np.array([[t] for t in texts], dtype=text_dtype)
    stamp = np.array([[s] for s in stamps], dtype=np.int64 if stamp_type == "INT64" else np.float32)
    inputs = [mod.InferInput("TEXT", list(text.shape), "BYTES"),
              mod.InferInput("TIMESTAMP", list(stamp.shape), stamp_type)]
    inputs[0].set_data_from_numpy(text)
    inputs[1].set_data_from_numpy(stamp)
    return inputs + list(extra)


BAD = {
    "empty text": ([b""], [T0], r"TEXT\[0\]: empty or whitespace-only text"),
    "whitespace text": ([b"ok", b" \t\n "], [T0, T0], r"TEXT\[1\]: empty or whitespace-only"),
    "text over the byte limit": (
        [b"x" * (LIMITS.max_text_bytes + 1)], [T0],
        (rf"TEXT\[0\]: {LIMITS.max_text_bytes + 1} bytes exceed the limit of "
        rf"{LIMITS.max_text_bytes} bytes")),
    "invalid UTF-8": ([b"caf\xc3"], [T0], r"TEXT\[0\]: not valid UTF-8 \(byte 3\)"),
    "timestamp too late": ([b"ok"], [LIMITS.max_timestamp + 1],
                           (r"TIMESTAMP\[0\]: 4102444801 is outside the accepted range "
                           r"\[-2208988800, 4102444800\]")),
    "timestamp too early": ([b"ok"], [-(10 ** 12)], r"TIMESTAMP\[0\]: .* outside the accepted"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_values_are_refused_with_field_and_limit(server, protocol, case):
    texts, stamps, message = BAD[case]
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    with pytest.raises(Exception, match=message):
        client.infer("fused_text", _inputs(mod, texts, stamps))
    assert client.is_server_ready() and client.is_model_ready("fused_text")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_malformed_requests_are_refused_by_triton_naming_the_input(server, protocol):
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    missing = _inputs(mod, [b"ok"], [T0])[:1]
    with pytest.raises(Exception, match="TIMESTAMP"):
        client.infer("fused_text", missing)
    with pytest.raises(Exception, match=r"(?i)TIMESTAMP.*(INT64|FP32)|(INT64|FP32).*TIMESTAMP"):
        client.infer("fused_text", _inputs(mod, [b"ok"], [T0], stamp_type="FP32"))
    wide = mod.InferInput("TEXT", [1, 2], "BYTES")
    wide.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
    with pytest.raises(Exception, match="TEXT"):
        client.infer("fused_text", [wide, _inputs(mod, [b"ok"], [T0])[1]])
    with pytest.raises(Exception, match="32"):
        client.infer("fused_text", _inputs(mod, [b"ok"] * 33, [T0] * 33))
    assert client.is_server_ready() and client.is_model_ready("fused_text")


def test_truncation_is_reported_and_can_be_refused(server, reference):
    from export.registry import EMBEDDERS

    long_text = " ".join(["word"] * 300)  # over E8's 128 tokens, far under E5's 4096
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        short = client.embed("a short text", T0)
        cut = client.embed(long_text, T0)
        assert short.truncated == ()
        flags = reference.embed([long_text], np.array([T0])).truncated[0]
        assert set(cut.truncated) == {e.id for e, f in zip(EMBEDDERS, flags) if f}
        assert "E8" in cut.truncated and "E5" not in cut.truncated
        with pytest.raises(Exception, match=r"TEXT\[0\]: \d+ tokens exceed the \d+-token limit"
                                            r" of E\d+ .*TRUNCATE=true"):
            client.embed(long_text, T0, truncate=False)
        assert client.embed("a short text", T0, truncate=False).vector.shape == (1536,)


def test_pii_is_scrubbed_before_embedding_and_counted(server):
    text = "Mail jane@example.com or call (415) 555-0132, card 4111 1111 1111 1111."
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        scrubbed = client.embed(text, T0, blocks=["E11", "E9"])
        placeholders = client.embed("Mail [EMAIL] or call [PHONE], card [CARD].", T0,
                                    blocks=["E11", "E9"])
    assert scrubbed.redactions == {"EMAIL": 1, "PHONE": 1, "CARD": 1}
    assert placeholders.redactions == {}
    np.testing.assert_allclose(scrubbed.vector, placeholders.vector, atol=1e-6)
    np.testing.assert_allclose(scrubbed.blocks["E9"], placeholders.blocks["E9"], atol=1e-6)


def test_a_bad_request_does_not_disturb_the_others_batched_with_it(server):
    good = [f"valid text number {i} with some words" for i in range(12)]
    with FusedEmbedClient(server.http_url) as ok:
        expected = np.stack([e.vector for e in ok.embed_batch(good, [T0] * len(good))])
    client = httpclient.InferenceServerClient(server.http_url, concurrency=24)
    pending = []
    for i, text in enumerate(good):
        pending.append(("good", i, client.async_infer(
            "fused_text", _inputs(httpclient, [text.encode()], [T0]))))
        pending.append(("bad", i, client.async_infer(
            "fused_text", _inputs(httpclient, [b"\xff bad"], [T0]))))
    for kind, i, p in pending:
        if kind == "good":
            v = p.get_result().as_numpy("FUSED")[0]
            assert float(v @ expected[i]) >= 0.9999
        else:
            with pytest.raises(Exception, match="not valid UTF-8"):
                p.get_result()
    client.close()
