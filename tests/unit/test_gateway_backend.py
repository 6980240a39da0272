"""The gateway's Triton client (gateway/backend.py) against a stand-in for tritonclient's asyncio
client: chunks sent concurrently and put back in order, token counts, images, SPLADE terms,
deadlines and Triton's errors per chunk. The gateway against Triton itself:
tests/server/test_gateway.py."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict

from export import registry as r
from export.repository import ensemble_config
from fusedembed_client.client import GateControls
from fusedembed_client.gateway import backend
from fusedembed_client.gateway.backend import Batch, GatewayError
from tests.unit import fake_tritonclient as fake

USAGE = r.usage_tokenizer().triton_model


def config(name: str = r.ENSEMBLE_MODEL, batch: int | None = None, dimensions: str = "") -> dict:
    cfg = MessageToDict(ensemble_config(name), preserving_proto_field_name=True)
    if batch is not None:
        cfg["max_batch_size"] = batch
    if dimensions:
        cfg["parameters"]["dimensions"] = {"string_value": dimensions}
    return cfg


def answers(model, inputs, outputs):
    """Row i of FUSED (or a block) holds its text's number; TOKENS is the text's length."""
    if "IMAGE" in inputs:
        n = len(inputs["IMAGE"])
        return {o: np.array([[len(b[0])] * 4 for b in inputs["IMAGE"]], np.float32)
                for o in outputs}
    texts = [t[0].decode() for t in inputs["TEXT"]]
    numbers = [float(t.split()[-1]) if t.split()[-1].isdigit() else -1.0 for t in texts]
    out = {}
    for o in outputs:
        if o in (backend.TOKENS, r.TOKEN_COUNT):
            out[o] = np.array([[len(t)] for t in texts], np.int32)
        elif o == "E6_SPARSE_INDICES":
            out[o] = np.array([[int(n), -1] for n in numbers], np.int32)
        elif o == "E6_SPARSE_WEIGHTS":
            out[o] = np.array([[0.5, 0.0] for _ in numbers], np.float32)
        else:
            n = len(texts)
            out[o] = np.repeat(np.array(numbers, np.float64)[:, None], 3, axis=1)[:n]
    return out


def triton(batch: int = 4, handler=answers, delay_s: float = 0.0, timeout_s: float = 10.0,
           cached: bool = True, dimensions: str = "") -> backend.Triton:
    t = backend.Triton("127.0.0.1:9", 16, timeout_s)
    configs = {r.ENSEMBLE_MODEL: config(batch=batch, dimensions=dimensions)}
    if cached:
        configs[r.CACHED_MODEL] = config(r.CACHED_MODEL)
    t._client = fake.AsyncClient(handler, configs, delay_s)
    t._tc = fake.Module
    return t


def texts(n: int) -> list[str]:
    return [f"text {i}" for i in range(n)]


@pytest.fixture(autouse=True)
def loop():
    """One event loop per test, current while the client is made (its channel binds to it)
    and for every call."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


def run(coro):
    return asyncio.get_event_loop().run_until_complete(coro)


def test_a_list_is_sent_in_chunks_of_the_ensemble_s_batch_size_and_put_back_in_order():
    t = triton(batch=4, delay_s=0.05)
    catalog = run(t.catalog())
    served = catalog.models["fusedembed"]
    start = time.monotonic()
    vectors, tokens = run(t.embed(served, Batch(texts(10), list(range(10)))))
    elapsed = time.monotonic() - start
    calls = t._client.calls
    assert sorted(len(c.inputs["TEXT"]) for c in calls) == [2, 4, 4]
    assert elapsed < 0.14  # the three chunks were in flight together, not one after another
    assert vectors.dtype == np.float32 and vectors[:, 0].tolist() == list(range(10))
    assert tokens.dtype == np.int64 and tokens.tolist() == [len(t) for t in texts(10)]
    assert all(c.outputs == ["FUSED", backend.TOKENS] for c in calls)
    stamps = sorted(c.inputs["TIMESTAMP"][0, 0] for c in calls)
    assert stamps == [0, 4, 8] and "DIMENSIONS" not in calls[0].inputs


