"""E12's ColBERT token vectors through the real server: equal to ColBERT's reference code per
token, padded per request with counts, sent only when asked for; MaxSim ranks documents for a
query through the server as it does in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export.registry import Kind
from fusedembed_client import FusedEmbedClient, maxsim
from fusedembed_client.cli import main as cli
from tests.reference import colbert_token_reference
from tests.unit.test_colbert import assert_same_tokens

pytestmark = pytest.mark.server

T0 = 1_700_000_000
QUERY = "what is the capital of australia?"
DOCUMENTS = ["Canberra is the capital city of Australia.",
             "Sydney, Melbourne and Brisbane are large Australian cities.",
             "The quick brown fox jumps over the lazy dog!",
             "Paris is the capital of France; Berlin is the capital of Germany.",
             "def capital(country):\n    return CAPITALS[country]",
             " ".join(f"sentence {i}, of a long document about serving models." for i in range(40))]


@pytest.fixture(scope="module")
def folder(colbert):
    return colbert[2]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("kind", [Kind.PASSAGE, Kind.QUERY], ids=["passage", "query"])
def test_token_vectors_equal_colberts_reference_code(server, folder, protocol, kind):
    url = server.http_url if protocol == "http" else server.grpc_url
    with FusedEmbedClient(url, protocol) as client:
        got = client.embed_batch(DOCUMENTS, [T0] * len(DOCUMENTS), kind.value,
                                 blocks=["E12"], token_vectors=True)
        plain = client.embed_batch(DOCUMENTS, [T0] * len(DOCUMENTS), kind.value)
    assert_same_tokens([e.token_vectors for e in got],
                       colbert_token_reference(folder, DOCUMENTS, kind))
    for e, p in zip(got, plain):
        mean = e.token_vectors.mean(axis=0)  # E12's block is their mean, L2
        assert float(e.blocks["E12"] @ mean) / np.linalg.norm(mean) >= 0.99999
        np.testing.assert_array_equal(e.vector, p.vector)  # asking changes nothing else
        assert p.token_vectors is None


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_rows_are_padded_with_zero_vectors_and_counted(server, protocol):
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_url if protocol == "http"
                                       else server.grpc_url)
    texts = DOCUMENTS[:3]
    inputs = [mod.InferInput("TEXT", [3, 1], "BYTES"), mod.InferInput("TIMESTAMP", [3, 1], "INT64")]
    inputs[0].set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.full((3, 1), T0, dtype=np.int64))
    result = client.infer("fused_text", inputs, outputs=[
        mod.InferRequestedOutput(o) for o in ("FUSED", "E12_TOKENS", "E12_TOKEN_COUNT")])
    vectors, counts = result.as_numpy("E12_TOKENS"), result.as_numpy("E12_TOKEN_COUNT")
    assert vectors.dtype == np.float32 and counts.dtype == np.int32
    assert vectors.shape == (3, int(counts.max()), 128) and counts.shape == (3, 1)
    assert len(set(counts.reshape(-1).tolist())) > 1
    for row, n in zip(vectors, counts.reshape(-1)):
        np.testing.assert_allclose(np.linalg.norm(row[:n], axis=1), 1.0, atol=1e-5)
        assert not row[n:].any()
    plain = client.infer("fused_text", inputs, outputs=[mod.InferRequestedOutput("FUSED")])
    assert plain.as_numpy("E12_TOKENS") is None
    np.testing.assert_array_equal(plain.as_numpy("FUSED"), result.as_numpy("FUSED"))


def test_maxsim_ranks_documents_through_the_server_as_in_process(server, colbert):
    """The query's and documents' vectors from the server, from the served stage in this
    process, and from ColBERT's reference code rank the documents identically."""
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        query = client.embed(QUERY, T0, "query", token_vectors=True).token_vectors
        docs = [e.token_vectors for e in client.embed_batch(DOCUMENTS, [T0] * len(DOCUMENTS),
                                                             token_vectors=True)]
    served = maxsim(query, docs)

    stage, tokenizer, folder = colbert
    _, _, (q,) = stage.embed_native(tokenizer.encode([QUERY]), [Kind.QUERY])
    in_process = maxsim(q, stage.embed_native(tokenizer.encode(DOCUMENTS))[2])
    reference = maxsim(colbert_token_reference(folder, [QUERY], Kind.QUERY)[0],
                       colbert_token_reference(folder, DOCUMENTS, Kind.PASSAGE))
    np.testing.assert_allclose(served, in_process, atol=1e-4)
    np.testing.assert_allclose(served, reference, atol=1e-3)
    order = np.argsort(-served).tolist()
    assert order == np.argsort(-in_process).tolist() == np.argsort(-reference).tolist()
    assert len(set(np.round(served, 3).tolist())) == len(DOCUMENTS)  # a ranking, not ties


def test_cli_prints_the_token_vectors(server, capsys):
    assert cli(["embed", QUERY, "--url", server.http_url, "--kind", "query", "--tokens"]) == 0
    out = capsys.readouterr().out
    assert "E12 TOKENS: 32 vectors of 128-D, L2 norms 1.000000 .. 1.000000" in out
    assert cli(["embed", DOCUMENTS[0], "--url", server.grpc_url, "--protocol", "grpc",
                "--tokens", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    vectors = np.array(result["token_vectors"])
    assert vectors.shape[1] == 128 and 5 < vectors.shape[0] < 20
