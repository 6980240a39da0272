"""The gateway's own logic without a server: the catalog read from the generated configs,
model names, Triton's errors as HTTP statuses, settings."""

from __future__ import annotations

import pytest
from google.protobuf.json_format import MessageToDict

from export import registry as r
from export.repository import ensemble_config
from fusedembed_client.gateway.backend import Catalog, GatewayError, triton_error
from fusedembed_client.gateway.settings import Settings


def _config(name: str = r.ENSEMBLE_MODEL) -> dict:
    # Triton's JSON config, as get_model_config(as_json=True) returns it (int64 as strings).
    return MessageToDict(ensemble_config(name), preserving_proto_field_name=True)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_configs(_config(), _config(r.CACHED_MODEL))


def test_catalog_serves_fused_the_cached_entry_point_and_every_block(catalog):
    assert list(catalog.models)[:2] == ["fusedembed", "fusedembed-cached"]
    assert [m for m in catalog.models][2:] == [f"fusedembed-e{i}" for i in range(1, 13)]
    assert catalog.models["fusedembed"].dim == r.FUSEMOE.output_dim
    for spec in r.EMBEDDERS:
        served = catalog.models[f"fusedembed-{spec.id.lower()}"]
        assert (served.triton_model, served.output, served.dim) == (
            r.ENSEMBLE_MODEL, spec.block_name, spec.dim)
    assert catalog.models["fusedembed-cached"].triton_model == r.CACHED_MODEL
    assert catalog.batch == r.ENSEMBLE_MAX_BATCH_SIZE
    assert catalog.tokens
    assert catalog.sparse  # E6's SPLADE terms (/embed_sparse)
    assert catalog.usage_step == (r.usage_tokenizer().triton_model, r.TOKEN_COUNT)
    # Without Matryoshka training, only the full size.
    assert not catalog.matryoshka
    assert catalog.models["fusedembed"].dimensions == (r.FUSEMOE.output_dim,)


def test_without_splade_terms_embed_sparse_is_not_offered():
    config = _config()
    config["output"] = [o for o in config["output"] if not o["name"].startswith("E6_SPARSE")]
    assert not Catalog.from_configs(config, None).sparse


def test_without_the_cached_entry_point_it_is_not_listed():
    assert "fusedembed-cached" not in Catalog.from_configs(_config(), None).models


def test_a_matryoshka_fusion_switches_dimensions_on():
    config = _config()  # DIMENSIONS is an input; the build writes the checkpoint's sizes
    config["parameters"]["dimensions"] = {"string_value": "1536,256,1024, 512"}
    catalog = Catalog.from_configs(config, None)
    assert catalog.matryoshka
    assert catalog.models["fusedembed"].dimensions == (1536, 1024, 512, 256)
    assert catalog.models["fusedembed-e11"].dimensions == (384,)  # blocks stay whole


@pytest.mark.parametrize(("name", "input_type", "model", "kind"), [
    ("fusedembed", None, "fusedembed", "passage"),
    ("fusedembed", "query", "fusedembed", "query"),
    ("fusedembed-query", None, "fusedembed", "query"),
    ("fusedembed-e12-passage", "passage", "fusedembed-e12", "passage"),
    ("fusedembed-cached-query", None, "fusedembed-cached", "query"),
])
def test_model_names_and_input_type_select_the_kind(catalog, name, input_type, model, kind):
    served, chosen = catalog.resolve(name, input_type)
    assert (served.id, chosen) == (model, kind)


def test_unknown_models_and_contradictions_are_refused(catalog):
    with pytest.raises(GatewayError, match="'text-embedding-3-small' is not served") as err:
        catalog.resolve("text-embedding-3-small", None)
    assert (err.value.status, err.value.param) == (404, "model")
    with pytest.raises(GatewayError, match="contradicts") as err:
        catalog.resolve("fusedembed-query", "passage")
    assert (err.value.status, err.value.param) == (422, "input_type")
    with pytest.raises(GatewayError):
        catalog.resolve("fusedembed-e13", None)