def test_the_batch_s_settings_go_into_every_chunk():
    t = triton(batch=2)
    served = run(t.catalog()).models["fusedembed"]
    batch = Batch(texts(3), [1, 2, 3], kind="query", truncate=False,
                  gate=GateControls(top_k=4), sessions=["a", "b", "c"], sequences=[7, 8, 9])
    run(t.embed(served, batch))
    last = max(t._client.calls, key=lambda c: c.inputs["TIMESTAMP"][0, 0])
    assert last.inputs["KIND"].tolist() == [[b"query"]]
    assert last.inputs["TRUNCATE"].tolist() == [[False]]
    assert last.inputs["TOP_K"].tolist() == [[4]]
    assert last.inputs["SESSION"].tolist() == [[b"c"]] and last.inputs["SEQUENCE"].tolist() == [[9]]


def test_a_smaller_size_is_asked_for_and_one_not_offered_is_422():
    t = triton(dimensions="1536,256")
    served = run(t.catalog()).models["fusedembed"]
    run(t.embed(served, Batch(texts(1), [0], dimensions=256)))
    assert t._client.calls[0].inputs["DIMENSIONS"].tolist() == [[256]]
    assert t._client.calls[0].dtypes["DIMENSIONS"] == "INT32"
    run(t.embed(served, Batch(texts(1), [0], dimensions=1536)))
    assert "DIMENSIONS" not in t._client.calls[1].inputs  # the full size: nothing to ask
    with pytest.raises(GatewayError) as err:
        run(t.embed(served, Batch(texts(1), [0], dimensions=100)))
    assert (err.value.status, err.value.param) == (422, "dimensions")
    assert err.value.message == ("dimensions: model fusedembed returns 1536, 256 dimensions, "
                                 "not 100")


def test_a_block_is_answered_from_its_own_output():
    t = triton()
    served = run(t.catalog()).models["fusedembed-e11"]
    vectors, _ = run(t.embed(served, Batch(texts(2), [0, 0])))
    assert t._client.calls[0].outputs == [served.output, backend.TOKENS]
    assert vectors[:, 0].tolist() == [0.0, 1.0]


def test_the_cached_entry_point_counts_tokens_once_per_text():
    t = triton(batch=8)
    served = run(t.catalog()).models["fusedembed-cached"]
    _, tokens = run(t.embed(served, Batch(["a 1", "bb 2"], [0, 0])))
    assert tokens.tolist() == [3, 4]
    models = sorted(c.model for c in t._client.calls)
    assert models == sorted([r.CACHED_MODEL, USAGE])
    cached_call = next(c for c in t._client.calls if c.model == r.CACHED_MODEL)
    assert cached_call.outputs == ["FUSED"]
    _, tokens = run(t.embed(served, Batch(["bb 2", "ccc 3"], [0, 0])))
    assert tokens.tolist() == [4, 5]
    counted = [c for c in t._client.calls if c.model == USAGE]
    assert [c.inputs["TEXT"].tolist() for c in counted] == [[[b"a 1"], [b"bb 2"]], [[b"ccc 3"]]]


def test_token_counts_kept_are_bounded_least_recent_first(monkeypatch):
    monkeypatch.setattr(backend, "COUNTS_KEPT", 2)
    t = triton(batch=8)
    served = run(t.catalog()).models["fusedembed-cached"]
    run(t.embed(served, Batch(["a 1", "b 2"], [0, 0])))
    run(t.embed(served, Batch(["a 1"], [0])))  # a is used again: b is the oldest
    run(t.embed(served, Batch(["c 3"], [0])))  # past 2 kept: b goes
    run(t.embed(served, Batch(["a 1", "b 2"], [0, 0])))
    counted = [c.inputs["TEXT"].tolist() for c in t._client.calls if c.model == USAGE]
    assert counted == [[[b"a 1"], [b"b 2"]], [[b"c 3"]], [[b"b 2"]]]


