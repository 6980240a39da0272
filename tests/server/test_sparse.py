"""E6's SPLADE terms through the real server: equal to SPLADE computed by transformers,
sent only when asked for, SPARSE_TOP_K, errors naming the field, the vocabulary read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export.hf_folders import hf_folder
from export.registry import embedder
from fusedembed_client import FusedEmbedClient, FusedEmbedError
from fusedembed_client.cli import main as cli
from tests.reference import splade_reference
from tests.unit.test_sparse import assert_same_splade

pytestmark = pytest.mark.server

T0 = 1_700_000_000
TEXTS = ["The quick brown fox jumps over the lazy dog!",
         "what is the capital of australia",
         "def reverse(items):\n    return list(reversed(items))",
         "Émile and Zoë visited São Paulo, Zürich and Kraków.",
         " ".join(f"sentence {i} of a long document about serving models." for i in range(90))]


@pytest.fixture(scope="module")
def expected(repository, tmp_path_factory) -> np.ndarray:
    folder = hf_folder(embedder("E6"), repository, tmp_path_factory.mktemp("hf"))
    return splade_reference(folder, TEXTS)


def _raw(mod, url: str, texts: list[str], outputs: list[str], top_k=None):
    client = mod.InferenceServerClient(url)
    arrays = {"TEXT": ("BYTES", np.array([[t.encode()] for t in texts], dtype=np.object_)),
              "TIMESTAMP": ("INT64", np.full((len(texts), 1), T0, dtype=np.int64))}
    if top_k is not None:
        arrays["SPARSE_TOP_K"] = ("INT32", np.asarray(top_k, dtype=np.int32).reshape(-1, 1))
    inputs = []
    for name, (dtype, value) in arrays.items():
        inputs.append(mod.InferInput(name, list(value.shape), dtype))
        inputs[-1].set_data_from_numpy(value)
    return client.infer("fused_text", inputs,
                        outputs=[mod.InferRequestedOutput(o) for o in outputs])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sparse_terms_equal_splade_computed_by_transformers(server, expected, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with FusedEmbedClient(url, protocol) as client:
        got = client.embed_batch(TEXTS, [T0] * len(TEXTS), sparse=True)
        plain = client.embed_batch(TEXTS, [T0] * len(TEXTS))
    vocabulary = expected.shape[1]
    served = np.stack([e.sparse.dense(vocabulary) for e in got])
    assert_same_splade(served, expected)
    for e in got:
        assert np.all(np.diff(e.sparse.indices) > 0) and np.all(e.sparse.weights > 0)
    # Asking for the terms changes nothing else.
    for a, b in zip(got, plain):
        np.testing.assert_array_equal(a.vector, b.vector)
        assert b.sparse is None


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_rows_are_padded_and_the_outputs_come_only_when_asked_for(server, expected, protocol):
    mod = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    result = _raw(mod, url, TEXTS, ["FUSED", "E6_SPARSE_INDICES", "E6_SPARSE_WEIGHTS"])
    indices, weights = result.as_numpy("E6_SPARSE_INDICES"), result.as_numpy("E6_SPARSE_WEIGHTS")
    assert indices.dtype == np.int32 and weights.dtype == np.float32
    assert indices.shape == weights.shape and indices.shape[0] == len(TEXTS)
    assert indices.shape[1] == int((indices >= 0).sum(axis=1).max())
    for row, w, ref in zip(indices, weights, expected):
        real = int((row >= 0).sum())
        # Each text's terms first (those of the reference, but for weights within float
        # error of zero), then padding.
        assert (ref > 1e-4).sum() <= real <= (ref > 0).sum() + 8
        assert np.all(row[:real] >= 0) and np.all(w[:real] > 0)
        assert np.all(row[real:] == -1) and np.all(w[real:] == 0)
    fused_only = _raw(mod, url, TEXTS, ["FUSED"])
    assert fused_only.as_numpy("E6_SPARSE_INDICES") is None
    np.testing.assert_array_equal(fused_only.as_numpy("FUSED"), result.as_numpy("FUSED"))


def test_sparse_top_k_keeps_each_texts_heaviest_terms(server, expected):
    ks = [1, 5, 0, 40, 3]
    result = _raw(grpcclient, server.grpc_url, TEXTS,
                  ["FUSION_VERSION", "E6_SPARSE_INDICES", "E6_SPARSE_WEIGHTS"], top_k=ks)
    indices = result.as_numpy("E6_SPARSE_INDICES")
    weights = result.as_numpy("E6_SPARSE_WEIGHTS")
    for row, w, k, ref in zip(indices, weights, ks, expected):
        kept = row[row >= 0]
        support = int((ref > 0).sum())
        assert len(kept) == (support if k == 0 else min(k, support))
        assert np.all(np.diff(kept) > 0)
        # Every term kept weighs at least as much as every term left out (float tolerance).
        left_out = np.setdiff1d(np.flatnonzero(ref > 0), kept)
        if left_out.size:
            assert ref[kept].min() >= ref[left_out].max() - 1e-4
        np.testing.assert_allclose(w[:len(kept)], ref[kept], atol=1e-4)


def test_the_terms_alone_are_the_terms_beside_fusemoes_outputs(server):
    """Asked without any of FuseMoE's outputs (which Triton 2.51 refused as a deadlock until
    the first step took every ensemble input), with SPARSE_TOP_K too."""
    terms = ["E6_SPARSE_INDICES", "E6_SPARSE_WEIGHTS"]
    for top_k in (None, [3, 0]):
        alone = _raw(grpcclient, server.grpc_url, TEXTS[:2], terms, top_k=top_k)
        beside = _raw(grpcclient, server.grpc_url, TEXTS[:2], ["FUSION_VERSION", *terms],
                      top_k=top_k)
        for name in terms:
            np.testing.assert_array_equal(alone.as_numpy(name), beside.as_numpy(name))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("top_k,message", [
    ([2, -1], r"SPARSE_TOP_K\[1\]: -1 is outside 0\.\.\d+ \(0 keeps every term\)"),
    ([10 ** 6, 1], r"SPARSE_TOP_K\[0\]: 1000000 is outside 0\.\.\d+"),
])
def test_a_bad_sparse_top_k_is_a_client_error_naming_it(server, protocol, top_k, message):
    mod = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    with pytest.raises(Exception, match=message) as err:
        _raw(mod, url, TEXTS[:2], ["FUSED", "E6_SPARSE_INDICES"], top_k=top_k)
    assert str(err.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    # The server goes on answering.
    assert _raw(mod, url, TEXTS[:1], ["FUSED"]).as_numpy("FUSED").shape == (1, 1536)


def test_the_client_reads_terms_back_from_the_served_vocabulary(server, repository):
    from ensemble.stages import FamilyTokenizer, version_dir
    from export.registry import tokenizer_family

    family = tokenizer_family(embedder("E6").tokenizer or "")
    tok = FamilyTokenizer(version_dir(repository, family.triton_model), family)
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        e = client.embed("the quick brown fox", T0, sparse=True, sparse_top_k=20)
        words = client.terms(e.sparse.indices)
        assert words == [tok.tokenizer.id_to_token(int(i)) for i in e.sparse.indices]
        assert client.terms([-1]) == [""] and client.terms([]) == []
        with pytest.raises(FusedEmbedError, match=r"IDS\[1\]: \d+ is outside 0\.\.\d+") as err:
            client.terms([5, tok.vocabulary_size])
        assert err.value.status == "StatusCode.INVALID_ARGUMENT"
    with FusedEmbedClient(server.http_url, "http") as client:
        assert client.terms(e.sparse.indices) == words


def test_the_cli_prints_the_heaviest_terms(server, capsys):
    assert cli(["embed", "the quick brown fox", "--url", server.http_url, "--sparse-top-k",
                "8"]) == 0
    out = capsys.readouterr().out
    assert "E6 SPARSE: 8 terms; heaviest: " in out
    assert cli(["embed", "the quick brown fox", "--url", server.http_url, "--sparse",
                "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    sparse = result["sparse"]
    assert len(sparse["indices"]) == len(sparse["weights"]) == len(sparse["terms"]) > 0
    assert result["dim"] == 1536
