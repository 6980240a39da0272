"""fused_text on the real tritonserver, over HTTP and gRPC with tritonclient."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from fusedembed_client import FusedEmbedClient

pytestmark = pytest.mark.server

T0 = 1_700_000_000
TEXTS = [
    "hello world",
    "A man is playing a guitar on the stage.",
    "def add(a, b):\n    return a + b",
    "Émile and Zoë visited São Paulo — 日本語のテキスト too.",
    # Longer than every model's limit except Longformer's: truncation must match.
    " ".join(f"token{i} of a long passage about embeddings" for i in range(120)),
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _check(fused, weights, selected):
    assert fused.shape[-1] == 1536 and fused.dtype == np.float32
    assert np.all(np.isfinite(fused))
    np.testing.assert_allclose(np.linalg.norm(fused, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
    top2 = np.argsort(-weights, axis=-1, kind="stable")[:, :2]
    assert np.array_equal(np.sort(selected, axis=-1), np.sort(top2, axis=-1))
    assert np.all(weights[np.arange(len(weights))[:, None], selected] >=
                  np.sort(weights, axis=-1)[:, -3:-2] - 1e-7)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_one_request_returns_a_unit_fused_vector(server, protocol):
    mod = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    client = mod.InferenceServerClient(url)
    text = np.array([[f"one request over {protocol}".encode()]], dtype=np.object_)
    stamp = np.array([[T0]], dtype=np.int64)
    inputs = [mod.InferInput("TEXT", [1, 1], "BYTES"), mod.InferInput("TIMESTAMP", [1, 1], "INT64")]
    inputs[0].set_data_from_numpy(text)
    inputs[1].set_data_from_numpy(stamp)
    result = client.infer("fused_text", inputs)
    fused, weights, selected = (result.as_numpy(n) for n in
                                ("FUSED", "EXPERT_WEIGHTS", "SELECTED_EXPERTS"))
    assert fused.shape == (1, 1536) and weights.shape == (1, 8) and selected.shape == (1, 2)
    assert selected.dtype == np.int32
    _check(fused, weights, selected)


def test_served_fused_equals_the_in_process_reference(server, reference):
    stamps = [T0 + 17 * i for i in range(len(TEXTS))]
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        served = client.embed_batch(TEXTS, stamps)
    ref = reference.embed(TEXTS, np.array(stamps))
    got = np.stack([e.vector for e in served])
    assert np.all(_cos(got, ref.fused) >= 0.9999), _cos(got, ref.fused)
    weights = np.stack([e.expert_weights for e in served])
    np.testing.assert_allclose(weights, ref.expert_weights, atol=1e-4)
    _check(got, weights, np.stack([e.selected_experts for e in served]))


def _mixed_texts(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    words = ["the", "server", "answers", "many", "requests", "with", "low", "latency", "and", "high", "throughput"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) + f" #{i}"
            for i in range(n)]


def test_a_batch_of_32_equals_32_concurrent_single_requests(server):
    texts = _mixed_texts(32)
    stamps = [T0 + i for i in range(32)]
    with FusedEmbedClient(server.http_url, "http") as client:
        batch = np.stack([e.vector for e in client.embed_batch(texts, stamps)])

    stats_before = _execution_counts(server)
    client = httpclient.InferenceServerClient(server.http_url, concurrency=32)
    pending = []
    for text, stamp in zip(texts, stamps):
        inputs = [httpclient.InferInput("TEXT", [1, 1], "BYTES"),
                  httpclient.InferInput("TIMESTAMP", [1, 1], "INT64")]
        inputs[0].set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        inputs[1].set_data_from_numpy(np.array([[stamp]], dtype=np.int64))
        pending.append(client.async_infer("fused_text", inputs))
    singles = np.concatenate([p.get_result().as_numpy("FUSED") for p in pending])
    client.close()
    assert np.all(_cos(batch, singles) >= 0.9999), _cos(batch, singles).min()

    # The dynamic batcher merged requests of different lengths (ragged inputs).
    stats_after = _execution_counts(server)
    inferences = stats_after["e01_semantic"][0] - stats_before["e01_semantic"][0]
    executions = stats_after["e01_semantic"][1] - stats_before["e01_semantic"][1]
    assert inferences == 32 and executions < 32


def _execution_counts(server) -> dict[str, tuple[int, int]]:
    client = httpclient.InferenceServerClient(server.http_url)
    stats = client.get_inference_statistics()["model_stats"]
    return {m["name"]: (int(m["inference_count"]), int(m["execution_count"])) for m in stats}


def test_invalid_utf8_is_an_error_naming_the_input_and_the_server_stays_ready(server):
    client = httpclient.InferenceServerClient(server.http_url)
    inputs = [httpclient.InferInput("TEXT", [1, 1], "BYTES"),
              httpclient.InferInput("TIMESTAMP", [1, 1], "INT64")]
    inputs[0].set_data_from_numpy(np.array([[b"\xff\xfe bad"]], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([[T0]], dtype=np.int64))
    with pytest.raises(Exception, match=r"TEXT\[0\]: not valid UTF-8"):
        client.infer("fused_text", inputs)
    assert client.is_server_ready()
    with FusedEmbedClient(server.http_url) as ok:
        assert ok.embed("still answering", T0).vector.shape == (1536,)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cli_prints_the_fused_vector(server, reference, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    out = subprocess.run([sys.executable, "-m", "fusedembed_client.cli", "embed", "hello world",
                          "--timestamp", str(T0), "--url", url, "--protocol", protocol,
                          "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    vector = np.array(result["vector"])
    assert result["dim"] == 1536 and vector.shape == (1536,)
    want = reference.embed(["hello world"], np.array([T0], dtype=np.int64)).fused[0]
    assert float(vector @ want) >= 0.9999
    human = subprocess.run([sys.executable, "-m", "fusedembed_client.cli", "embed", "hello world",
                            "--url", url, "--protocol", protocol],
                           capture_output=True, text=True, timeout=120, check=True).stdout
    assert "FUSED: 1536-D, L2 norm 1.0000" in human


def test_the_server_reports_which_weights_each_embedder_serves(server, repository):
    from ensemble.stages import read_build_info, version_dir
    from export.registry import EMBEDDERS, Input

    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        models = {m.block: m for m in client.models() if m.block}
    assert sorted(models, key=lambda b: int(b[1:])) == [e.id for e in EMBEDDERS]
    pretrained = []
    for spec in EMBEDDERS:
        info = read_build_info(version_dir(repository, spec.triton_model))
        expected = ("custom" if spec.input is not Input.TOKENS
                    else "pretrained" if info["pretrained"] else "tiny")
        assert models[spec.id].weights == expected, spec.id
        assert models[spec.id].precision == info.get("precision", ""), spec.id
        if expected == "pretrained":
            pretrained.append(spec.id)
            if info.get("stands_in_for"):  # a real model of the family, named as such
                assert info["stands_in_for"] == spec.source
                assert models[spec.id].source == (f"{info['source']} (stands in for "
                                                  f"{spec.source})"), spec.id
            else:
                assert models[spec.id].source == spec.source, spec.id
    out = subprocess.run([sys.executable, "-m", "fusedembed_client.cli", "info", "--url",
                          server.http_url], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    neural = sum(e.input is Input.TOKENS for e in EMBEDDERS)
    assert f"{len(pretrained)} of {neural} neural embedders serve pretrained weights" in out


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_kind_is_validated_and_changes_only_e1_and_e12(server, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with FusedEmbedClient(url, protocol) as client:
        blocks = [f"E{i}" for i in range(1, 13)]
        passage = client.embed("how do embeddings work", T0, "passage", blocks)
        query = client.embed("how do embeddings work", T0, "query", blocks)
    changed = {b for b in blocks if not np.allclose(passage.blocks[b], query.blocks[b])}
    assert changed == {"E1", "E12"}
    mod = httpclient if protocol == "http" else grpcclient
    raw = mod.InferenceServerClient(url)
    inputs = [mod.InferInput("TEXT", [1, 1], "BYTES"), mod.InferInput("TIMESTAMP", [1, 1], "INT64"),
              mod.InferInput("KIND", [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([[T0]], dtype=np.int64))
    inputs[2].set_data_from_numpy(np.array([[b"document"]], dtype=np.object_))
    with pytest.raises(Exception, match="KIND: must be 'query' or 'passage', got 'document'"):
        raw.infer("fused_text", inputs)


def test_tokens_counts_the_scrubbed_text_with_e1s_tokenizer(server, repository):
    from tokenizers import Tokenizer

    from ensemble.pii import scrub_texts
    from export.layout import TOKENIZER_FILE
    from export.registry import usage_tokenizer

    texts = ["short", "Mail jane.doe@example.com about it",
             " ".join(["a longer text than any bert model takes"] * 80)]  # not truncated
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        got = [e.tokens for e in client.embed_batch(texts, [1_700_000_000] * 3)]
    tokenizer = Tokenizer.from_file(
        str(repository / usage_tokenizer().triton_model / "1" / TOKENIZER_FILE))
    tokenizer.no_truncation()
    clean, _ = scrub_texts(texts, True)
    assert got == [len(tokenizer.encode(t).ids) for t in clean]
    assert got[2] > 512


@pytest.mark.trained
def test_the_server_fuses_with_the_checkpoint_make_train_trained(server, repository, reference):
    """FUSED and FUSION_VERSION come from the checkpoint `make train` trained for these blocks
    with ensemble/train.py's settings (checkpoints/). The other tests compare the server with
    the repository's own FuseMoE; another FuseMoE put in model_repository/fusemoe/1 fails
    here."""
    import copy

    from ensemble import fusemoe, train
    from export.build import trained_checkpoint

    checkpoint = trained_checkpoint(repository)
    assert checkpoint is not None, "no trained checkpoint for these blocks: run `make train`"
    assert train.trained_with(checkpoint, train.TrainConfig())
    trained = copy.copy(reference)
    trained.fusemoe, trained.manifest = fusemoe.load(checkpoint)
    want = trained.embed(TEXTS, np.full(len(TEXTS), T0, dtype=np.int64)).fused
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        got = client.embed_batch(TEXTS, [T0] * len(TEXTS))
    assert {e.fusion_version for e in got} == {trained.manifest.version}
    cosine = _cos(np.stack([e.vector for e in got]), want)
    assert np.all(cosine >= 0.9999), cosine
