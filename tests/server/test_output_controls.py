"""FUSED's DIMENSIONS and ENCODING through the real server, over HTTP and gRPC: a prefix is
the full vector's head renormalised; int8 and binary decode to the documented similarity;
anything else is refused naming the field, and the server keeps answering."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble import fusemoe
from export.registry import FUSEMOE_MODEL
from fusedembed_client import (
    FusedEmbedClient,
    FusedEmbedError,
    decode_binary,
    decode_int8,
    hamming,
    int8_similarity,
)

pytestmark = pytest.mark.server

T0 = 1_700_000_000
TEXTS = ["a cat sits on the warm mat", "the stock market fell sharply on Monday",
         "def add(a, b): return a + b", "a kitten is lying on a rug", "rain is expected"]


@pytest.fixture(scope="module")
def offered(repository) -> fusemoe.Outputs:
    _, manifest = fusemoe.load(repository / FUSEMOE_MODEL / "1")
    return fusemoe.Outputs.of(manifest)


def _url(server, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def test_the_build_offers_the_checkpoints_sizes_to_clients(repository, offered):
    built = (repository / "fused_text" / "configs" / "built.pbtxt").read_text()
    assert f'string_value: "{",".join(map(str, offered.dimensions))}"' in built


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_size_is_the_head_of_the_full_vector_renormalised(server, offered, protocol):
    with FusedEmbedClient(_url(server, protocol), protocol) as client:
        full = np.stack([e.vector for e in client.embed_batch(TEXTS, [T0] * len(TEXTS))])
        for d in offered.dimensions:
            got = client.embed_batch(TEXTS, [T0] * len(TEXTS), dimensions=d)
            v = np.stack([e.vector for e in got])
            assert v.shape == (len(TEXTS), d)
            head = full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True)
            np.testing.assert_allclose(v, head, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_int8_and_binary_decode_to_their_similarity(server, offered, protocol):
    d = min(offered.int8_scale or {max(offered.dimensions): None})
    with FusedEmbedClient(_url(server, protocol), protocol) as client:
        floats = np.stack([e.vector for e in client.embed_batch(
            TEXTS, [T0] * len(TEXTS), dimensions=d)])
        binary = client.embed_batch(TEXTS, [T0] * len(TEXTS), dimensions=d, encoding="binary")
        if offered.int8_scale:
            coded = client.embed_batch(TEXTS, [T0] * len(TEXTS), dimensions=d,
                                       encoding="int8")
    bits = np.stack([e.codes for e in binary])
    assert bits.dtype == np.uint8 and bits.shape == (len(TEXTS), d // 8)
    np.testing.assert_array_equal(bits, np.packbits(floats > 0, axis=1))
    signs = decode_binary(bits, d)
    assert (signs @ signs.T == d - 2 * hamming(bits[:, None], bits[None])).all()
    if not offered.int8_scale:
        pytest.skip("the served checkpoint has no int8 calibration (seeded)")
    codes = np.stack([e.codes for e in coded])
    scale = coded[0].scale
    assert codes.dtype == np.int8 and codes.shape == (len(TEXTS), d)
    np.testing.assert_allclose(scale, offered.int8_scale[d], rtol=1e-6)
    decoded = decode_int8(codes, scale)
    inside = np.abs(floats) <= 127 * scale
    assert np.abs(decoded - floats)[inside].max() <= 0.5 * scale.max() + 1e-6
    # scaled int8 dot products order the pairs as the cosines do
    pairs = [(0, 3), (0, 1), (1, 4), (2, 0), (3, 4)]
    sim = [float(int8_similarity(codes[i], codes[j], scale)) for i, j in pairs]
    cos = [float(floats[i] @ floats[j]) for i, j in pairs]
    assert np.argsort(sim).tolist() == np.argsort(cos).tolist()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dimensions": 100}, "DIMENSIONS[0]: 100 is not one of this checkpoint's sizes"),
    ({"dimensions": 4096}, "DIMENSIONS[0]: 4096 is not one of"),
])
def test_bad_settings_are_client_errors_naming_the_field(server, protocol, kwargs, message):
    with FusedEmbedClient(_url(server, protocol), protocol) as client:
        with pytest.raises(FusedEmbedError) as err:
            client.embed("a text", T0, **kwargs)
        assert message in str(err.value)
        assert err.value.status in ("400", "StatusCode.INVALID_ARGUMENT")
        assert client.embed("still serving", T0).vector.shape == (1536,)


def test_an_unknown_encoding_is_refused_by_the_server(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    text = httpclient.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"a text"]], dtype=object))
    stamp = httpclient.InferInput("TIMESTAMP", [1, 1], "INT64")
    stamp.set_data_from_numpy(np.array([[T0]], dtype=np.int64))
    encoding = httpclient.InferInput("ENCODING", [1, 1], "BYTES")
    encoding.set_data_from_numpy(np.array([[b"fp16"]], dtype=object))
    with pytest.raises(Exception) as err:
        client.infer("fused_text", [text, stamp, encoding])
    assert "ENCODING[0]: 'fp16' is not one of float, int8, binary" in str(err.value)
    assert err.value.status() == "400"


def test_the_cli_prints_a_prefix_and_its_binary_codes(server, offered, capsys):
    import json

    from fusedembed_client.cli import main as cli

    d = min(offered.dimensions)
    assert cli(["embed", TEXTS[0], "--url", server.http_url, "--timestamp", str(T0),
                "--dimensions", str(d), "--encoding", "binary", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dim"] == d and out["encoding"] == "binary" and len(out["codes"]) == d // 8
    with FusedEmbedClient(server.http_url) as client:
        expected = client.embed(TEXTS[0], T0, dimensions=d).vector
    assert out["codes"] == np.packbits(expected > 0).tolist()
