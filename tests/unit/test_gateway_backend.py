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