class TritonException(Exception):
    """Shaped as tritonclient's InferenceServerException."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self._status, self._message = status, message

    def status(self) -> str:
        return self._status

    def message(self) -> str:
        return self._message


@pytest.mark.parametrize(("status", "message", "code", "param", "says"), [
    ("StatusCode.INVALID_ARGUMENT",
     "in ensemble 'fused_text', TEXT[3]: 70000 bytes; the limit is 65536", 422, "input",
     "input[3]: 70000 bytes; the limit is 65536"),
    ("StatusCode.INVALID_ARGUMENT", "in ensemble 'fused_text', TOP_K: 9 is not in 1..8", 422,
     "top_k", "top_k: 9 is not in 1..8"),
    ("StatusCode.INVALID_ARGUMENT",
     "in ensemble 'fused_text', SPARSE_TOP_K[0]: -1 is outside 0..30522 (0 keeps every term)",
     422, "sparse_top_k", "sparse_top_k[0]: -1 is outside"),
    ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", 429, None, "queue is full"),
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", 503, None, "unavailable"),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", 504, None, "deadline"),
    ("StatusCode.INTERNAL",
     "in ensemble 'fused_text', e07_code: injected fault (parameter inject_error)", 424, None,
     "model e07_code failed"),
    ("StatusCode.INTERNAL", "something else broke", 500, None, "Triton failed"),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'fused_text' is not found", 503,
     None, "does not serve"),
])
def test_triton_errors_become_http_statuses(catalog, status, message, code, param, says):
    err = triton_error(TritonException(status, message), catalog)
    assert (err.status, err.param) == (code, param)
    assert says in err.message


def test_an_item_of_a_later_chunk_is_named_by_its_place_in_the_request(catalog):
    err = TritonException("StatusCode.INVALID_ARGUMENT",
                          "in ensemble 'fused_text', TEXT[3]: empty or whitespace-only text")
    assert triton_error(err, catalog, first=64).message == (
        "input[67]: empty or whitespace-only text")
    err = TritonException("StatusCode.INVALID_ARGUMENT", "SESSION[0]: 300 bytes exceed the "
                          "limit of 256 bytes")
    assert triton_error(err, catalog, first=32).message.startswith("session[32]: 300 bytes")


def test_a_longer_step_name_wins_over_its_prefix(catalog):
    assert catalog.step_in("e01_semantic: out of memory") == "e01_semantic"
    assert catalog.step_in("tok_bert_uncased: broken") == "tok_bert_uncased"
    assert catalog.step_in("no model here") is None


def test_settings_from_the_environment_and_their_limits():
    s = Settings.from_env({"GATEWAY_PORT": "9090", "FUSEDEMBED_HOST": "0.0.0.0",
                           "FUSEDEMBED_GATEWAY_MAX_INFLIGHT_TEXTS": "64",
                           "FUSEDEMBED_GATEWAY_TIMEOUT_S": "2.5"})
    assert (s.port, s.host, s.max_inflight_texts, s.timeout_s) == (9090, "0.0.0.0", 64, 2.5)
    assert Settings.from_env({}) == Settings()
    with pytest.raises(ValueError, match="max_inflight_texts must be at least 1"):
        Settings.from_env({"FUSEDEMBED_GATEWAY_MAX_INFLIGHT_TEXTS": "0"})
    with pytest.raises(ValueError, match="port: 'x' is not a valid int"):
        Settings.from_env({"GATEWAY_PORT": "x"})


def test_calls_past_their_deadline_are_bounded_while_triton_still_runs_them():
    import asyncio
    import time

    import numpy as np

    from fusedembed_client.gateway import backend

    class SlowTriton:
        finished = 0

        async def infer(self, model, inputs, outputs, request_id=""):
            await asyncio.sleep(0.6)
            SlowTriton.finished += 1

    async def main():
        triton = backend.Triton("127.0.0.1:9", 16, 0.05)
        triton._client = SlowTriton()
        text = [("TEXT", "BYTES", np.array([[b"x"]], dtype=np.object_))]

        async def call():
            try:
                await triton._infer("fused_text", text, ["FUSED"], time.monotonic() + 0.05)
            except GatewayError as err:
                return err.status
            return 200

        statuses = [await call() for _ in range(backend.MAX_ABANDONED + 2)]
        assert statuses == [504] * backend.MAX_ABANDONED + [503, 503]
        await asyncio.sleep(0.8)  # Triton ends them: new requests are taken again
        assert SlowTriton.finished == backend.MAX_ABANDONED
        assert await call() == 504

    asyncio.run(main())


def _asgi(app, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict, bytes]:
    """One GET through an ASGI app: (status, headers, body)."""
    import asyncio

    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": headers,
             "query_string": b"", "root_path": ""}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_an_api_key_guards_every_route_but_health():
    import json

    from fusedembed_client.gateway.app import ApiKey

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    app = ApiKey(inner, "s3cret")
    bearer = [(b"authorization", b"Bearer s3cret")]
    assert _asgi(app, "/v1/embeddings", bearer)[::2] == (200, b"served")
    assert _asgi(app, "/health", [])[::2] == (200, b"served")
    for headers, says in (([], "no API key"), ([(b"authorization", b"Bearer s3cre")], "not the"),
                          ([(b"authorization", b"s3cret")], "not the"),
                          ([(b"authorization", b"Bearer s3cret ")], "not the")):
        for path in ("/v1/embeddings", "/v1/models", "/embed", "/metrics", "/openapi.json"):
            status, head, body = _asgi(app, path, headers)
            error = json.loads(body)["error"]
            assert status == 401 and error["code"] == "invalid_api_key", (path, headers)
            assert says in error["message"] and head[b"www-authenticate"].startswith(b"Bearer")


def test_the_api_key_comes_from_the_environment_or_a_mounted_file(tmp_path):
    assert Settings.from_env({"FUSEDEMBED_GATEWAY_API_KEY": "k1"}).api_key == "k1"
    secret = tmp_path / "key"
    secret.write_text("k2\n")
    assert Settings.from_env({"FUSEDEMBED_GATEWAY_API_KEY_FILE": str(secret)}).api_key == "k2"
    secret.write_text("")
    with pytest.raises(ValueError, match="api_key_file: .* is empty"):
        Settings.from_env({"FUSEDEMBED_GATEWAY_API_KEY_FILE": str(secret)})
    with pytest.raises(ValueError, match="api_key_file: cannot read"):
        Settings.from_env({"FUSEDEMBED_GATEWAY_API_KEY_FILE": str(tmp_path / "absent")})
    assert Settings.from_env({}).api_key == ""