def test_images_go_to_fused_image_and_only_fused_or_e10_embeds_them():
    t = triton(batch=2)
    catalog = run(t.catalog())
    images = [b"x" * n for n in (1, 2, 3)]
    vectors = run(t.images(catalog.models["fusedembed"],
                           Batch(["", "", ""], [0, 0, 0], images=images)))
    assert vectors.dtype == np.float32 and vectors[:, 0].tolist() == [1, 2, 3]
    assert {c.model for c in t._client.calls} == {backend.IMAGE_MODEL}
    assert all(c.outputs == ["FUSED"] for c in t._client.calls)
    run(t.images(catalog.models["fusedembed-e10"], Batch([""], [0], images=[b"y"])))
    assert t._client.calls[-1].outputs == ["E10"]
    with pytest.raises(GatewayError) as err:
        run(t.images(catalog.models["fusedembed-e11"], Batch([""], [0], images=[b"y"])))
    assert (err.value.status, err.value.param) == (422, "model")
    assert err.value.message == ("model: fusedembed-e11 embeds text only; images are embedded "
                                 "by fusedembed and fusedembed-e10")
    with pytest.raises(GatewayError) as err:
        run(t.images(catalog.models["fusedembed"], Batch([""], [0], images=[b"y"],
                                                         dimensions=256)))
    assert err.value.message == ("dimensions: model fusedembed returns 1536 dimensions for an "
                                 "image, not 256")
    with pytest.raises(GatewayError):
        run(t.images(catalog.models["fusedembed-cached"], Batch([""], [0], images=[b"y"])))


def test_sparse_terms_come_without_padding_and_need_the_outputs():
    t = triton(batch=2)
    rows = run(t.sparse(Batch(texts(3), [0, 0, 0]), top_k=5))
    assert [i.tolist() for i, _ in rows] == [[0], [1], [2]]
    assert [w.tolist() for _, w in rows] == [[0.5]] * 3
    assert all(c.outputs == ["E6_SPARSE_INDICES", "E6_SPARSE_WEIGHTS"] for c in t._client.calls)
    assert t._client.calls[0].inputs["SPARSE_TOP_K"].tolist() == [[5], [5]]
    t._catalog = backend.Catalog(t._catalog.models, 2, (), True, None, False, sparse=False)
    with pytest.raises(GatewayError) as err:
        run(t.sparse(Batch(texts(1), [0]), None))
    assert err.value.status == 404 and "does not answer SPLADE terms" in err.value.message


def test_an_error_in_a_later_chunk_names_the_item_by_its_place_in_the_request():
    def refuse_third(model, inputs, outputs):
        if len(inputs["TEXT"]) == 2 and inputs["TEXT"][1, 0] == b"text 5":
            raise fake.InferenceServerException("TEXT[1]: empty or whitespace-only text",
                                                "StatusCode.INVALID_ARGUMENT")
        return answers(model, inputs, outputs)
    t = triton(batch=2, handler=refuse_third)
    served = run(t.catalog()).models["fusedembed"]
    with pytest.raises(GatewayError) as err:
        run(t.embed(served, Batch(texts(6), [0] * 6)))
    assert (err.value.status, err.value.param) == (422, "input")
    assert err.value.message == "input[5]: empty or whitespace-only text"


def test_no_answer_before_the_timeout_is_504():
    t = triton(delay_s=1.0, timeout_s=0.1)
    served = run(t.catalog()).models["fusedembed"]
    with pytest.raises(GatewayError) as err:
        run(t.embed(served, Batch(texts(1), [0])))
    assert err.value.status == 504 and err.value.kind == "timeout"
    assert err.value.message == "no answer within 0.1 s (FUSEDEMBED_GATEWAY_TIMEOUT_S)"


def test_the_catalog_is_read_once_and_the_cached_entry_point_is_optional():
    t = triton(cached=False)
    catalog = run(t.catalog())
    assert "fusedembed-cached" not in catalog.models
    t._client.configs = {}
    assert run(t.catalog()) is catalog  # not read again


def test_no_config_from_triton_is_503():
    t = triton()
    t._client.configs = {}
    with pytest.raises(GatewayError) as err:
        run(t.catalog())
    assert err.value.status == 503 and "fused_text" in err.value.message


def test_ready_needs_the_server_and_fused_text():
    class Probe:
        def __init__(self, server, model):
            self.server, self.model, self.asked = server, model, []

        async def is_server_ready(self, client_timeout):
            if isinstance(self.server, Exception):
                raise self.server
            return self.server

        async def is_model_ready(self, name, client_timeout):
            self.asked.append(name)
            return self.model

    t = triton()
    for server, model, expected in [(True, True, True), (True, False, False),
                                    (False, True, False), (OSError("down"), True, False)]:
        t._client = Probe(server, model)
        assert run(t.ready()) is expected
    t._client = Probe(True, True)
    run(t.ready())
    assert t._client.asked == [r.ENSEMBLE_MODEL]


