"""fused_image through the real server: E10 from the image equal to the vision tower run in
this process on CLIP's preprocessing, FUSED equal to FuseMoE fusing the image's blocks with
the text blocks missing, refusals naming the field, the CLI, and a fuzz of corrupt images
(every answer a unit vector or a client error; the server keeps answering)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from fusedembed_client import FusedEmbedClient, FusedEmbedError
from fusedembed_client.cli import main as cli
from tests.unit.test_images import bomb, encoded, picture

pytestmark = pytest.mark.server

T0 = 1_700_000_000
IMAGES = [encoded(picture(640, 480, seed=1), "JPEG"), encoded(picture(200, 300, "RGBA"), "PNG"),
          encoded(picture(97, 61, "P", seed=2), "GIF"), encoded(picture(224, 224, seed=3), "WEBP"),
          encoded(picture(50, 80, "L", seed=4), "BMP")]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_image_is_fused_from_e10_and_the_time_blocks(server, reference, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    stamps = np.array([T0 + 3600 * i for i in range(len(IMAGES))])
    with FusedEmbedClient(url, protocol) as client:
        got = client.embed_images(IMAGES, stamps.tolist())
        text = client.embed("a picture", T0)
    # E10 and FUSED computed in this process: the vision tower on CLIP's preprocessing, the
    # time blocks and FuseMoE of the in-process pipeline, the text blocks missing.
    expected = reference.embed_images(IMAGES, stamps)
    e10, fused = expected.blocks["E10"], expected.fused
    for i, e in enumerate(got):
        assert e.vector.shape == (1536,)
        assert abs(float(np.linalg.norm(e.vector)) - 1) < 1e-5
        assert float(e.blocks["E10"] @ e10[i]) >= 0.9999
        assert float(e.vector @ fused[i]) >= 0.9999
        assert abs(float(e.expert_weights.sum()) - 1) < 1e-5
        assert e.fusion_version == text.fusion_version
    assert np.abs(got[0].vector - got[1].vector).max() > 1e-4


def _raw(mod, url: str, images: list[bytes]):
    client = mod.InferenceServerClient(url)
    inputs = [mod.InferInput("IMAGE", [len(images), 1], "BYTES"),
              mod.InferInput("TIMESTAMP", [len(images), 1], "INT64")]
    inputs[0].set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
    inputs[1].set_data_from_numpy(np.full((len(images), 1), T0, dtype=np.int64))
    return client.infer("fused_image", inputs)


REFUSED = [
    (b"", "IMAGE[1]: empty (0 bytes)"),
    (b"definitely not an image", "IMAGE[1]: not an image in an accepted format"),
    (IMAGES[0][:len(IMAGES[0]) // 2], "IMAGE[1]: a JPEG image that cannot be decoded"),
    (None, "IMAGE[1]: 10000 x 10000 = 100000000 pixels exceed the limit of 40000000"),
    (encoded(picture(1, 300), "PNG"), "IMAGE[1]: 1 x 300 is more elongated than 100:1"),
]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("bad,message", REFUSED, ids=["empty", "garbage", "truncated", "bomb",
                                                      "elongated"])
def test_a_refused_image_is_a_client_error_naming_it(server, protocol, bad, message):
    mod = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    with pytest.raises(InferenceServerException) as err:
        _raw(mod, url, [IMAGES[0], bomb() if bad is None else bad])
    assert err.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    assert message in str(err.value)
    assert _raw(mod, url, IMAGES[:1]).as_numpy("FUSED").shape == (1, 1536)


def test_cli_embeds_an_image(server, tmp_path, capsys):
    path = tmp_path / "photo.jpg"
    path.write_bytes(IMAGES[0])
    assert cli(["embed", "--image", str(path), "--url", server.http_url]) == 0
    out = capsys.readouterr().out
    assert "FUSED: 1536-D, L2 norm 1.000000" in out and "E10: 768-D, L2 norm 1.000000" in out
    assert cli(["embed", "--image", str(path), "--url", server.grpc_url, "--protocol", "grpc",
                "--json"]) == 0
    vector = np.array(json.loads(capsys.readouterr().out)["vector"])
    assert vector.shape == (1536,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    assert cli(["embed", "--image", str(tmp_path / "missing.png"), "--url",
                server.http_url]) == 1
    assert cli(["embed", "--url", server.http_url]) == 1  # neither a text nor an image
    with pytest.raises(FusedEmbedError, match="IMAGE"), FusedEmbedClient(server.http_url) as c:
        c.embed_image(b"\x89PNG\r\n\x1a\n broken")


SEEDS = [encoded(picture(w, h, mode, seed=i), fmt) for i, (w, h, mode, fmt) in enumerate([
    (64, 48, "RGB", "PNG"), (48, 64, "RGB", "JPEG"), (40, 40, "RGBA", "WEBP"),
    (30, 20, "P", "GIF"), (33, 17, "RGB", "BMP"), (16, 16, "L", "PNG")])]


@st.composite
def corrupt_images(draw) -> bytes:
    """A valid image of each accepted format, broken: cut, bytes overwritten, bytes put in,
    or its header on another file's body."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["cut", "flip", "insert", "splice"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "cut":
            data = data[:at]
        elif how == "flip":
            for i in range(at, min(len(data), at + draw(st.integers(1, 16)))):
                data[i] = draw(st.integers(0, 255))
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            other = draw(st.sampled_from(SEEDS))
            data = data[:at] + other[draw(st.integers(0, len(other))):]
    return bytes(data)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.lists(corrupt_images(), min_size=1, max_size=4),
       protocol=st.sampled_from(["http", "grpc"]))
