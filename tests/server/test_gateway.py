"""The OpenAI-compatible gateway in front of the real server, called as users call it: the
OpenAI Python SDK, plain HTTP for the text-embeddings-inference routes and the errors."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ensemble.server import Gateway, free_port
from fusedembed_client import FusedEmbedClient, GateControls

pytestmark = pytest.mark.server

T0 = 1_700_000_000


def started(grpc_url: str, tmp_path_factory, *args: str) -> Gateway:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    gateway = Gateway(grpc_url, free_port(), "127.0.0.1", log, tuple(args))
    gateway.start()
    return gateway


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory) -> Iterator[Gateway]:
    gw = started(server.grpc_url, tmp_path_factory)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def direct(server) -> Iterator[FusedEmbedClient]:
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        yield client


def post(url: str, body: object, raw: bytes | None = None) -> tuple[int, dict | list]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_openai_sdk_gets_the_vectors_of_fused_text(sdk, direct):
    texts = ["The cat sat on the mat.", "Quarterly revenue grew by 12 percent.",
             "def add(a, b): return a + b"]
    expected = direct.embed_batch(texts, [T0] * len(texts))
    for encoding in ("base64", "float", None):  # None: the SDK's default (it asks base64)
        extra = {} if encoding is None else {"encoding_format": encoding}
        answer = sdk.embeddings.create(model="fusedembed", input=texts,
                                       extra_body={"timestamp": T0}, **extra)
        # Asked for explicitly, base64 reaches the caller as sent; by default the SDK decodes it.
        got = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4")
                        if encoding == "base64" else d.embedding for d in answer.data])
        assert got.shape == (3, 1536)
        assert np.all(cosines(got, np.stack([e.vector for e in expected])) >= 0.9999)
        assert [d.index for d in answer.data] == [0, 1, 2]
        assert answer.model == "fusedembed"
        tokens = sum(e.tokens for e in expected)
        assert tokens > 3 * 2  # [CLS] and [SEP] at least
        assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (tokens, tokens)


def test_base64_is_little_endian_float32_of_the_float_answer(gateway):
    body = {"model": "fusedembed", "input": "bytes on the wire", "timestamp": T0}
    _, floats = post(f"{gateway.url}/v1/embeddings", body)
    _, packed = post(f"{gateway.url}/v1/embeddings", body | {"encoding_format": "base64"})
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert len(raw) == 1536 * 4
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"),
                                  np.array(floats["data"][0]["embedding"], dtype=np.float32))


def test_a_hundred_texts_are_split_and_come_back_in_order(sdk, direct):
    texts = [f"sentence number {i}: {'a lot of ' * (i % 7)}words about item {i}"
             for i in range(100)]
    answer = sdk.embeddings.create(model="fusedembed", input=texts, extra_body={"timestamp": T0})
    assert [d.index for d in answer.data] == list(range(100))
    got = np.array([d.embedding for d in answer.data])
    expected = np.stack([e.vector for e in direct.embed_batch(texts, [T0] * 100)])
    assert np.all(cosines(got, expected) >= 0.9999)


def test_blocks_kinds_gate_controls_and_the_cached_entry_point(sdk, direct, gateway):
    text = "what is the boiling point of water"
    query = direct.embed(text, T0, kind="query", blocks=("E1", "E11"))
    answer = sdk.embeddings.create(model="fusedembed-e1-query", input=text,
                                   extra_body={"timestamp": T0})
    assert len(answer.data[0].embedding) == 1024
    assert cosines(np.array([answer.data[0].embedding]), query.blocks["E1"][None])[0] >= 0.9999
    answer = sdk.embeddings.create(model="fusedembed-e11", input=text,
                                   extra_body={"timestamp": T0, "input_type": "query"})
    assert cosines(np.array([answer.data[0].embedding]), query.blocks["E11"][None])[0] >= 0.9999
    gate = GateControls(top_k=1, temperature=0.5, focus={"E11": 2.0}, missing=("E7",))
    steered = direct.embed(text, T0, gate=gate)
    answer = sdk.embeddings.create(model="fusedembed", input=text, extra_body={
        "timestamp": T0, "top_k": 1, "temperature": 0.5, "focus": {"E11": 2.0},
        "missing": ["E7"]})
    assert cosines(np.array([answer.data[0].embedding]), steered.vector[None])[0] >= 0.9999
    cached = [sdk.embeddings.create(model="fusedembed-cached", input=text,
                                    extra_body={"timestamp": T0}) for _ in range(2)]
    plain = direct.embed(text, T0)
    for c in cached:
        assert cosines(np.array([c.data[0].embedding]), plain.vector[None])[0] >= 0.9999
        assert c.usage.prompt_tokens == plain.tokens


def test_dimensions_asks_fused_text_for_its_matryoshka_prefix(sdk, direct):
    texts = ["a cat sits on the mat", "def add(a, b): return a + b"]
    full = np.stack([e.vector for e in direct.embed_batch(texts, [T0, T0])])
    for d in (256, 128):
        answer = sdk.embeddings.create(model="fusedembed", input=texts, dimensions=d,
                                       extra_body={"timestamp": T0})
        got = np.array([a.embedding for a in answer.data])
        head = full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True)
        assert got.shape == (2, d)
        np.testing.assert_allclose(got, head, atol=1e-5)


def test_models_are_listed_with_their_dimensions(sdk):
    models = {m.id: m for m in sdk.models.list()}
    assert {"fusedembed", "fusedembed-cached", "fusedembed-e1", "fusedembed-e12"} <= set(models)
    assert models["fusedembed"].model_extra["dimensions"] == 1536
    assert models["fusedembed-e11"].model_extra["dimensions"] == 384
    assert sdk.models.retrieve("fusedembed-e5").model_extra["dimensions"] == 768


def test_the_tei_routes(gateway, direct):
    texts = ["one text", "and another"]
    before = int(time.time())
    status, vectors = post(f"{gateway.url}/embed", {"inputs": texts})
    after = int(time.time())
    assert status == 200
    # TEI sends no timestamp: the gateway gives each text the time it arrived, a second
    # between ``before`` and ``after``. The same texts at those times, sent directly:
    expected = [np.stack([e.vector for e in direct.embed_batch(texts, [t] * 2)])
                for t in range(before, after + 1)]
    best = np.max([cosines(np.array(vectors), e) for e in expected], axis=0)
    assert np.all(best >= 0.9999), best
    assert get(f"{gateway.url}/health")[0] == 200
    status, info = get(f"{gateway.url}/info")
    info = json.loads(info)
    assert (status, info["model_id"], info["dimensions"]) == (200, "fusedembed", 1536)
    assert info["max_client_batch_size"] == 2048
    long = " ".join(["word"] * 600)  # over E1's 512 tokens: TEI refuses unless truncate
    status, error = post(f"{gateway.url}/embed", {"inputs": long})
    assert status == 422 and error["error_type"] == "Validation", error
    assert post(f"{gateway.url}/embed", {"inputs": long, "truncate": True})[0] == 200


def test_embed_sparse_answers_splade_terms_in_teis_shape(gateway, direct):
    texts = ["the quick brown fox", "what is the capital of australia"]
    status, rows = post(f"{gateway.url}/embed_sparse", {"inputs": texts})
    assert status == 200 and len(rows) == 2
    expected = [e.sparse for e in direct.embed_batch(texts, sparse=True)]
    for row, terms in zip(rows, expected):
        assert [t["index"] for t in row] == terms.indices.tolist()
        np.testing.assert_allclose([t["value"] for t in row], terms.weights, rtol=1e-6)
    status, rows = post(f"{gateway.url}/embed_sparse", {"inputs": texts[0], "sparse_top_k": 5})
    assert status == 200 and len(rows) == 1 and len(rows[0]) == 5
    heaviest = np.sort(expected[0].weights)[-5:]
    np.testing.assert_allclose(sorted(t["value"] for t in rows[0]), heaviest, rtol=1e-6)
    status, error = post(f"{gateway.url}/embed_sparse", {"inputs": "x", "sparse_top_k": -1})
    assert status == 422 and "sparse_top_k" in error["error"], error
    status, error = post(f"{gateway.url}/embed_sparse", {"inputs": ["ok", " "]})
    assert status == 422 and "input[1]: empty or whitespace-only" in error["error"], error


@pytest.mark.parametrize(("body", "param", "says"), [
    ({"input": [101, 2023, 102]}, "input", "token-id arrays are not supported"),
    ({"input": [[101, 2023]]}, "input", "token-id arrays are not supported"),
    ({"input": "x", "dimensions": 100}, "dimensions",
     "model fusedembed returns 1536, 1024, 768, 512, 256, 128 dimensions, not 100"),
    ({"input": "x", "model": "fusedembed-e11", "dimensions": 512}, "dimensions",
     "model fusedembed-e11 returns 384 dimensions"),
    ({"input": ["fine", "   "]}, "input", "input[1]:"),
    ({"input": []}, "input", "the list is empty"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", "encoding_format"),
    ({"input": "x", "top_k": 99}, "top_k", "top_k"),
    ({"input": "x", "timestamp": [1, 2]}, "timestamp", "2 values for 1 inputs"),
    ({"input": "x", "focus": {"E99": 1.0}}, "focus", "unknown block 'E99'"),
    ({"input": "x", "dimension": 3}, "dimension", "not a field"),
])
def test_bad_requests_are_422_naming_the_field(gateway, body, param, says):
    status, answer = post(f"{gateway.url}/v1/embeddings", body)
    assert status == 422, answer
    assert answer["error"]["param"] == param
    assert says in answer["error"]["message"]


def test_unknown_models_bad_json_and_too_many_inputs(sdk, gateway):
    with pytest.raises(openai.NotFoundError, match="is not served"):
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert post(f"{gateway.url}/v1/embeddings", None, raw=b"{not json")[0] == 400
    status, answer = post(f"{gateway.url}/v1/embeddings", {"input": ["a"] * 2049})
    assert status == 413 and "2049 items; the limit is 2048" in answer["error"]["message"]


def test_a_body_over_the_limit_is_413(server, tmp_path_factory):
    gw = started(server.grpc_url, tmp_path_factory, "--max-body-bytes", "1000")
    try:
        status, answer = post(f"{gw.url}/v1/embeddings", {"input": "x" * 2000})
        assert status == 413 and "the limit is 1000" in answer["error"]["message"]
        assert post(f"{gw.url}/v1/embeddings", {"input": "small", "timestamp": T0})[0] == 200
    finally:
        gw.stop()


def test_a_burst_past_the_inflight_limit_gets_429_and_the_rest_succeed(server,
                                                                       tmp_path_factory):
    gw = started(server.grpc_url, tmp_path_factory, "--max-inflight-texts", "8")
    outcomes: list[tuple[int, object]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(12)

    def one(i: int) -> None:
        texts = [f"burst request {i} text {j}" for j in range(4)]
        barrier.wait()
        status, answer = post(f"{gw.url}/v1/embeddings", {"input": texts, "timestamp": T0})
        with lock:
            outcomes.append((status, answer))

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        statuses = sorted(s for s, _ in outcomes)
        assert len(statuses) == 12
        assert set(statuses) == {200, 429}, statuses
        for status, answer in outcomes:
            if status == 200:
                assert len(answer["data"]) == 4
                assert all(len(d["embedding"]) == 1536 for d in answer["data"])
            else:
                assert "limit of 8" in answer["error"]["message"]
        families = scrape(gw)
        assert families[("fusedembed_gateway_throttled_total",
                         (("route", "/v1/embeddings"),))] == statuses.count(429)
        assert families[("fusedembed_gateway_inflight_texts", ())] == 0
    finally:
        gw.stop()


def test_bodies_past_the_inflight_bytes_get_429_and_the_rest_succeed(server,
                                                                     tmp_path_factory):
    gw = started(server.grpc_url, tmp_path_factory, "--max-inflight-bytes", "3000")
    outcomes: list[tuple[int, object]] = []
    barrier = threading.Barrier(6)

    def one(i: int) -> None:
        body = {"input": [f"request {i}: " + "many words " * 180], "timestamp": T0}  # ~2 KB
        barrier.wait()
        outcomes.append(post(f"{gw.url}/v1/embeddings", body))

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        statuses = sorted(s for s, _ in outcomes)
        assert len(statuses) == 6 and set(statuses) == {200, 429}, statuses
        assert all("limit is 3000" in a["error"]["message"]
                   for s, a in outcomes if s == 429)  # type: ignore[index]
        assert post(f"{gw.url}/v1/embeddings", {"input": "alone", "timestamp": T0})[0] == 200
    finally:
        gw.stop()


def test_triton_unreachable_is_503_and_a_deadline_is_504(server, tmp_path_factory):
    nowhere = started(f"127.0.0.1:{free_port()}", tmp_path_factory)
    try:
        status, answer = post(f"{nowhere.url}/v1/embeddings", {"input": "x"})
        assert status == 503 and "unavailable" in answer["error"]["message"].lower(), answer
        assert get(f"{nowhere.url}/health")[0] == 503
    finally:
        nowhere.stop()
    hurried = started(server.grpc_url, tmp_path_factory, "--timeout-s", "0.001")
    try:
        texts = [f"a text that cannot be embedded in a millisecond {i}" for i in range(64)]
        status, answer = post(f"{hurried.url}/v1/embeddings", {"input": texts})
        assert status == 504, answer
    finally:
        hurried.stop()


def scrape(gateway: Gateway) -> dict[tuple[str, tuple], float]:
    _, text = get(f"{gateway.url}/metrics")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def test_metrics_move_after_known_requests(gateway):
    before = scrape(gateway)
    route = (("model", "fusedembed"), ("route", "/v1/embeddings"), ("status", "200"))
    for n in (1, 5, 40):
        assert post(f"{gateway.url}/v1/embeddings",
                    {"input": [f"metric text {i}" for i in range(n)], "timestamp": T0})[0] == 200
    # Refused before it reaches Triton: no model, no texts counted.
    assert post(f"{gateway.url}/v1/embeddings", {"input": "x", "encoding_format": "f"})[0] == 422
    after = scrape(gateway)

    def moved(name: str, labels: tuple) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert moved("fusedembed_gateway_requests_total", route) == 3
    assert moved("fusedembed_gateway_requests_total",
                 (("model", "-"), ("route", "/v1/embeddings"), ("status", "422"))) == 1
    per_route = (("route", "/v1/embeddings"),)
    assert moved("fusedembed_gateway_texts_per_request_sum", per_route) == 46
    assert moved("fusedembed_gateway_texts_per_request_count", per_route) == 3
    assert moved("fusedembed_gateway_request_duration_seconds_count", per_route) == 4
    assert moved("fusedembed_gateway_texts_per_request_bucket",
                 (("le", "32.0"), ("route", "/v1/embeddings"))) == 2


def test_with_an_api_key_the_sdk_needs_it_and_health_does_not(server, direct,
                                                              tmp_path_factory):
    secret = tmp_path_factory.mktemp("secret") / "api-key"
    secret.write_text("k-" + "7" * 30 + "\n")
    gw = started(server.grpc_url, tmp_path_factory, "--api-key-file", str(secret))
    try:
        keyed = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="k-" + "7" * 30, max_retries=0)
        answer = keyed.embeddings.create(model="fusedembed", input=["a keyed request"],
                                         extra_body={"timestamp": T0})
        expected = direct.embed_batch(["a keyed request"], [T0])[0].vector
        assert cosines(np.array([answer.data[0].embedding]), expected[None])[0] > 0.9999
        for key in ("unused", "k-" + "7" * 29):
            wrong = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as err:
                wrong.embeddings.create(model="fusedembed", input=["refused"])
            assert err.value.status_code == 401
            assert err.value.body["code"] == "invalid_api_key"
        assert post(f"{gw.url}/embed", {"inputs": "no key"})[0] == 401
        assert get(f"{gw.url}/metrics")[0] == 401
        assert get(f"{gw.url}/health")[0] == 200
    finally:
        gw.stop()


def test_real_answers_match_the_served_openapi_document(gateway):
    import jsonschema
    from openapi_spec_validator import validate

    status, raw = get(f"{gateway.url}/openapi.json")
    assert status == 200
    doc = json.loads(raw)
    validate(doc)
    assert get(f"{gateway.url}/docs")[0] == 200

    def check(path: str, method: str, status: int, answer: object) -> None:
        content = doc["paths"][path][method]["responses"][str(status)]["content"]
        schema = {**content["application/json"]["schema"], "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(answer)

    for body in ({"input": ["a", "b"], "timestamp": T0},
                 {"input": "a", "encoding_format": "base64", "timestamp": T0}):
        check("/v1/embeddings", "post", *post(f"{gateway.url}/v1/embeddings", body))
    check("/v1/embeddings", "post", *post(f"{gateway.url}/v1/embeddings", {"input": []}))
    check("/embed", "post", *post(f"{gateway.url}/embed", {"inputs": ["a", "b"]}))
    check("/embed", "post", *post(f"{gateway.url}/embed", {"inputs": 3}))
    check("/embed_sparse", "post", *post(f"{gateway.url}/embed_sparse", {"inputs": ["a"]}))
    for path, route in (("/v1/models", "/v1/models"), ("/info", "/info"),
                        ("/v1/models/fusedembed", "/v1/models/{model}")):
        status, raw = get(f"{gateway.url}{path}")
        check(route, "get", status, json.loads(raw))