def test_close_waits_for_the_calls_under_way():
    t = triton(delay_s=0.2)
    closed = []

    async def close():
        closed.append(True)
    t._client.close = close

    async def main():
        served = (await t.catalog()).models["fusedembed"]
        work = asyncio.ensure_future(t.embed(served, Batch(texts(1), [0])))
        await asyncio.sleep(0.05)
        assert t._calls and t._client.calls == []  # under way in "Triton"
        await t.close()
        assert not t._calls and len(t._client.calls) == 1 and closed == [True]
        return await work

    vectors, _ = run(main())
    assert vectors.shape == (1, 3)


# --- errors, names and the catalog, exactly -------------------------------------------------

class Failure(Exception):
    """Shaped as tritonclient's InferenceServerException."""

    def __init__(self, status, message) -> None:
        super().__init__(f"[{status}] {message}")
        self._status, self._message = status, message

    def status(self):
        return self._status

    def message(self):
        return self._message


@pytest.mark.parametrize(("status", "message", "expected"), [
    ("StatusCode.INVALID_ARGUMENT", "in ensemble 'fused_text', KIND[2]: must be 'query'",
     (422, "input_type[2]: must be 'query'", "input_type", "invalid_request_error")),
    ("StatusCode.INVALID_ARGUMENT", "OTHER[1]: not an input of ours",
     (422, "OTHER[1]: not an input of ours", None, "invalid_request_error")),
    ("StatusCode.INVALID_ARGUMENT", "no tensor named here",
     (422, "no tensor named here", None, "invalid_request_error")),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded",
     (504, "no answer from Triton within the deadline: Deadline Exceeded", None, "timeout")),
    ("StatusCode.RESOURCE_EXHAUSTED", "Exceeds maximum queue size",
     (429, "Triton's queue is full: Exceeds maximum queue size", None, "overloaded")),
    ("StatusCode.RESOURCE_EXHAUSTED", "message larger than max",
     (503, "Triton is unavailable: message larger than max", None, "unavailable")),
    ("StatusCode.UNAVAILABLE", "Socket closed",
     (503, "Triton is unavailable: Socket closed", None, "unavailable")),
    ("StatusCode.NOT_FOUND", "no such thing",
     (503, "Triton does not serve it (yet): no such thing", None, "unavailable")),
    ("400", "Request for Unknown Model: 'x'",
     (503, "Triton does not serve it (yet): Request for Unknown Model: 'x'", None,
      "unavailable")),
    ("StatusCode.INTERNAL", "in ensemble 'fused_text', e07_code: broke",
     (424, "model e07_code failed: e07_code: broke", None, "model_error")),
    ("StatusCode.INTERNAL", "something else",
     (500, "Triton failed: something else", None, "server_error")),
])
def test_each_triton_error_becomes_its_status_message_field_and_kind(status, message, expected):
    catalog = backend.Catalog.from_configs(config(), None)
    err = backend.triton_error(Failure(status, message), catalog)
    assert (err.status, err.message, err.param, err.kind) == expected


def test_an_error_without_status_or_message_methods_is_read_from_its_text():
    err = backend.triton_error(RuntimeError("plain failure"), None)
    assert (err.status, err.message, err.kind) == (500, "Triton failed: plain failure",
                                                   "server_error")
    quiet = Failure(None, "")
    err = backend.triton_error(quiet, None)
    assert err.message == "Triton failed: [None] " and err.status == 500
    # Without a catalog no step is named: a step's failure stays a 500.
    err = backend.triton_error(Failure("StatusCode.INTERNAL", "e07_code: broke"), None)
    assert (err.status, err.kind) == (500, "server_error")


def test_a_gateway_error_is_a_request_error_unless_said():
    err = GatewayError(400, "bad")
    assert (err.status, err.message, err.param, err.kind) == (400, "bad", None,
                                                              "invalid_request_error")
    assert str(err) == "bad"


def test_a_served_model_describes_itself_as_openai_lists_models():
    served = backend.Served("fusedembed", "fused_text", "FUSED", 1536, (1536, 256))
    assert served.describe() == {"id": "fusedembed", "object": "model", "created": 0,
                                 "owned_by": "fusedembed", "dimensions": 1536,
                                 "supported_dimensions": [1536, 256]}