def test_fuzz_corrupt_images_get_a_vector_or_a_client_error(server, batch, protocol):
    mod = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    try:
        fused = _raw(mod, url, batch).as_numpy("FUSED")
    except InferenceServerException as err:
        assert err.status() in ("400", "StatusCode.INVALID_ARGUMENT"), str(err)
        assert "IMAGE[" in str(err)
    else:
        assert fused.shape == (len(batch), 1536)
        np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)


def test_the_server_answers_after_the_fuzz(server):
    """Runs after the fuzz (file order): every model still ready, an image still embedded."""
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_server_ready() and client.is_model_ready("fused_image")
    with FusedEmbedClient(server.http_url) as c:
        assert c.embed_image(io.BytesIO(IMAGES[1]).getvalue()).vector.shape == (1536,)


def test_gateway_embeds_images_sent_as_data_uris(server, tmp_path_factory):
    """/v1/embeddings with infinity's ``modality: "image"``: data URIs, through the OpenAI
    SDK and plain HTTP, equal to fused_image called directly; refusals name the input."""
    import base64

    import openai

    from tests.server.test_gateway import post, started

    uris = [f"data:image/jpeg;base64,{base64.b64encode(IMAGES[0]).decode()}",
            f"data:image/png;base64,{base64.b64encode(IMAGES[1]).decode()}"]
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        expected = client.embed_images(IMAGES[:2], [T0] * 2)
    gateway = started(server.grpc_url, tmp_path_factory)
    try:
        sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
        got = sdk.embeddings.create(input=uris, model="fusedembed", encoding_format="float",
                                    extra_body={"modality": "image", "timestamp": T0})
        for item, e in zip(got.data, expected):
            assert float(np.asarray(item.embedding) @ e.vector) >= 0.9999
        assert got.usage.prompt_tokens == 0
        status, body = post(f"{gateway.url}/v1/embeddings", {
            "input": uris, "model": "fusedembed-e10", "modality": "image", "timestamp": T0})
        assert status == 200, body
        for item, e in zip(body["data"], expected):
            assert float(np.asarray(item["embedding"]) @ e.blocks["E10"]) >= 0.9999
        broken = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
        for payload, message in [
            ({"input": [uris[0], broken]}, "input[1]: not an image in an accepted format"),
            ({"input": ["https://example.com/cat.png"]}, "input[0]: an image must be a data URI"),
            ({"input": ["data:image/png;base64,***"]}, "input[0]: the data URI's base64"),
            ({"input": uris[:1], "model": "fusedembed-e1"}, "fusedembed-e1 embeds text only")]:
            status, body = post(f"{gateway.url}/v1/embeddings", {"modality": "image"} | payload)
            assert status == 422 and message in body["error"]["message"], body
    finally:
        gateway.stop()
