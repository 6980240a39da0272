"""Any subset of fused_text's outputs, over HTTP and gRPC: every output alone, and the SPLADE
terms, ColBERT's token vectors, the token counts and the redactions without FUSED, with the
same values as beside FUSED; the steps no requested output needs do not run."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export import registry as r

pytestmark = pytest.mark.server

T0 = 1_700_000_000
TEXTS = [b"write to ann@example.com about the sparse index", b"a kitten is lying on a rug"]
SUBSETS = [
    (r.E6_SPARSE_INDICES, r.E6_SPARSE_WEIGHTS),
    (r.E12_TOKENS, r.E12_TOKEN_COUNT),
    (r.TOKENS,),
    (r.REDACTIONS,),
    (r.TOKENS, r.E6_SPARSE_WEIGHTS, r.E12_TOKEN_COUNT),
    ("E11", "EXPERT_WEIGHTS"),
]


def client_for(server, protocol: str):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)


def ask(mod, client, outputs) -> dict[str, np.ndarray]:
    text = mod.InferInput(r.TEXT, [len(TEXTS), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t] for t in TEXTS], dtype=np.object_))
    stamp = mod.InferInput(r.TIMESTAMP, [len(TEXTS), 1], "INT64")
    stamp.set_data_from_numpy(np.full((len(TEXTS), 1), T0, dtype=np.int64))
    result = client.infer(r.ENSEMBLE_MODEL, [text, stamp],
                          outputs=[mod.InferRequestedOutput(o) for o in outputs])
    response = result.get_response()
    names = ({o["name"] for o in response["outputs"]} if isinstance(response, dict)
             else {o.name for o in response.outputs})
    assert names == set(outputs), "exactly the outputs asked for come back"
    return {o: result.as_numpy(o) for o in outputs}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_each_subset_has_the_values_it_has_beside_fused(server, protocol):
    mod, client = client_for(server, protocol)
    for subset in SUBSETS:
        alone = ask(mod, client, subset)
        beside = ask(mod, client, (*subset, r.FUSED))
        for name in subset:
            np.testing.assert_allclose(alone[name], beside[name], rtol=0, atol=1e-6,
                                       err_msg=f"{name} of {subset}")
    assert ask(mod, client, (r.REDACTIONS,))[r.REDACTIONS][0].sum() == 1  # the e-mail


def test_every_output_comes_back_alone(server):
    mod, client = client_for(server, "http")
    outputs = [o["name"] for o in client.get_model_config(r.ENSEMBLE_MODEL)["output"]]
    assert len(outputs) >= 20
    for name in outputs:
        got = ask(mod, client, (name,))[name]
        assert got.shape[0] == len(TEXTS), name


@pytest.mark.parametrize("model", [r.CACHED_MODEL, r.FAILSAFE_MODEL, r.IMAGE_MODEL])
def test_every_output_of_the_other_entry_points_comes_back_alone(server, model):
    from perf.fuzz import PNG

    mod, client = client_for(server, "http")
    first = (r.IMAGE, PNG) if model == r.IMAGE_MODEL else (r.TEXT, TEXTS[0])
    outputs = [o["name"] for o in client.get_model_config(model)["output"]]
    full = {}
    for asked in ([[o] for o in outputs] + [outputs]):
        data = mod.InferInput(first[0], [1, 1], "BYTES")
        data.set_data_from_numpy(np.array([[first[1]]], dtype=np.object_))
        stamp = mod.InferInput(r.TIMESTAMP, [1, 1], "INT64")
        stamp.set_data_from_numpy(np.full((1, 1), T0, dtype=np.int64))
        result = client.infer(model, [data, stamp],
                              outputs=[mod.InferRequestedOutput(o) for o in asked])
        assert {o["name"] for o in result.get_response()["outputs"]} == set(asked)
        if len(asked) == 1:
            full[asked[0]] = result.as_numpy(asked[0])
    for name in outputs:  # alone, each has the value it has among all the others
        if full[name].dtype.kind == "f":
            np.testing.assert_allclose(full[name], result.as_numpy(name), atol=1e-6,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(full[name], result.as_numpy(name), err_msg=name)


def executions(client, model: str) -> int:
    stats = client.get_inference_statistics(model)["model_stats"]
    return sum(int(s["execution_count"]) for s in stats)


def test_the_steps_no_requested_output_needs_do_not_run(server):
    mod, client = client_for(server, "http")
    watched = (r.FUSEMOE_MODEL, "e01_semantic", "e06_sparse", "preprocess")
    before = {m: executions(client, m) for m in watched}
    ask(mod, client, (r.E6_SPARSE_INDICES, r.E6_SPARSE_WEIGHTS))
    after = {m: executions(client, m) for m in watched}
    assert after[r.FUSEMOE_MODEL] == before[r.FUSEMOE_MODEL]
    assert after["e01_semantic"] == before["e01_semantic"]
    assert after["e06_sparse"] > before["e06_sparse"]
    assert after["preprocess"] > before["preprocess"]