def test_an_unknown_model_is_named_with_every_served_one():
    catalog = backend.Catalog.from_configs(config(), None)
    with pytest.raises(GatewayError) as err:
        catalog.resolve("gpt", None)
    known = ", ".join(catalog.models)
    assert err.value.message == (f"model: 'gpt' is not served; models: {known} (each also as "
                                 "<model>-query and <model>-passage)")
    assert (err.value.status, err.value.param, err.value.kind) == (404, "model",
                                                                   "model_not_found")


def test_the_catalog_of_a_bare_config_takes_the_defaults():
    bare = {"name": "fused_text", "output": [{"name": "FUSED", "dims": ["1536"]}]}
    catalog = backend.Catalog.from_configs(bare, None)
    assert list(catalog.models) == ["fusedembed"]
    assert catalog.models["fusedembed"] == backend.Served("fusedembed", "fused_text", "FUSED",
                                                          1536, (1536,))
    assert (catalog.batch, catalog.steps, catalog.tokens, catalog.usage_step,
            catalog.matryoshka, catalog.sparse) == (1, (), False, None, False, False)
    assert backend.Catalog.from_configs(bare | {"max_batch_size": 0}, None).batch == 1
    assert backend.Catalog.from_configs(bare | {"max_batch_size": "16"}, None).batch == 16
    # Triton's JSON leaves out what is empty: a step without an output_map is read as such.
    steps = {"ensemble_scheduling": {"step": [{"model_name": "preprocess"},
                                              {"model_name": "tok", "output_map": {
                                                  "token_count": "TOKENS"}}]}}
    catalog = backend.Catalog.from_configs(bare | steps, None)
    assert catalog.steps == ("preprocess", "tok") and catalog.usage_step == ("tok", "token_count")


def test_sizes_are_offered_only_with_the_dimensions_input_and_two_make_matryoshka():
    cfg = config(dimensions="1536,256")
    catalog = backend.Catalog.from_configs(cfg, config(r.CACHED_MODEL))
    assert catalog.models["fusedembed"].dimensions == (1536, 256) and catalog.matryoshka
    assert catalog.models["fusedembed-cached"] == backend.Served(
        "fusedembed-cached", r.CACHED_MODEL, "FUSED", 1536, (1536,))
    assert catalog.steps == tuple(s["model_name"]
                                  for s in cfg["ensemble_scheduling"]["step"])
    without = dict(cfg, input=[i for i in cfg["input"] if i["name"] != "DIMENSIONS"])
    catalog = backend.Catalog.from_configs(without, None)
    assert catalog.models["fusedembed"].dimensions == (1536,) and not catalog.matryoshka
    # A variable FUSED is as long as the largest size offered.
    variable = dict(cfg, output=[dict(o, dims=["-1"]) if o["name"] == "FUSED" else o
                                 for o in cfg["output"]])
    assert backend.Catalog.from_configs(variable, None).models["fusedembed"].dim == 1536


def test_blocks_are_listed_in_block_order_whatever_the_config_s_order():
    cfg = config()
    cfg["output"] = list(reversed(cfg["output"]))
    names = [m for m in backend.Catalog.from_configs(cfg, None).models][1:]
    assert names == [f"fusedembed-e{i}" for i in range(1, 13)]


def test_the_client_is_made_for_its_url_and_the_timeouts_are_passed_on():
    t = backend.Triton("127.0.0.1:9", 4, 2.5)
    assert t.url == "127.0.0.1:9" and type(t._client).__name__ == "InferenceServerClient"
    t = triton(timeout_s=2.5)
    run(t.catalog())
    assert t._client.config_timeouts == [2.5, 2.5]


def test_close_gives_up_waiting_after_the_timeout():
    t = triton(delay_s=5.0, timeout_s=0.2)

    async def close():
        pass
    t._client.close = close

    async def main():
        served = (await t.catalog()).models["fusedembed"]
        work = asyncio.ensure_future(t.embed(served, Batch(texts(1), [0])))
        await asyncio.sleep(0.05)
        start = time.monotonic()
        await t.close()
        waited = time.monotonic() - start
        work.cancel()
        return waited

    assert run(main()) < 1.0


def test_ready_asks_with_a_five_second_timeout():
    seen = []

    class Probe:
        async def is_server_ready(self, client_timeout):
            seen.append(client_timeout)
            return True

        async def is_model_ready(self, name, client_timeout):
            seen.append(client_timeout)
            return True

    t = triton()
    t._client = Probe()
    assert run(t.ready()) is True and seen == [5, 5]


def test_images_send_the_time_inputs_and_name_an_image_by_its_place():
    def refuse(model, inputs, outputs):
        if len(inputs["IMAGE"]) == 1 and inputs["IMAGE"][0, 0] == b"bad":
            raise fake.InferenceServerException("IMAGE[0]: not an image",
                                                "StatusCode.INVALID_ARGUMENT")
        return answers(model, inputs, outputs)
    t = triton(batch=2, handler=refuse)
    served = run(t.catalog()).models["fusedembed"]
    run(t.images(served, Batch(["", ""], [5, 6], sessions=["s", "t"], sequences=[1, 2],
                               images=[b"a", b"b"])))
    call = t._client.calls[0]
    assert call.inputs["SESSION"].tolist() == [[b"s"], [b"t"]]
    assert call.inputs["SEQUENCE"].tolist() == [[1], [2]]
    assert call.inputs["TIMESTAMP"].tolist() == [[5], [6]]
    with pytest.raises(GatewayError) as err:
        run(t.images(served, Batch(["", "", ""], [0, 0, 0], images=[b"a", b"b", b"bad"])))
    assert err.value.message == "input[2]: not an image"
    with pytest.raises(GatewayError) as err:
        run(t.images(served, Batch([""], [0], images=[b"y"], dimensions=256)))
    assert (err.value.status, err.value.param) == (422, "dimensions")


def test_sparse_terms_take_the_batch_s_settings_and_name_an_item_by_its_place():
    def refuse(model, inputs, outputs):
        if inputs["TEXT"][-1, 0] == b"text 3":
            raise fake.InferenceServerException("TEXT[1]: empty", "StatusCode.INVALID_ARGUMENT")
        return answers(model, inputs, outputs)
    t = triton(batch=2, handler=refuse)
    run(t.sparse(Batch(texts(2), [0, 0], kind="query", truncate=False,
                       gate=GateControls(top_k=3)), None))
    call = t._client.calls[0]
    assert call.model == r.ENSEMBLE_MODEL
    assert call.inputs["KIND"].tolist() == [[b"query"]] * 2
    assert call.inputs["TRUNCATE"].tolist() == [[False]] * 2
    assert call.inputs["TOP_K"].tolist() == [[3]] * 2
    with pytest.raises(GatewayError) as err:
        run(t.sparse(Batch(texts(4), [0] * 4), None))
    assert err.value.message == "input[3]: empty"
    # A default batch truncates, which is the server's default: no TRUNCATE is sent.
    assert "TRUNCATE" not in t._client.calls[-1].inputs
    t._catalog = backend.Catalog(t._catalog.models, 2, (), True, None, False, sparse=False)
    with pytest.raises(GatewayError) as err:
        run(t.sparse(Batch(texts(1), [0]), None))
    assert err.value.kind == "model_not_found"
    assert err.value.message == ("fused_text at 127.0.0.1:9 does not answer SPLADE terms "
                                 "(E6_SPARSE_INDICES, E6_SPARSE_WEIGHTS)")


def test_a_default_request_sends_no_truncate_and_an_int32_size():
    t = triton(dimensions="1536,256")
    served = run(t.catalog()).models["fusedembed"]
    run(t.embed(served, Batch(texts(1), [0], dimensions=256)))
    call = t._client.calls[0]
    assert "TRUNCATE" not in call.inputs
    assert call.inputs["DIMENSIONS"].dtype == np.int32


def test_counting_sends_bytes_and_counts_zero_without_a_tokenizer():
    t = triton()
    served = run(t.catalog()).models["fusedembed-cached"]
    run(t.embed(served, Batch(["a 1"], [0])))
    counted = next(c for c in t._client.calls if c.model == USAGE)
    assert counted.dtypes["TEXT"] == "BYTES" and counted.inputs["TEXT"].dtype == object
    t._catalog = backend.Catalog(t._catalog.models, 8, (), False, None, False)
    _, tokens = run(t.embed(served, Batch(["b 2"], [0])))
    assert tokens.tolist() == [0]


def test_an_error_in_a_call_without_a_chunk_names_the_item_as_sent():
    def refuse(model, inputs, outputs):
        raise fake.InferenceServerException("TEXT[1]: empty", "StatusCode.INVALID_ARGUMENT")
    t = triton(handler=refuse)
    run(t.catalog())
    text = [("TEXT", "BYTES", np.array([[b"a"], [b" "]], dtype=np.object_))]
    with pytest.raises(GatewayError) as err:
        run(t._infer("fused_text", text, ["FUSED"], time.monotonic() + 5))
    assert err.value.message == "input[1]: empty"


def test_a_failed_step_is_named_from_the_catalog():
    def broken(model, inputs, outputs):
        raise fake.InferenceServerException("in ensemble 'fused_text', e07_code: broke",
                                            "StatusCode.INTERNAL")
    t = triton(handler=broken)
    served = run(t.catalog()).models["fusedembed"]
    with pytest.raises(GatewayError) as err:
        run(t.embed(served, Batch(texts(1), [0])))
    assert (err.value.status, err.value.kind) == (424, "model_error")


def test_past_the_deadline_the_call_is_abandoned_not_cancelled_and_says_why():
    t = triton(delay_s=0.5, timeout_s=0.05)
    text = [("TEXT", "BYTES", np.array([[b"x"]], dtype=np.object_))]

    async def main():
        with pytest.raises(GatewayError) as err:
            await t._infer("fused_text", text, ["FUSED"], time.monotonic() + 0.05)
        assert (err.value.status, err.value.kind) == (504, "timeout")
        assert err.value.message == "no answer within 0.05 s (FUSEDEMBED_GATEWAY_TIMEOUT_S)"
        assert len(t._abandoned) == 1 and None not in t._abandoned
        await asyncio.sleep(0.6)
        assert t._abandoned == set() and t._calls == set()
        for _ in range(backend.MAX_ABANDONED):
            t._abandoned.add(asyncio.get_running_loop().create_future())
        with pytest.raises(GatewayError) as err:
            await t._infer("fused_text", text, ["FUSED"], time.monotonic() + 1)
        assert (err.value.status, err.value.kind) == (503, "unavailable")
        assert err.value.message == (f"{backend.MAX_ABANDONED} requests past their deadline "
                                     "are still running in Triton; retry later")

    run(main())


def test_an_answer_in_time_is_not_abandoned():
    t = triton(delay_s=0.01)
    text = [("TEXT", "BYTES", np.array([[b"x 1"]], dtype=np.object_))]

    async def main():
        await t._infer("fused_text", text, ["FUSED"], time.monotonic() + 5)
        assert t._abandoned == set() and t._calls == set()

    run(main())


def test_a_request_cancelled_while_its_call_runs_leaves_the_call_abandoned():
    """A client that goes away cancels its request; the call to Triton is not cancelled
    (Triton 2.51) but counted with the abandoned until it ends."""
    t = triton(delay_s=0.3)
    text = [("TEXT", "BYTES", np.array([[b"x 1"]], dtype=np.object_))]

    async def main():
        request = asyncio.ensure_future(
            t._infer("fused_text", text, ["FUSED"], time.monotonic() + 5))
        await asyncio.sleep(0.05)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert len(t._abandoned) == 1 and None not in t._abandoned
        (call,) = t._abandoned
        assert not call.cancelled()
        await asyncio.sleep(0.4)
        assert t._abandoned == set() and t._calls == set()

    run(main())


def test_an_abandoned_call_that_fails_later_reports_nothing_to_the_loop(loop):
    """Its error is retrieved when it ends: no "exception was never retrieved" and no error
    in a callback reaches the event loop's handler."""
    import gc

    def fail(model, inputs, outputs):
        raise fake.InferenceServerException("late failure", "StatusCode.INTERNAL")
    t = triton(handler=fail, delay_s=0.2)
    text = [("TEXT", "BYTES", np.array([[b"x 1"]], dtype=np.object_))]
    reported = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    async def main():
        with pytest.raises(GatewayError):
            await t._infer("fused_text", text, ["FUSED"], time.monotonic() + 0.05)
        await asyncio.sleep(0.3)
        assert t._abandoned == set()

    run(main())
    gc.collect()
    run(asyncio.sleep(0))
    assert reported == []
